"""Tests of event logging, the text and JSON formats, run context and redaction."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from runner import log

LOGGER = "runner.test_log"


@pytest.fixture
def runner_logger() -> Iterator[logging.Logger]:
    """The `runner` logger, with its handlers and level restored afterwards."""
    logger = logging.getLogger("runner")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
    logger.setLevel(level)


def capture(logger: logging.Logger, formatter: logging.Formatter) -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(log.ContextFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_event_puts_name_and_fields_on_the_record(caplog: pytest.LogCaptureFixture) -> None:
    """An event record carries its name and its fields whole."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    log.event(logging.getLogger(LOGGER), "page.committed", page=3, items=10)
    (record,) = caplog.records
    assert record.getMessage() == "page.committed"
    assert record.event == "page.committed"  # type: ignore[attr-defined]
    assert record.fields == {"page": 3, "items": 10}  # type: ignore[attr-defined]


def test_event_accepts_field_names_that_logging_reserves(runner_logger: logging.Logger) -> None:
    """Fields such as `module` or `args` do not clash with LogRecord attributes."""
    stream = capture(runner_logger, log.KeyValueFormatter())
    log.event(logging.getLogger("runner.x"), "odd", module="m", args="a", msg="hi")
    assert lines(stream)[0].endswith("event=odd module=m args=a msg=hi")


def test_text_line_has_fixed_keys_first(runner_logger: logging.Logger) -> None:
    """A text line starts with ts, level, event, run_id, pipeline, then the fields in order."""
    stream = capture(runner_logger, log.KeyValueFormatter())
    with log.run_context(run_id="r-1", pipeline="issues"):
        log.event(
            logging.getLogger("runner.http"), "http.request",
            method="GET", path="/x", status=200, elapsed_ms=12, attempt=1,
        )
    (line,) = lines(stream)
    ts, rest = line.split(" ", 1)
    assert ts.startswith("ts=") and ts.endswith("Z")
    assert rest == (
        "level=info event=http.request run_id=r-1 pipeline=issues "
        "method=GET path=/x status=200 elapsed_ms=12 attempt=1"
    )


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line1\nline2", '"line1\\nline2"'),
        ("back\\slash", '"back\\\\slash"'),
        ("", '""'),
        (None, "null"),
        (True, "true"),
        (1.5, "1.5"),
        (["a", 1], '"[\\"a\\",1]"'),
    ],
)
def test_text_values_are_quoted_when_needed(value: object, written: str) -> None:
    """Values with spaces, quotes, `=`, backslashes or newlines are quoted and escaped."""
    assert log.format_value(value) == written


def test_json_line_has_the_same_keys(runner_logger: logging.Logger) -> None:
    """A JSON line is one object with the same keys and native value types."""
    stream = capture(runner_logger, log.JsonFormatter())
    with log.run_context(run_id="r-1", pipeline="issues"):
        log.event(logging.getLogger("runner.x"), "run.summary", created=2, note='a "b"')
    (line,) = lines(stream)
    data = json.loads(line)
    assert list(data) == ["ts", "level", "event", "run_id", "pipeline", "created", "note"]
    assert data["created"] == 2 and data["note"] == 'a "b"' and data["level"] == "info"


@pytest.mark.parametrize("formatter", [log.KeyValueFormatter(), log.JsonFormatter()])
def test_exception_stays_on_one_line(
    runner_logger: logging.Logger, formatter: logging.Formatter
) -> None:
    """A traceback becomes an escaped `exc` field of the same single line."""
    stream = capture(runner_logger, formatter)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.event(logging.getLogger("runner.x"), "run.failed", level=logging.ERROR, exc_info=True)
    (line,) = lines(stream)
    assert "RuntimeError: boom" in line and "Traceback" in line
    if isinstance(formatter, log.JsonFormatter):
        assert json.loads(line)["exc"].startswith("Traceback")
    else:
        assert ' exc="Traceback' in line


def test_plain_records_are_written_as_log_events(runner_logger: logging.Logger) -> None:
    """A record not made by event() is written as event=log with its logger and message."""
    stream = capture(runner_logger, log.KeyValueFormatter())
    logging.getLogger("runner.x").warning("disk %s full", "very")
    assert lines(stream)[0].endswith('level=warning event=log logger=runner.x msg="disk very full"')


