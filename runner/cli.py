"""The `etl` command line: the only module that prints or exits.

Each command parses its options, calls the library, and turns what comes
back (problems, an EtlError) into output and an exit code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from runner import __version__, config, engine, log
from runner.result import Counts, RunResult
from runner.errors import ConfigError, EtlError, Problem
from runner.model import Pipeline, Secret, StateConfig
from runner.state import StateStore, open_known

logger = logging.getLogger("runner.cli")


def entry() -> None:
    """The console script (`etl`, `python -m runner`): the command, then an exit without the
    interpreter's teardown. By then every run has committed, closed its files and connections
    and waited for its writer process; what is left to flush is flushed here. Tearing down every
    loaded module of a process about to end costs some 30 ms, which a scheduled job pays per run."""
    try:
        main(standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _status(code: object) -> int:
    """What `sys.exit(code)` would exit with: None is 0, a message is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@click.group()
@click.version_option(__version__, prog_name="etl")
def main() -> None:
    """etl: declarative REST-API pipelines: fetch -> map (JMESPath) -> idempotent upsert."""


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Read variables from this file instead of ./.env (the environment still wins).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="`json` prints one JSON document of every finding.",
)
def validate(paths: tuple[str, ...], env_file: str | None, output_format: str) -> None:
    """Check pipeline files (files, directories, globs) without sending a request.

    Prints FILE: ok per valid file, or FILE:LINE:COL: key.path: message per
    problem; an unset environment variable is only a warning. Exits 1 when
    any file is invalid.
    """
    unmatched: list[Problem] = []
    files = config.expand_paths(paths, problems=unmatched)
    results = {str(f): config.check_file(f, env_file=env_file) for f in files}
    if output_format == "json":
        _print_json(unmatched, results)
    else:
        _print_text(unmatched, results)
    invalid = any(p.severity == "error" for found in [unmatched, *results.values()] for p in found)
    sys.exit(1 if invalid else 0)


@main.command()
@click.argument("pipelines", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Read the source and print each intended write; change nothing.")
@click.option("--full-refresh", is_flag=True, help="Ignore the watermark and the checkpoint; read everything.")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint of a run that did not finish.")
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False), help="Read this instead of ./.env.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs (secrets are still masked).")
@click.option(
    "--resource", "resources", multiple=True, metavar="NAME",
    help="Run only this resource of a file in the resources form (and the parents it needs); repeatable.",
)
@click.option(
    "--record", "record_dir", type=click.Path(file_okay=False),
    help="Also write every source exchange to this directory (for `etl test`); no secret is written.",
)
def run(
    pipelines: tuple[str, ...], dry_run: bool, full_refresh: bool, restart: bool,
    env_file: str | None, log_format: str, verbose: bool, resources: tuple[str, ...] = (),
    record_dir: str | None = None,
) -> None:
    """Run pipelines: fetch -> map -> upsert, idempotent; one after another.

    Exit codes: 0 success, 1 the run failed, 2 usage or configuration error,
    3 finished but some records failed, 4 another run holds the lock,
    130/143 interrupted by SIGINT/SIGTERM. With several files, every file is
    loaded first (any configuration error runs nothing), and the exit code is
    the first non-zero one.
    """
    log.configure(fmt="json" if log_format == "json" else "text", verbose=verbose)
    click.get_current_context().meta["etl.json_errors"] = log_format == "json"
    if record_dir is not None and len(pipelines) > 1:
        raise click.UsageError("--record records one pipeline file; give one file per recording directory")
    loaded = _load_all(pipelines, env_file)
    stop = engine.StopFlag()
    exit_code = 0
    with _signals(stop):
        for pipeline in loaded:
            code = _run_one(
                pipeline, stop, dry_run=dry_run, full_refresh=full_refresh, restart=restart,
                record=(record_dir, env_file) if record_dir is not None else None, resources=resources,
            )
            exit_code = exit_code or code
            if code in (130, 143):
                break
    sys.exit(exit_code)


