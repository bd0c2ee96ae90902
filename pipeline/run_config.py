"""Run configurations: the flat key/value settings of one training run.

A run configuration is one flat mapping whose keys are the field names of
:class:`~models.config.ModelConfig` and :class:`~models.config.TrainConfig` (``alpha``,
``fwd_tol``, ``width``, ``lr``, ``epochs``, ``batch_size`` ...), plus ``model`` (the name the
command line and the search spaces use for ``ModelConfig.kind``) and ``dataset`` (read by the
caller, not part of either config). As a YAML file (``dynalay train --config FILE``)::

    model: dynalay
    dataset: digits
    width: 16
    fwd_tol: 1.0e-4
    lr: 2.0e-3
    epochs: 10

Every problem (unreadable or malformed file, a key that is no setting, a value of the wrong type
or out of range) raises :class:`~pipeline.errors.UsageError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from models.config import MODEL_KINDS, ModelConfig, TrainConfig
from pipeline.errors import UsageError, malformed_yaml
from pipeline.space import MAX_SEED

__all__ = ["MODEL_KEY", "DATASET_KEY", "run_config_keys", "load_run_config", "split_run_config"]

MODEL_KEY = "model"
"""The run-config key naming the model; it becomes ``ModelConfig.kind``."""

DATASET_KEY = "dataset"
"""The run-config key naming the data set; the caller reads it, neither config holds it."""

_MODEL_FIELDS = frozenset(field.name for field in dataclasses.fields(ModelConfig))
_TRAIN_FIELDS = frozenset(field.name for field in dataclasses.fields(TrainConfig))
# Lax validation: PyYAML reads "1e-3" (no dot) as a string, which must still mean 0.001.
_MODEL_ADAPTER = TypeAdapter(ModelConfig)
_TRAIN_ADAPTER = TypeAdapter(TrainConfig)


def run_config_keys() -> tuple[str, ...]:
    """Every key a run configuration may hold, sorted."""
    return tuple(sorted(_MODEL_FIELDS | _TRAIN_FIELDS | {MODEL_KEY, DATASET_KEY}))


def load_run_config(path: str | Path) -> dict[str, Any]:
    """Read and check a YAML run configuration; returns its keys and values as written.

    The values are checked as :func:`split_run_config` would check them, so a wrong value is
    reported against this file rather than against whatever later merges it.

    Raises:
        UsageError: the file is missing, unreadable, not YAML, not a mapping, holds a key that
            is no setting, or a value of the wrong type or out of range.
    """
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{label}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{label}: cannot read ({error})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise malformed_yaml(label, error) from None
    if values is None:
        return {}  # an empty file (or only comments) sets nothing
    if not isinstance(values, dict):
        raise UsageError(
            f"{label}: expected a mapping of settings (key: value), got a {type(values).__name__}"
        )
    for key in values:
        if not isinstance(key, str) or key.startswith("_"):
            raise UsageError(f"{label}: {_unknown_key(key)}")
    split_run_config(values, source=label)
    return values


def split_run_config(
    values: Mapping[str, Any], source: str = "run config"
) -> tuple[ModelConfig, TrainConfig]:
    """Build the model and training configs from one flat run configuration.

    Keys missing from ``values`` keep the configs' defaults (the thesis' values). ``dataset`` is
    ignored, and so is any key starting with ``_``: those are reserved for internal hooks that
    ride along in a trial's configuration.

    Args:
        values: the flat run configuration.
        source: where ``values`` came from (a file name), for messages.

    Raises:
        UsageError: a key that is no setting, ``model`` and ``kind`` disagreeing, or a value of
            the wrong type or out of range (a ``seed`` outside ``[0, MAX_SEED]`` included); the
            message names ``source`` and the key.
    """
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    for key, value in values.items():
        if key == DATASET_KEY or (isinstance(key, str) and key.startswith("_")):
            continue
        if key == MODEL_KEY:
            if value not in MODEL_KINDS:
                known = ", ".join(MODEL_KINDS)
                raise UsageError(f"{source}: unknown model {value!r} (known: {known})")
            if "kind" in values and values["kind"] != value:
                raise UsageError(
                    f"{source}: model {value!r} and kind {values['kind']!r} disagree "
                    f"(they are the same setting)"
                )
            model_values["kind"] = value
        elif key in _MODEL_FIELDS:
            model_values[key] = value
        elif key in _TRAIN_FIELDS:
            train_values[key] = value
        else:
            raise UsageError(f"{source}: {_unknown_key(key)}")
    model_cfg = _validate(_MODEL_ADAPTER, model_values, source)
    train_cfg = _validate(_TRAIN_ADAPTER, train_values, source)
    # TrainConfig takes any integer; the data split, the folds and the samplers do not.
    if not 0 <= train_cfg.seed <= MAX_SEED:
        raise UsageError(f"{source}: seed={train_cfg.seed!r} must lie in [0, {MAX_SEED}]")
    return model_cfg, train_cfg


def _unknown_key(key: object) -> str:
    return f"unknown key {key!r} (known: {', '.join(run_config_keys())})"


def _validate(adapter: TypeAdapter[Any], values: dict[str, Any], source: str) -> Any:
    try:
        return adapter.validate_python(values)
    except ValidationError as error:
        raise UsageError(f"{source}: {_describe(error)}") from None


def _describe(error: ValidationError) -> str:
    """Pydantic's errors on one line: ``key: message (got value)``, joined by ``; ``."""
    parts = []
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"])
        if detail["type"] == "value_error":
            # Raised by the config's own range checks, whose message already names the key.
            message = str(detail["ctx"]["error"]) if "ctx" in detail else detail["msg"]
            parts.append(f"{field}: {message}" if field else message)
        else:
            parts.append(f"{field}: {detail['msg'].lower()} (got {detail['input']!r})")
    return "; ".join(parts)