def test_run_context_reaches_worker_threads_through_copied_context(
    runner_logger: logging.Logger,
) -> None:
    """Lines logged in a thread started with a copied context carry run_id and pipeline."""
    stream = capture(runner_logger, log.KeyValueFormatter())
    with log.run_context(run_id="r-9", pipeline="p"):
        context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(log.event, logging.getLogger("runner.x"), "page.fetched")
    )
    thread.start()
    thread.join()
    log.event(logging.getLogger("runner.x"), "outside")
    first, second = lines(stream)
    assert "event=page.fetched run_id=r-9 pipeline=p" in first
    assert "run_id" not in second and "pipeline" not in second


def test_redact_replaces_known_secrets_and_their_encodings() -> None:
    """A registered secret is masked raw, URL-encoded and JSON-escaped."""
    log.add_secrets(['pa ss/wo"rd-42'])
    text = 'raw pa ss/wo"rd-42 url pa%20ss%2Fwo%22rd-42 plus pa+ss%2Fwo%22rd-42 json pa ss/wo\\"rd-42'
    assert log.redact(text) == "raw *** url *** plus *** json ***"


def test_redact_ignores_very_short_and_empty_values() -> None:
    """Values under four characters are not treated as secrets (they would mask everything)."""
    log.add_secrets(["", "ab", "xyz"])
    assert log.redact("ab xyz") == "ab xyz"


def test_redact_url_masks_secret_params_and_drops_the_host() -> None:
    """The common secret parameters and registered ones are masked; the rest stays."""
    log.add_secret_params(["X-My-Key"])
    url = "https://u:p@h.test/v1/items?page=2&api_key=abc&access_token=t&x-my-key=k&q=a+b"
    assert log.redact_url(url) == "/v1/items?page=2&api_key=***&access_token=***&x-my-key=***&q=a+b"
    assert log.redact_url("https://h.test") == "/"


def test_redact_headers_masks_credential_headers() -> None:
    """Authorization, cookies and registered api-key headers are masked; others are kept."""
    log.add_secret_headers(["X-Custom-Key"])
    headers = {
        "Authorization": "Bearer t", "Cookie": "c", "Set-Cookie": "s",
        "Proxy-Authorization": "p", "x-custom-key": "k", "Accept": "application/json",
    }
    masked = log.redact_headers(headers)
    assert masked == {**{k: "***" for k in headers}, "Accept": "application/json"}


@pytest.mark.parametrize("formatter", [log.KeyValueFormatter(), log.JsonFormatter()])
def test_formatters_scrub_secrets_everywhere(
    runner_logger: logging.Logger, formatter: logging.Formatter
) -> None:
    """A secret in a field, a plain message or a traceback never reaches the output."""
    secret = "sk_live_FORMATTERSECRET"
    log.add_secrets([secret])
    stream = capture(runner_logger, formatter)
    logger = logging.getLogger("runner.x")
    log.event(logger, "e", token=secret, nested={"a": [secret]})
    logger.info("message with %s", secret)
    try:
        raise ValueError(f"bad {secret}")
    except ValueError:
        logger.exception("failed")
    output = stream.getvalue()
    assert secret not in output and output.count("***") >= 4


def test_configure_installs_one_handler(runner_logger: logging.Logger) -> None:
    """configure() adds one handler, replaces it when called again, and -v means DEBUG."""
    stream = io.StringIO()
    log.configure(stream=stream)
    handler = log.configure(fmt="json", verbose=True, stream=stream)
    installed = [h for h in runner_logger.handlers if getattr(h, "_etl_handler", False)]
    assert installed == [handler] and runner_logger.level == logging.DEBUG
    with log.run_context(run_id="r", pipeline="p"):
        log.event(logging.getLogger("runner.engine"), "x", level=logging.DEBUG)
    assert json.loads(stream.getvalue())["run_id"] == "r"


def test_configure_default_level_is_info(runner_logger: logging.Logger) -> None:
    """Without -v, DEBUG events are not written."""
    stream = io.StringIO()
    log.configure(stream=stream)
    log.event(logging.getLogger("runner.engine"), "hidden", level=logging.DEBUG)
    log.event(logging.getLogger("runner.engine"), "shown")
    assert "event=shown" in stream.getvalue() and "hidden" not in stream.getvalue()
