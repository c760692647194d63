"""shared.distributed: launcher detection, host lists, and real 2-process Gloo runs on CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from shared import distributed as D
from shared.errors import InputError

REPO = Path(__file__).resolve().parents[2]

# Everything a launcher could have left in this test's own environment.
_LAUNCH_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_")
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _clean_environ() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCH_VARS and not k.startswith(_LAUNCH_PREFIXES)
    }


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name in _LAUNCH_VARS or name.startswith(_LAUNCH_PREFIXES):
            monkeypatch.delenv(name)


# --- detect_env ---------------------------------------------------------------------------


def torchrun_env(rank: int, world: int, addr: str, port: int, local: int | None = None) -> dict:
    """What torchrun sets for one process."""
    local = rank if local is None else local
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
            "MASTER_ADDR": addr, "MASTER_PORT": str(port)}  # fmt: skip


def slurm_env(rank: int, tasks: int, nodelist: str, job: str, local: int | None = None) -> dict:
    """What srun sets for one task (no MASTER_PORT: the sbatch scripts export it)."""
    local = rank if local is None else local
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks), "SLURM_LOCALID": str(local),
            "SLURM_JOB_NODELIST": nodelist, "SLURM_JOB_ID": job}  # fmt: skip


def test_detect_env_torchrun() -> None:
    env = D.detect_env(torchrun_env(3, 8, "node07", 29555, local=1))
    assert env == D.DistEnv(3, 8, 1, "node07", 29555, "torchrun")
    assert env.is_distributed and not env.is_main


def test_detect_env_slurm_nodelist_and_derived_port() -> None:
    env = D.detect_env(slurm_env(1, 2, "gpu[07-09]", "4321987"))
    assert env == D.DistEnv(1, 2, 1, "gpu07", 20000 + 4321987 % 10000, "slurm")
    assert 20000 <= env.master_port <= 29999


def test_detect_env_slurm_prefers_step_nodelist_and_master_port() -> None:
    env = D.detect_env(
        {
            **slurm_env(0, 4, "a[1-4],b[3-4]", "17"),
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_STEP_NODELIST": "b[3-4]",
            "MASTER_PORT": "23456",
        }
    )
    assert (env.world_size, env.master_addr, env.master_port) == (2, "b3", 23456)


def test_detect_env_slurm_single_task_is_world_one() -> None:
    # A plain sbatch shell: SLURM_PROCID is set but there is only one task.
    env = D.detect_env({"SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "5"})
    assert (env.launcher, env.world_size, env.rank, env.is_distributed) == ("slurm", 1, 0, False)
    env = D.detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (env.launcher, env.world_size, env.master_addr) == ("slurm", 1, "127.0.0.1")


def test_detect_env_torchrun_takes_precedence_over_slurm() -> None:
    env = D.detect_env(
        {**torchrun_env(1, 4, "10.0.0.1", 29500), **slurm_env(0, 1, "node[01-02]", "3")}
    )
    assert (env.launcher, env.rank, env.world_size, env.master_addr) == (
        "torchrun",
        1,
        4,
        "10.0.0.1",
    )


def test_detect_env_single_process_default(no_launcher: None) -> None:
    for env in (D.detect_env({}), D.detect_env()):
        assert env == D.DistEnv(0, 1, 0, "127.0.0.1", env.master_port, "none")
        assert env.is_main and not env.is_distributed


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2.0"}, "WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "http"}, "MASTER_PORT"),
        ({"RANK": "0"}, "WORLD_SIZE"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK"),
        ({"SLURM_PROCID": "a"}, "SLURM_PROCID"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "two"}, "SLURM_NTASKS"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "?"}, "SLURM_LOCALID"),
        ({"SLURM_PROCID": "0", "SLURM_JOB_ID": "12_3"}, "SLURM_JOB_ID"),
        ({"SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "node[01-"}, "node list"),
    ],
)
def test_detect_env_malformed_raises_input_error(environ: dict[str, str], name: str) -> None:
    with pytest.raises(InputError, match=name.replace("[", r"\[")):
        D.detect_env(environ)
    assert InputError.exit_code == 2


# --- first_host ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node01", "node01"),
        ("node[01-04,07]", "node01"),
        ("gpu-a[003,010-012],gpu-b5", "gpu-a003"),
        ("a1,a2", "a1"),
        ("node[007]", "node007"),
        ("node[10-12]", "node10"),
        ("rack[2-3]-n[0001-0004]", "rack2-n0001"),
        ("  gpu[07-09]  ", "gpu07"),
        ("localhost", "localhost"),
    ],
)
def test_first_host(nodelist: str, host: str) -> None:
    assert D.first_host(nodelist) == host


@pytest.mark.parametrize("bad", ["", "  ", "node[01", "node]01[", "node[]"])
def test_first_host_malformed(bad: str) -> None:
    with pytest.raises(InputError):
        D.first_host(bad)


# --- single process: every helper is a no-op ------------------------------------------------


def test_single_process_helpers_are_no_ops(
    no_launcher: None, capsys: pytest.CaptureFixture[str]
) -> None:
    env = D.init("cpu")
    assert env.launcher == "none" and not D.is_initialized()
    assert (D.rank(), D.world_size(), D.is_main()) == (0, 1, True)
    D.barrier()

    t = torch.tensor([1.0, 2.0])
    out = D.all_reduce(t, "sum")
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()
    assert torch.equal(D.all_reduce(torch.tensor([4]), "mean"), torch.tensor([4.0]))
    with pytest.raises(ValueError):
        D.all_reduce(t, "prod")
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    assert D.broadcast_object("x") == "x"

    model = nn.Linear(2, 2)
    assert D.wrap_ddp(model, torch.device("cpu")) is model
    assert D.unwrap(model) is model
    assert D.distributed_sampler(list(range(10)), shuffle=True) is None

    D.rank0_print("hello", "rank0")
    captured = capsys.readouterr()
    assert captured.err == "hello rank0\n" and captured.out == ""
    D.cleanup()


def test_rank0_print_silent_on_other_ranks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (D.rank(), D.world_size(), D.is_main()) == (1, 2, False)
    D.rank0_print("should not appear")
    assert capsys.readouterr().err == ""


def test_init_world_one_creates_no_group() -> None:
    env = D.init("cpu", environ={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert env.launcher == "slurm" and not D.is_initialized()


# --- two real processes (Gloo on CPU) -------------------------------------------------------

_WORKER = r"""
import json, os, sys
import torch
import torch.distributed as dist
from torch import nn
from shared import distributed as D

