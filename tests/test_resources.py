"""The resources form (issue 16): several endpoints in one file, and parent/child requests.

Against the demo API's items and their child endpoint `GET /items/{id}/notes` (404 for
an item removed between two requests), with pipelines/demo-notes.yaml as shipped, and a
small stand-in server for what the demo API has no use for (grandchildren, OAuth2,
headers laid over defaults, a null template value, a child 5xx).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner

from runner.cli import main
from runner.config import check_file, load_pipeline
from runner.dev.demo_api import DemoApi
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.errors import EtlError
from runner.result import RunResult
from runner.state import open_store

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "pipelines" / "demo-notes.yaml"


@pytest.fixture(autouse=True)
def inline_writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resources apply in the run's own process (a writer process per resource costs a second
    to start here); the tests marked `writer_process` keep the writer process."""
    if request.node.get_closest_marker("writer_process") is None:
        monkeypatch.setenv("ETL_WRITER", "inline")


# --- helpers -----------------------------------------------------------------------------


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def tables(db: Path) -> set[str]:
    return {r[0] for r in rows(db, "SELECT name FROM sqlite_master WHERE type='table'")}


def expected_notes(api: DemoApi) -> set[str]:
    return {note["id"] for record in api.records for note in api.notes(record["id"])}


def expected_tags(api: DemoApi) -> set[str]:
    return {f"{record['id']}/{tag}" for record in api.records for tag in record["tags"]}


def notes_requests(api: DemoApi) -> list[str]:
    return [target for method, target in api.request_log if "/notes" in target]


def demo_notes(tmp_path: Path, api: DemoApi, *, change: Any = None) -> Path:
    """pipelines/demo-notes.yaml as shipped, against `api`, its SQLite and state files in tmp."""
    data = yaml.safe_load(SHIPPED.read_text())
    data["source"]["base_url"] = api.base_url
    data["target"]["path"] = str(tmp_path / "out.db")
    data["state"] = {"path": str(tmp_path / "state.db")}
    if change is not None:
        change(data)
    path = tmp_path / "demo-notes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def state_of(path: Path, key: str) -> dict[str, Any]:
    """`etl state show` of one state key (`name/resource`) of the file's store."""
    store = open_store(load_pipeline(path).state, read_only=True)
    try:
        return store.show(key)
    finally:
        store.close()


def run_failing(path: Path, **options: Any) -> RunResult:
    """A run that ends with an error: its result."""
    with pytest.raises(EtlError) as caught:
        run(path, **options)
    assert caught.value.result is not None
    return caught.value.result


# --- parent and children ------------------------------------------------------------------


@pytest.mark.writer_process
def test_every_child_lands_once_and_a_second_run_writes_nothing(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=40)
    path = demo_notes(tmp_path, api)
    first = run(path)
    db = tmp_path / "out.db"
    assert first.exit_code == 0
    assert {r[0] for r in rows(db, "SELECT external_id FROM notes")} == expected_notes(api)
    assert rows(db, "SELECT count(*) FROM notes") == [(len(expected_notes(api)),)]
    assert {r[0] for r in rows(db, "SELECT external_id FROM tags")} == expected_tags(api)
    assert rows(db, "SELECT count(*) FROM items") == [(40,)]
    # one request per item for its notes, one page of items; tags made none
    assert sorted(first.resources) == ["items", "notes", "tags"]
    assert first.resources["notes"].requests == 40 and first.resources["tags"].requests == 0
    # a child's pages are the pages it read (one per item here), however many went in one commit
    assert first.resources["notes"].pages == 40 and first.resources["tags"].pages == 40
    assert first.requests == 1 + 40
    assert first.counts.created == 40 + len(expected_notes(api)) + len(expected_tags(api))
    # the child record carries its parent: the note's item_id is the parent's id
    assert rows(db, "SELECT item_id FROM notes WHERE external_id='5-1'") == [(5,)]
    second = run(path)
    assert second.counts.created == second.counts.updated == 0
    assert second.counts.skipped == first.counts.created
    assert state_of(path, "demo-notes/notes")["pending"] == 0


