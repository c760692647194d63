"""One named test (or family of parametrised ones) per cause of issue #14, each failing if its
fix were reverted. Where the fault table (tests/faults/cases.py) already holds the case, the test
runs those rows by id through the table's own check (`test_faults.test_fault`: exit 2, one error
line naming the flag or file, no traceback, no code run, every byte on disk kept), on the same
session inputs (`world`).

cause -> the tests that show it fixed (paths under tests/; * marks a slow test)
1. code execution:
  faults/test_causes.py::test_cause1_inception_weights_are_read_safely
  faults/test_causes.py::test_cause1_every_weight_path_runs_no_code
  shared/test_checkpoints.py::test_pickle_that_runs_code_is_refused
2. silent overwrite:
  faults/test_causes.py::test_cause2_complete_keeps_same_named_scans_of_two_folders
  faults/test_causes.py::test_cause2_scans_that_would_share_an_output_are_refused_before_any_work
3. damaged .kdic header:
  faults/test_causes.py::test_cause3_damaged_kdic_file_exits_2_and_writes_no_image
4. output written before the input is checked:
  faults/test_causes.py::test_cause4_reference_of_the_wrong_size_leaves_the_output
5. a rerun into an earlier --out:
  faults/test_causes.py::test_cause5_rerun_into_an_earlier_run_changes_nothing
  faults/test_causes.py::test_cause5_overwrite_replaces_an_earlier_run
  *faults/test_causes.py::test_stopped_run_resumes_and_a_second_run_cannot_touch_it
  *shared/test_cli_and_runs.py::test_a_second_run_into_a_used_folder_is_refused_and_changes_nothing
  *shared/test_cli_and_runs.py::test_overwrite_replaces_the_earlier_run
6. numbers:
  faults/test_causes.py::test_cause6_bad_numbers_exit_2_before_any_work
  *faults/test_faults.py::test_fault (the generated `<command>-number--<flag>=<value>` cases)
7. unwritable destinations:
  faults/test_causes.py::test_cause7_unwritable_destinations_exit_2_one_line
8. corrupt image in a folder, resume state of another command, broken metadata, unsafe
   --encoder-weights, prune's --checkpoint:
  faults/test_causes.py::test_cause8_bad_inputs_are_one_line
  faults/test_causes.py::test_cause8_prune_records_the_checkpoint_absolute
  shared/test_checkpoints.py::test_damaged_metadata_is_one_line_not_a_traceback
9. messages:
  faults/test_causes.py::test_cause9_usage_errors_are_one_line
  faults/test_causes.py::test_cause9_quiet_fault_prints_only_its_error_line
  faults/test_causes.py::test_cause9_random_bytes_are_not_a_pytorch_file_and_get_no_advice
  faults/test_causes.py::test_cause9_quiet_hides_diffusers_progress_bars
  faults/test_causes.py::test_cause9_doctor_refuses_a_bogus_device_in_every_tool
  faults/test_causes.py::test_cause9_resumed_run_reports_the_same_final_metrics
  shared/test_cli_and_runs.py::test_library_warnings_are_one_line_and_quiet_hides_them
  shared/test_checkpoints.py::test_random_bytes_are_not_called_unsafe_and_get_no_advice_to_disable_safety
  *shared/test_cli_and_runs.py::test_sigterm_saves_state_and_resume_reaches_same_result
  hello/test_hello_cli.py::test_every_command_takes_device_and_training_commands_resume
  (build-projector --help lists --device)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.faults import cases as C
from tests.faults import test_faults as F
from tests.faults import world as W
from tests.faults.cases import CASES, Case, Setup
from tests.helpers import run_cli, tool_path


@pytest.fixture(scope="module")
def tiny_scorelidar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scorelidar_cli.api import SimulateOptions, simulate_scenes
    from scorelidar_cli.model import build_model
    from scorelidar_cli.pipeline import MODEL_FILE, save_model

    root = tmp_path_factory.mktemp("causes")
    simulate_scenes(SimulateOptions(scenes=2, frames=1, azimuths=64), root / "sim")
    torch.manual_seed(0)
    (root / "model").mkdir()
    save_model(root / "model" / MODEL_FILE, build_model("tiny"), "teacher")
    return root


def test_cause2_complete_keeps_same_named_scans_of_two_folders(tiny_scorelidar: Path) -> None:
    """Every SemanticKITTI sequence starts at 000000.bin: two of them completed together keep
    both outputs, each under its path below the scans' common folder."""
    root = tiny_scorelidar
    a, b = (root / "sim" / "sequences" / s / "velodyne" / "000000.bin" for s in ("00", "01"))
    res = run_cli("scorelidar", "complete", a, b, "--model", root / "model", "-k", "1",
                  "--out", root / "out", "--device", "cpu", "--quiet")  # fmt: skip
    assert res.code == 0, res.stderr
    outs = [root / "out" / s / "velodyne" / "000000.ply" for s in ("00", "01")]
    assert all(p.is_file() for p in outs), sorted(map(str, (root / "out").rglob("*")))
    assert outs[0].read_bytes() != outs[1].read_bytes()  # two scenes, two completions


