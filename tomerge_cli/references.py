"""Builder of tomerge's shipped reference models (references/tomerge/, see shared.references).

    python -m tomerge_cli.references digits-unet-16px   # then digits-unet-32px

The class-conditional digits diffusion model the demo samples: a tiny diffusers
UNet2DConditionModel (attention at full resolution, a class embedding as its one-token
"text", class 10 = null for classifier-free guidance) trained on builtin:digits (DDPM,
cosine betas, AdamW 2e-3 with one-cycle, 10% CFG dropout; benchmarks/tomerge_fidelity.py
trains its eight-head UNets with the same `train`). Two changes keep the build within
minutes on a shared 2-core CPU: one attention head of 16 channels instead of eight of two
(the score matrices, which dominate the cost at 1,024 tokens, are 8x smaller), and a
curriculum: `digits-unet-16px` is trained at 16x16 from scratch, `digits-unet-32px` starts
from it and is fine-tuned at 32x32 for 480 steps (4 minutes of one core; the 32 px recipe of
the benchmark, 600 steps from scratch, took 75). 480 rather than 120: the demo's 30 samples
(3 per class, DDIM 10 steps, guidance 3) were classified right by the digits ViT 43% of the
time after 120 steps and 83% after 480 (one build each).

Training runs on one CPU thread with every random draw derived from (seed, step), so a
rebuild on the same CPU type gives a bit-identical file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 10
EMBED = 64
TOOL = "tomerge-reference"


@dataclass(frozen=True)
class Recipe:
    size: int
    steps: int
    batch: int
    lr: float
    seed: int
    init: str | None = None  # the reference this one is fine-tuned from


RECIPES = {
    "digits-unet-16px": Recipe(size=16, steps=400, batch=32, lr=2e-3, seed=0),
    "digits-unet-32px": Recipe(
        size=32, steps=480, batch=16, lr=1e-3, seed=1, init="digits-unet-16px"
    ),
}
DEMO_MODEL = "digits-unet-32px"


class DigitsDiffusion(nn.Module):
    """UNet2DConditionModel with a class embedding as its one-token 'text' (class 10 = null)."""

    def __init__(self, size: int = 32, heads: int = 1) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.size = size
        self.unet = UNet2DConditionModel(
            sample_size=size,
            in_channels=1,
            out_channels=1,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=EMBED,
            attention_head_dim=heads,  # diffusers reads it as the number of heads here
            norm_num_groups=8,
        )
        self.classes = nn.Embedding(CLASSES + 1, EMBED)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, self.classes(y)[:, None]).sample


def train(
    recipe: Recipe,
    init: nn.Module | None = None,
    heads: int = 1,
    model: nn.Module | None = None,
) -> tuple[nn.Module, float]:
    """The trained model and its final loss (mean of the last tenth of the steps). `heads`:
    attention heads of the UNet (the shipped references have one); `model`: another
    class-conditional denoiser with the same call, model(x, t, y) (the benchmarks' MMDiT),
    trained instead of a new UNet."""
    from diffusers import DDPMScheduler

    from shared.builtin_data import load_digits_tensors
    from shared.train import Trainer, step_rng

    torch.manual_seed(recipe.seed)
    x, y = load_digits_tensors("train", recipe.size, channels=1)
    x = x * 2 - 1
    model = model if model is not None else DigitsDiffusion(recipe.size, heads)
    if init is not None:
        model.load_state_dict(init.state_dict())
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.OneCycleLR(
        opt, recipe.lr, total_steps=recipe.steps, pct_start=0.05
    )
    kind = "UNet" if isinstance(model, DigitsDiffusion) else type(model).__name__
    trainer = Trainer(recipe.steps, description=f"digits {kind} {recipe.size}px")
    trainer.track(model=model, opt=opt, sched=lr)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        # every draw comes from (seed, step): the batch of a step never depends on the past
        g = torch.Generator().manual_seed(int(step_rng(recipe.seed, step).integers(2**62)))
        idx = torch.randint(len(x), (recipe.batch,), generator=g)
        x0, cls = x[idx], y[idx].clone()
        cls[torch.rand(recipe.batch, generator=g) < 0.1] = CLASSES  # CFG dropout
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (recipe.batch,), generator=g)
        loss = F.mse_loss(model(sched.add_noise(x0, noise, t), t, cls), noise)
        trainer.optimize(loss, opt, scheduler=lr)
        return {"loss": loss.detach()}

    result = trainer.fit(step_fn)
    return model.eval(), float(result["final_loss"])


def load(path: Path) -> DigitsDiffusion:
    """A shipped (or rebuilt) digits UNet, through the toolkit's safe checkpoint loader."""
    from shared.checkpoints import load_checkpoint

    tensors, meta = load_checkpoint(path, tool=TOOL)
    arch = meta["architecture"]
    model = DigitsDiffusion(int(arch["size"]), int(arch.get("heads", 1)))
    model.load_state_dict(tensors)
    return model.eval()


def reference_model(name: str = DEMO_MODEL) -> DigitsDiffusion:
    """The shipped model `name`; when missing or altered, rebuilt (minutes) with a message."""
    from shared.console import get_console
    from shared.references import find

    path = find(f"tomerge/{name}")
    if path is not None:
        return load(path)
    get_console().warn(f"training tomerge/{name} (no intact shipped copy; a few minutes)")
    recipe = RECIPES[name]
    init = reference_model(recipe.init) if recipe.init else None
    return train(recipe, init)[0]


def build(name: str, out_dir: Path | None = None) -> Path:
    """Train `name` and write it; into references/tomerge/ (and the manifest) by default."""
    from shared.checkpoints import save_checkpoint
    from shared.references import ROOT, record

    torch.set_num_threads(1)  # one thread: the same reduction order on every rebuild
    recipe = RECIPES[name]
    init = reference_model(recipe.init) if recipe.init else None
    model, final_loss = train(recipe, init)
    path = (out_dir or ROOT / "tomerge") / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        path,
        model.state_dict(),
        tool=TOOL,
        architecture={"size": recipe.size, "heads": 1},
        extra={"recipe": asdict(recipe), "final_loss": round(final_loss, 6)},
    )
    if out_dir is None:
        record(
            f"tomerge/{name}",
            path,
            ["python", "-m", "tomerge_cli.references", name],
            f"class-conditional digits diffusion UNet, {recipe.size} px, "
            f"{recipe.steps} steps x {recipe.batch}"
            + (f", fine-tuned from tomerge/{recipe.init}" if recipe.init else "")
            + f"; final loss {final_loss:.4f}",
        )
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tomerge_cli.references", description=__doc__)
    ap.add_argument("name", choices=sorted(RECIPES), help="which reference to build")
    ap.add_argument("--out-dir", type=Path, default=None, help="write here instead (no manifest)")
    args = ap.parse_args(argv)
    path = build(args.name, args.out_dir)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