def _load_all(paths: tuple[str, ...], env_file: str | None) -> list[Pipeline]:
    loaded, problems = [], []
    for path in paths:
        try:
            loaded.append(config.load_pipeline(path, env_file=env_file))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        for problem in problems:
            if _json_errors():
                log.event(logger, "config.problem", level=logging.ERROR, **problem.as_dict())
            else:
                click.echo(log.redact(str(problem)), err=True)
        sys.exit(2)
    return loaded


def _run_one(
    pipeline: Pipeline, stop: engine.StopFlag, *, dry_run: bool, full_refresh: bool, restart: bool,
    record: tuple[str, str | None] | None = None, resources: tuple[str, ...] = (),
) -> int:
    progress = _Progress() if sys.stderr.isatty() else None
    run_pipeline: Callable[..., RunResult] = engine.run
    if record is not None:  # the same run, its source exchanges written to a directory
        from runner.authoring.record import record_run

        run_pipeline = functools.partial(record_run, directory=record[0], env_file=record[1])
    try:
        result = run_pipeline(
            pipeline, stop=stop, on_progress=progress,
            dry_run=dry_run, full_refresh=full_refresh, restart=restart,
            **({"resources": resources} if resources else {}),
        )
    except EtlError as exc:
        _error(f"{pipeline.file or pipeline.name}: {exc}")
        return exc.exit_code
    finally:
        if progress is not None:
            progress.clear()
    return result.exit_code


