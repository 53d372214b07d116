"""etl: a declarative REST-API ETL runner. The public API lives here.

    from runner import run
    result = run("pipelines/github.yaml")          # raises EtlError when the run fails
    print(result.status, result.counts.created)
"""

from __future__ import annotations

from runner.config import load_pipeline
from runner.committer import Counts
from runner.engine import RunResult, StopFlag, run
from runner.errors import ConfigError, EtlError

__all__ = ["ConfigError", "Counts", "EtlError", "RunResult", "StopFlag", "load_pipeline", "run"]
__version__ = "0.1.0"
