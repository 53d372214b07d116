"""The typed-fields scenario of issue 17: scenario 1 (100,000 records, page style, no latency)
with six typed fields, next to the same pipeline untyped, in one run of the bench.

Both pipelines read the same demo API process and land the same nine columns;
the typed one converts name, email and status (string), amount (decimal: the
response is decoded keeping exact numbers), active (boolean) and updated_at
(timestamp, mixed offsets to UTC). The runs alternate (untyped, typed,
untyped, ...) so that drifting machine load hits both; the median wall time of
each side counts. The figure is typed records/s over untyped records/s; the
target is within 15% (>= 0.85x).

    python bench/run.py --typed            # 100,000 records, 3 runs a side
    python bench/run.py --typed --quick    # 10,000 records: a check that it runs
"""

from __future__ import annotations

import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

TARGET = 0.85  # typed rec/s over untyped rec/s
TYPED_FIELDS = {  # the bench pipeline's line -> its typed form
    "    name: name": "    name: {path: name, type: string}",
    "    email: email": "    email: {path: email, type: string}",
    "    status: status": "    status: {path: status, type: string}",
    "    amount: amount": "    amount: {path: amount, type: decimal}",
    "    active: active": "    active: {path: active, type: boolean}",
    "    updated_at: updated_at": "    updated_at: {path: updated_at, type: timestamp}",
}


def typed_yaml(untyped: str) -> str:
    """The bench pipeline with six of its fields typed."""
    lines = untyped.splitlines()
    typed = [TYPED_FIELDS.get(line, line) for line in lines]
    assert sum(a != b for a, b in zip(lines, typed, strict=True)) == len(TYPED_FIELDS), "the bench pipeline changed"
    return "\n".join(typed) + "\n"


def run_typed(root: Path, *, quick: bool, repeat: int) -> int:
    """Measure both sides; print the figures; 1 when something broke, else 0."""
    import run as bench  # bench/run.py: the demo API process, measure(), the row checks

    scenario = replace(bench.SCENARIOS["1"], key="T", title="six typed fields vs untyped", target=TARGET)
    if quick:
        scenario = replace(scenario, records=scenario.records // 10)
    work = root / "scenario-typed"
    work.mkdir(parents=True)
    out = bench.Outcome(scenario)
    walls: dict[str, list[float]] = {"untyped": [], "typed": []}
    cpus: dict[str, list[float]] = {"untyped": [], "typed": []}  # steadier than wall on a busy machine
    bench._say(f"typed scenario: {scenario.records:,} records, {repeat} runs a side, alternating")
    try:
        with bench.DemoApi(scenario, work / "api.log") as api:
            untyped = bench.pipeline_yaml(scenario, api.url)
            texts = {"untyped": untyped, "typed": typed_yaml(untyped)}
            for n in range(1, repeat + 1):
                for side, text in texts.items():
                    bench._say(f"  {side} run {n}/{repeat} ...")
                    result = _one_run(bench, scenario, api, work / f"{side}-{n}", text, out)
                    if result is not None:
                        walls[side].append(result["wall_s"])
                        cpus[side].append(result["cpu_s"])
    except (RuntimeError, OSError) as exc:
        out.broken.append(f"{type(exc).__name__}: {exc}")
    print(report(scenario.records, walls, cpus, out.broken))
    if out.broken:
        bench._say(f"kept {root} (logs and databases)")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if out.broken else 0


def _one_run(bench: Any, scenario: Any, api: Any, work: Path, text: str, out: Any) -> dict[str, Any] | None:
    work.mkdir()
    (work / "pipeline.yaml").write_text(text)
    result: dict[str, Any] = bench.measure(
        [sys.executable, "-m", "runner", "run", "pipeline.yaml"], cwd=work, name="etl", api=api
    )
    summary = bench._summary(work / "etl.log")
    broken = len(out.broken)
    if result["returncode"] != 0:
        out.broken.append(f"{work.name}: etl exited {result['returncode']} (see {work / 'etl.log'})")
    if summary.get("status") != "success" or summary.get("created") != str(scenario.records):
        out.broken.append(f"{work.name}: status={summary.get('status')} created={summary.get('created')}")
    bench._check_rows(work / "target.db", scenario.records, work.name, out)
    return result if len(out.broken) == broken else None


def report(records: int, walls: dict[str, list[float]], cpus: dict[str, list[float]], broken: list[str]) -> str:
    """Both sides' records/s (median wall), their ratio and the verdict; and the CPU time each
    side spent (all of etl's processes), which machine load disturbs less than wall time."""
    if not (walls["untyped"] and walls["typed"]):
        return "typed scenario: BROKEN\n" + "\n".join(f"  BROKEN: {why}" for why in broken)
    rps = {side: records / statistics.median(w) for side, w in walls.items()}
    ratio = rps["typed"] / rps["untyped"]
    verdict = "BROKEN" if broken else ("PASS" if ratio >= TARGET else "MISS")
    lines = [
        f"typed scenario ({records:,} records, page, 0 ms; six typed fields: 3 string, decimal, boolean, timestamp)",
        *(
            f"  {side:8} {rps[side]:>9,.0f} rec/s  (walls {', '.join(f'{x:.2f}' for x in w)} s, median kept)"
            for side, w in walls.items()
        ),
        f"  typed/untyped {ratio:.3f}x  target >= {TARGET:g}x  {verdict}",
        f"  CPU s (median): untyped {statistics.median(cpus['untyped']):.2f}, typed "
        f"{statistics.median(cpus['typed']):.2f}: typed costs "
        f"{statistics.median(cpus['typed']) / statistics.median(cpus['untyped']):.3f}x the CPU",
        *(f"  BROKEN: {why}" for why in broken),
    ]
    return "\n".join(lines)
