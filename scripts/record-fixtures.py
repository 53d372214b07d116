"""Record the fixtures that `make test` replays with `etl test` (tests/fixtures/pipelines/NAME/).

Never from a real vendor: each example in pipelines/ is run against a local server, the
demo API (`runner.dev.demo_api`) or the stand-in of its test file (tests/test_pipeline_*.py,
which answers as the vendor documents). A copy of the shipped file points at that server;
the recording then names the vendor's origin again, so that `etl test pipelines/NAME.yaml`
replays the file exactly as shipped. The recording is a dry run in a temporary directory:
no target is written, no state kept. Then `etl test --update` writes expected.jsonl.

    .venv/bin/python scripts/record-fixtures.py [NAME...]     # all when no NAME is given
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the stand-in servers live in the test files

from runner.authoring.fixtures import exchange_files  # noqa: E402
from runner.authoring.offline import run_offline  # noqa: E402
from runner.authoring.record import record_run  # noqa: E402
from runner.config import load_pipeline  # noqa: E402
from runner.dev.demo_api import DemoApi  # noqa: E402
from runner.dev.localserver import LocalServer  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "pipelines"


@dataclass(frozen=True)
class Example:
    name: str  # pipelines/NAME.yaml
    server: Callable[[], LocalServer]
    origin: str | None  # the vendor's origin in the shipped file, replaced by the server's
    env: Callable[[LocalServer], dict[str, str]]
    replayed: str | None = None  # the origin the shipped file requests, when `origin` is not it
    fills: dict[str, str] | None = None  # env.json values for variables `origin` held (JIRA_SITE)


def _examples() -> list[Example]:
    import test_pipeline_github_graphql as graphql
    import test_pipeline_jira as jira
    import test_pipeline_msgraph as msgraph
    import test_pipeline_slack as slack

    return [
        # the demo at its default port in the recording, whatever port it had meanwhile
        Example(
            "demo", lambda: DemoApi(250), "http://127.0.0.1:${DEMO_PORT:-8765}", lambda s: {},
            replayed="http://127.0.0.1:8765",
        ),
        Example(  # the resources form: items, each item's notes (a child request), its tags (no request)
            "demo-notes", lambda: DemoApi(40), "http://127.0.0.1:${DEMO_PORT:-8765}", lambda s: {},
            replayed="http://127.0.0.1:8765",
        ),
        Example(
            "slack", slack.SlackApi, "https://slack.com",
            lambda s: {"SLACK_BOT_TOKEN": slack.TOKEN, "SLACK_CHANNEL": slack.CHANNEL},
        ),
        Example(
            "github-graphql", graphql.GitHubGraphql, "https://api.github.com",
            lambda s: {"GITHUB_TOKEN": graphql.TOKEN, "GITHUB_OWNER": "o", "GITHUB_NAME": "r"},
        ),
        Example(  # a watermark inside the JQL (a request template), a postgres target, basic auth
            "jira", jira.JiraSearch, "https://${JIRA_SITE}.atlassian.net",
            lambda s: {"JIRA_EMAIL": jira.EMAIL, "JIRA_API_TOKEN": jira.TOKEN, "DATABASE_URL": "postgresql://unused"},
            replayed="https://acme.atlassian.net", fills={"JIRA_SITE": "acme"},
        ),
        Example(
            "msgraph-users", msgraph.GraphUsers, "https://graph.microsoft.com",
            lambda s: {"GRAPH_TOKEN": msgraph.TOKEN},
        ),
    ]


def _no_wait(seconds: float) -> None:
    """Rate limits and retries of a recording against a local server need no real waiting."""


def record(example: Example) -> str:
    shipped = ROOT / "pipelines" / f"{example.name}.yaml"
    directory = FIXTURES / example.name
    directory.mkdir(parents=True, exist_ok=True)
    server = example.server()
    server.start()
    try:
        with tempfile.TemporaryDirectory() as work:
            os.chdir(work)
            text = shipped.read_text(encoding="utf-8")
            if example.origin is not None:
                text = text.replace(example.origin, server.base_url)
            copy = Path(work) / shipped.name
            copy.write_text(text, encoding="utf-8")
            env = example.env(server)
            result = record_run(
                load_pipeline(copy, env=env), directory, env=env, dry_run=True, sleep=_no_wait, stdout=io.StringIO()
            )
            os.chdir(ROOT)
    finally:
        server.stop()
    if example.origin is not None:  # the recording names the vendor, as the shipped file does
        for path in [*exchange_files(directory), directory / "env.json", directory / "recording.json"]:
            origin = example.replayed or example.origin
            path.write_text(path.read_text(encoding="utf-8").replace(server.base_url, origin), encoding="utf-8")
    if example.fills:
        env_file = directory / "env.json"
        values = {**json.loads(env_file.read_text(encoding="utf-8")), **example.fills}
        env_file.write_text(json.dumps(dict(sorted(values.items())), indent=2) + "\n", encoding="utf-8")
    replay = run_offline(shipped, directory, update=True)
    return f"{example.name}: {len(exchange_files(directory))} exchanges, {result.counts.processed} records, " \
           f"{replay.lines} lines in {replay.expected.relative_to(ROOT)}"


def main(names: list[str]) -> int:
    examples = _examples()
    unknown = set(names) - {e.name for e in examples}
    if unknown:
        print(f"unknown: {', '.join(sorted(unknown))}; known: {', '.join(e.name for e in examples)}", file=sys.stderr)
        return 2
    for example in examples:
        if not names or example.name in names:
            print(record(example))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
