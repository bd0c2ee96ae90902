"""Search spaces: the YAML schema, its loader, and its conversion to Optuna and Ray Tune.

A search space is a YAML file such as ``search_spaces/digits.yaml``::

    name: digits
    dataset: digits
    epochs: 2
    num_samples: 12
    fixed: {width: 16}
    params:
      alpha:   {type: uniform, low: 0.1, high: 1.0}
      fwd_tol: {type: loguniform, low: 1.0e-6, high: 1.0e-2}
      max_iter: {type: int, low: 5, high: 20}
      backward: {type: categorical, choices: [implicit, jfb]}

:func:`load_space` accepts a packaged name (``digits``) or a path, and turns every problem
(missing file, malformed YAML, unknown key, impossible range, unknown hyperparameter) into a
:class:`~pipeline.errors.UsageError` whose message is one line naming the file and the field,
e.g. ``search_spaces/bad.yaml: params.alpha: low (0.9) must be < high (0.1)``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationError,
    model_validator,
)

from models.config import MODEL_KINDS, ModelConfig, TrainConfig
from pipeline.data import dataset_names
from pipeline.errors import UsageError, malformed_yaml
from pipeline.pruning import PRUNERS
from pipeline.samplers import SAMPLERS

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = [
    "HYPERPARAMETERS",
    "MAX_SEED",
    "CategoricalParam",
    "IntParam",
    "LogUniformParam",
    "SearchSpace",
    "UniformParam",
    "list_spaces",
    "load_space",
    "space_source",
]

#: The hyperparameters a trial understands (ModelConfig / TrainConfig field names).
#: The settings a space may search or fix: every field of the model's and the training's
#: configs, except what the space sets once for the whole search (the model kind, the seed)
#: and the device-dependent mixed precision.
HYPERPARAMETERS: tuple[str, ...] = tuple(
    f.name
    for config in (ModelConfig, TrainConfig)
    for f in dataclasses.fields(config)
    if f.name not in ("kind", "seed", "amp")
)

#: The largest seed: NumPy, scikit-learn and Optuna take seeds in ``[0, 2**32 - 1]``.
MAX_SEED = 2**32 - 1

# The package holding the shipped spaces; a bare name resolves to <package>/<name>.yaml.
_PACKAGE = "search_spaces"

CategoricalChoice = Union[bool, int, float, str]


def _known_hyperparameter(name: str) -> str:
    if name not in HYPERPARAMETERS:
        raise ValueError(f"unknown hyperparameter {name!r} (known: {', '.join(HYPERPARAMETERS)})")
    return name


HyperparameterName = Annotated[str, AfterValidator(_known_hyperparameter)]


def _one_of(kind: str, names: Callable[[], Iterable[str]]) -> AfterValidator:
    """A validator accepting the names a registry holds (read when validating, not at import)."""

    def check(value: str) -> str:
        known = tuple(names())
        if value not in known:
            raise ValueError(f"unknown {kind} {value!r} (known: {', '.join(known)})")
        return value

    return AfterValidator(check)


DatasetName = Annotated[str, _one_of("data set", dataset_names)]
ModelName = Annotated[str, _one_of("model", lambda: MODEL_KINDS)]
SamplerName = Annotated[str, _one_of("sampler", lambda: SAMPLERS)]
PrunerName = Annotated[str, _one_of("pruner", lambda: PRUNERS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UniformParam(_Strict):
    """A float drawn uniformly from ``[low, high]``."""

    type: Literal["uniform"]
    low: FiniteFloat
    high: FiniteFloat

    @model_validator(mode="after")
    def _ordered(self) -> UniformParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class LogUniformParam(_Strict):
    """A float drawn log-uniformly from ``[low, high]``, ``low > 0``."""

    type: Literal["loguniform"]
    low: FiniteFloat
    high: FiniteFloat

    @model_validator(mode="after")
    def _positive_and_ordered(self) -> LogUniformParam:
        if not self.low > 0:
            raise ValueError(f"low ({self.low}) must be > 0 for a loguniform distribution")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class IntParam(_Strict):
    """An integer from ``low, low + step, ..., high`` (both ends included), optionally log."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        # Optuna's IntDistribution accepts log=True only with step=1 and low >= 1.
        if self.log and self.step != 1:
            raise ValueError(f"step ({self.step}) must be 1 when log is true")
        if self.log and self.low < 1:
            raise ValueError(f"low ({self.low}) must be >= 1 when log is true")
        # Optuna would silently lower `high` to the last grid point; say so instead.
        if (self.high - self.low) % self.step:
            raise ValueError(
                f"high - low ({self.high - self.low}) must be a multiple of step ({self.step})"
            )
        return self


