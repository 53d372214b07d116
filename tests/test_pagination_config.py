"""Validation and building of the new pagination and source keys: `in`, `header`, `stop_when`
everywhere, `params_first_page_only`, and `base_url` + `path` instead of `url`."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import config, model
from runner.errors import Problem
from test_config import BASE

GRAPHQL = BASE.replace("  pagination: {type: page, size: 100}", "  method: POST\n  pagination: "
                       "{type: cursor, path: data.end, param: variables.after, in: body, stop_when: '!more'}")


def check(tmp_path: Path, text: str) -> list[Problem]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return [p for p in config.check_file(path, env={}) if p.severity == "error"]


# (id, text to replace, replacement, expected message part, line, column)
INVALID: list[tuple[str, str, str, str, int, int]] = [
    ("in-body-needs-post", "  method: POST\n", "",
     "'in: body' puts the paging parameter in the JSON body, which only a POST sends", 6, 0),
    ("url-and-base-url", "  url: https://api.example.com/items",
     "  url: https://api.example.com/items\n  base_url: https://api.example.com\n  path: /items",
     "use either 'url' or 'base_url' + 'path', not both", 3, 1),
    ("neither-url-nor-base-url", "  url: https://api.example.com/items\n", "",
     "missing required key 'url' in source (or 'base_url' and 'path')", 3, 1),
    ("base-url-without-path", "  url: https://api.example.com/items", "  base_url: https://api.example.com",
     "'base_url' needs 'path' in source", 3, 1),
    ("cursor-path-and-header", "path: data.end,", "path: data.end, header: X-Next,",
     "use either 'path' (the cursor in the body) or 'header', not both", 7, 3),
    ("cursor-neither-path-nor-header", "path: data.end, ", "",
     "missing required key 'path' in source.pagination for type 'cursor'", 7, 3),
    ("bad-in", "in: body", "in: form", "expected one of: query, body, header", 7, 0),
]


@pytest.mark.parametrize(("old", "new", "message", "line", "column"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_pagination_config_is_reported_at_its_key(
    tmp_path: Path, old: str, new: str, message: str, line: int, column: int
) -> None:
    """Each invalid combination gives one error with a readable message on the right line."""
    assert old in GRAPHQL
    found = check(tmp_path, GRAPHQL.replace(old, new, 1))
    assert len(found) == 1, [str(p) for p in found]
    assert message in found[0].message
    assert found[0].line == line
    if column:
        assert found[0].column == column


def test_graphql_source_builds_a_body_cursor(tmp_path: Path) -> None:
    """`in: body` becomes `location='body'`, with `stop_when` compiled."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(GRAPHQL)
    paging = config.load_pipeline(path, env={}).source.pagination
    assert isinstance(paging, model.CursorPagination)
    assert (paging.location, paging.param, paging.stop_when and paging.stop_when.text) == (
        "body", "variables.after", "!more"
    )


@pytest.mark.parametrize("style", ["{type: none", "{type: link_header", "{type: next_url, path: next",
                                   "{type: page", "{type: offset, limit: 5"])
def test_every_style_takes_stop_when_and_params_first_page_only(tmp_path: Path, style: str) -> None:
    """`stop_when` and `params_first_page_only` are valid on every pagination style and reach the model."""
    text = BASE.replace("{type: page, size: 100}", f"{style}, stop_when: done, params_first_page_only: true}}")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    paging = config.load_pipeline(path, env={}).source.pagination
    assert paging.stop_when is not None and paging.stop_when.text == "done"
    assert paging.params_first_page_only is True


def test_base_url_and_path_join_like_the_http_target(tmp_path: Path) -> None:
    """`base_url` + `path` is the URL, with exactly one slash between them."""
    joined = "  base_url: https://api.example.com/v1/\n  path: /items"
    text = BASE.replace("  url: https://api.example.com/items", joined)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    assert config.load_pipeline(path, env={}).source.url == "https://api.example.com/v1/items"
