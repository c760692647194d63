"""`make bench`: rerun every benchmark; each writes benchmarks/results/<tool>/."""

from __future__ import annotations

import runpy
import sys
import time


def benchmarks() -> list[str]:
    """Every registered tool's benchmark modules (shared/registry.py)."""
    from shared.registry import tools

    return [m for spec in tools().values() for m in spec.benchmarks]


def main() -> int:
    from benchmarks.common import ALLOW_DIRTY_FLAG, check_tree

    check_tree()  # one refusal up front, not one per benchmark; the flag reaches each one
    only = [a for a in sys.argv[1:] if a != ALLOW_DIRTY_FLAG]  # through sys.orig_argv
    failed = []
    for name in benchmarks():
        if only and not any(o in name for o in only):
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        saved = sys.argv
        sys.argv = [name]
        try:
            runpy.run_module(name, run_name="__main__")
        except SystemExit as exc:
            if exc.code:
                failed.append(name)
        finally:
            sys.argv = saved
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
