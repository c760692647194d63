"""The `tomerge` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from shared.cli import create_app, run_app

app = create_app(
    "tomerge",
    (
        "Importance-based token merging for diffusers pipelines (ICCV 2025): faster Stable "
        "Diffusion, SDXL, PixArt and AnimateDiff sampling, measured against tomesd."
    ),
)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
