"""The benchmark of issue 9: `etl run` against the demo API, next to a naive hand-written loop.

Per scenario, with a fresh demo API process (python -m runner.dev.demo_api) on
127.0.0.1 and a fresh temp dir:

1. the API alone: a sequential httpx loop reads every page and does nothing
   else (and, for page/offset, the same with etl's concurrency in threads),
   so we know what the server can serve;
2. `python -m runner run pipeline.yaml` as its own process (SQLite target and
   state in the temp dir, logs to a file), inside a fresh `measure.py`
   wrapper: wall time, CPU, peak RSS; `requests` from the run.summary line;
   then the rows that landed (count and distinct external_id);
3. the naive baseline (`naive.py sync`), measured the same way and checked
   the same way.

    /work/venv/bin/python bench/run.py                 # all four scenarios
    /work/venv/bin/python bench/run.py --quick         # record counts / 10
    /work/venv/bin/python bench/run.py -s 1 -s 3 --per-page 50
    /work/venv/bin/python bench/run.py sync [--records N]   # issue 19's http-target sync (bench/sync.py)

Exits 0 whatever the figures (a MISS is a measurement, not a failure); 1 when
something broke: a process failed, a run was not a success, rows are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
API_START_TIMEOUT_S = 900  # 1,000,000 records take a while to build


@dataclass(frozen=True)
class Scenario:
    """One figure of issue 9: the load, and how the figure is computed and judged."""

    key: str
    title: str
    records: int
    latency_ms: float
    style: Literal["page", "offset", "cursor"]
    metric: Literal["speed", "floor", "rss"]  # etl/baseline rec/s | etl wall / floor | etl peak RSS
    target: float
    per_page: int = 100
    concurrency: int = 4

    @property
    def target_text(self) -> str:
        return {"speed": f">= {self.target:g}x", "floor": f"<= {self.target:g}x", "rss": f"< {self.target:g} MB"}[
            self.metric
        ]

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.records / self.per_page))

    @property
    def floor_s(self) -> float:
        """The latency floor of a sequential reader: pages x latency."""
        return self.pages * self.latency_ms / 1000


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("1", "throughput, 0 ms, page", 100_000, 0, "page", "speed", 0.8),
        Scenario("2", "20 ms, page, concurrency", 20_000, 20, "page", "speed", 2.5),
        Scenario("3", "20 ms, cursor, floor", 20_000, 20, "cursor", "floor", 1.2),
        Scenario("4", "1M records, peak RSS", 1_000_000, 0, "page", "rss", 100),
    )
}


@dataclass
class Outcome:
    """What one scenario measured; `broken` lists what went wrong (empty when all is well)."""

    scenario: Scenario
    api: dict[str, Any] = field(default_factory=dict)
    api_concurrent: dict[str, Any] = field(default_factory=dict)
    etl: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    etl_runs: list[dict[str, Any]] = field(default_factory=list)
    base_runs: list[dict[str, Any]] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after

    def settle(self) -> None:
        """Keep the run of median wall time as the figure of each side; peak RSS is the highest seen."""
        for runs, name in ((self.etl_runs, "etl"), (self.base_runs, "base")):
            done = [r for r in runs if r.get("returncode") == 0 and "wall_s" in r]
            if not done:
                continue
            chosen = dict(sorted(done, key=lambda r: r["wall_s"])[(len(done) - 1) // 2])
            chosen["walls"] = [r["wall_s"] for r in done]
            chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in done)
            setattr(self, name, chosen)

    @property
    def etl_rps(self) -> float:
        return self.scenario.records / self.etl["wall_s"]

    @property
    def base_rps(self) -> float:
        return self.scenario.records / self.base["wall_s"]

    def figure(self) -> float:
        metric = self.scenario.metric
        if metric == "speed":
            return self.etl_rps / self.base_rps
        if metric == "floor":
            return self.etl["wall_s"] / self.scenario.floor_s if self.scenario.floor_s else float("nan")
        return self.etl["peak_rss_mb"]

    def passed(self) -> bool:
        value, target = self.figure(), self.scenario.target
        return {"speed": value >= target, "floor": value <= target, "rss": value < target}[self.scenario.metric]


# --- the demo API process ------------------------------------------------------------


class DemoApi:
    """`python -m runner.dev.demo_api` on a free port; `cpu_s()` reads its CPU time from /proc."""

    def __init__(self, scenario: Scenario, log_path: Path) -> None:
        self.scenario = scenario
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> DemoApi:
        s = self.scenario
        command = [
            PYTHON, "-m", "runner.dev.demo_api", "--port", "0",
            "--records", str(s.records), "--latency-ms", str(s.latency_ms),
        ]
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        self.url = self._read_url()
        return self

    def _read_url(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], API_START_TIMEOUT_S)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.__exit__()
            raise RuntimeError(f"demo API did not start (see {self.log_path})")
        return line

    def cpu_s(self) -> float:
        assert self.proc is not None
        text = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# --- measuring one process -------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a server process; SIGKILL it when it has not ended 15 s later."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(command: list[str], *, cwd: Path, name: str, api: DemoApi) -> dict[str, Any]:
    """Run `command` in a fresh measure.py wrapper; its costs, plus the API's CPU meanwhile."""
    wrapper = [
        PYTHON, str(BENCH / "measure.py"), "--cwd", str(cwd),
        "--stdout", str(cwd / f"{name}.stdout"), "--stderr", str(cwd / f"{name}.log"), "--", *command,
    ]
    cpu_before = api.cpu_s()
    done = subprocess.run(wrapper, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    result["api_cpu_pct"] = 100 * (api.cpu_s() - cpu_before) / result["wall_s"]
    return result


def api_alone(s: Scenario, api: DemoApi, work: Path, threads: int) -> dict[str, Any]:
    command = [
        PYTHON, str(BENCH / "naive.py"), "fetch", "--url", api.url, "--style", s.style,
        "--per-page", str(s.per_page), "--records", str(s.records), "--threads", str(threads),
    ]
    result = measure(command, cwd=work, name=f"api-alone-{threads}", api=api)
    if result["returncode"] == 0:
        result.update(json.loads((work / f"api-alone-{threads}.stdout").read_text()))
        result["pages_per_s"] = result["pages"] / result["seconds"]
    return result


def pipeline_yaml(s: Scenario, url: str) -> str:
    """The bench pipeline: nine fields of the demo items into SQLite, state next to it."""
    pagination = {
        "page": f"{{type: page, size_param: per_page, size: {s.per_page}, total_pages: total_pages}}",
        "offset": f"{{type: offset, limit: {s.per_page}, total: total}}",
        "cursor": "{type: cursor, path: next_cursor, param: cursor}",
    }[s.style]
    params = f"\n  params: {{limit: {s.per_page}}}" if s.style == "cursor" else ""
    return f"""\
version: 1
name: bench
source:
  url: {url}/items/{s.style}{params}
  records: data
  pagination: {pagination}
  concurrency: {s.concurrency}
mapping:
  external_id: to_string(id)
  fields:
    name: name
    email: email
    status: status
    tags: tags
    city: address.city
    zip: address.zip
    amount: amount
    active: active
    updated_at: updated_at
target: {{type: sqlite, path: target.db, table: items}}
state: {{path: state.db}}
"""


def run_etl(s: Scenario, api: DemoApi, work: Path, out: Outcome) -> None:
    work.mkdir()
    (work / "pipeline.yaml").write_text(pipeline_yaml(s, api.url))
    result = measure([PYTHON, "-m", "runner", "run", "pipeline.yaml"], cwd=work, name="etl", api=api)
    summary = _summary(work / "etl.log")
    result["summary"] = summary
    out.etl_runs.append(result)
    if result["returncode"] != 0:
        out.broken.append(f"etl exited {result['returncode']} (see {work / 'etl.log'})")
    if summary.get("status") != "success" or summary.get("processed") != str(s.records):
        out.broken.append(f"etl summary: status={summary.get('status')} processed={summary.get('processed')}")
    _check_rows(work / "target.db", s.records, "etl", out)


def run_baseline(s: Scenario, api: DemoApi, work: Path, out: Outcome) -> None:
    work.mkdir()
    command = [
        PYTHON, str(BENCH / "naive.py"), "sync", "--url", api.url, "--style", s.style,
        "--per-page", str(s.per_page), "--db", "naive.db",
    ]
    result = measure(command, cwd=work, name="naive", api=api)
    out.base_runs.append(result)
    if result["returncode"] != 0:
        out.broken.append(f"baseline exited {result['returncode']} (see {work / 'naive.log'})")
        return
    result.update(json.loads((work / "naive.stdout").read_text()))
    _check_rows(work / "naive.db", s.records, "baseline", out)


def _summary(log_path: Path) -> dict[str, str]:
    """The key=value fields of the last run.summary line of an etl log."""
    found: dict[str, str] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if "event=run.summary" in line:
            found = dict(re.findall(r"(\w+)=(\S+)", line))
    return found


def _check_rows(db_path: Path, expected: int, who: str, out: Outcome) -> None:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
            rows, distinct = db.execute("SELECT count(*), count(DISTINCT external_id) FROM items").fetchone()
    except sqlite3.Error as exc:
        out.broken.append(f"{who}: cannot read {db_path}: {exc}")
        return
    if rows != expected or distinct != expected:
        out.broken.append(f"{who}: {rows} rows, {distinct} distinct external_id, expected {expected}")


def profile_etl(s: Scenario, api: DemoApi, work: Path, prof_dir: Path) -> Path:
    """One more etl run under cProfile (not timed: cProfile slows it down); returns the .prof file."""
    work.mkdir()
    (work / "pipeline.yaml").write_text(pipeline_yaml(s, api.url))
    prof = prof_dir / f"scenario-{s.key}.prof"
    command = [PYTHON, "-m", "cProfile", "-o", str(prof), "-m", "runner", "run", "pipeline.yaml"]
    with open(work / "etl.log", "wb") as err:
        subprocess.run(command, cwd=work, stdout=subprocess.DEVNULL, stderr=err, check=False)
    return prof


# --- one scenario -----------------------------------------------------------------------


def run_scenario(s: Scenario, root: Path, profile_dir: Path | None, repeat: int) -> Outcome:
    out = Outcome(s)
    load_before = os.getloadavg()[0]
    work = root / f"scenario-{s.key}"
    work.mkdir()
    _say(f"scenario {s.key}: {s.title}: {s.records:,} records, {s.per_page}/page, {s.latency_ms:g} ms, {s.style}")
    try:
        with DemoApi(s, work / "api.log") as api:
            _say(f"  demo API up at {api.url} (RSS {api.rss_mb():.0f} MB); the API alone ...")
            out.api = api_alone(s, api, work, threads=1)
            if s.style != "cursor" and s.concurrency > 1:
                out.api_concurrent = api_alone(s, api, work, threads=s.concurrency)
            for n in range(1, repeat + 1):  # alternate, so that drifting machine load hits both sides
                _say(f"  etl run {n}/{repeat} ...")
                run_etl(s, api, work / f"etl-{n}", out)
                _say(f"  naive baseline {n}/{repeat} ...")
                run_baseline(s, api, work / f"baseline-{n}", out)
            if profile_dir is not None:
                _say("  etl run under cProfile ...")
                prof = profile_etl(s, api, work / "etl-profiled", profile_dir)
                _say(f"  profile: {prof}")
    except (RuntimeError, OSError, subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        out.broken.append(f"{type(exc).__name__}: {exc}")
    out.settle()
    out.load = (load_before, os.getloadavg()[0])
    for key, result in (("api", out.api), ("api_concurrent", out.api_concurrent)):
        if result and result.get("returncode"):
            out.broken.append(f"{key} probe exited {result['returncode']}")
    return out


# --- the report ---------------------------------------------------------------------------


HEADER = (
    "scenario", "etl wall s", "etl rec/s", "base rec/s", "etl/base", "RSS etl MB", "RSS base MB",
    "figure", "target", "result",
)


def table(outcomes: list[Outcome]) -> str:
    rows = [HEADER]
    for o in outcomes:
        s = o.scenario
        if not (o.etl and o.base and "pages" in o.base):
            rows.append((f"{s.key} {s.title}", *["-"] * 7, s.target_text, "BROKEN"))
            continue
        figure = o.figure()
        figure_text = f"{figure:.1f} MB" if s.metric == "rss" else f"{figure:.2f}x"
        result = "BROKEN" if o.broken else ("PASS" if o.passed() else "MISS")
        rows.append((
            f"{s.key} {s.title}", f"{o.etl['wall_s']:.2f}", f"{o.etl_rps:,.0f}", f"{o.base_rps:,.0f}",
            f"{o.etl_rps / o.base_rps:.2f}x", f"{o.etl['peak_rss_mb']:.1f}", f"{o.base['peak_rss_mb']:.1f}",
            figure_text, s.target_text, result,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    # every row has one cell per HEADER column: a row of another length is a bug in the code above
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def details(o: Outcome) -> str:
    s = o.scenario
    lines = [
        f"scenario {s.key} ({s.title}): {s.records:,} records, {s.per_page}/page, {s.latency_ms:g} ms, {s.style}, "
        f"etl concurrency {s.concurrency}; load average {o.load[0]:.1f} -> {o.load[1]:.1f} on {os.cpu_count()} CPUs"
    ]
    for label, api in (("API alone, 1 client", o.api), (f"API alone, {s.concurrency} threads", o.api_concurrent)):
        if api.get("pages_per_s"):
            lines.append(
                f"  {label}: {api['pages']} pages in {api['seconds']:.2f} s = {api['pages_per_s']:,.0f} pages/s "
                f"({api['pages_per_s'] * s.per_page:,.0f} rec/s); API CPU {api['api_cpu_pct']:.0f}%"
            )
    if o.etl:
        summ = o.etl.get("summary", {})
        elapsed = int(summ.get("elapsed_ms", "0")) / 1000
        pages = int(summ.get("pages", "0") or 0)
        line = (
            f"  etl: wall {o.etl['wall_s']:.2f} s (engine {elapsed:.2f} s), requests={summ.get('requests')} "
            f"pages={pages}, {pages / o.etl['wall_s']:,.0f} pages/s, CPU {o.etl['cpu_s']:.2f} s "
            f"({100 * o.etl['cpu_s'] / o.etl['wall_s']:.0f}% of wall); API CPU {o.etl['api_cpu_pct']:.0f}%; "
            f"RSS {o.etl['peak_rss_mb']:.1f} MB over {o.etl.get('processes', 1)} processes "
            f"(largest {o.etl.get('largest_rss_mb', o.etl['peak_rss_mb']):.1f} MB)"
        )
        if s.floor_s:
            line += (
                f"; floor {s.floor_s:.2f} s: wall/floor {o.etl['wall_s'] / s.floor_s:.2f}x, "
                f"engine/floor {elapsed / s.floor_s:.2f}x"
            )
        lines.append(line + _spread(o.etl))
    if o.base and "seconds" in o.base:
        line = (
            f"  baseline: wall {o.base['wall_s']:.2f} s (loop {o.base['seconds']:.2f} s), CPU {o.base['cpu_s']:.2f} s "
            f"({100 * o.base['cpu_s'] / o.base['wall_s']:.0f}% of wall); API CPU {o.base['api_cpu_pct']:.0f}%"
        )
        if s.floor_s:
            line += f"; wall/floor {o.base['wall_s'] / s.floor_s:.2f}x"
        lines.append(line + _spread(o.base))
    lines.extend(f"  BROKEN: {why}" for why in o.broken)
    if not o.broken:
        lines.append(
            f"  rows: every etl and baseline run landed {s.records:,} rows, {s.records:,} distinct external_id"
        )
    return "\n".join(lines)


def _spread(result: dict[str, Any]) -> str:
    walls = result.get("walls", [])
    return f"; walls {', '.join(f'{w:.2f}' for w in walls)} s (median kept)" if len(walls) > 1 else ""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- command line ---------------------------------------------------------------------------


def _compile_bytecode() -> None:
    """Write runner's .pyc files, as `pip install` does: an installed etl never compiles its
    source at start-up, but an editable install with PYTHONDONTWRITEBYTECODE=1 would, every run
    (about 40 ms here), which is a cost of the development set-up, not of etl."""
    import compileall
    import runner

    package = Path(runner.__file__).parent
    if not compileall.compile_dir(str(package), quiet=1):
        raise SystemExit(f"could not byte-compile {package}")
    _say(f"byte-compiled {package} (as pip install does)")


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["sync"]:  # the http-target sync scenario lives in its own module
        sys.path.insert(0, str(BENCH))
        import sync

        return sync.main(args_in[1:])
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--scenario", action="append", choices=sorted(SCENARIOS), help="repeatable; default: all")
    parser.add_argument(
        "--quick", action="store_true",
        help="record counts / 10: a check that all runs, not the figures (start-up dominates)",
    )
    parser.add_argument("--records", type=_positive, help="override every chosen scenario's record count")
    parser.add_argument("--per-page", type=_positive, help="override the page size (per_page / limit); default 100")
    parser.add_argument("--latency-ms", type=float, help="override the API's per-request latency")
    parser.add_argument("--style", choices=("page", "offset", "cursor"), help="override the pagination style")
    parser.add_argument("--concurrency", type=_positive, help="override etl's source.concurrency; default 4")
    parser.add_argument(
        "--repeat", type=_positive, default=1, help="etl and baseline runs per scenario; the median counts"
    )
    parser.add_argument("--profile", metavar="DIR", help="also run etl once under cProfile; .prof files here")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    parser.add_argument("--typed", action="store_true", help="the typed-fields scenario alone (bench/typed.py)")
    parser.add_argument("--fanout", action="store_true", help="the parent/child fan-out scenario (bench/fanout.py)")
    args = parser.parse_args(argv)
    if args.fanout:  # issue 16: children at concurrency 4 vs 1; RSS at 10,000 parents vs 200
        from fanout import run_fanout

        _compile_bytecode()
        repeat = args.repeat if args.quick else max(args.repeat, 3)
        return run_fanout(Path(tempfile.mkdtemp(prefix="etl-bench-")), quick=args.quick, repeat=repeat)
    if args.typed:  # issue 17: six typed fields vs untyped, scenario 1's load
        from typed import run_typed

        _compile_bytecode()
        return run_typed(Path(tempfile.mkdtemp(prefix="etl-bench-")), quick=args.quick, repeat=max(args.repeat, 3))

    chosen = [_configured(SCENARIOS[k], args) for k in (args.scenario or sorted(SCENARIOS))]
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    _compile_bytecode()
    root = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    outcomes: list[Outcome] = []
    try:
        outcomes = [run_scenario(s, root, profile_dir, args.repeat) for s in chosen]
    finally:
        if args.keep or not outcomes or any(o.broken for o in outcomes):
            _say(f"kept {root} (logs and databases)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(table(outcomes))
    print()
    print("\n".join(details(o) for o in outcomes))
    if args.json:
        Path(args.json).write_text(json.dumps([_as_json(o) for o in outcomes], indent=2, default=str))
    return 1 if any(o.broken for o in outcomes) else 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _configured(s: Scenario, args: argparse.Namespace) -> Scenario:
    changes = {
        k: v for k, v in (
            ("records", args.records), ("per_page", args.per_page), ("latency_ms", args.latency_ms),
            ("style", args.style), ("concurrency", args.concurrency),
        ) if v is not None
    }
    s = replace(s, **changes)
    return replace(s, records=max(1, s.records // 10)) if args.quick else s


def _as_json(o: Outcome) -> dict[str, Any]:
    data = {"scenario": o.scenario.__dict__, "api": o.api, "api_concurrent": o.api_concurrent,
            "etl": o.etl, "baseline": o.base, "etl_runs": o.etl_runs, "baseline_runs": o.base_runs,
            "load_average": o.load, "broken": o.broken}
    if o.etl and o.base and "pages" in o.base:
        data.update(figure=o.figure(), passed=o.passed(), etl_rps=o.etl_rps, base_rps=o.base_rps)
    return data


if __name__ == "__main__":
    sys.exit(main())
