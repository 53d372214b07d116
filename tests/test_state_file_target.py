"""A sqlite target in the state store's own file is a configuration error (reliability review D11).

Such a target adds its fields as columns to the state's tables (a table named `keys`), which
broke every pipeline sharing that state file; `etl validate` said ok.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_pipeline_file

from runner.config import check_file

MESSAGE = "target.path: the target's path is the state store's own file; give the target another file"


def problems(path: Path) -> list[str]:
    return [str(p) for p in check_file(path) if p.severity == "error"]


def where_target_path_is(path: Path) -> str:
    """`LINE:COL` of the target's `path` value (the builder writes `target: {type: ..., path: ...}`)."""
    lines = path.read_text().splitlines()
    number, line = next((n, line) for n, line in enumerate(lines, 1) if line.startswith("target:"))
    return f"{number}:{line.index('path: ') + len('path: ') + 1}"


@pytest.mark.parametrize(
    ("target", "state"),
    [
        ("{tmp}/state.db", "{tmp}/state.db"),
        ("{tmp}/sub/../state.db", "{tmp}/state.db"),
        (".etl/state.db", None),  # the default state path, relative to the working directory
        ("./.etl/../.etl/state.db", None),
        ("{tmp}/link.db", "{tmp}/state.db"),  # a symlink to the state file
    ],
    ids=["same", "dotdot", "default", "default-dotdot", "symlink"],
)
def test_a_sqlite_target_in_the_state_file_is_an_error_at_its_path_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, state: str | None
) -> None:
    """`etl validate` (and so `etl run`) reports the target's `path` line when it resolves to the
    SQLite state store's file, the default `.etl/state.db` included."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state.db").touch()
    os.symlink(tmp_path / "state.db", tmp_path / "link.db")
    path = write_pipeline_file(
        tmp_path, target={"path": target, "table": "keys"}, state={"path": state} if state else None,
    )
    assert problems(path) == [f"{path}:{where_target_path_is(path)}: {MESSAGE}"]


@pytest.mark.parametrize(
    ("target", "state"),
    [("{tmp}/out.db", "{tmp}/state.db"), (".etl/out.db", None), ("{tmp}/state.db", "{tmp}/other/state.db")],
)
def test_a_sqlite_target_beside_the_state_file_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, state: str | None
) -> None:
    """Another file, even in the same folder or with the same name elsewhere, is no problem."""
    monkeypatch.chdir(tmp_path)
    path = write_pipeline_file(tmp_path, target={"path": target}, state={"path": state} if state else None)
    assert problems(path) == []


def test_a_postgres_state_store_has_no_file_to_collide_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `state: {dsn: ...}` there is no SQLite state file: a target at `.etl/state.db` is allowed."""
    monkeypatch.chdir(tmp_path)
    path = write_pipeline_file(
        tmp_path, target={"path": ".etl/state.db"}, state={"path": None, "dsn": "postgresql://u@127.0.0.1:1/db"},
    )
    assert not any("state store's own file" in p for p in problems(path))
