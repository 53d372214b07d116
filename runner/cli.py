"""The `etl` command line: the only module that prints or exits.

Each command parses its options, calls the library, and turns what comes
back (problems, an EtlError) into output and an exit code.
"""

from __future__ import annotations

import json
import sys

import click

from runner import __version__, config
from runner.errors import Problem


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
def schema() -> None:
    """Print the JSON Schema of pipeline files."""
    click.echo(json.dumps(config.load_schema(), indent=2))


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
