"""The pipeline file: the only code that reads YAML.

`load.py` builds the frozen `runner.model.Pipeline` (or raises ConfigError
with every problem at FILE:LINE:COL); `yamlpos` keeps positions and finds
duplicate keys, `interpolate` fills `${VAR}`, `schemacheck` words the JSON
Schema's errors; `pipeline.schema.json` is the structure's one source.
"""

from runner.config.load import check_file, expand_paths, load_pipeline, load_schema

__all__ = ["check_file", "expand_paths", "load_pipeline", "load_schema"]
