"""The storage table: what each label source needs shipped beside the synthetic images."""

from __future__ import annotations

from typing import Any

from hello_cli.labels import stored_label_bytes
from hello_cli.projector import Projector

IMAGENET = {"classes": 1000, "ipc": 10, "epochs": 300, "batch_size": 100}


def projector_bytes_for(projector: Projector, classes: int, bytes_per_value: int = 4) -> int:
    """The projector file's payload if it had `classes` classes: the encoder factors do not
    depend on the classes; W's factors (and, for timm, W itself) grow linearly."""
    tensors = projector.stored_tensors()
    d = projector.head.in_features
    fixed = sum(t.numel() for k, t in tensors.items() if not k.startswith("head"))  # + mean
    per_class = projector.config.head_rank + (d if "head_base" in tensors else 0)
    head_a = sum(
        t.numel() for k, t in tensors.items() if k.startswith("head.") and k.endswith("lora_a")
    )
    return bytes_per_value * (fixed + head_a + per_class * classes)


def storage_rows(
    projector: Projector, *, classes: int, ipc: int, epochs: int, batch_size: int
) -> list[dict[str, Any]]:
    """Projector vs stored soft labels, for this setting and for ImageNet-1K IPC 10 at RDED's
    300 epochs (computed from the formulas, not measured)."""
    rows = []
    for setting, c, k, e, b in (
        ("this data", classes, ipc, epochs, batch_size),
        (
            "ImageNet-1K (computed)",
            IMAGENET["classes"],
            IMAGENET["ipc"],
            IMAGENET["epochs"],
            IMAGENET["batch_size"],
        ),
    ):
        stored = stored_label_bytes(c * k, c, e, b)
        proj = projector_bytes_for(projector, c)
        rows.append(
            {
                "setting": f"{setting}: {c} classes, IPC {k}, {e} epochs",
                "stored_soft_labels_bytes": stored,
                "projector_bytes": proj,
                "projector_percent_of_stored": 100.0 * proj / stored,
            }
        )
    return rows
