"""The one error tree of `etl`; every failure the engine raises is an EtlError.

    EtlError                      exit 1 unless a subclass says otherwise
    ├── ConfigError               exit 2: the pipeline file is wrong (carries Problems)
    ├── TemplateValueError        a request template on `_parent` gave a value its place cannot hold
    │                             (in runner.config.templates: one parent's children fail, not the run)
    ├── FetchError                the source or an HTTP target could not be read/written
    │   ├── ResponseError         a response came back but cannot be used (body, records type)
    │   └── PaginationLoopError   a next URL or cursor was seen twice in one run
    ├── TargetError               the target refused a write (disk full, read-only, SQL)
    ├── StateError                the state store cannot be read or written
    │   └── LockError             exit 4: another run holds the pipeline's lock
    └── Interrupted               exit 130/143: SIGINT or SIGTERM stopped the run

Each carries its context (file, line, key path, method, redacted URL path,
status) so that the message says what, where and what to do. An error that
ends a run carries the run's `result` (a RunResult: its counts so far); a
record that cannot be mapped is no error here: it is kept as a failed record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from runner.result import RunResult
    from runner.targets.base import WriteResult


class EtlError(Exception):
    """Root of every error the engine raises on purpose."""

    exit_code: int = 1
    result: RunResult | None = None  # set on the error that ends a run: what the run did
    # set by a target whose page failed part-way: what it did write (the http target's new
    # ids), so that the next run updates those objects instead of creating them again
    partial: WriteResult | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a pipeline file, printed as FILE:LINE:COL: key.path: message."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        key = f" {self.path}:" if self.path else ""
        prefix = " warning:" if self.severity == "warning" else ""
        return f"{where}:{prefix}{key} {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }


class ConfigError(EtlError):
    """The pipeline file is invalid; `problems` lists every error found in it."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | str, *, file: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(file or "<config>", 1, 1, "", problems)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(EtlError):
    """The command asks for what the pipeline does not have (`--resource` of an unknown name)."""

    exit_code = 2


class FetchError(EtlError):
    """A request failed for good: after retries, or with a status no retry can fix."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        path: str = "",
        status: int | None = None,
        detail: str = "",
        body: Any = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail  # a short, redacted excerpt of the response body
        # the error response's whole JSON body (None if it was none): for `reset_when` to
        # read, never printed (it is not redacted)
        self.body = body
        where = f"{method} {path}".strip()
        super().__init__(f"{where}: {message}" if where else message)


class ResponseError(FetchError):
    """A response arrived but cannot be used: not JSON, too large, records not a list."""


class PaginationLoopError(FetchError):
    """The API handed back a next URL or cursor that this run already requested."""


class TargetError(EtlError):
    """The target refused a write or could not be opened."""


class StateError(EtlError):
    """The state store could not be opened, read or written."""


class LockError(StateError):
    """Another run of the same pipeline holds its lock."""

    exit_code = 4


class Interrupted(EtlError):
    """A signal asked the run to stop; the page in hand was committed first."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
        super().__init__(f"interrupted by {signal_name}")
