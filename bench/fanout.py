"""The fan-out scenario of issue 16: a parent resource and one child request per parent.

The pipeline reads the demo API's items (100 a page) and, for each item, its
notes (`GET /items/{id}/notes`, one page of one note: the API runs with
`--notes-per-item 1`), into SQLite; the parent's page commits the children's
work, the child resource reads it back (`runner.extract.children`).

1. Speed: 200 parents, 20 ms a request. The same pipeline at `concurrency: 1`
   (one parent after another) and `concurrency: 4`, alternating, `repeat`
   runs a side, from one demo API process. The figure is the time of the
   child resource (its `elapsed_ms` in the run.summary line with
   `resource=notes`) at 4 over that at 1, medians; target <= 0.35x. The
   whole process's wall times are printed too (start-up, the parent and the
   writer processes included).
2. Memory: 200 parents and 10,000 parents, no latency, `concurrency: 4`; the
   peak RSS of the run (every process of its tree, as `measure.py` reads
   it). The figure is the difference; target within 20 MB: memory is bounded
   by the work in flight, not by the number of parents.

After every run: exit 0, status success, and the target holds every item and
every note once.

    python bench/run.py --fanout            # about 2 minutes
    python bench/run.py --fanout --quick    # 2,000 parents for the memory run, one run a side
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import run as bench  # bench/run.py: the demo API process, measure(), _say

SPEED_PARENTS, SPEED_LATENCY_MS = 200, 20
SPEED_TARGET = 0.35  # child time at concurrency 4 over concurrency 1
MEMORY_PARENTS = (200, 10_000)
MEMORY_TARGET_MB = 20.0  # peak RSS of the larger run over the smaller


def pipeline_yaml(url: str, concurrency: int) -> str:
    """Items (100 a page), and each item's notes by one request per item."""
    return f"""\
version: 1
name: fanout
source:
  base_url: {url}
  concurrency: {concurrency}
target: {{type: sqlite, path: target.db}}
state: {{path: state.db}}
resources:
  items:
    source:
      path: /items/page
      records: data
      pagination: {{type: page, param: page, size_param: per_page, size: 100, total_pages: total_pages}}
    mapping:
      external_id: to_string(id)
      fields: {{name: name, status: status, updated_at: updated_at}}
  notes:
    parent: items
    source:
      path: "/items/{{{{ _parent.id }}}}/notes"
      records: data
      pagination: {{type: page, param: page, size_param: per_page, size: 20, total_pages: total_pages}}
    mapping:
      external_id: id
      fields: {{item_id: _parent.id, text: text, created_at: created_at}}
"""


def run_fanout(root: Path, *, quick: bool, repeat: int) -> int:
    """Measure both figures; print them; 1 when something broke, else 0."""
    broken: list[str] = []
    speed: dict[int, list[dict[str, Any]]] = {1: [], 4: []}
    memory: dict[int, dict[str, Any]] = {}
    parents_big = MEMORY_PARENTS[1] // 5 if quick else MEMORY_PARENTS[1]
    try:
        with NotesApi(SPEED_PARENTS, SPEED_LATENCY_MS, root / "api-speed.log") as api:
            bench._say(f"fan-out speed: {SPEED_PARENTS} parents, {SPEED_LATENCY_MS} ms, {repeat} runs a side")
            for n in range(1, repeat + 1):
                for concurrency in (1, 4):
                    bench._say(f"  concurrency {concurrency}, run {n}/{repeat} ...")
                    work = root / f"speed-c{concurrency}-{n}"
                    speed[concurrency].append(_one_run(api, work, concurrency, SPEED_PARENTS, broken))
        for parents in (MEMORY_PARENTS[0], parents_big):
            with NotesApi(parents, 0, root / f"api-memory-{parents}.log") as api:
                bench._say(f"fan-out memory: {parents:,} parents, 0 ms ...")
                memory[parents] = _one_run(api, root / f"memory-{parents}", 4, parents, broken)
    except (RuntimeError, OSError) as exc:
        broken.append(f"{type(exc).__name__}: {exc}")
    print(report(speed, memory, broken))
    if broken:
        bench._say(f"kept {root} (logs and databases)")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if broken else 0


class NotesApi(bench.DemoApi):
    """bench/run.py's demo API process, with one note per item on the child endpoint."""

    def __init__(self, records: int, latency_ms: float, log_path: Path) -> None:
        super().__init__(replace(bench.SCENARIOS["1"], records=records, latency_ms=latency_ms), log_path)

    def __enter__(self) -> NotesApi:
        command = [
            sys.executable, "-m", "runner.dev.demo_api", "--port", "0", "--records", str(self.scenario.records),
            "--latency-ms", str(self.scenario.latency_ms), "--notes-per-item", "1",
        ]
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        self.url = self._read_url()
        return self