class _Progress:
    """A live `pages records records/s` line on a terminal's stderr, redrawn at most 10 times a second."""

    def __init__(self) -> None:
        self._shown = 0.0

    def __call__(self, counts: Counts, pages: int, elapsed: float) -> None:
        now = time.monotonic()
        if now - self._shown < 0.1:
            return
        self._shown = now
        rate = counts.processed / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r\x1b[K  pages={pages} records={counts.processed} records/s={rate:,.0f}")
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


@contextlib.contextmanager
def _signals(stop: engine.StopFlag) -> Iterator[None]:
    """The first SIGINT/SIGTERM asks the run to stop after the page in hand; a second one kills."""

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        stop.stop(name)
        signal.signal(signum, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _error(message: str) -> None:
    """One line on stderr: `etl: error: ...`, or a JSON `cli.error` event with --log-format json."""
    if _json_errors():
        log.event(logger, "cli.error", level=logging.ERROR, message=message)
    else:
        click.echo(f"etl: error: {log.redact(message)}", err=True)


def _json_errors() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.meta.get("etl.json_errors"))


@main.group()
def state() -> None:
    """Show or reset what the state store keeps for a pipeline."""


_STATE_OPTIONS = [
    click.argument("name"),
    click.option(
        "--state", "state_path", type=click.Path(dir_okay=False), help="SQLite state file (default .etl/state.db)."
    ),
    click.option("--dsn", envvar="ETL_STATE_DSN", help="PostgreSQL state store DSN (or $ETL_STATE_DSN)."),
    click.option("--env-file", type=click.Path(exists=True, dir_okay=False), help="Read this instead of ./.env."),
]


def _state_options(func: Any) -> Any:
    for option in reversed(_STATE_OPTIONS):
        func = option(func)
    return func


def _open_state(
    name: str, state_path: str | None, dsn: str | None, env_file: str | None, *, read_only: bool = False
) -> tuple[str, StateStore]:
    """NAME is a pipeline name, or a pipeline file whose `state:` says where its state is.
    Creates no state file; a store that holds nothing of the pipeline is one line, exit 1."""
    try:
        if name.endswith((".yaml", ".yml")):
            pipeline = config.load_pipeline(name, env_file=env_file)
            log.add_secrets(pipeline.secrets)  # `show` masks them, should a state file hold one
            return pipeline.name, open_known(pipeline.state, pipeline.name, read_only=read_only)
        where = StateConfig(path=Path(state_path or ".etl/state.db"), dsn=Secret(dsn) if dsn else None)
        return name, open_known(where, name, read_only=read_only)
    except EtlError as exc:
        _fail(exc)


def _fail(exc: EtlError) -> NoReturn:
    """One line for the error, then its exit code (4 for a lock, 2 for a config error, else 1)."""
    _error(str(exc))
    sys.exit(exc.exit_code)


@state.command("show")
@_state_options
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def state_show(name: str, state_path: str | None, dsn: str | None, env_file: str | None, output_format: str) -> None:
    """Watermark, checkpoint, lock, the last runs with their counts, and failed records."""
    name, store = _open_state(name, state_path, dsn, env_file, read_only=True)
    try:
        shown = store.show(name)
        parts = store.resources(name)  # the resources form: each resource's state
        if parts:
            shown["resources"] = {key.partition("/")[2]: store.show(key) for key in parts}
    except EtlError as exc:
        _fail(exc)
    finally:
        store.close()
    text = json.dumps(shown, indent=2, default=str) if output_format == "json" else _format_state(shown)
    click.echo(log.redact(text))  # the last line of defence: no known secret leaves on stdout


def _format_state(shown: dict[str, Any]) -> str:
    lines = [
        f"pipeline:   {shown['pipeline']}",
        f"watermark:  {json.dumps(shown['watermark'])}",
        f"checkpoint: {shown['checkpoint'] or '-'}",
        f"keys:       {shown['keys']}",
        f"lock:       {_describe_lock(shown['lock'])}",
        "runs:",
    ]
    for r in shown["runs"]:
        lines.append(
            f"  {r['started_at']}  {r['run_id']}  {r['status']:<11} processed={r.get('processed', 0)} "
            f"created={r.get('created', 0)} updated={r.get('updated', 0)} skipped={r.get('skipped', 0)} "
            f"deleted={r.get('deleted', 0)} failed={r.get('failed', 0)}"
        )
    lines.append(f"failed records: {shown['failed_total']}")
    for f in shown["failed"]:
        lines.append(f"  {f['external_id'] or '(no key)'}: {f['error']}  raw={json.dumps(f['raw'], default=str)[:200]}")
    if shown.get("pending"):
        lines.append(f"pending child work: {shown['pending']} parents")
    for resource, part in shown.get("resources", {}).items():
        lines.append(f"\nresource {resource}:")
        lines.extend(f"  {line}" for line in _format_state(part).splitlines()[1:])
    return "\n".join(lines)


def _describe_lock(lock: dict[str, Any] | None) -> str:
    if not lock:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in lock.items())


@state.command("reset")
@_state_options
def state_reset(name: str, state_path: str | None, dsn: str | None, env_file: str | None) -> None:
    """Clear watermark, checkpoint, content hashes and failed records (target ids are kept).

    Takes the pipeline's lock meanwhile: refused (exit 4) while a run holds it."""
    name, store = _open_state(name, state_path, dsn, env_file)
    try:
        store.reset(name)
    except EtlError as exc:
        _fail(exc)
    finally:
        store.close()
    click.echo(f"{name}: state reset (target ids kept)")


@state.command("unlock")
@_state_options
@click.option("--force", is_flag=True, help="Remove the lock even while its holder is alive on this host.")
def state_unlock(name: str, state_path: str | None, dsn: str | None, env_file: str | None, force: bool) -> None:
    """Remove a lock left by a run that is gone. Refused (exit 4) while its holder is alive
    on this host, unless --force; a holder on another host cannot be checked. With a
    PostgreSQL store, ends the database session that holds the lock."""
    name, store = _open_state(name, state_path, dsn, env_file)
    try:
        removed = store.unlock(name, force=force)
    except EtlError as exc:
        _fail(exc)
    finally:
        store.close()
    click.echo(f"{name}: {'lock removed' if removed else 'no lock held'}")


@main.command()
def schema() -> None:
    """Print the JSON Schema of pipeline files."""
    click.echo(json.dumps(config.load_schema(), indent=2))


