"""The `kdic` command line: parse, call kdic_cli.api, print. Options: kdic_cli.options."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from kdic_cli import options
from shared.cli import create_app, run_app
from shared.options import Invocation, tool_command

app = create_app(
    "kdic",
    (
        "Knowledge distillation for learned image codecs (ICCV 2025): build a slim student "
        "from a compressai codec, distill it stage by stage, and compress real files with it."
    ),
)


def _api() -> ModuleType:
    """The API, imported only when a command runs (torch and compressai are slow to load)."""
    from shared.deps import require

    require("kdic")
    from kdic_cli import api

    return api


@tool_command(app, "build-student", options.BuildStudentOptions, device=False)
def build_student_cmd(cfg: options.BuildStudentOptions, inv: Invocation) -> dict[str, Any]:
    """Teacher-guided student: same classes and stages, fewer channels (and blocks / FFN
    expansion for s2c-conv), initialised with the teacher's highest-energy channels. By
    default the teacher's own compressai class at N*width, which compressai's loaders read
    (--widths free: uneven per-group widths)."""
    return _api().build_student(cfg, out=inv.run.dir)[1]


@tool_command(app, "distill", options.DistillOptions, train=True)
def distill_cmd(cfg: options.DistillOptions, inv: Invocation) -> dict[str, Any]:
    """Stage-wise distillation: each student stage trained inside the frozen teacher
    (implicit: RD loss of the hybrid codec; explicit: feature MSE), then saved."""
    api = _api()
    return api.distill(cfg, device=inv.device, run=inv.run, out=inv.run.dir)[1]


@tool_command(app, "finetune", options.FinetuneOptions, train=True)
def finetune_cmd(cfg: options.FinetuneOptions, inv: Invocation) -> dict[str, Any]:
    """End-to-end RD training of a codec: fine-tune a (distilled) student, or with --arch
    (no --model) / --scratch train a codec from scratch."""
    api = _api()
    return api.finetune(cfg, device=inv.device, run=inv.run, out=inv.run.dir)[1]


@tool_command(app, "evaluate", options.EvaluateOptions, out="optional", device=False)
def evaluate_cmd(cfg: options.EvaluateOptions, inv: Invocation) -> None:
    """Real compress/decompress per image: payload bpp (compressai's strings, as compressai's
    eval_model and the papers count it; curves and BD-rate use it), file bpp (the .kdic
    file, header included), PSNR and MS-SSIM on 8-bit reconstructions, encode/decode time,
    params, kMAC/px, BD-rate against the first curve."""
    console = inv.console
    result = inv.run.save_metrics(_api().evaluate(cfg, console=console))
    rows = [
        (c["label"], p["source"], p["payload_bpp"], p["file_bpp"], p["psnr"], p["ms_ssim"],
         p["enc_s"], p["dec_s"], c["kmac_per_px"], c["params"], c.get("bd_rate_psnr"))
        for c in result["curves"] for p in c["points"]
    ]  # fmt: skip
    console.table("RD points (payload bpp: compressai strings; file bpp: .kdic file)",
                  ["curve", "model", "payload bpp", "file bpp", "PSNR", "MS-SSIM", "enc s",
                   "dec s", "kMAC/px", "params", "BD-rate % (payload)"], rows)  # fmt: skip
    if console.json_mode:
        console.summary(result)


@tool_command(app, "compress", options.CompressOptions, out="none", device=False)
def compress_cmd(cfg: options.CompressOptions, inv: Invocation) -> dict[str, Any]:
    """Compress one image into a .kdic file (real entropy-coded bitstream); bpp counts the
    whole file, payload_bpp only compressai's strings."""
    return _api().compress(cfg)


@tool_command(app, "decompress", options.DecompressOptions, out="none", device=False)
def decompress_cmd(cfg: options.DecompressOptions, inv: Invocation) -> dict[str, Any]:
    """Decode a .kdic file to a PNG; refuses files written by another model."""
    return _api().decompress(cfg)


def main() -> None:
    import warnings

    # compressai's import triggers torch.jit deprecation noise that users cannot act on
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    warnings.filterwarnings("ignore", message="Curves do not overlap", category=UserWarning)
    run_app(app)


if __name__ == "__main__":
    main()