out_dir = sys.argv[1]
env = D.init("cpu", timeout_s=60)
r = env.rank
res = {
    "env": [env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port,
            env.launcher],
    "environ_rank": os.environ.get("RANK"),
    "initialized": D.is_initialized(),
    "backend": dist.get_backend(),
    "rank": D.rank(),
    "world": D.world_size(),
    "is_main": D.is_main(),
}
x = torch.tensor([r + 1.0])
res["sum"] = D.all_reduce(x, "sum").item()
res["mean"] = D.all_reduce(x, "mean").item()
res["max"] = D.all_reduce(x, "max").item()
res["min"] = D.all_reduce(x, "min").item()
res["input_untouched"] = x.item()
res["gathered"] = D.all_gather_object({"rank": r, "name": f"r{r}"})
res["broadcast"] = D.broadcast_object(f"from{r}", src=0)

torch.manual_seed(1234 + r)  # different init per rank: DDP must broadcast rank 0's weights
model = nn.Linear(3, 1)
ddp = D.wrap_ddp(model, torch.device("cpu"))
res["is_ddp"] = isinstance(ddp, nn.parallel.DistributedDataParallel)
res["unwrap_is_model"] = D.unwrap(ddp) is model
data = torch.full((4, 3), float(r + 1))
ddp(data).sum().backward()
res["weight"] = model.weight.detach().flatten().tolist()
res["grad_w"] = model.weight.grad.flatten().tolist()
res["grad_b"] = model.bias.grad.flatten().tolist()

sampler = D.distributed_sampler(list(range(10)), shuffle=False)
res["shard"] = list(iter(sampler))
D.barrier()
D.cleanup()
res["after_cleanup"] = D.is_initialized()
with open(os.path.join(out_dir, f"rank{r}.json"), "w") as f:
    json.dump(res, f)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(tmp_path: Path, envs: list[dict[str, str]], worker: str = _WORKER) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(worker)
    procs = []
    for extra in envs:
        env = _clean_environ()
        env.update(extra)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["OMP_NUM_THREADS"] = "1"
        if sys.platform.startswith("linux"):
            # Gloo otherwise binds to whatever the machine's hostname resolves to.
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=90)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def _check_collectives(results: list[dict]) -> None:
    for r, res in enumerate(results):
        assert res["initialized"] and not res["after_cleanup"]
        assert res["backend"] == "gloo"
        assert (res["rank"], res["world"], res["is_main"]) == (r, 2, r == 0)
        assert res["environ_rank"] == str(r)
        assert res["sum"] == 3.0
        assert res["mean"] == 1.5
        assert (res["max"], res["min"]) == (2.0, 1.0)
        assert res["input_untouched"] == r + 1.0
        assert res["gathered"] == [{"rank": 0, "name": "r0"}, {"rank": 1, "name": "r1"}]
        assert res["broadcast"] == "from0"
        assert res["is_ddp"] and res["unwrap_is_model"]
    # Rank 0's weights everywhere; gradients averaged over the two ranks' data.
    assert results[0]["weight"] == results[1]["weight"]
    assert results[0]["grad_w"] == pytest.approx(results[1]["grad_w"])
    assert results[0]["grad_w"] == pytest.approx([6.0, 6.0, 6.0])  # mean of 4*1 and 4*2
    assert results[0]["grad_b"] == pytest.approx([4.0]) == results[1]["grad_b"]
    # Disjoint shards that cover the data set.
    assert sorted(results[0]["shard"] + results[1]["shard"]) == list(range(10))


