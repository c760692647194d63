"""The `scorelidar` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from shared.cli import create_app, run_app

app = create_app(
    "scorelidar",
    (
        "Distilled LiDAR scene completion (ScoreLiDAR, ICCV 2025): a diffusion teacher on "
        "sparse convolutions and a few-step student trained by score distillation."
    ),
)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
