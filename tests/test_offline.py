"""`etl test FILE --fixtures DIR`: a recorded run replayed offline, its intended writes compared.

Recordings are made from the local demo API (`runner.dev.demo_api`); the replay runs with the
API stopped, so a request that reached the network would fail."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import whole, write_pipeline_file

from runner.authoring.offline import run_offline
from runner.authoring.record import record_run
from runner.cli import main
from runner.config import load_pipeline
from runner.dev.demo_api import DemoApi
from runner.engine import run

StartApi = Callable[..., DemoApi]


def _file(tmp_path: Path, base_url: str, **overrides: Any) -> Path:
    defaults = {"target": whole({"type": "jsonl", "path": "{tmp}/out.jsonl"})}
    return write_pipeline_file(tmp_path, base_url, defaults=defaults, **overrides)


def _record(file: Path, directory: Path, **options: Any) -> None:
    result = record_run(load_pipeline(file), directory, **options)
    assert result.status == "success"


def _etl_test(file: Path, directory: Path, *more: str) -> Result:
    return CliRunner().invoke(main, ["test", str(file), "--fixtures", str(directory), *more])


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: StartApi) -> tuple[Path, Path]:
    """250 demo records in 3 pages, recorded, expected.jsonl written; the API is stopped after."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=250)
    file = _file(tmp_path, api.base_url)
    _record(file, tmp_path / "rec")
    api.stop()
    update = _etl_test(file, tmp_path / "rec", "--update")
    assert (update.exit_code, update.stdout) == (0, f"{file}: wrote 250 lines to {tmp_path / 'rec'}/expected.jsonl\n")
    return file, tmp_path / "rec"


def test_round_trip_reads_and_writes_no_state(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    """Replayed with the API gone and the state file garbage, the writes equal expected.jsonl; exit 0."""
    file, rec = recorded
    (tmp_path / "state.db").write_bytes(b"not a database")
    result = _etl_test(file, rec)
    assert (result.exit_code, result.stdout) == (0, f"{file}: ok, 250 lines equal {rec}/expected.jsonl\n")
    assert (tmp_path / "state.db").read_bytes() == b"not a database"
    assert not (tmp_path / ".etl").exists()
    lines = (rec / "expected.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"op": "create", "external_id": "1", "record": {
        "name": json.loads((rec / "0001.json").read_text())["response"]["body"]["data"][0]["name"],
        "tags": json.loads((rec / "0001.json").read_text())["response"]["body"]["data"][0]["tags"],
    }}


