"""The `hello` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from shared.cli import create_app, run_app

app = create_app(
    "hello",
    (
        "Label-lightened dataset distillation (HeLlO, ICCV 2025): a CLIP+LoRA label projector"
        " replaces gigabytes of stored soft labels."
    ),
)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