def test_changed_only_requests_the_children_of_changed_parents_only(tmp_path: Path, demo_api: Any) -> None:
    def changed_only(data: dict[str, Any]) -> None:
        data["resources"]["notes"]["parent"] = {"resource": "items", "changed_only": True}

    api = demo_api(records=20)
    path = demo_notes(tmp_path, api, change=changed_only)
    run(path)
    assert len(notes_requests(api)) == 20
    api.request_log.clear()
    api.update_record(7, name="Renamed")
    second = run(path)
    assert [urlsplit(t).path for t in notes_requests(api)] == ["/items/7/notes"]
    assert second.resources["items"].counts.updated == 1
    # tags is not changed_only: every item's tags are read again (no request), all unchanged
    assert second.resources["tags"].counts.processed == len(expected_tags(api))


def test_a_404_for_one_parent_fails_its_children_alone(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=12)
    path = demo_notes(tmp_path, api)
    api.removed.add(7)  # deleted between the list and its notes request
    result = run(path)
    assert result.exit_code == 3 and result.status == "partial"
    assert result.resources["notes"].counts.failed == 1
    db = tmp_path / "out.db"
    got = {r[0] for r in rows(db, "SELECT external_id FROM notes")}
    assert got == {n for n in expected_notes(api) if not n.startswith("7-")}
    shown = state_of(path, "demo-notes/notes")
    assert [f["external_id"] for f in shown["failed"]] == ["parent:7"]
    assert "404" in shown["failed"][0]["error"] and "/items/7/notes" in shown["failed"][0]["error"]
    assert shown["pending"] == 0  # failed, not left to retry forever: the parent's next read retries it
    api.removed.discard(7)
    again = run(path)
    assert again.exit_code == 0
    assert {r[0] for r in rows(db, "SELECT external_id FROM notes")} == expected_notes(api)
    assert state_of(path, "demo-notes/notes")["failed_total"] == 0  # the success cleared it


def test_resource_option_runs_that_resource_and_the_parents_it_needs(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=10)
    path = demo_notes(tmp_path, api)
    result = run(path, resources=["tags"])
    assert sorted(result.resources) == ["items", "tags"]
    assert notes_requests(api) == []
    db = tmp_path / "out.db"
    assert "notes" not in tables(db) and {"items", "tags"} <= tables(db)
    with pytest.raises(EtlError, match="unknown resource 'nope'; its resources: items, notes, tags") as caught:
        run(path, resources=["nope"])
    assert caught.value.exit_code == 2


