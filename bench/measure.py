"""Run one command as the only child of this fresh process; print what it cost as one JSON line.

    python bench/measure.py [--cwd DIR] [--stdout FILE] [--stderr FILE] -- CMD ...

Peak RSS counts every process of the command's tree: etl runs a writer
process beside itself, so its memory is the sum of both. While the command
runs, each process's high-water mark (VmHWM in /proc/PID/status) is read
every 10 ms; the figure is the sum of those marks (each process at its own
peak, so never less than the peak of the sum), and never less than
`getrusage(RUSAGE_CHILDREN).ru_maxrss`, the largest single process. Wall
time spans start-up to exit, interpreter start and imports included; CPU is
user + system of the whole tree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="measure", description=__doc__.splitlines()[0])
    parser.add_argument("--cwd", default=None)
    parser.add_argument("--stdout", default=None, help="file for the child's stdout (default: discard)")
    parser.add_argument("--stderr", default=None, help="file for the child's stderr (default: discard)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    marks: dict[int, int] = {}  # pid -> highest VmHWM seen, KiB
    with _sink(args.stdout) as out, _sink(args.stderr) as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=args.cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        while proc.poll() is None:
            for pid in _tree(proc.pid):
                mark = _high_water_kib(pid)
                if mark > marks.get(pid, 0):
                    marks[pid] = mark
            time.sleep(0.01)
        code = proc.returncode
        wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "returncode": code,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": max(sum(marks.values()), usage.ru_maxrss) / 1024,  # KiB on Linux
        "largest_rss_mb": usage.ru_maxrss / 1024,
        "processes": max(len(marks), 1),
    }))
    return 0


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/PID/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except OSError:  # it ended meanwhile
            continue
    return found


def _high_water_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # ended, or a zombie (no memory left to read)


def _sink(path: str | None):  # type: ignore[no-untyped-def]
    return open(path, "wb") if path else open("/dev/null", "wb")


if __name__ == "__main__":
    sys.exit(main())