def test_a_changed_mapping_fails_with_a_unified_diff(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    """A field that now reads another key: exit 1, `-` the expected line, `+` this run's, and the hint."""
    file, rec = recorded
    text = file.read_text()
    assert "name: name" in text
    file.write_text(text.replace("name: name", "name: upper(name)"))
    result = _etl_test(file, rec)
    assert result.exit_code == 1
    expected = json.loads((rec / "expected.jsonl").read_text().splitlines()[0])
    name = expected["record"]["name"]
    assert f"--- {rec}/expected.jsonl\n+++ test (this run)\n" in result.stdout
    before = json.dumps(name, ensure_ascii=False)
    assert f'-{{"op":"create","external_id":"1","record":{{"name":{before}' in result.stdout
    shouted = json.dumps(name.upper(), ensure_ascii=False)
    assert f'+{{"op":"create","external_id":"1","record":{{"name":{shouted}' in result.stdout
    assert "the intended writes differ from" in result.stderr
    assert "accept it with --update" in result.stderr


def test_an_unmatched_request_names_the_nearest_recording(recorded: tuple[Path, Path]) -> None:
    """A page size changed in the file: the first request has no recording; exit 1 naming it and 0001.json."""
    file, rec = recorded
    file.write_text(file.read_text().replace("size: 100", "size: 50"))
    result = _etl_test(file, rec)
    assert result.exit_code == 1
    url = json.loads((rec / "0001.json").read_text())["request"]["url"]
    assert url.endswith("/items/page?page=1&per_page=100")
    assert "no recorded exchange matches GET " + url.replace("per_page=100", "per_page=50") in result.stderr
    assert "the nearest is 0001.json: GET " + url in result.stderr
    assert "(the query differs in per_page='50' vs '100')" in result.stderr


def test_now_is_the_recordings_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: StartApi) -> None:
    """A field mapped from now() is the recording's time in every replay, so the writes stay equal."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=30)
    file = _file(tmp_path, api.base_url, mapping={"fields": {"seen": "now()"}})
    _record(file, tmp_path / "rec")
    assert _etl_test(file, tmp_path / "rec", "--update").exit_code == 0
    recorded_at = json.loads((tmp_path / "rec" / "recording.json").read_text())["recorded_at"]
    lines = (tmp_path / "rec" / "expected.jsonl").read_text().splitlines()
    seen = {json.loads(line)["record"]["seen"] for line in lines}
    assert seen == {recorded_at}
    assert _etl_test(file, tmp_path / "rec").exit_code == 0


def test_a_saved_watermark_in_the_url_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: StartApi
) -> None:
    """A recording made from a saved watermark (`updated_since=` in the URL) replays from that watermark."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=40)
    incremental = {"cursor_field": "updated_at", "param": "updated_since"}
    file = _file(tmp_path, api.base_url, source={"incremental": incremental})

    assert run(file).counts.created == 40  # saves the watermark
    api.update_record(7, name="Changed Name")
    _record(file, tmp_path / "rec")
    first = json.loads((tmp_path / "rec" / "0001.json").read_text())
    assert "updated_since=" in first["request"]["url"]
    meta = json.loads((tmp_path / "rec" / "recording.json").read_text())
    assert meta["state"]["test"]["watermark"] is not None
    assert _etl_test(file, tmp_path / "rec", "--update").exit_code == 0
    lines = (tmp_path / "rec" / "expected.jsonl").read_text().splitlines()
    names = [json.loads(line)["record"]["name"] for line in lines]
    assert "Changed Name" in names and len(names) < 40  # updated_since: at or after the watermark
    assert _etl_test(file, tmp_path / "rec").exit_code == 0


def _exchange(url: str, status: int, body: Any) -> dict[str, Any]:
    return {"request": {"method": "GET", "url": url, "body": None},
            "response": {"status": status, "headers": {"content-type": "application/json"}, "body": body}}


def test_a_retried_request_is_answered_in_recorded_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorded 503 then 200 for one URL: the replay retries (without waiting) and gets the 200."""
    monkeypatch.chdir(tmp_path)
    file = _file(tmp_path, "http://api.test", source=whole({"url": "{base_url}/things", "records": "data"}))
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "recording.json").write_text(json.dumps({"recorded_at": "2024-05-01T08:00:00Z", "state": {}}))
    (rec / "0001.json").write_text(json.dumps(_exchange("http://api.test/things", 503, {"error": "busy"})))
    things = {"data": [{"id": 1, "name": "a", "tags": []}]}
    (rec / "0002.json").write_text(json.dumps(_exchange("http://api.test/things", 200, things)))
    result = _etl_test(file, rec, "--update")
    assert result.exit_code == 0, result.output
    assert (rec / "expected.jsonl").read_text() == (
        '{"op":"create","external_id":"1","record":{"name":"a","tags":[]}}\n'
    )


def test_failed_records_are_part_of_the_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record without its key is a `failed` line after the writes, so a mapping that starts failing shows."""
    monkeypatch.chdir(tmp_path)
    file = _file(
        tmp_path, "http://api.test", source=whole({"url": "{base_url}/things", "records": "data"}),
        mapping={"external_id": "id"},
    )
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "recording.json").write_text(json.dumps({"recorded_at": "2024-05-01T08:00:00Z", "state": {}}))
    body = {"data": [{"id": 1, "name": "a", "tags": []}, {"name": "no id"}]}
    (rec / "0001.json").write_text(json.dumps(_exchange("http://api.test/things", 200, body)))
    assert _etl_test(file, rec, "--update").exit_code == 0
    lines = [json.loads(line) for line in (rec / "expected.jsonl").read_text().splitlines()]
    assert [line["op"] for line in lines] == ["create", "failed"]
    assert lines[1]["external_id"] is None