def test_dry_run_prints_each_resource_and_writes_nothing(
    tmp_path: Path, demo_api: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    api = demo_api(records=8)
    path = demo_notes(tmp_path, api)
    result = run(path, dry_run=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_resource: dict[str, set[str]] = {}
    for line in lines:
        by_resource.setdefault(line["resource"], set()).add(line["external_id"])
    assert by_resource["notes"] == expected_notes(api) and by_resource["tags"] == expected_tags(api)
    assert len(by_resource["items"]) == 8 and result.dry_run
    assert not (tmp_path / "out.db").exists() and not (tmp_path / "state.db").exists()


def test_state_show_and_reset_per_resource(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=6)
    path = demo_notes(tmp_path, api)
    run(path)
    runner = CliRunner()
    shown = runner.invoke(main, ["state", "show", str(path), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert sorted(data["resources"]) == ["items", "notes", "tags"]
    assert data["resources"]["items"]["keys"] == 6
    assert data["resources"]["notes"]["runs"][0]["created"] == len(expected_notes(api))
    text = runner.invoke(main, ["state", "show", str(path)]).output
    assert "resource notes:" in text
    reset = runner.invoke(main, ["state", "reset", str(path)])
    assert reset.exit_code == 0, reset.output
    after = json.loads(runner.invoke(main, ["state", "show", str(path), "--format", "json"]).output)
    assert all(part["keys"] == 0 for part in after["resources"].values())


def test_jsonl_target_lines_name_their_resource(tmp_path: Path, demo_api: Any) -> None:
    def to_jsonl(data: dict[str, Any]) -> None:
        data["target"] = {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}

    api = demo_api(records=4)
    run(demo_notes(tmp_path, api, change=to_jsonl))
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {line["resource"] for line in lines} == {"items", "notes", "tags"}
    assert list(lines[0]) == ["resource", "op", "external_id", "record"]


# --- a stand-in server: grandchildren, OAuth2, defaults, failures ---------------------------------


class _Handler(Handler):
    do_GET = Handler.dispatch
    do_POST = Handler.dispatch


class Teams(LocalServer):
    """Teams, their members, each member's keys; an OAuth2 token endpoint; a log of requests."""

    handler_class = _Handler
    thread_name = "teams"
    TOKEN = "team-access-token-42"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.token_requests = 0
        self.teams = [{"id": 1, "slug": "core"}, {"id": 2, "slug": "web"}, {"id": 3, "slug": None}]
        self.fail_members: set[str] = set()  # team slugs whose members answer 503

    def members(self, slug: str) -> list[dict[str, Any]]:
        return [{"login": f"{slug}-{n}"} for n in range(1, 3)]

    def handle(self, handler: Handler) -> None:
        path = urlsplit(handler.path).path
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.requests.append((handler.command, handler.path, headers))
        if path == "/oauth/token":
            self.token_requests += 1
            body = parse_qs(handler.read_body().decode())
            if body.get("grant_type") != ["client_credentials"]:
                handler.send_reply(400, b'{"error": "unsupported_grant_type"}')
                return
            handler.send_reply(200, json.dumps({"access_token": self.TOKEN, "expires_in": 3600}).encode())
            return
        if headers.get("authorization") != f"Bearer {self.TOKEN}":
            handler.send_reply(401, b'{"message": "Bad credentials"}')
            return
        parts = path.strip("/").split("/")
        if parts == ["teams"]:
            handler.send_reply(200, json.dumps(self.teams).encode())
        elif len(parts) == 3 and parts[0] == "teams" and parts[2] == "members":
            if parts[1] in self.fail_members:
                handler.send_reply(503, b'{"message": "unavailable"}')
                return
            handler.send_reply(200, json.dumps(self.members(parts[1])).encode())
        elif len(parts) == 3 and parts[0] == "users" and parts[2] == "keys":
            # an amount no float holds exactly, written as the JSON text a server sends
            body = f'[{{"id": "{parts[1]}-k1", "amount": 12345678901234567890.123456789}}, {{"id": "{parts[1]}-k2"}}]'
            handler.send_reply(200, body.encode())
        elif parts == ["projects"]:
            ok = headers.get("x-team") == "all" and headers.get("accept") == "application/json"
            handler.send_reply(200 if ok else 400, json.dumps([{"id": "p1"}] if ok else {"error": "headers"}).encode())
        else:
            handler.send_reply(404, b'{"message": "Not Found"}')


@pytest.fixture
def teams() -> Any:
    with Teams() as server:
        yield server


def teams_file(tmp_path: Path, server: Teams, **resources: Any) -> Path:
    data: dict[str, Any] = {
        "version": 1,
        "name": "teams",
        "source": {
            "base_url": server.base_url,
            "headers": {"Accept": "application/json"},
            "auth": {"type": "oauth2_client_credentials", "token_url": f"{server.base_url}/oauth/token",
                     "client_id": "cid", "client_secret": "client-secret-value"},
            "retry": {"max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.01},
        },
        "target": {"type": "sqlite", "path": str(tmp_path / "teams.db")},
        "state": {"path": str(tmp_path / "state.db")},
        "resources": resources or {
            "teams": {"source": {"path": "/teams"}, "mapping": {"external_id": "to_string(id)",
                                                                  "fields": {"slug": "slug"}}},
            "members": {
                "parent": "teams",
                "source": {"path": "/teams/{{ _parent.slug }}/members"},
                "mapping": {"external_id": "login", "fields": {"team": "_parent.slug"}},
            },
            "keys": {
                "parent": "members",
                "source": {"path": "/users/{{ _parent.login }}/keys"},
                "mapping": {"external_id": "id", "fields": {"login": "_parent.login", "team_id": "_parent._parent.id"}},
            },
        },
    }
    path = tmp_path / "teams.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_grandchild_sees_its_parent_and_grandparent(tmp_path: Path, teams: Teams) -> None:
    result = run(teams_file(tmp_path, teams))
    db = tmp_path / "teams.db"
    assert rows(db, "SELECT external_id, login, team_id FROM keys ORDER BY 1") == [
        ("core-1-k1", "core-1", 1), ("core-1-k2", "core-1", 1), ("core-2-k1", "core-2", 1), ("core-2-k2", "core-2", 1),
        ("web-1-k1", "web-1", 2), ("web-1-k2", "web-1", 2), ("web-2-k1", "web-2", 2), ("web-2-k2", "web-2", 2),
    ]
    # team 3's slug is null: its members' path cannot be written, so it fails alone
    assert result.exit_code == 3 and result.resources["members"].counts.failed == 1
    failed = state_of(teams_file(tmp_path, teams), "teams/members")["failed"]
    assert [f["external_id"] for f in failed] == ["parent:3"]
    assert "null" in failed[0]["error"]


def test_a_childs_decimal_field_keeps_every_digit(tmp_path: Path, teams: Teams) -> None:
    """A child reads its parents' responses as exactly as a top-level resource does."""
    keys = {
        "parent": "members",
        "source": {"path": "/users/{{ _parent.login }}/keys"},
        "mapping": {"external_id": "id", "fields": {"amount": {"path": "amount", "type": "decimal"}}},
    }
    path = teams_file(
        tmp_path, teams,
        teams={"source": {"path": "/teams"}, "mapping": {"external_id": "to_string(id)", "fields": {}}},
        members={"parent": "teams", "source": {"path": "/teams/{{ _parent.slug }}/members"},
                 "mapping": {"external_id": "login", "fields": {}}},
        keys=keys,
    )
    run(path)
    assert rows(tmp_path / "teams.db", "SELECT amount FROM keys WHERE external_id='core-1-k1'") == [
        ("12345678901234567890.123456789",)]


def test_one_token_serves_every_resource(tmp_path: Path, teams: Teams) -> None:
    run_failing_or_partial = run(teams_file(tmp_path, teams))
    assert run_failing_or_partial.requests >= 1 + 2 + 4
    assert teams.token_requests == 1
    sent = [r for r in teams.requests if urlsplit(r[1]).path != "/oauth/token"]
    assert sent and all(h.get("authorization") == f"Bearer {Teams.TOKEN}" for _, _, h in sent)
    assert "client-secret-value" not in json.dumps([r[1] for r in teams.requests])


def test_resource_headers_and_params_merge_with_the_defaults(tmp_path: Path, teams: Teams) -> None:
    path = teams_file(
        tmp_path, teams,
        projects={"source": {"path": "/projects", "headers": {"X-Team": "all"}},
                  "mapping": {"external_id": "id", "fields": {}}},
    )
    result = run(path)
    assert result.exit_code == 0
    _, _, headers = next(r for r in teams.requests if r[1] == "/projects")
    assert headers["x-team"] == "all" and headers["accept"] == "application/json"  # both: merged by name
    assert rows(tmp_path / "teams.db", "SELECT external_id FROM projects") == [("p1",)]  # table: the resource's name


def test_a_child_5xx_past_its_retries_fails_the_run_and_keeps_the_work(tmp_path: Path, teams: Teams) -> None:
    teams.teams = teams.teams[:2]
    teams.fail_members.add("web")
    path = teams_file(tmp_path, teams)
    result = run_failing(path)
    assert result.exit_code == 1 and "503" in (result.error or "")
    assert state_of(path, "teams/members")["pending"] >= 1  # web's members are still to do
    teams.fail_members.clear()
    again = run(path)
    assert again.exit_code == 0
    logins = {r[0] for r in rows(tmp_path / "teams.db", "SELECT external_id FROM members")}
    assert logins == {"core-1", "core-2", "web-1", "web-2"}


# --- the file ----------------------------------------------------------------------------


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return [f"{p.line}:{p.path}: {p.message}" for p in check_file(path) if p.severity == "error"]


BASE = """\
version: 1
name: p
source:
  base_url: https://api.example.com
target: {type: sqlite, path: out.db}
"""


def test_the_shipped_example_validates() -> None:
    assert [p for p in check_file(SHIPPED) if p.severity == "error"] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "mapping: {external_id: id, fields: {}}\nresources:\n  a:\n    source: {path: /a}\n"
         "    mapping: {external_id: id, fields: {}}\n",
         "6:mapping: a file has either 'mapping' (one endpoint) or 'resources' (several), not both"),
        (BASE + "resources:\n  kids:\n    parent: mom\n    source: {path: /k}\n"
         "    mapping: {external_id: id, fields: {}}\n  mom:\n    source: {path: /m}\n"
         "    mapping: {external_id: id, fields: {}}\n",
         "8:resources.kids.parent: unknown parent resource 'mom'; a parent must come before its children"),
        (BASE + "resources:\n  a:\n    source:\n      path: /a\n      auth: {type: bearer, token: t}\n"
         "    mapping: {external_id: id, fields: {}}\n",
         "10:resources.a.source.auth: 'auth' is shared by every resource"),
        (BASE + "resources:\n  a:\n    source: {path: /a}\n    mapping: {external_id: id, fields: {}}\n"
         "  b:\n    parent: a\n    source:\n      path: /b\n      incremental: {cursor_field: u, param: since}\n"
         "    mapping: {external_id: id, fields: {}}\n",
         "14:resources.b.source.incremental: resource 'b' is a child"),
        (BASE + "resources:\n  a:\n    source: {path: /a}\n    mapping: {external_id: id, fields: {}}\n"
         "  b:\n    parent: a\n    from_parent: items\n    source: {path: /b}\n"
         "    mapping: {external_id: id, fields: {}}\n",
         "12:resources.b.from_parent: a resource has either 'source' (its own requests) or 'from_parent'"),
        (BASE + "resources:\n  a:\n    source: {path: /a}\n    mapping: {external_id: id, fields: {}}\n"
         "  Bad:\n    source: {path: /b}\n    mapping: {external_id: id, fields: {}}\n",
         "10:resources.Bad: invalid name 'Bad': use lowercase letters"),
        (BASE + "resources:\n  a:\n    source: {path: /a, pagination: {type: cursr}}\n"
         "    mapping: {external_id: id, fields: {}}\n",
         "8:resources.a.source.pagination.type: unknown pagination type 'cursr'"),
        (BASE + "resources:\n  a:\n    source: {path: /a}\n    mapping: {external_id: id, feilds: {}}\n",
         "9:resources.a.mapping.feilds: unknown key 'feilds' in mapping; did you mean 'fields'?"),
        (BASE + "resources:\n  a:\n    mapping: {external_id: id, fields: {}}\n",
         "3:source: 'base_url' needs 'path' in source"),
        ("version: 1\nname: p\nsource:\n  base_url: https://x\n  incremental: {cursor_field: u, param: since}\n"
         "target: {type: sqlite, path: out.db}\nresources:\n  a:\n    source: {path: /a}\n"
         "    mapping: {external_id: id, fields: {}}\n  b:\n    parent: a\n    source: {path: /b}\n"
         "    mapping: {external_id: id, fields: {}}\n",
         "5:source.incremental: resource 'b' is a child"),
    ],
    ids=["both-forms", "parent-later", "shared-auth", "incremental-child", "from-parent-and-source", "name",
         "pagination-in-resource", "mapping-typo", "no-url", "inherited-incremental"],
)
def test_mistakes_are_reported_at_their_line(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(p.startswith(expected) for p in found), found


def test_a_template_on_parent_needs_a_parent(tmp_path: Path) -> None:
    text = BASE + ("resources:\n  a:\n    source: {path: \"/teams/{{ _parent.slug }}/members\"}\n"
                   "    mapping: {external_id: id, fields: {}}\n")
    assert any(p.startswith("8:resources.a.source.path: '_parent' is a child resource's parent record, and "
                            "resource 'a' has no 'parent'") for p in problems(tmp_path, text)), problems(tmp_path, text)
    simple = BASE.replace("base_url: https://api.example.com", "url: \"https://x/{{ _parent.id }}\"") + (
        "mapping: {external_id: id, fields: {}}\n")
    simple = simple.replace("target: {type: sqlite, path: out.db}", "target: {type: sqlite, path: out.db, table: t}")
    assert any("a file in the simple form has no parent" in p for p in problems(tmp_path, simple))
