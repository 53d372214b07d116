"""Tests of runner.db's check for the PostgreSQL driver: without psycopg, a postgres target or
state store is one line naming the extra to install, from `open_store`, `open_target` and
`etl validate`, never an ImportError's traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import runner.db
from runner.config.load import check_file
from runner.errors import ConfigError
from runner.model import PostgresTargetConfig, Secret, SqliteTargetConfig, StateConfig
from runner.state import open_store
from runner.targets import open_target

TARGET_LINE = "the postgres target needs the PostgreSQL driver: pip install 'etl-runner[postgres]'"
STATE_LINE = "the postgres state store needs the PostgreSQL driver: pip install 'etl-runner[postgres]'"
# no server listens on port 9: nothing here may get as far as connecting
DSN = "postgresql://etl:pw@127.0.0.1:9/etl"


@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper reports psycopg as not installed."""
    monkeypatch.setattr(runner.db, "postgres_driver_installed", lambda: False)


def test_the_driver_is_found_without_importing_it() -> None:
    """The check finds an installed psycopg, and one blocked from import as missing, importing neither
    psycopg nor runner.db.pg."""
    code = (
        "import sys, runner.db; found = runner.db.postgres_driver_installed();"
        "loaded = [m for m in ('psycopg', 'runner.db.pg') if m in sys.modules];"
        "sys.modules['psycopg'] = None; print(found, loaded, runner.db.postgres_driver_installed())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "[]", "False"]


@pytest.mark.usefixtures("no_driver")
def test_open_store_without_the_driver_is_one_line_naming_the_extra() -> None:
    """A state `dsn` without psycopg is a ConfigError (exit 2) whose message is that one line."""
    with pytest.raises(ConfigError) as raised:
        open_store(StateConfig(dsn=Secret(DSN)))
    assert str(raised.value) == STATE_LINE
    assert raised.value.exit_code == 2


@pytest.mark.usefixtures("no_driver")
def test_open_target_without_the_driver_is_one_line_naming_the_extra() -> None:
    """A postgres target without psycopg is a ConfigError (exit 2) whose message is that one line."""
    with pytest.raises(ConfigError) as raised:
        open_target(PostgresTargetConfig(dsn=Secret(DSN), table="t"), fields=["a"])
    assert str(raised.value) == TARGET_LINE
    assert raised.value.exit_code == 2


@pytest.mark.usefixtures("no_driver")
def test_sqlite_needs_no_driver(tmp_path: Path) -> None:
    """Without psycopg, the SQLite store and target open as ever."""
    open_store(StateConfig(path=tmp_path / "state.db")).close()
    open_target(SqliteTargetConfig(tmp_path / "out.db", "t"), fields=["a"]).close()


def position(path: Path, text: str, *, after: str = "") -> tuple[int, int]:
    """The 1-based line and column of `text` in the file, from the first `after` on."""
    content = path.read_text()
    index = content.index(text, content.index(after))
    line = content.count("\n", 0, index) + 1
    return line, index - (content.rfind("\n", 0, index) + 1) + 1


@pytest.mark.usefixtures("no_driver")
def test_validate_warns_at_the_target_type_and_the_state_dsn(pipeline_file: Callable[..., Path]) -> None:
    """check_file gives a warning (the file stays valid) at the postgres target's `type` key and at
    `state.dsn`'s key, with the same line as the ConfigError."""
    path = pipeline_file(
        target={"__replace__": True, "type": "postgres", "dsn": DSN, "table": "items"},
        state={"__replace__": True, "dsn": DSN},
    )
    found = [((p.line, p.column), p.path, p.message, p.severity) for p in check_file(path)]
    assert found == [
        (position(path, "type: postgres"), "target.type", TARGET_LINE, "warning"),
        (position(path, "dsn", after="state:"), "state.dsn", STATE_LINE, "warning"),
    ]


def test_validate_is_silent_when_the_driver_is_installed(pipeline_file: Callable[..., Path]) -> None:
    """With psycopg importable, a postgres pipeline has no driver warning."""
    path = pipeline_file(
        target={"__replace__": True, "type": "postgres", "dsn": DSN, "table": "items"},
        state={"__replace__": True, "dsn": DSN},
    )
    assert runner.db.postgres_driver_installed()
    assert check_file(path) == []


def test_etl_state_show_without_the_driver_prints_one_line_and_exits_2() -> None:
    """`etl state show --dsn` in an interpreter where psycopg cannot be imported prints the one
    line and exits 2, no traceback."""
    code = (
        "import sys; sys.modules['psycopg'] = None; from runner.cli import entry;"
        f"sys.argv = ['etl', 'state', 'show', 'p', '--dsn', {DSN!r}]; entry()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (2, f"etl: error: {STATE_LINE}\n")