def test_no_recording_is_a_usage_error(tmp_path: Path) -> None:
    """A directory without recording.json: exit 2, saying how to record one."""
    file = _file(tmp_path, "http://api.test")
    result = _etl_test(file, tmp_path / "missing")
    assert result.exit_code == 2
    assert "no recording here (recording.json is missing)" in result.stderr
    assert "etl run FILE --record" in result.stderr


def test_no_expected_file_asks_for_update(recorded: tuple[Path, Path]) -> None:
    """Without expected.jsonl the test cannot pass: exit 2, asking for --update."""
    file, rec = recorded
    (rec / "expected.jsonl").unlink()
    result = _etl_test(file, rec)
    assert result.exit_code == 2
    assert "no expected writes yet; write them with --update" in result.stderr


def test_recorded_exchanges_no_request_asked_for_are_warnings(recorded: tuple[Path, Path]) -> None:
    """A file that now stops after one page: the writes differ (exit 1) and the two pages it did
    not ask for are named as warnings."""
    file, rec = recorded
    file.write_text(file.read_text().replace("records: data", "records: data\n  limits: {max_pages: 1}"))
    result = _etl_test(file, rec)
    assert result.exit_code == 1
    assert f"{file}: warning: recorded exchange 0002.json was not requested" in result.stderr
    assert f"{file}: warning: recorded exchange 0003.json was not requested" in result.stderr
    assert "0001.json was not requested" not in result.stderr


def test_variables_come_from_env_json_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: StartApi
) -> None:
    """A variable outside auth is replayed with its recorded value, whatever the environment says now."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=20)
    file = _file(tmp_path, "http://127.0.0.1:${API_PORT}")
    monkeypatch.setenv("API_PORT", str(api.port))
    _record(file, tmp_path / "rec")
    assert json.loads((tmp_path / "rec" / "env.json").read_text()) == {"API_PORT": str(api.port)}
    assert _etl_test(file, tmp_path / "rec", "--update").exit_code == 0
    monkeypatch.setenv("API_PORT", "1")
    result = _etl_test(file, tmp_path / "rec")
    assert result.exit_code == 0, result.output


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "tests" / "fixtures" / "pipelines"


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.iterdir() if p.is_dir()))
def test_the_examples_replay_their_recordings(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every recorded example of pipelines/ replays with no network and no secret, its writes as expected."""
    monkeypatch.chdir(tmp_path)  # no .env of the working directory takes part
    outcome = run_offline(ROOT / "pipelines" / f"{name}.yaml", SHIPPED / name)
    assert outcome.equal, f"re-record with scripts/record-fixtures.py {name} if this is meant:\n{outcome.diff[:3000]}"
    assert outcome.unused == ()
    assert not (tmp_path / ".etl").exists()


def test_the_replayed_state_is_kept_per_resource() -> None:
    """A key or a failure of one resource is not another's: tags completing parent 1 leave the
    notes resource's failure for it, and a key known to items is new to notes."""
    from runner.authoring.offline import ReplayStore
    from runner.state.base import FailedRecord, KeyState, PageCommit

    store = ReplayStore({})
    store.commit_page("p/items", PageCommit([("1", "h1", None)], [], [], None))
    store.commit_page("p/notes", PageCommit([], [FailedRecord("parent:1", {"id": 1}, "HTTP 404")], [], None))
    store.commit_page("p/notes", PageCommit([], [FailedRecord("parent:1", {"id": 1}, "HTTP 404")], [], None))
    store.commit_page("p/tags", PageCommit([], [], ["parent:1"], None))
    assert store.key_states("p/items", ["1"]) == {"1": KeyState("h1", None)}
    assert store.key_states("p/notes", ["1"]) == {}
    assert store.failure_lines() == [
        '{"resource":"notes","op":"failed","external_id":"parent:1","error":"HTTP 404"}\n'
    ]
    store.commit_page("p/notes", PageCommit([], [], ["parent:1"], None))
    assert store.failure_lines() == []