def _one_run(api: NotesApi, work: Path, concurrency: int, parents: int, broken: list[str]) -> dict[str, Any]:
    """One measured `etl run`; its costs, with `notes_s` (the child resource's own time)."""
    work.mkdir(parents=True)
    (work / "pipeline.yaml").write_text(pipeline_yaml(api.url, concurrency))
    result: dict[str, Any] = bench.measure(
        [sys.executable, "-m", "runner", "run", "pipeline.yaml"], cwd=work, name="etl", api=api
    )
    summaries = _summaries(work / "etl.log")
    notes, total = summaries.get("notes", {}), summaries.get("", {})
    result["notes_s"] = int(notes.get("elapsed_ms", "0")) / 1000
    result["notes_requests"] = int(notes.get("requests", "0"))
    if result["returncode"] != 0 or total.get("status") != "success":
        status = total.get("status")
        broken.append(f"{work.name}: exit {result['returncode']}, status {status} (see {work / 'etl.log'})")
    if notes.get("processed") != str(parents) or result["notes_requests"] != parents:
        broken.append(f"{work.name}: notes processed={notes.get('processed')} requests={notes.get('requests')}")
    for table in ("items", "notes"):
        rows = _rows(work / "target.db", table)
        if rows != (parents, parents):
            broken.append(f"{work.name}: {table} has {rows[0]} rows, {rows[1]} distinct; expected {parents}")
    return result


def _summaries(log_path: Path) -> dict[str, dict[str, str]]:
    """The run.summary lines of an etl log by resource ("" for the file's total)."""
    found: dict[str, dict[str, str]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if "event=run.summary" in line:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            found[fields.get("resource", "")] = fields
    return found


def _rows(db_path: Path, table: str) -> tuple[int, int]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
            count, distinct = db.execute(f"SELECT count(*), count(DISTINCT external_id) FROM {table}").fetchone()
    except sqlite3.Error:
        return (-1, -1)
    return int(count), int(distinct)


def report(speed: dict[int, list[dict[str, Any]]], memory: dict[int, dict[str, Any]], broken: list[str]) -> str:
    """Both figures, with the walls they come from, and the verdicts."""
    lines = ["fan-out scenario (issue 16): items, and one notes request per item (--notes-per-item 1)"]
    if all(speed[c] for c in (1, 4)):
        notes = {c: statistics.median(r["notes_s"] for r in runs) for c, runs in speed.items()}
        walls = {c: statistics.median(r["wall_s"] for r in runs) for c, runs in speed.items()}
        ratio = notes[4] / notes[1]
        verdict = "BROKEN" if broken else ("PASS" if ratio <= SPEED_TARGET else "MISS")
        lines.append(f"  speed: {SPEED_PARENTS} parents, {SPEED_LATENCY_MS} ms a request (medians of "
                     f"{len(speed[1])} runs a side)")
        for c in (1, 4):
            floor = SPEED_PARENTS * SPEED_LATENCY_MS / 1000 / c  # the requests alone, c at a time
            lines.append(
                f"    concurrency {c}: children {notes[c]:.2f} s (floor {floor:.2f} s; runs "
                f"{_seconds(r['notes_s'] for r in speed[c])}), whole run wall {walls[c]:.2f} s "
                f"(runs {_seconds(r['wall_s'] for r in speed[c])})"
            )
        lines.append(f"    children c4/c1 {ratio:.2f}x  target <= {SPEED_TARGET:g}x  {verdict}"
                     f"   (whole run wall c4/c1 {walls[4] / walls[1]:.2f}x)")
    if len(memory) == 2:
        (small, a), (big, b) = sorted(memory.items())
        grew = b["peak_rss_mb"] - a["peak_rss_mb"]
        verdict = "BROKEN" if broken else ("PASS" if grew <= MEMORY_TARGET_MB else "MISS")
        for parents, r in ((small, a), (big, b)):
            lines.append(
                f"  memory: {parents:>6,} parents, 0 ms, concurrency 4: peak RSS {r['peak_rss_mb']:.1f} MB over "
                f"{r.get('processes', 1)} processes (largest {r.get('largest_rss_mb', 0):.1f} MB); wall "
                f"{r['wall_s']:.2f} s, children {r['notes_s']:.2f} s"
            )
        lines.append(f"    {big:,} - {small:,} parents: {grew:+.1f} MB  target <= {MEMORY_TARGET_MB:g} MB  {verdict}")
    lines.extend(f"  BROKEN: {why}" for why in broken)
    return "\n".join(lines)


def _seconds(values: Any) -> str:
    return ", ".join(f"{v:.2f}" for v in values)
