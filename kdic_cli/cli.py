"""The `kdic` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from shared.cli import create_app, run_app

app = create_app(
    "kdic",
    (
        "Knowledge distillation for learned image codecs (ICCV 2025): build a slim student "
        "from a compressai codec, distill it stage by stage, and compress real files with it."
    ),
)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