# What each launcher sets for rank r of two; the sbatch scripts export MASTER_PORT.
LAUNCHER_ENVS = {
    "torchrun": lambda r, port: torchrun_env(r, 2, "127.0.0.1", port),
    "slurm": lambda r, port: {**slurm_env(r, 2, "localhost", "98765"), "MASTER_PORT": str(port)},
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHER_ENVS))
def test_two_processes_under_each_launcher(tmp_path: Path, launcher: str) -> None:
    port = _free_port()
    results = _run_two(tmp_path, [LAUNCHER_ENVS[launcher](r, port) for r in range(2)])
    _check_collectives(results)
    host = "127.0.0.1" if launcher == "torchrun" else "localhost"
    for r, res in enumerate(results):
        assert res["env"] == [r, 2, r, host, port, launcher]


def _torchrun_two(tmp_path: Path, worker: str) -> list[dict]:
    """`worker` as ranks 0 and 1 under torchrun's variables; each rank's JSON result."""
    port = _free_port()
    return _run_two(tmp_path, [torchrun_env(r, 2, "127.0.0.1", port) for r in range(2)], worker)


_LATE_WORKER = r"""
import json, os, sys, time
from shared import distributed as D

env = D.init("cpu", timeout_s=60)
if env.rank == 0:
    time.sleep(1.0)  # rank 0 still writing its outputs
res = {"enter": time.time()}
D.cleanup()
res["leave"] = time.time()
with open(os.path.join(sys.argv[1], f"rank{env.rank}.json"), "w") as f:
    json.dump(res, f)
"""


@pytest.mark.slow
def test_no_rank_tears_the_group_down_before_the_others_are_done(tmp_path: Path) -> None:
    """cleanup() after a finished command waits for every rank before destroying the
    group: the early rank leaves only once the late one has arrived."""
    late, early = _torchrun_two(tmp_path, _LATE_WORKER)
    assert early["leave"] >= late["enter"] > early["enter"] + 0.5


_GONE_WORKER = r"""
import json, os, sys, time
from shared import distributed as D

env = D.init("cpu", timeout_s=60)
if env.rank == 0:  # a rank that failed and exited without tearing the group down
    with open(os.path.join(sys.argv[1], "rank0.json"), "w") as f:
        json.dump({}, f)
    os._exit(0)
time.sleep(0.5)
start = time.time()
D.cleanup()
with open(os.path.join(sys.argv[1], "rank1.json"), "w") as f:
    json.dump({"seconds": time.time() - start, "initialized": D.is_initialized()}, f)
"""


@pytest.mark.slow
def test_a_finished_rank_still_exits_cleanly_when_a_peer_has_gone(tmp_path: Path) -> None:
    """The barrier before destroying the group fails at once when the other rank has
    exited; cleanup() then destroys the group and returns (no hang, no error)."""
    _, survivor = _torchrun_two(tmp_path, _GONE_WORKER)
    assert survivor["seconds"] < 30 and not survivor["initialized"]


_REPLICA_WORKER = r"""
import json, os, sys
import torch
from torch import nn
from shared import distributed as D
from shared.errors import ToolkitError

env = D.init("cpu", timeout_s=60)
res = {}
model = nn.Linear(4, 3)
with torch.no_grad():
    for p in model.parameters():
        p.fill_(0.5)
for case, change in (("same", 0.0), ("one_weight_off", 1e-3)):
    with torch.no_grad():
        model.weight[0, 0] = 0.5 + (change if env.rank == 1 else 0.0)
    try:
        D.check_replicas(model)
        res[case] = "passed"
    except ToolkitError as exc:
        res[case] = str(exc)
D.cleanup()
with open(os.path.join(sys.argv[1], f"rank{env.rank}.json"), "w") as f:
    json.dump(res, f)
"""


@pytest.mark.slow
def test_check_replicas_raises_on_every_rank_when_one_weight_differs(tmp_path: Path) -> None:
    """The end-of-training guard the 2-rank tests of every tool rely on: identical replicas
    pass, a single weight off by 1e-3 on one rank is caught on both."""
    for res in _torchrun_two(tmp_path, _REPLICA_WORKER):
        assert res["same"] == "passed"
        assert "drifted" in res["one_weight_off"]


def test_cleanup_after_an_error_does_not_wait_for_the_others(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(D, "is_initialized", lambda: True)
    monkeypatch.setattr(D.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(D.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(D.dist, "destroy_process_group", lambda: calls.append("destroy"))
    D.cleanup(synchronise=False)
    assert calls == ["destroy"]
    D.cleanup()
    assert calls == ["destroy", "barrier", "destroy"]
