"""deletes.missing on a child resource works per parent (issues 16 and 18): a child key is
deleted when its parent's children were read completely in this run without it, or when
its parent was deleted; children of parents this run did not read again are left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.dev.demo_api import DemoApi
from runner.engine import run
from runner.errors import EtlError
from test_resources import demo_notes, rows, state_of


@pytest.fixture(autouse=True)
def inline_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_WRITER", "inline")  # test_resources shows the writer process; here it costs seconds


def with_deletes(*, changed_only: bool = False, marker: bool = False) -> Any:
    def change(data: dict[str, Any]) -> None:
        notes, tags = data["resources"]["notes"], data["resources"]["tags"]
        notes["target"] = {"deletes": {"missing": True}}
        tags["target"] = {"deletes": {"missing": True}}
        if changed_only:
            notes["parent"] = {"resource": "items", "changed_only": True}
        if marker:
            data["resources"]["items"]["mapping"]["deleted"] = "status == 'gone'"
    return change


def notes_in(db: Path) -> set[str]:
    return {r[0] for r in rows(db, "SELECT external_id FROM notes")}


def override_notes(api: DemoApi, counts: dict[int, int]) -> None:
    """Item id -> how many notes it has now (the others keep id % 4)."""
    original = api.notes

    def notes(item_id: int) -> list[dict[str, Any]]:
        return original(item_id)[: counts.get(item_id, item_id % 4)]

    api.notes = notes  # type: ignore[method-assign]


def test_only_the_reread_parents_children_are_judged(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=12)
    path = demo_notes(tmp_path, api, change=with_deletes(changed_only=True))
    run(path)
    db = tmp_path / "out.db"
    assert {"7-1", "7-2", "7-3", "3-1", "3-2", "3-3"} <= notes_in(db)
    override_notes(api, {7: 1, 3: 1})  # both lose two notes; only item 7 changes, so only it is read again
    api.update_record(7, name="Seven")
    second = run(path)
    assert second.exit_code == 0
    assert second.resources["notes"].counts.deleted == 2
    got = notes_in(db)
    assert "7-1" in got and not {"7-2", "7-3"} & got
    assert {"3-2", "3-3"} <= got  # item 3 was not read again: its children were not judged
    assert rows(db, "SELECT count(*) FROM notes") == [(len(got),)]
    third = run(path)  # nothing more to delete, and nothing deleted twice
    assert third.resources["notes"].counts.deleted == 0


def test_a_deleted_parent_takes_its_children_with_it(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=10)
    path = demo_notes(tmp_path, api, change=with_deletes(marker=True))
    run(path)
    db = tmp_path / "out.db"
    tags_of_6 = {f"6/{tag}" for tag in api.records[5]["tags"]}
    assert {"6-1", "6-2"} <= notes_in(db) and tags_of_6
    api.update_record(6, status="gone")
    second = run(path)
    assert second.exit_code == 0
    assert second.resources["items"].counts.deleted == 1
    assert not {"6-1", "6-2"} & notes_in(db)
    assert not tags_of_6 & {r[0] for r in rows(db, "SELECT external_id FROM tags")}
    assert second.resources["notes"].counts.deleted == 2
    assert second.resources["tags"].counts.deleted == len(tags_of_6)
    # every other item's children are still there
    assert notes_in(db) == {n["id"] for r in api.records if r["id"] != 6 for n in api.notes(r["id"])}


def test_the_guard_refuses_when_every_child_vanishes(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=10)
    path = demo_notes(tmp_path, api, change=with_deletes())
    run(path)
    db = tmp_path / "out.db"
    before = notes_in(db)
    override_notes(api, dict.fromkeys(range(1, 11), 0))  # an API answering empty lists by mistake
    with pytest.raises(EtlError, match=r"refused to delete \d+ of the \d+ keys") as caught:
        run(path)
    assert caught.value.exit_code == 1
    assert notes_in(db) == before  # nothing deleted
    assert state_of(path, "demo-notes/notes")["keys"] == len(before)


def test_a_parent_whose_children_failed_is_not_judged(tmp_path: Path, demo_api: Any) -> None:
    api = demo_api(records=8)
    path = demo_notes(tmp_path, api, change=with_deletes())
    run(path)
    db = tmp_path / "out.db"
    api.removed.add(7)  # its notes answer 404: not read, so not missing
    result = run(path)
    assert result.exit_code == 3
    assert {"7-1", "7-2", "7-3"} <= notes_in(db)
    assert result.resources["notes"].counts.deleted == 0


@pytest.fixture
def pg_dsn(pg_admin: str) -> Any:
    import pgserver

    with pgserver.fresh_database(pg_admin) as url:
        yield url


def test_per_parent_deletes_with_the_postgres_state_store(tmp_path: Path, demo_api: Any, pg_dsn: str) -> None:
    """The same judgement in PostgreSQL's SQL: the parent a key was read under, the parents swept."""
    api = demo_api(records=12)

    def change(data: dict[str, Any]) -> None:
        with_deletes(changed_only=True, marker=True)(data)
        data["state"] = {"dsn": pg_dsn}

    path = demo_notes(tmp_path, api, change=change)
    run(path)
    db = tmp_path / "out.db"
    override_notes(api, {7: 1})
    api.update_record(7, name="Seven")
    api.update_record(6, status="gone")
    second = run(path)
    got = notes_in(db)
    assert "7-1" in got and not {"7-2", "7-3", "6-1", "6-2"} & got
    assert second.resources["notes"].counts.deleted == 4
    assert {"3-1", "3-2", "3-3"} <= got
