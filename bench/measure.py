"""Run one command as the only child of this fresh process; print what it cost as one JSON line.

    python bench/measure.py [--cwd DIR] [--stdout FILE] [--stderr FILE] -- CMD ...

Peak RSS is `getrusage(RUSAGE_CHILDREN).ru_maxrss`: this process waits for
exactly one child, so the figure is that child's high-water mark (VmHWM),
not a sum and not a leftover of an earlier run. Wall time spans start-up to
exit, interpreter start and imports included; CPU is user + system.
"""

from __future__ import annotations

import argparse
import json
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
    with _sink(args.stdout) as out, _sink(args.stderr) as err:
        started = time.perf_counter()
        code = subprocess.call(command, cwd=args.cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "returncode": code,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
    }))
    return 0


def _sink(path: str | None):  # type: ignore[no-untyped-def]
    return open(path, "wb") if path else open("/dev/null", "wb")


if __name__ == "__main__":
    sys.exit(main())
