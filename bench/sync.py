"""The sync benchmark of issue 19: the demo API into the fake CRM through the `http` target.

The same 20,000 records are synced three times, each into a fresh fake CRM
process (python -m runner.dev.fake_crm --latency-ms 20: every write takes
20 ms, a batch request too) from one demo API process, each measured in one
`etl run` (its own process, wall time from start to exit):

    c1      create/update, target concurrency 1   (one write at a time)
    c8      create/update, target concurrency 8   target: >= 6x the records/s of c1
    batch   batch of 100 to /contacts/batch/upsert, concurrency 1 (batching alone)
                                                   target: >= 40x the records/s of c1

After each run the CRM's GET /stats must show one object per record, and the
most writes in flight must not pass the configured concurrency.

    /work/main/.venv/bin/python bench/sync.py                    # about 8 minutes (c1 alone is ~7)
    /work/main/.venv/bin/python bench/sync.py --records 2000     # a quick check
    /work/main/.venv/bin/python bench/run.py sync                # the same, through bench/run.py

Exits 0 whatever the figures (a MISS is a measurement); 1 when something broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from run import stop_process  # bench/run.py (this folder is on sys.path: run.py imports this module)

PYTHON = sys.executable
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    concurrency: int
    batch: int = 0  # records per batch request; 0: one request per write
    target: float = 0.0  # the records/s it must reach, as a multiple of c1's; 0: the baseline


CONFIGS = (
    Config("c1", "concurrency 1", 1),
    Config("c8", "concurrency 8", 8, target=6.0),
    Config("batch", "batch of 100, concurrency 1", 1, batch=100, target=40.0),
)


@dataclass
class Figure:
    config: Config
    wall_s: float
    records: int
    objects: int
    max_in_flight: int
    writes: int
    summary: str
    broken: str = ""

    @property
    def rps(self) -> float:
        return self.records / self.wall_s


class Server:
    """A dev server as its own process on a free port; the URL is the first line it prints."""

    def __init__(self, module: str, *args: str, log_path: Path) -> None:
        self.command = [PYTHON, "-m", module, "--port", "0", *args]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Server:
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.__exit__()
            raise RuntimeError(f"{self.command[2]} did not start (see {self.log_path})")
        self.url = line
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def pipeline_yaml(config: Config, source_url: str, crm_url: str, per_page: int) -> str:
    if config.batch:
        writes = (
            f"  batch: {{path: /contacts/batch/upsert, size: {config.batch}, body: \"{{inputs: @}}\", "
            "results: results, id_path: id}\n"
        )
    else:
        writes = (
            "  create: {method: POST, path: /contacts, id_path: id}\n"
            "  update: {method: PATCH, path: \"/contacts/{target_id}\"}\n"
        )
    return (
        f"version: 1\nname: sync-{config.key}\n"
        f"source:\n  url: {source_url}/items/page\n  records: data\n"
        f"  pagination: {{type: page, size_param: per_page, size: {per_page}, total_pages: total_pages}}\n"
        "mapping:\n  external_id: to_string(id)\n"
        "  fields:\n    key: to_string(id)\n    email: email\n    name: name\n    status: status\n"
        f"target:\n  type: http\n  base_url: {crm_url}\n  concurrency: {config.concurrency}\n{writes}"
        "state: {path: state.db}\n"
    )


def stats(crm_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{crm_url}/stats", timeout=10) as answer:
        data: dict[str, int] = json.loads(answer.read())
    return data


def run_one(config: Config, source_url: str, work: Path, *, records: int, latency_ms: float, per_page: int) -> Figure:
    """One fresh CRM, one `etl run`, timed; then what landed."""
    work.mkdir()
    crm = Server("runner.dev.fake_crm", "--latency-ms", f"{latency_ms:g}", log_path=work / "crm.log")
    with crm:
        (work / "pipeline.yaml").write_text(pipeline_yaml(config, source_url, crm.url, per_page))
        started = time.monotonic()
        done = subprocess.run(
            [PYTHON, "-m", "runner", "run", "pipeline.yaml"], cwd=work, capture_output=True, text=True,
        )
        wall = time.monotonic() - started
        (work / "etl.log").write_text(done.stderr)
        seen = stats(crm.url)
    summary = next((line for line in done.stderr.splitlines() if "event=run.summary" in line), "")
    figure = Figure(config, wall, records, seen["objects"], seen["max_in_flight"], seen["writes_started"], summary)
    if done.returncode != 0:
        figure.broken = f"etl run exited {done.returncode} (see {work / 'etl.log'})"
    elif seen["objects"] != records:
        figure.broken = f"the CRM holds {seen['objects']} objects, not {records}"
    elif seen["max_in_flight"] > config.concurrency:
        figure.broken = f"{seen['max_in_flight']} writes were in flight at once, past concurrency {config.concurrency}"
    return figure


def table(figures: list[Figure], latency_ms: float) -> str:
    base = next((f for f in figures if f.config.key == "c1"), None)
    lines = [
        f"sync: {figures[0].records:,} records into the fake CRM, {latency_ms:g} ms per write request, one run each",
        f"{'config':<36} {'wall s':>8} {'rec/s':>9} {'x c1':>7} {'target':>8} {'requests':>9} "
        f"{'max in flight':>14}  verdict",
    ]
    for f in figures:
        ratio = f.rps / base.rps if base is not None and not base.broken else float("nan")
        target = f"{f.config.target:g}x" if f.config.target else "-"
        if f.broken:
            verdict = f"BROKEN: {f.broken}"
        elif not f.config.target:
            verdict = "baseline"
        else:
            verdict = "PASS" if ratio >= f.config.target else "MISS"
        lines.append(
            f"{f.config.key + ' (' + f.config.title + ')':<36} {f.wall_s:>8.2f} {f.rps:>9,.0f} {ratio:>6.1f}x "
            f"{target:>8} {f.writes:>9,} {f.max_in_flight:>14}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/sync.py", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="per write request, in the fake CRM")
    parser.add_argument("--per-page", type=int, default=500, help="source page size (a batch never spans pages)")
    parser.add_argument("-c", "--config", action="append", choices=[c.key for c in CONFIGS],
                        help="repeatable; default: all three (c1 is every ratio's base)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state)")
    args = parser.parse_args(argv)
    chosen = [c for c in CONFIGS if args.config is None or c.key in args.config]
    root = Path(tempfile.mkdtemp(prefix="etl-bench-sync-"))
    figures: list[Figure] = []
    source = Server("runner.dev.demo_api", "--records", str(args.records), log_path=root / "demo-api.log")
    with source:
        for config in chosen:
            print(f"running {config.key} ({config.title}) ...", file=sys.stderr, flush=True)
            figure = run_one(config, source.url, root / config.key, records=args.records,
                             latency_ms=args.latency_ms, per_page=args.per_page)
            print(f"  {figure.wall_s:.2f} s, {figure.rps:,.0f} rec/s; {figure.summary}", file=sys.stderr, flush=True)
            figures.append(figure)
    print(table(figures, args.latency_ms))
    broken = any(f.broken for f in figures)
    if args.keep or broken:
        print(f"kept {root}", file=sys.stderr)
    else:
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(root)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