class CategoricalParam(_Strict):
    """One of ``choices`` (numbers, strings or booleans)."""

    type: Literal["categorical"]
    choices: list[CategoricalChoice] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices {self.choices} contain duplicates")
        return self


Distribution = Annotated[
    Union[UniformParam, LogUniformParam, IntParam, CategoricalParam],
    Field(discriminator="type"),
]
_DISTRIBUTIONS: dict[str, type[_Strict]] = {
    "uniform": UniformParam,
    "loguniform": LogUniformParam,
    "int": IntParam,
    "categorical": CategoricalParam,
}


class SearchSpace(_Strict):
    """A validated search space: the fixed settings of a search and the distributions searched."""

    name: str
    dataset: DatasetName
    model: ModelName = "dynalay"
    folds: int = Field(default=9, ge=2)
    #: ``None`` leaves the TrainConfig default in place.
    epochs: int | None = Field(default=None, ge=1)
    warmup_epochs: int | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, ge=1)
    sampler: SamplerName = "tpe"
    pruner: PrunerName = "wilcoxon"
    #: The default trial budget; ``dynalay search --num-samples`` overrides it.
    num_samples: int = Field(default=16, ge=1)
    #: ``None`` lets Ray Tune run as many trials at once as the resources allow.
    max_concurrent: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    fixed: dict[HyperparameterName, CategoricalChoice] = Field(default_factory=dict)
    params: dict[HyperparameterName, Distribution] = Field(min_length=1)

    @model_validator(mode="after")
    def _each_setting_defined_once(self) -> SearchSpace:
        both = sorted(set(self.fixed) & set(self.params))
        if both:
            raise ValueError(f"fixed.{both[0]}: also searched in params.{both[0]}; keep one")
        for key in ("epochs", "warmup_epochs", "batch_size"):
            if getattr(self, key) is not None and (key in self.params or key in self.fixed):
                where = "params" if key in self.params else "fixed"
                raise ValueError(f"{key}: also set in {where}.{key}; keep one")
        return self

    def to_optuna(self) -> dict[str, BaseDistribution]:
        """The searched parameters as Optuna distributions, e.g. for ``OptunaSearch(space=...)``."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        space: dict[str, BaseDistribution] = {}
        for name, dist in self.params.items():
            if isinstance(dist, UniformParam):
                space[name] = FloatDistribution(dist.low, dist.high)
            elif isinstance(dist, LogUniformParam):
                space[name] = FloatDistribution(dist.low, dist.high, log=True)
            elif isinstance(dist, IntParam):
                space[name] = IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                space[name] = CategoricalDistribution(dist.choices)
        return space

    def shared_run_config(self) -> dict[str, Any]:
        """The run-config keys every trial shares: epochs, warmup_epochs and batch_size where
        the space sets them, then the ``fixed`` hyperparameters (without model and seed)."""
        shared = {key: getattr(self, key) for key in ("epochs", "warmup_epochs", "batch_size")}
        return {**{k: v for k, v in shared.items() if v is not None}, **self.fixed}

    def fixed_settings(self) -> dict[str, Any]:
        """The settings every trial shares, for logging as MLflow params of the search run.

        Holds dataset, model, folds, seed, sampler, pruner, and epochs, warmup_epochs and
        batch_size where the space sets them, followed by the ``fixed`` hyperparameters.
        """
        settings: dict[str, Any] = {
            "dataset": self.dataset,
            "model": self.model,
            "folds": self.folds,
            "seed": self.seed,
            "sampler": self.sampler,
            "pruner": self.pruner,
        }
        for key in ("epochs", "warmup_epochs", "batch_size"):
            value = getattr(self, key)
            if value is not None:
                settings[key] = value
        settings.update(self.fixed)
        return settings


class _SpaceLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-6`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-6``); ``1e-6`` would otherwise
    arrive as the string ``"1e-6"``, silently wrong inside categorical choices.
    """


_SpaceLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def list_spaces() -> list[str]:
    """The names of the packaged search spaces."""
    root = importlib.resources.files(_PACKAGE)
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in root.iterdir()
        if entry.name.endswith(".yaml")
    )


def load_space(name_or_path: str) -> SearchSpace:
    """Load and validate a search space.

    Args:
        name_or_path: a packaged space's name (``digits`` finds ``search_spaces/digits.yaml``),
            or the path of a YAML file. Anything ending in ``.yaml``/``.yml`` or containing a
            path separator is a path; anything else is a packaged name.

    Raises:
        UsageError: the name is unknown, the file is missing or unreadable, the YAML is
            malformed, or it fails validation. The message is one line naming the file and,
            for validation errors, the field path.
    """
    text, label = _read(name_or_path)
    try:
        data = yaml.load(text, Loader=_SpaceLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise malformed_yaml(label, error) from None
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else type(data).__name__
        raise UsageError(f"{label}: expected a mapping of settings, got {kind}")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as error:
        raise UsageError(f"{label}: {_describe(error)}") from None


def space_source(name_or_path: str) -> str:
    """How messages name the space ``name_or_path``: the path as given, or
    ``search_spaces/<name>.yaml`` for a packaged name (as :func:`load_space`'s messages do)."""
    return name_or_path if _is_path(name_or_path) else f"{_PACKAGE}/{name_or_path}.yaml"


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or any(
        sep in name_or_path for sep in ("/", "\\")
    )


def _read(name_or_path: str) -> tuple[str, str]:
    """The file's text and the label naming it in messages."""
    if _is_path(name_or_path):
        path = Path(name_or_path)
        try:
            return path.read_text(encoding="utf-8"), name_or_path
        except FileNotFoundError:
            raise UsageError(f"{name_or_path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"{name_or_path}: cannot read ({error})") from None
    resource = importlib.resources.files(_PACKAGE) / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise UsageError(
            f"unknown search space {name_or_path!r} (packaged: {', '.join(list_spaces())}); "
            "pass a path to a YAML file for your own"
        )
    return resource.read_text(encoding="utf-8"), space_source(name_or_path)


def _describe(error: ValidationError) -> str:
    """All of pydantic's errors on one line, each as ``field.path: message``."""
    return "; ".join(_describe_one(detail) for detail in error.errors())


def _describe_one(detail: Any) -> str:
    loc = list(detail["loc"])
    model: type[BaseModel] = SearchSpace
    # Tagged unions put the tag into the path (params.alpha.uniform.low); users never write it.
    if len(loc) >= 3 and loc[0] == "params" and loc[2] in _DISTRIBUTIONS:
        model = _DISTRIBUTIONS[loc.pop(2)]
    # Dict-key errors end in "[key]"; the key itself is already the previous element.
    if loc and loc[-1] == "[key]":
        loc.pop()
    kind = detail["type"]
    if kind == "value_error":
        message = str(detail["ctx"]["error"])
    elif kind == "extra_forbidden":
        message = f"unknown key (allowed: {', '.join(model.model_fields)})"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "union_tag_invalid":
        message = (
            f"unknown distribution type {detail['ctx']['tag']!r} "
            f"(known: {', '.join(_DISTRIBUTIONS)})"
        )
    elif kind == "union_tag_not_found":
        message = f"missing 'type' (one of: {', '.join(_DISTRIBUTIONS)})"
    else:
        message = f"{detail['msg']} (got {detail['input']!r})"
    path = ".".join(str(part) for part in loc)
    message = " ".join(message.split())  # one line, whatever pydantic's text holds
    return f"{path}: {message}" if path else message
