"""Errors that the command-line layer turns into one clear line and an exit code."""

from __future__ import annotations


class ToolkitError(Exception):
    """An expected failure: the CLI prints its message on one line, no traceback."""

    exit_code = 1


class InputError(ToolkitError):
    """Bad input from the user (missing file, wrong shape, bad flag value): exit 2."""

    exit_code = 2


class NonFiniteLoss(ToolkitError):
    """The loss became NaN/inf: exit 2, but keep earlier checkpoints (they are valid)."""

    exit_code = 2


class MissingExtraError(ToolkitError):
    """A tool's optional dependencies are not installed: exit 1 with the pip command."""

    exit_code = 1


class Preempted(ToolkitError):  # noqa: N818 (a state, not a bug)
    """The job received SIGTERM/SIGUSR1, saved its state and stops; rerun with --resume.

    Exit code 75 (EX_TEMPFAIL, "try again later") tells a batch script to requeue.
    """

    exit_code = 75
