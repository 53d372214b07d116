"""Tests of `etl validate`, `etl schema` and `etl --version` through click's CliRunner;
and of `etl run` on files that `etl validate` refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from runner import __version__, config
from runner.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"

GOOD = """\
version: 1
name: good
source:
  url: https://api.example.com/items
mapping:
  external_id: id
  fields: {a: a}
target: {type: sqlite, path: data/out.db, table: items}
"""


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory holding copies of the invalid fixtures, with the test variables unset."""
    monkeypatch.chdir(tmp_path)
    for name in ("ETL_TEST_UNSET_PATH", "ETL_TEST_UNSET_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for fixture in (FIXTURES / "invalid").glob("*.yaml"):
        shutil.copy(fixture, tmp_path / fixture.name)
    (tmp_path / "good.yaml").write_text(GOOD, encoding="utf-8")
    return tmp_path


def etl(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_valid_file_prints_ok_and_exits_0() -> None:
    """A valid file prints `FILE: ok` and nothing else, and exits 0."""
    result = etl("validate", "good.yaml")
    assert (result.exit_code, result.stdout) == (0, "good.yaml: ok\n")


def test_three_mistakes_print_three_located_lines_and_exit_1() -> None:
    """A file with an unknown key, a bad enum and a bad JMESPath prints three FILE:LINE:COL lines and exits 1."""
    result = etl("validate", "three_mistakes.yaml")
    assert result.exit_code == 1
    assert result.stdout == (
        "three_mistakes.yaml:6:11: source.method: invalid value 'FETCH'; expected one of: GET, POST\n"
        "three_mistakes.yaml:7:3: source.paginaton: unknown key 'paginaton' in source; "
        "did you mean 'pagination'?\n"
        "three_mistakes.yaml:11:12: mapping.fields.title: invalid JMESPath 'title[?': "
        "the expression is incomplete\n"
    )


def test_missing_variables_are_warnings_and_the_file_is_ok() -> None:
    """Unset variables print as warnings, the file still counts as valid, and the exit code is 0."""
    result = etl("validate", "missing_env.yaml")
    assert result.exit_code == 0
    assert result.stdout == (
        "missing_env.yaml:4:8: warning: source.url: environment variable ETL_TEST_UNSET_PATH is not set\n"
        "missing_env.yaml:5:31: warning: source.auth.token: environment variable ETL_TEST_UNSET_TOKEN is not set\n"
        "missing_env.yaml: ok\n"
    )


def test_env_file_supplies_variables(workdir: Path) -> None:
    """--env-file fills the variables, so no warning is printed."""
    env_file = workdir / "test.env"
    env_file.write_text("ETL_TEST_UNSET_PATH=v1\nETL_TEST_UNSET_TOKEN=secret\n", encoding="utf-8")
    result = etl("validate", "--env-file", str(env_file), "missing_env.yaml")
    assert (result.exit_code, result.stdout) == (0, "missing_env.yaml: ok\n")


def test_missing_env_file_is_a_usage_error() -> None:
    """An --env-file that does not exist is refused by the option parser with exit code 2."""
    result = etl("validate", "--env-file", "absent.env", "good.yaml")
    assert result.exit_code == 2
    assert "absent.env" in result.stderr


def test_one_invalid_file_among_several_exits_1() -> None:
    """Every file is checked and reported; one invalid file makes the exit code 1."""
    result = etl("validate", "good.yaml", "duplicate_key.yaml")
    assert result.exit_code == 1
    assert result.stdout == (
        "good.yaml: ok\n"
        "duplicate_key.yaml:6:3: source.records: duplicate key 'records'; it is already set above in this mapping\n"
    )


def test_directory_and_glob_arguments(workdir: Path) -> None:
    """A directory gives its YAML files sorted, and a glob expands, without checking a file twice."""
    (workdir / "dir").mkdir()
    (workdir / "dir" / "b.yaml").write_text(GOOD, encoding="utf-8")
    (workdir / "dir" / "a.yml").write_text(GOOD, encoding="utf-8")
    result = etl("validate", "dir", "dir/*.yaml")
    assert (result.exit_code, result.stdout) == (0, "dir/a.yml: ok\ndir/b.yaml: ok\n")


def test_a_path_that_matches_nothing_is_reported() -> None:
    """A missing file or an empty glob is reported, the other files are still checked, and the exit code is 1."""
    result = etl("validate", "nope.yaml", "*.yml", "good.yaml")
    assert result.exit_code == 1
    assert result.stdout == (
        "nope.yaml:1:1: no such file\n"
        "*.yml:1:1: no file matches this pattern\n"
        "good.yaml: ok\n"
    )


def test_syntax_error_is_one_located_line() -> None:
    """A YAML syntax error prints one FILE:LINE:COL line and exits 1."""
    result = etl("validate", "syntax_error.yaml")
    assert result.exit_code == 1
    assert result.stdout.startswith("syntax_error.yaml:6:8: invalid YAML: expected ',' or '}'")
    assert result.stdout.count("\n") == 1


LAUGHS = "a0: &a0 [" + ",".join(['"lol"'] * 10) + "]\n" + "".join(
    f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)
)
ADVERSARIAL = {
    "laughs.yaml": (LAUGHS, "laughs.yaml:4:38: a3[7]: YAML aliases expand past 10,000 nodes here"),
    "deep.yaml": (
        "version: 1\ndescription: " + "[" * 20_000 + "]" * 20_000 + "\n",
        "deep.yaml:2:113: nested deeper than 100 levels",
    ),
    "block.yaml": (
        "version: 1\ndescription:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3001)),
        "block.yaml:102:101: nested deeper than 100 levels",
    ),
    "newline.yaml": (
        GOOD.replace("fields: {a: a}", 'fields: {"a\\n": a}'),
        "newline.yaml:7:12: mapping.fields['a\\n']: invalid name 'a\\n'",
    ),
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_file_is_one_line_and_exit_1(workdir: Path, name: str) -> None:
    """An alias bomb, deep nesting or a key with a newline prints one FILE:LINE:COL line, no traceback, exit 1."""
    text, line = ADVERSARIAL[name]
    (workdir / name).write_text(text, encoding="utf-8")
    result = etl("validate", name)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # not an uncaught error
    assert result.stdout.startswith(line) and result.stdout.count("\n") == 1, result.output[-300:]


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_run_of_an_adversarial_file_is_a_configuration_error(workdir: Path, name: str) -> None:
    """`etl run` refuses the same files as configuration errors: one line on stderr, exit 2, nothing run."""
    text, line = ADVERSARIAL[name]
    (workdir / name).write_text(text, encoding="utf-8")
    result = etl("run", name)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr[-300:]
    assert "Traceback" not in result.output and not (workdir / ".etl").exists()


def test_json_format_lists_every_finding() -> None:
    """--format json prints one document with the files and one finding per problem."""
    result = etl("validate", "--format", "json", "good.yaml", "three_mistakes.yaml", "missing_env.yaml")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["valid"] is False
    assert document["files"] == [
        {"file": "good.yaml", "valid": True},
        {"file": "three_mistakes.yaml", "valid": False},
        {"file": "missing_env.yaml", "valid": True},
    ]
    assert [(f["file"], f["line"], f["severity"]) for f in document["findings"]] == [
        ("three_mistakes.yaml", 6, "error"),
        ("three_mistakes.yaml", 7, "error"),
        ("three_mistakes.yaml", 11, "error"),
        ("missing_env.yaml", 4, "warning"),
        ("missing_env.yaml", 5, "warning"),
    ]
    assert document["findings"][1] == {
        "file": "three_mistakes.yaml",
        "line": 7,
        "column": 3,
        "path": "source.paginaton",
        "message": "unknown key 'paginaton' in source; did you mean 'pagination'?",
        "severity": "error",
    }


def test_json_format_of_valid_files_exits_0() -> None:
    """--format json of valid files has no findings and exits 0."""
    result = etl("validate", "--format", "json", "good.yaml")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"valid": True, "files": [{"file": "good.yaml", "valid": True}], "findings": []}


def test_validate_needs_a_path() -> None:
    """`etl validate` with no path is a usage error."""
    assert etl("validate").exit_code == 2


def test_example_pipelines_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    """`etl validate pipelines/` exits 0: every example is valid without its secrets."""
    monkeypatch.chdir(ROOT)
    result = etl("validate", "pipelines")
    assert result.exit_code == 0, result.stdout
    assert "pipelines/demo.yaml: ok\n" in result.stdout


def test_schema_prints_the_json_schema() -> None:
    """`etl schema` prints the shipped schema as JSON."""
    result = etl("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == config.load_schema()


def test_version() -> None:
    """`etl --version` prints the package version."""
    result = etl("--version")
    assert (result.exit_code, result.stdout) == (0, f"etl, version {__version__}\n")
