"""etl: a declarative REST-API ETL runner. The public API lives here."""

from __future__ import annotations

from runner.errors import ConfigError, EtlError

__all__ = ["ConfigError", "EtlError"]
__version__ = "0.1.0"