def test_cause2_scans_that_would_share_an_output_are_refused_before_any_work(
    tmp_path: Path,
) -> None:
    from scorelidar_cli.api import output_names
    from shared.errors import InputError

    assert output_names([Path("x/a/0.bin"), Path("x/b/0.bin")]) == [
        Path("a/0.ply"), Path("b/0.ply")
    ]  # fmt: skip
    with pytest.raises(InputError, match="would overwrite"):
        output_names([Path("x/0.bin"), Path("x/0.npy")])
    with pytest.raises(InputError, match="would overwrite"):
        output_names([Path("x/0.bin"), Path("./x/0.bin")])


def test_cause1_inception_weights_are_read_safely(tmp_path: Path) -> None:
    """The booby-trapped file runs nothing; a plain state_dict gives its tensors."""
    from shared.errors import InputError
    from tomerge_cli.quality import fid_metric, inception_weights

    marker = tmp_path / "RAN"
    trap = W.booby(tmp_path / "weights.pth", marker)
    with pytest.raises(InputError, match="--inception-weights .*run code"):
        fid_metric(trap)
    assert not marker.exists()
    plain = {"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3), "fc.weight": torch.ones(2)}
    torch.save({"state_dict": plain}, tmp_path / "plain.pth")
    with pytest.raises(InputError, match="--inception-weights .*fc.weight of shape \\(2,\\)"):
        inception_weights(tmp_path / "plain.pth")  # the right format, not the network
    plain["fc.weight"] = torch.ones(1008, 2048)
    torch.save({"state_dict": plain}, tmp_path / "plain.pth")
    got = inception_weights(tmp_path / "plain.pth")
    assert torch.equal(got["Conv2d_1a_3x3.conv.weight"], plain["Conv2d_1a_3x3.conv.weight"])


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([tool_path("scorelidar"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _wait_for_state(run: Path, timeout: float = 180) -> None:
    """Until the run has saved its first state (--checkpoint-every 1): it is mid-training."""
    deadline = time.time() + timeout
    while not (run / "resume.pt").exists() and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 75)])
def test_stopped_run_resumes_and_a_second_run_cannot_touch_it(
    tiny_scorelidar: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C (130) and SIGTERM (75) save the state; a rerun without --resume is refused with
    every byte kept; --resume with the same options finishes the run (exit 0)."""
    root = tiny_scorelidar
    out = f"stop-{sig.name}"
    args = ["train-teacher", "--data", "sim", "--sequences", "all", "--preset", "tiny",
            "--batch-size", "1", "--checkpoint-every", "1", "--steps", "120", "--out", out,
            "--device", "cpu"]  # fmt: skip
    proc = _start(args, root)
    _wait_for_state(root / out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "--resume" in err.strip().splitlines()[-1]
    state = root / out / "resume.pt"
    saved = torch.load(state, weights_only=True)
    assert 1 <= saved["step"] < 120
    before = W.snapshot(root / out)
    again = run_cli("scorelidar", *args, cwd=root)
    assert again.code == 2 and "--out" in again.stderr.strip().splitlines()[-1]
    assert W.snapshot(root / out) == before
    done = run_cli("scorelidar", *args, "--resume", "--json", cwd=root)
    assert done.code == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["steps"] == 120
    assert (root / out / "model.safetensors").is_file() and not np.isnan(
        json.loads(done.stdout)["final_loss"]
    )


# -- the table's cases by id, through the table's own check ---------------------------------
world = F.world  # the session's inputs and each case's own folder (fixtures of the table)
case_dir = F.case_dir
BY_ID = {c.id: c for c in CASES}
TOOLS = ("vbp", "tomerge", "kdic", "scorelidar", "hello")


def _params(cases: list[Case]) -> list:
    """Each case as a parameter, xfail(strict) where the table says it waits on a fix."""
    return [
        pytest.param(
            c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] * bool(c.xfail)
        )
        for c in cases
    ]


def _table(*ids: str) -> list[Case]:
    missing = [i for i in ids if i not in BY_ID]
    assert not missing, f"cases gone from the table: {missing}"
    return [BY_ID[i] for i in ids]


def _check(case: Case, world: W.World, case_dir: Path) -> None:
    """The table's check, in a folder of the case's own (a test may run several)."""
    own = case_dir / case.id
    own.mkdir()
    F.test_fault(case, world, own)


def _booby_cases() -> list[Case]:
    return [c for c in CASES if "booby" in c.id]


def test_cause_families_span_every_tool() -> None:
    """The booby-trap and unwritable-destination families below reach every tool."""
    assert {c.tool for c in _booby_cases()} == set(TOOLS)
    assert {c.tool for c in _destination_cases()} == set(TOOLS)


@pytest.mark.parametrize("case", _params(_booby_cases()))
def test_cause1_every_weight_path_runs_no_code(case: Case, world: W.World, case_dir: Path) -> None:
    """A pickle that would run code, given to every option that reads weights (checkpoints,
    encoder, metric, CLIP and pipeline weights, resume states, stats): refused, nothing run."""
    _check(case, world, case_dir)


# -- cause 3: a .kdic file damaged anywhere, header included -----------------------------------
# the header: magic 4s, version B, model fingerprint 16s, then height, width, padded height,
# padded width, payload size and payload CRC as big-endian uint32 (kdic_cli/codec_io.py)
KDIC_DAMAGE = {
    "version": (4, None),
    "fingerprint": (12, None),
    "height": (24, None),
    "width": (28, None),
    "padded-height": (32, None),
    "padded-width": (36, None),
    "payload-size": (40, None),
    "crc": (44, None),
    "middle": (-60, None),
    "tail": (-2, None),
}


def _flipped(at: int) -> Setup:
    def make(w: W.World) -> None:
        data = bytearray(Path(w["kdic:bits"]).read_bytes())
        data[at] ^= 0x5A
        (w.tmp / "damaged.kdic").write_bytes(bytes(data))

    return make


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            Case(f"kdic-decompress-damaged-{name}", "kdic",
                 lambda w: C.kd_decompress(w, w.p("damaged.kdic")), "damaged.kdic",
                 setup=_flipped(at)),
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=why)] * bool(why),
        )
        for name, (at, why) in KDIC_DAMAGE.items()
    ],
)  # fmt: skip
def test_cause3_damaged_kdic_file_exits_2_and_writes_no_image(
    case: Case, world: W.World, case_dir: Path
) -> None:
    """One byte changed in any field of the header, the middle or the tail: exit 2, one line
    naming the file, no image written."""
    _check(case, world, case_dir)


# -- cause 4 -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    _params(_table("kdic-decompress-reference-wrong-size",
                   "kdic-decompress-reference-wrong-size-keeps-output")),
)  # fmt: skip
def test_cause4_reference_of_the_wrong_size_leaves_the_output(
    case: Case, world: W.World, case_dir: Path
) -> None:
    """--reference of another size: exit 2 before the image is written (absent stays absent,
    an earlier file keeps its bytes)."""
    _check(case, world, case_dir)


# -- cause 5: every tool's training command (and one other command) into an earlier run ------
def _out(w: W.World) -> str:
    return w.p("out")


RERUNS = [
    Case("vbp-finetune-rerun", "vbp",
         lambda w: ["finetune", "--model", w["dir:vbp_foreign"], "--data", "builtin:digits",
                    "--epochs", "0.01", "--out", _out(w), *C.CPU], "--out"),
    Case("kdic-distill-rerun", "kdic",
         lambda w: ["distill", "--teacher", w["kdic:codec"], "--student", w["kdic:narrow"],
                    "--steps", "1", "--out", _out(w)], "--out"),
    Case("kdic-finetune-rerun", "kdic",
         lambda w: ["finetune", "--model", w["kdic:codec"], "--steps", "1", "--out", _out(w)],
         "--out"),
    Case("scorelidar-distill-rerun", "scorelidar", lambda w: C.sl_distill(w, w["sl:model"]),
         "--out"),
    Case("scorelidar-train-refine-rerun", "scorelidar",
         lambda w: ["train-refine", "--model", w["sl:model"], "--data", w["sl:sim"],
                    "--sequences", "all", "--steps", "1", "--out", _out(w), *C.CPU], "--out"),
    Case("hello-train-student-rerun", "hello",
         lambda w: ["train-student", "--synthetic", w["hello:projector_dir"], "--labels",
                    "teacher", "--student", "resnet10t", "--val-data", "builtin:digits",
                    "--teacher", w["hello:teacher"], "--out", _out(w), *C.CPU], "--out"),
]  # fmt: skip
for _c in RERUNS:
    _c.setup = C.existing_out
RERUN_IDS = ("scorelidar-train-teacher-out-not-empty", "hello-distill-out-not-empty",
             "tomerge-generate-out-not-empty", "kdic-build-student-out-not-empty")  # fmt: skip


@pytest.mark.parametrize("case", _params([*RERUNS, *_table(*RERUN_IDS)]))
def test_cause5_rerun_into_an_earlier_run_changes_nothing(
    case: Case, world: W.World, case_dir: Path
) -> None:
    """An earlier run's folder at --out (config.yaml, metrics.json, its model), no --resume or
    --overwrite: refused naming --out, every byte kept; every training command of every tool
    (tomerge has none: its generate)."""
    _check(case, world, case_dir)


def test_cause5_overwrite_replaces_an_earlier_run(tmp_path: Path) -> None:
    world_ = W.World(root=tmp_path, marker=tmp_path / "M", tmp=tmp_path)
    C.existing_out(world_)
    args = ["simulate", "--scenes", "1", "--frames", "1", "--azimuths", "16", "--out",
            tmp_path / "out"]  # fmt: skip
    assert run_cli("scorelidar", *args).code == 2  # without --overwrite: refused
    res = run_cli("scorelidar", *args, "--overwrite", "--quiet")
    assert res.code == 0, res.stderr
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists()  # the earlier artefact is gone
    assert "command: simulate" in (out / "config.yaml").read_text()
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"


# -- cause 6: numbers ------------------------------------------------------------------------
def _number(id_: str, tool: str, argv: Callable[[W.World], list[str]], flag: str) -> Case:
    return Case(f"{tool}-{id_}", tool, argv, flag)


NUMBERS = [
    *(_number(f"finetune-lr-{v}", "vbp",
              lambda w, v=v: ["finetune", "--model", w["dir:vbp_foreign"], "--data",
                              "builtin:digits", "--lr", v, "--out", _out(w), *C.CPU], "--lr")
      for v in ("nan", "-1")),
    *(_number(f"distill-lr-{v}", "hello", lambda w, v=v: C.he_distill(w, None, None, "--lr", v),
              "--lr") for v in ("nan", "-1")),
    *(_number(f"train-teacher-lr-{v}", "scorelidar", lambda w, v=v: C.sl_teacher(w, "--lr", v),
              "--lr") for v in ("nan", "-1")),
    *(_number(f"generate-height-{v}", "tomerge", lambda w, v=v: C.tm_gen(w, "--height", v),
              "--height") for v in ("-8", "13")),
    _number("generate-guidance-nan", "tomerge", lambda w: C.tm_gen(w, "--guidance", "nan"),
            "--guidance"),
    _number("complete-guidance-nan", "scorelidar",
            lambda w: C.sl_complete(w, w["sl:scan"], "--guidance", "nan"), "--guidance"),
    _number("train-teacher-cfg-dropout-5", "scorelidar",
            lambda w: C.sl_teacher(w, "--cfg-dropout", "5"), "--cfg-dropout"),
]  # fmt: skip


@pytest.mark.parametrize("case", _params(NUMBERS))
def test_cause6_bad_numbers_exit_2_before_any_work(
    case: Case, world: W.World, case_dir: Path
) -> None:
    """The issue's numbers, with otherwise valid inputs: exit 2, one line naming the flag,
    nothing created (no --out folder)."""
    _check(case, world, case_dir)


# -- cause 7: unwritable destinations --------------------------------------------------------
_DESTINATION_ENDS = ("-out-read-only", "-out-is-file", "-output-read-only", "-output-is-dir",
                     "-onnx-read-only", "-onnx-is-dir")  # fmt: skip
EXPORT_OUTPUT = [
    Case("vbp-export-format-onnx-output-read-only", "vbp",
         lambda w: [*C.vb_export(w, w.p("ro/m.onnx"))[:-2], "--format", "onnx", "--output",
                    w.p("ro/m.onnx")], "ro", setup=C.readonly_parent),
    Case("vbp-export-format-onnx-output-is-dir", "vbp",
         lambda w: [*C.vb_export(w, w.p("taken"))[:-2], "--format", "onnx", "--output",
                    w.p("taken")], "taken", setup=C.dir_out),
]  # fmt: skip


def _destination_cases() -> list[Case]:
    return [c for c in CASES if c.id.endswith(_DESTINATION_ENDS)] + EXPORT_OUTPUT


@pytest.mark.parametrize("case", _params(_destination_cases()))
def test_cause7_unwritable_destinations_exit_2_one_line(
    case: Case, world: W.World, case_dir: Path
) -> None:
    """--out, -o, --onnx/--output in a folder that cannot be written or naming a folder (or a
    file where a folder is needed): exit 2, one line naming it, nothing written."""
    _check(case, world, case_dir)


# -- cause 8 ---------------------------------------------------------------------------------
def _image_folder(w: W.World) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("c0", "c1"):
        d = w.tmp / "imgs" / cls
        d.mkdir(parents=True)
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(d / "ok.png")
    (w.tmp / "imgs" / "c1" / "bad.png").write_bytes(rng.bytes(2048))


def _state_of_another_command(w: W.World) -> None:
    """A genuine trainer state of `scorelidar distill` in a `train-teacher` run folder."""
    from shared.train import FORMAT, rng_state

    d = w.tmp / "out"
    d.mkdir()
    (d / "config.yaml").write_text("tool: scorelidar\ncommand: train-teacher\n")
    state = {"format": FORMAT, "tool": "scorelidar", "command": "distill", "options": {},
             "step": 1, "objects": {"student": {}}, "scaler": {}, "rng": rng_state(),
             "history": []}  # fmt: skip
    torch.save(state, d / "resume.pt")


def _damaged_metadata(w: W.World) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(w.tmp / "m.safetensors"), metadata={"toolkit": "{not"})


INPUTS = [
    Case("vbp-collect-stats-corrupt-image-in-folder", "vbp",
         lambda w: [*C.vb_stats(w)[:8], w.p("imgs"), *C.vb_stats(w)[9:]], "bad.png",
         setup=_image_folder),
    Case("scorelidar-train-teacher-resume-state-of-another-command", "scorelidar",
         lambda w: C.sl_teacher(w, "--resume"), "resume.pt", setup=_state_of_another_command),
    Case("kdic-compress-model-metadata-not-json", "kdic",
         lambda w: C.kd_compress(w, model=w.p("m.safetensors")), "m.safetensors",
         setup=_damaged_metadata),
    *_table("hello-build-projector-encoder-weights-booby",
            "hello-build-projector-timm-encoder-weights-booby"),
]  # fmt: skip


@pytest.mark.parametrize("case", _params(INPUTS))
def test_cause8_bad_inputs_are_one_line(case: Case, world: W.World, case_dir: Path) -> None:
    """A corrupt image among good ones (vbp, like kdic and hello), a resume state written by
    another command (not a KeyError), a model file whose JSON metadata is broken, hello's
    unsafe --encoder-weights: exit 2, one line naming the file, nothing changed."""
    _check(case, world, case_dir)


def test_cause8_prune_records_the_checkpoint_absolute(world: W.World, tmp_path: Path) -> None:
    """`vbp prune --checkpoint weights.pth` from one folder: the pruned model records the
    checkpoint's absolute path, so `finetune` (whose teacher it is) runs from another."""
    from shared.checkpoints import read_metadata

    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(world["vbp:weights"], work / "weights.pth")
    model = ["--model", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(W.VBP_KW),
             "--checkpoint", "weights.pth"]  # fmt: skip
    res = run_cli("vbp", "collect-stats", *model, "--data", "builtin:digits", "--batches", "1",
                  "--batch-size", "4", "--out", "stats", *C.CPU, "--quiet", cwd=work)  # fmt: skip
    assert res.code == 0, res.stderr
    res = run_cli("vbp", "prune", *model, "--stats", "stats", "--ratio", "0.5", "--out", "pruned",
                  "--quiet", cwd=work)  # fmt: skip
    assert res.code == 0, res.stderr
    source = read_metadata(work / "pruned" / "model.safetensors")["source"]
    assert source["checkpoint"] == str(work / "weights.pth")
    res = run_cli("vbp", "finetune", "--model", work / "pruned", "--data", "builtin:digits",
                  "--epochs", "0.01", "--batch-size", "4", "--out", "ft", *C.CPU, "--quiet",
                  cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr


# -- cause 9: messages -----------------------------------------------------------------------
USAGE = [
    ("vbp", ["prune", "--bogus"]),
    ("tomerge", ["generate", "--steps", "many"]),
    ("kdic", ["compress"]),
    ("scorelidar", ["simulate", "--scenes"]),
    ("hello", ["no-such-command"]),
]


@pytest.mark.parametrize(("tool", "argv"), USAGE, ids=[t for t, _ in USAGE])
def test_cause9_usage_errors_are_one_line(tool: str, argv: list[str]) -> None:
    """Unknown option, bad type, missing argument or value, unknown command: click's three-line
    usage block becomes one line, exit 2."""
    res = run_cli(tool, *argv)
    lines = res.stderr.strip().splitlines()
    assert res.code == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"{tool}") and ": error: " in lines[0], res.stderr


@pytest.mark.slow  # two fresh processes: ~10 s idle, over a minute on loaded cores
def test_cause9_quiet_fault_prints_only_its_error_line(world: W.World) -> None:
    """In a fresh process, where importing compressai warns (torch.jit.script is deprecated):
    the fault's error line is all of stderr, with --quiet or without (a deprecation notice
    about a library's internals goes to the log only)."""
    args = ["decompress", world["kdic_bits:random"], "--model", world["kdic:codec"], "-o",
            str(world.root / "never.png")]  # fmt: skip
    quiet = run_cli("kdic", *args, "--quiet", subprocess=True)
    assert quiet.code == 2 and quiet.stderr.strip().splitlines() == [
        f"kdic: error: {world['kdic_bits:random']}: not a kdic file (bad magic)"
    ], quiet.stderr
    loud = run_cli("kdic", *args, subprocess=True)
    assert loud.code == 2 and loud.stderr.strip() == quiet.stderr.strip(), loud.stderr


def test_cause9_random_bytes_are_not_a_pytorch_file_and_get_no_advice(
    world: W.World, tmp_path: Path
) -> None:
    world.tmp = tmp_path
    res = run_cli("vbp", *C.vb_stats(world, world["vbp_ckpt:random"]))
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("device: ")]
    assert res.code == 2 and len(lines) == 1, res.stderr
    assert "not a PyTorch file" in lines[0] and "random.pth" in lines[0], lines[0]
    for advice in ("weights_only", "trust", "unpickle", "run code"):
        assert advice not in lines[0], lines[0]


def test_cause9_quiet_hides_diffusers_progress_bars(world: W.World, tmp_path: Path) -> None:
    res = run_cli(
        "tomerge",
        *C.tm_gen(world)[:-3],
        tmp_path / "out",
        *C.CPU,
        "--quiet",
        "--no-skip-unprofitable",
    )
    assert res.code == 0, res.stderr
    assert "it/s" not in res.stderr and "%|" not in res.stderr, res.stderr
    assert res.stderr.strip() == "", res.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_cause9_doctor_refuses_a_bogus_device_in_every_tool(tool: str) -> None:
    res = run_cli(tool, "doctor", "--device", "bogus")
    lines = res.stderr.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and "--device 'bogus'" in lines[0], res.stderr


class _Stop(Exception):
    pass


class _FakeRun:
    """The parts of shared.runs.Run the trainer calls: saves the state after step `stop_at`
    and stops there (a preemption), or hands a saved state back to resume from."""

    tool, command, options, main = "toy", "train", {}, False

    def __init__(self, stop_at: int = 0, state: dict | None = None) -> None:
        self.stop_at, self.state = stop_at, state

    def path(self, name: str) -> Path:
        return Path(name)

    def load_state(self) -> dict | None:
        return self.state

    def step_done(self, step: int, make_state: Callable[[], dict]) -> None:
        if step == self.stop_at:
            self.state = make_state()
            raise _Stop


def test_cause9_resumed_run_reports_the_same_final_metrics() -> None:
    """Stopped one step before the end (inside the last tenth, whose mean is reported) and
    resumed: the same final_loss as the uninterrupted run, not the mean of the last step."""
    from shared.train import Trainer

    def fit(run: _FakeRun) -> dict[str, float]:
        return Trainer(20, run=run).fit(lambda step: {"loss": float(step)})

    whole = fit(_FakeRun())
    stopped = _FakeRun(stop_at=19)
    with pytest.raises(_Stop):
        fit(stopped)
    resumed = fit(_FakeRun(state=stopped.state))
    assert resumed == whole == {"steps": 20, "final_loss": 19.5}
