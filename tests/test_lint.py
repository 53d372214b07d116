"""Lint warnings: JMESPath that parses but surely does not mean what it says (issues 15, 20)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import whole, write_pipeline_file
from runner.cli import main
from runner.config import check_file


def warnings(path: Path) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check_file(path, env={}) if p.severity == "warning"]


@pytest.mark.parametrize(
    ("source", "mapping", "where", "says"),
    [
        ({"pagination": whole({"type": "cursor", "path": "next", "param": "c", "stop_when": "!meta.has_more"})}, {},
         "source.pagination.stop_when", "did you mean `!(meta.has_more)`?"),
        ({}, {"filter": "!archived.at"}, "mapping.filter", "did you mean `!(archived.at)`?"),
        ({}, {"fields": {"open": "!user.login"}}, "mapping.fields.open", "did you mean `!(user.login)`?"),
        ({"pagination": whole({"type": "cursor", "path": "next", "param": "c", "stop_when": "`true`"})}, {},
         "source.pagination.stop_when", "is a constant (always True)"),
        ({}, {"filter": "true"}, "mapping.filter", "the field named 'true', always null"),
    ],
    ids=["stop_when-negation", "filter-negation", "field-negation", "constant-literal", "bare-true"],
)
def test_each_lint_case_is_a_warning_at_its_key_with_the_fix(
    tmp_path: Path, source: dict[str, Any], mapping: dict[str, Any], where: str, says: str
) -> None:
    """`!a.b` is `(!a).b`, always null; a constant stop_when/filter decides the same every time."""
    path = write_pipeline_file(tmp_path, "https://api.test", source=source, mapping=mapping)
    found = warnings(path)
    assert any(key == where and says in message for key, message in found), found
    assert not [p for p in check_file(path, env={}) if p.severity == "error"]  # warnings never fail a file


def test_meant_expressions_get_no_warning(tmp_path: Path) -> None:
    """`!(a.b)`, `!has_more` and a plain path are what they say."""
    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={"pagination": whole({"type": "cursor", "path": "next", "param": "c", "stop_when": "!(meta.has_more)"})},
        mapping={"filter": "!archived", "fields": {"n": "a.b", "first_off": "!flags[0]"}},
    )
    assert warnings(path) == []


def test_validate_prints_lint_warnings_in_text_and_json_and_exits_0(tmp_path: Path) -> None:
    """A CI step reads them from `--format json` (file, line, column, severity) to annotate the diff."""
    path = write_pipeline_file(tmp_path, "https://api.test", mapping={"filter": "!archived.at"})
    text = CliRunner().invoke(main, ["validate", str(path)])
    assert text.exit_code == 0 and "warning: mapping.filter:" in text.output and "!(archived.at)" in text.output
    document = json.loads(CliRunner().invoke(main, ["validate", "--format", "json", str(path)]).output)
    (finding,) = [f for f in document["findings"] if f["path"] == "mapping.filter"]
    assert finding["severity"] == "warning" and finding["line"] > 1 and "!(archived.at)" in finding["message"]
    assert document["valid"] is True


def test_a_misspelled_required_key_is_reported_at_its_own_line_with_did_you_mean(tmp_path: Path) -> None:
    """Issue 20: `typ: cursor` gave "missing required key 'type'" at the block's line; now the
    misspelling at its own line, and nothing else about that block."""
    path = tmp_path / "typ.yaml"
    path.write_text(
        "version: 1\nname: t\nsource:\n  url: https://api.test/x\n"
        "  pagination:\n    typ: cursor\n    path: next\n    param: c\n"
        "mapping:\n  external_id: id\n  fields: {a: a}\ntarget: {type: jsonl, path: '-'}\n"
    )
    errors = [p for p in check_file(path, env={}) if p.severity == "error"]
    assert [(p.line, p.column, p.path, p.message) for p in errors] == [
        (6, 5, "source.pagination.typ", "unknown key 'typ' in source.pagination; did you mean 'type'?"),
    ]
