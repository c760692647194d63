"""Every fault in the table of tests/faults/cases.py is handled as the README promises: exit
code 2, one error line naming the flag or file (after the `device: ...` line at most), no
traceback, no code run from any file, and every byte that was on disk before still there.

All cases run in this process on tiny inputs built once per session (tests/faults/world.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import world as W
from tests.faults.cases import CASES, Case
from tests.helpers import run_cli

BUILDERS = {
    "configs": W.build_configs,
    "hello": W.build_hello,  # first: the others reuse its files
    "scorelidar": W.build_scorelidar,
    "tomerge": W.build_tomerge,
    "vbp": W.build_vbp,
    "kdic": W.build_kdic,
}


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> W.World:
    base = tmp_path_factory.mktemp("faults")
    w = W.World(root=base / "inputs", marker=base / "CODE-RAN")
    w.root.mkdir()
    w.errors: dict[str, str] = {}  # type: ignore[misc]
    for tool, build in BUILDERS.items():
        try:
            build(w)
        except Exception as exc:  # noqa: BLE001 (a tool mid-rewrite must not stop the others)
            w.errors[tool] = f"{type(exc).__name__}: {exc}"  # type: ignore[attr-defined]
    return w


@pytest.fixture
def case_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for d in tmp_path.rglob("*"):  # read-only folders made by a case: let pytest clean up
        if d.is_dir():
            d.chmod(0o755)


def _params() -> list:
    out = []
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        if "-number--" in c.id:  # ~260 generated cases: ~0.7 s each on 2 loaded cores
            marks.append(pytest.mark.slow)
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


ERROR_LINE = r"^{tool}( [\w-]+)?: error: .+"


@pytest.mark.parametrize("case", _params())
def test_fault(case: Case, world: W.World, case_dir: Path) -> None:
    for part in (case.tool, "configs"):
        if part in world.errors:  # type: ignore[attr-defined]
            pytest.fail(f"inputs of {part} could not be built: {world.errors[part]}")
    world.tmp = case_dir
    if case.setup is not None:
        case.setup(world)
    argv = case.argv(world)
    before = W.snapshot(world.root, case_dir)

    res = run_cli(case.tool, *argv, cwd=case_dir)

    shown = f"{case.tool} {' '.join(argv)}\n-> {res.code}\n{res.stderr[-3000:]}"
    assert res.code == case.code, shown
    assert "Traceback" not in res.stderr + res.stdout, shown
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("device: ")]
    assert len(lines) == 1, f"expected one line:\n{shown}"
    assert re.match(ERROR_LINE.format(tool=case.tool), lines[0]), shown
    names = case.names(world) if callable(case.names) else case.names
    if names:
        assert names in lines[0], f"the error line does not name {names!r}:\n{shown}"
    assert not world.marker.exists(), f"a file ran code: {shown}"
    after = W.snapshot(world.root, case_dir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{changed[:5]} changed on disk:\n{shown}"
    if case.after is not None:
        case.after(world)


def test_the_table_is_large_and_spans_every_tool() -> None:
    per_tool = {t: sum(c.tool == t for c in CASES) for t in BUILDERS if t != "configs"}
    assert sum(per_tool.values()) >= 120 and min(per_tool.values()) >= 15, per_tool
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    numbers = {c.tool for c in CASES if "-number--" in c.id}
    assert numbers == set(per_tool), f"no bad-number cases generated for {set(per_tool) - numbers}"


def test_booby_traps_really_run_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """The traps are live: a torch pickle, a pickled .npy and a YAML tag, each loaded with code
    allowed, create the marker (so its absence after the cases means no loader ran one)."""
    import numpy as np
    import torch
    import yaml

    marker = tmp_path / "LIVE"
    loads = [
        lambda: torch.load(W.booby(tmp_path / "t.pth", marker), weights_only=False),
        lambda: np.load(_npy_trap(tmp_path / "t.npy", marker), allow_pickle=True),
        lambda: yaml.unsafe_load(f'x: !!python/object/apply:io.open ["{marker}", "w"]'),
    ]
    for load in loads:
        load()
        assert marker.exists()
        marker.unlink()


def _npy_trap(path: Path, marker: Path) -> Path:
    import numpy as np

    np.save(path, np.array([W.Boom(marker)], dtype=object), allow_pickle=True)
    return path
