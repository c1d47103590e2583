"""Run configuration: the schema (:mod:`cgflow.config.schema`), loading presets and YAML files
with overrides (:mod:`cgflow.config.loading`), and the shipped presets (``cgflow/config/presets/``).

The names below are the package's public face (``from cgflow.config import load_config``)."""

from cgflow.config.loading import (
                                   ConfigNote,
                                   apply_overrides,
                                   config_differences,
                                   describe_differences,
                                   dump_config,
                                   load_config,
                                   preset_names,
                                   preset_text,
                                   validate_config,
)
from cgflow.config.schema import ConfigError, RunConfig
from cgflow.config.system_checks import check_against_system

__all__ = ["ConfigError", "ConfigNote", "RunConfig", "apply_overrides", "check_against_system", "config_differences", "describe_differences",
           "dump_config", "load_config", "preset_names", "preset_text", "validate_config"]
