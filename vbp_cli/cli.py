"""The `vbp` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from shared.cli import create_app, run_app

app = create_app(
    "vbp",
    (
        "Variance-Based Pruning of trained vision transformers and ConvNeXts (ICCV 2025): "
        "collect MLP activation statistics, prune the lowest-variance neurons globally with "
        "mean-shift compensation, fine-tune with distillation."
    ),
)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
