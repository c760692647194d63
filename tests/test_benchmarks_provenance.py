"""Provenance every benchmark results file carries, and the clean-tree rule (no benchmark runs:
a temporary git repository stands in for the toolkit's, a temporary folder for the results)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks import common

BENCH = Path(common.__file__).resolve().parent
SCRIPTS = sorted(
    p for p in BENCH.glob("*.py") if p.name not in ("__init__.py", "common.py", "run_all.py")
)


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed temporary repository as the toolkit's, results outside it, no allowance."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "code.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", "code.py")
    _git(root, "commit", "-q", "-m", "init")
    monkeypatch.setattr(common, "REPO", root)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "_ALLOW_DIRTY", None)
    # a fresh run: no tree state recorded at a start yet
    monkeypatch.setattr(common, "_START", {k: v for k, v in common._START.items() if k != "git"})
    monkeypatch.setattr(sys, "argv", ["bench"])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "benchmarks.fake"], raising=False)
    monkeypatch.delenv("TOOLKIT_ALLOW_DIRTY", raising=False)
    return root


def _write(tmp_path: Path) -> Path:
    return common.write_results(
        "fake", "r", "Fake", [("Table", common.markdown_table(["a"], [[1.5]]))], {"rows": [1]}
    )


def test_commit_and_dirty_flag_follow_the_tree(repo: Path) -> None:
    state = common.git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"])
    assert state["commit"] == _git(repo, "rev-parse", "HEAD").strip()
    assert state["dirty"] is False
    # Results are not source: writing them must not make the tree dirty.
    (repo / "benchmarks" / "results" / "new.md").write_text("r\n")
    assert common.git_state()["dirty"] is False
    (repo / "code.py").write_text("x = 2\n")
    state = common.git_state()
    assert state["dirty"] is True and state["changed"] == ["code.py"]
    _git(repo, "commit", "-q", "-am", "two")
    assert common.git_state() == {
        "commit": _git(repo, "rev-parse", "HEAD").strip(),
        "dirty": False,
        "changed": [],
        "changed_count": 0,
    }


def test_command_is_the_process_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [".venv/bin/python", "-m", "benchmarks.vbp_speed", "--repeats", "2", "--note", "a b"]
    monkeypatch.setattr(sys, "orig_argv", argv, raising=False)
    monkeypatch.setattr(sys, "argv", ["/abs/benchmarks/vbp_speed.py", "--repeats", "2"])
    assert common.command() == shlex.join(argv)
    assert shlex.split(common.command()) == argv  # round-trips, `-m module` kept
    monkeypatch.delattr(sys, "orig_argv")
    assert shlex.split(common.command()) == [sys.executable, *sys.argv]


def test_versions_from_package_metadata() -> None:
    tomesd = pytest.importorskip("tomesd")
    versions = common.versions()
    assert not hasattr(tomesd, "__version__")  # why metadata, not the module, is read
    assert versions["tomesd"] == metadata.version("tomesd")
    assert versions["torch"] == metadata.version("torch")
    assert versions[common.TOOLKIT] == metadata.version(common.TOOLKIT)
    assert set(versions) - {"python"} <= {*common.PEERS, common.TOOLKIT} | {
        k for k in versions if " (" in k
    }


def test_environment_that_changes_results_is_captured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = common.environment()
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "UNRELATED_VARIABLE" not in env and "MKL_NUM_THREADS" not in env


def test_write_results_refuses_a_dirty_tree(repo: Path, tmp_path: Path) -> None:
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(SystemExit) as exc:
        _write(tmp_path)
    message = str(exc.value.code)
    assert "\n" not in message and "--allow-dirty" in message and "code.py" in message
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("how", ["flag", "env", "parser"])
def test_dirty_results_written_when_allowed_and_marked(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    (repo / "code.py").write_text("x = 2\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if how == "flag":
        monkeypatch.setattr(sys, "argv", ["bench", "--allow-dirty"])
    elif how == "env":
        monkeypatch.setenv("TOOLKIT_ALLOW_DIRTY", "1")
    else:
        parser = common.add_common_args(argparse.ArgumentParser())
        common.check_tree(parser.parse_args(["--allow-dirty"]))
    written: list[str] = []
    for name in ("write_text", "write_json"):  # every file through shared.io's atomic writes
        real = getattr(common, name)
        monkeypatch.setattr(
            common, name, lambda p, x, real=real: written.append(Path(p).name) or real(p, x)
        )
    md_path = _write(tmp_path)
    assert md_path == tmp_path / "results" / "fake" / "r.md"
    assert sorted(written) == ["r.json", "r.md"]
    data = json.loads(md_path.with_suffix(".json").read_text())
    prov = data["provenance"]
    assert data["rows"] == [1]
    assert prov["commit"] == _git(repo, "rev-parse", "HEAD").strip()
    assert prov["dirty"] is True and prov["allow_dirty"] is True
    assert prov["command"] == shlex.join(sys.orig_argv)
    assert prov["env"]["OMP_NUM_THREADS"] == "1"
    assert len(prov["load_start"]) == 3 and len(prov["load_written"]) == 3
    assert isinstance(prov["torch_threads"], int) and prov["device"]
    md = md_path.read_text()
    assert md.startswith("# Fake\n")
    assert f"- commit: `{prov['commit']} dirty" in md
    assert f"- command: `{prov['command']}`" in md
    assert "OMP_NUM_THREADS=1" in md and "load average" in md
    assert f"tomesd {metadata.version('tomesd')}" in md
    assert "## Table" in md and "| 1.5 |" in md


def test_clean_tree_writes_without_the_flag(repo: Path, tmp_path: Path) -> None:
    md = _write(tmp_path).read_text()
    commit = _git(repo, "rev-parse", "HEAD").strip()
    assert f"- commit: `{commit}`" in md and "dirty" not in md
    prov = json.loads((tmp_path / "results" / "fake" / "r.json").read_text())["provenance"]
    assert prov["dirty"] is False and prov["allow_dirty"] is False


@pytest.mark.parametrize("declared", [None, "b" * 40], ids=["plain", "declared-commit"])
def test_not_a_checkout_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declared: str | None
) -> None:
    """A copy without .git (rsynced to a node): its commit, if declared, is recorded as
    declared; its clean state stays unknown, so writing still needs --allow-dirty."""
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setattr(common, "REPO", plain)
    if declared:
        monkeypatch.setenv("TOOLKIT_SOURCE_COMMIT", declared)
    state = common.git_state()
    assert state["dirty"] is None
    assert state["commit"] == (f"{declared} (declared)" if declared else None)
    with pytest.raises(SystemExit, match="cannot be read"):
        _write(tmp_path)


def test_rewritten_report_keeps_the_measuring_run(repo: Path, tmp_path: Path) -> None:
    old = {"commit": "a" * 40, "command": "python -m benchmarks.kdic_rd", "date": "then"}
    path = common.write_report(tmp_path / "out" / "results", "# T\nbody", {"provenance": old})
    prov = json.loads(path.with_suffix(".json").read_text())["provenance"]
    assert prov["measured"] == old and prov["commit"] != old["commit"]
    md = path.read_text().splitlines()
    assert md[0] == "# T" and md[-1] == "body"
    assert any(line.startswith("- measured by: commit `aaaa") for line in md)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_accepts_the_flag_and_writes_through_common(script: Path) -> None:
    source = script.read_text()
    assert "add_common_args(" in source and "check_tree(args)" in source
    assert "savefig(" not in source and ".write_text(" not in source


def test_a_name_with_a_dot_keeps_all_of_it(repo: Path, tmp_path: Path) -> None:
    path = common.write_results("fake", "speed-0.5-run2", "Fake", [("T", "x")], {"rows": [1]})
    assert path == tmp_path / "results" / "fake" / "speed-0.5-run2.md"
    assert path.exists() and path.with_name("speed-0.5-run2.json").exists()


def test_the_commit_is_the_one_the_run_started_from(repo: Path) -> None:
    first = common.check_tree()["commit"]
    (repo / "code.py").write_text("x = 3\n")
    _git(repo, "commit", "-q", "-am", "meanwhile")
    prov = common.provenance()
    assert prov["commit"] == first
    assert prov["commit_at_write"] == _git(repo, "rev-parse", "HEAD").strip() != first
    text = "\n".join(common.provenance_markdown(prov))
    assert f"checkout was at {prov['commit_at_write']}" in text