@main.command("test")
@click.argument("pipeline_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--fixtures", "fixtures_dir", required=True, type=click.Path(file_okay=False),
    help="A directory written by `etl run FILE --record DIR`.",
)
@click.option("--update", is_flag=True, help="Write DIR/expected.jsonl from this run instead of comparing.")
@click.option("-v", "--verbose", is_flag=True, help="The run's logs too (by default only warnings).")
def offline_test(pipeline_file: str, fixtures_dir: str, update: bool, verbose: bool) -> None:
    """Run a pipeline offline against recorded exchanges and compare its intended writes.

    No network, no secret, no state: requests are answered from the recording,
    auth is not applied, now() is the recording's time. Exits 0 when the writes
    equal DIR/expected.jsonl, 1 with a unified diff when they differ or a request
    has no recorded match, 2 for a bad file or recording.
    """
    from runner.authoring.offline import run_offline

    log.configure(verbose=verbose)
    if not verbose:
        logging.getLogger("runner").setLevel(logging.WARNING)
    try:
        outcome = run_offline(pipeline_file, fixtures_dir, update=update)
    except EtlError as exc:
        _fail(exc)
    for name in outcome.unused:
        click.echo(f"{pipeline_file}: warning: recorded exchange {name} was not requested", err=True)
    if outcome.updated:
        click.echo(f"{pipeline_file}: wrote {outcome.lines} lines to {outcome.expected}")
    elif outcome.equal:
        click.echo(f"{pipeline_file}: ok, {outcome.lines} lines equal {outcome.expected}")
    else:
        click.echo(outcome.diff, nl=False)
        click.echo(
            f"{pipeline_file}: the intended writes differ from {outcome.expected} (above: - expected, + this run);"
            " if the change is meant, accept it with --update",
            err=True,
        )
        sys.exit(1)


@main.command("init")
@click.argument("name")
@click.option("--url", required=True, help="The first page of the records, as a GET.")
@click.option(
    "--header", "headers", multiple=True, metavar="'NAME: VALUE'",
    help="A request header (repeatable); a credential's value goes into a ${NAME_TOKEN}-style variable.",
)
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the file (default pipelines/NAME.yaml).")
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
def init(name: str, url: str, headers: tuple[str, ...], out: str | None, force: bool) -> None:
    """Start a pipeline from one GET: records, pagination, external id and typed fields
    inferred from the response, each guess commented; the file passes `etl validate`."""
    from runner.authoring.init import init_pipeline

    log.configure()
    logging.getLogger("runner").setLevel(logging.WARNING)
    try:
        written = init_pipeline(name, url, headers=headers, out=out, force=force)
    except EtlError as exc:
        _fail(exc)
    click.echo(f"{written.path}: written from {written.records} records; check each line marked 'guess'")
    for note in written.notes:
        click.echo(f"  {note}")
    if written.variables:
        click.echo(f"  set {', '.join(written.variables)} before `etl run {written.path}`")
    for problem in written.problems:
        click.echo(str(problem), err=True)
    sys.exit(1 if written.problems else 0)


def _print_text(unmatched: list[Problem], results: dict[str, list[Problem]]) -> None:
    for problem in unmatched:
        click.echo(str(problem))
    for file, problems in results.items():
        for problem in problems:
            click.echo(str(problem))
        if not any(p.severity == "error" for p in problems):
            click.echo(f"{file}: ok")


def _print_json(unmatched: list[Problem], results: dict[str, list[Problem]]) -> None:
    findings = [p.as_dict() for p in unmatched]
    findings += [p.as_dict() for problems in results.values() for p in problems]
    files = [
        {"file": file, "valid": not any(p.severity == "error" for p in problems)}
        for file, problems in results.items()
    ]
    valid = not any(f["severity"] == "error" for f in findings)
    document = {"valid": valid, "files": files, "findings": findings}
    click.echo(json.dumps(document, indent=2))
