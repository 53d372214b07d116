"""etl: a declarative REST-API ETL runner. The public API lives here.

    from runner import run
    result = run("pipelines/github.yaml")          # raises EtlError when the run fails
    print(result.status, result.counts.created)

Names are imported on first use, so that a process which needs one module
(the writer process, `runner.load.process`) does not load the HTTP client and the
config loader with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.config import load_pipeline
    from runner.engine import StopFlag, run
    from runner.result import Counts, RunResult
    from runner.errors import ConfigError, EtlError

_EXPORTS = {
    "ConfigError": "runner.errors",
    "Counts": "runner.result",
    "EtlError": "runner.errors",
    "RunResult": "runner.result",
    "StopFlag": "runner.engine",
    "load_pipeline": "runner.config",
    "run": "runner.engine",
}

__all__ = ["ConfigError", "Counts", "EtlError", "RunResult", "StopFlag", "load_pipeline", "run"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
