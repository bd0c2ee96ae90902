"""Search spaces: every shipped space loads and converts; every bad file is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline.errors import UsageError
from pipeline.preflight import check_space
from pipeline.space import SearchSpace, list_spaces, load_space, space_source

SHIPPED = ["cifar10", "cifar100", "digits", "fashion_mnist", "imdb", "maze", "wikitext2"]

GOOD = """\
name: tiny
dataset: digits
epochs: 1
params:
  alpha: {type: uniform, low: 0.1, high: 0.9}
"""


def test_the_seven_spaces_are_shipped() -> None:
    assert list_spaces() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_and_converts_to_optuna(name: str) -> None:
    space = load_space(name)
    assert space.name == name and space.dataset == name
    distributions = space.to_optuna()
    assert set(distributions) == set(space.params)
    for dist in distributions.values():
        assert isinstance(dist, (FloatDistribution, IntDistribution, CategoricalDistribution))
    settings = space.fixed_settings()
    assert {"dataset", "model", "folds", "seed", "sampler", "pruner", "epochs"} <= set(settings)
    assert not set(settings) & set(space.params)


@pytest.mark.parametrize("name", list_spaces())
def test_shipped_space_passes_the_checks_before_a_search(name: str) -> None:
    """No shipped space holds a value that a trial's run config would refuse."""
    space = load_space(name)
    check_space(space, space_source(name), space.seed)


def test_digits_is_the_quick_demo() -> None:
    space = load_space("digits")
    assert space.num_samples >= 12 and space.folds == 9
    assert space.epochs is not None and space.epochs <= 2
    # The front's compute axis: the width, and how much the agent sends to FPI.
    assert {"width", "alpha", "beta", "gamma", "contraction", "fwd_tol", "max_iter", "lr"} <= set(space.params)
    fwd_tol = space.to_optuna()["fwd_tol"]
    assert isinstance(fwd_tol, FloatDistribution) and fwd_tol.log


def test_distribution_kinds_map_to_optuna(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(
        "name: all\ndataset: synthetic\nparams:\n"
        "  alpha: {type: uniform, low: 0.1, high: 0.9}\n"
        "  lr: {type: loguniform, low: 1e-4, high: 1e-2}\n"  # 1e-4 without a dot is a float too
        "  max_iter: {type: int, low: 4, high: 64, log: true}\n"
        "  width: {type: int, low: 8, high: 32, step: 8}\n"
        "  backward: {type: categorical, choices: [implicit, jfb]}\n"
    )
    space = load_space(str(path))
    assert space.to_optuna() == {
        "alpha": FloatDistribution(0.1, 0.9),
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "max_iter": IntDistribution(4, 64, log=True),
        "width": IntDistribution(8, 32, step=8),
        "backward": CategoricalDistribution(["implicit", "jfb"]),
    }
    assert (space.model, space.folds, space.sampler, space.pruner) == (
        "dynalay",
        9,
        "tpe",
        "wilcoxon",
    )


BAD = {
    "unknown_key": (
        GOOD + "learning_rate: 0.1\n",
        "learning_rate: unknown key (allowed: name, dataset, model, folds,",
    ),
    "unknown_param_key": (
        GOOD.replace("high: 0.9}", "high: 0.9, hgh: 2}"),
        "params.alpha.hgh: unknown key (allowed: type, low, high)",
    ),
    "low_not_below_high": (
        GOOD.replace("low: 0.1, high: 0.9", "low: 0.9, high: 0.1"),
        "params.alpha: low (0.9) must be < high (0.1)",
    ),
    "low_equals_high_int": (
        GOOD.replace(
            "alpha: {type: uniform, low: 0.1, high: 0.9}", "max_iter: {type: int, low: 5, high: 5}"
        ),
        "params.max_iter: low (5) must be < high (5)",
    ),
    "unknown_distribution": (
        GOOD.replace("type: uniform", "type: normal"),
        "params.alpha: unknown distribution type 'normal'",
    ),
    "missing_type": (
        GOOD.replace("type: uniform, ", ""),
        "params.alpha: missing 'type'",
    ),
    "loguniform_low_zero": (
        GOOD.replace("type: uniform, low: 0.1", "type: loguniform, low: 0"),
        "params.alpha: low (0.0) must be > 0",
    ),
    "loguniform_low_negative": (
        GOOD.replace("type: uniform, low: 0.1", "type: loguniform, low: -1.0"),
        "params.alpha: low (-1.0) must be > 0",
    ),
    "unknown_param_name": (
        GOOD.replace("alpha:", "alhpa:"),
        "params.alhpa: unknown hyperparameter 'alhpa'",
    ),
    "unknown_fixed_name": (
        GOOD + "fixed: {depth: 3}\n",
        "fixed.depth: unknown hyperparameter 'depth'",
    ),
    "fixed_and_searched": (
        GOOD + "fixed: {alpha: 0.5}\n",
        "fixed.alpha: also searched in params.alpha",
    ),
    "unknown_dataset": (
        GOOD.replace("dataset: digits", "dataset: svhn"),
        "dataset: unknown data set 'svhn'",
    ),
    "too_few_folds": (
        GOOD + "folds: 1\n",
        "folds: Input should be greater than or equal to 2",
    ),
    "infinite_high": (
        GOOD.replace("high: 0.9", "high: .inf"),
        "params.alpha.high: Input should be a finite number (got inf)",
    ),
    "negative_seed": (
        GOOD + "seed: -1\n",
        "seed: Input should be greater than or equal to 0",
    ),
    "missing_name": (
        GOOD.replace("name: tiny\n", ""),
        "name: required key is missing",
    ),
    "no_params": (
        "name: tiny\ndataset: digits\nparams: {}\n",
        "params: Dictionary should have at least 1 item",
    ),
    "malformed_yaml": (
        "name: tiny\nparams: {alpha: [\n",
        "malformed YAML at line",
    ),
    "not_a_mapping": (
        "- name: tiny\n",
        "expected a mapping of settings, got list",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_is_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD[case]
    path = tmp_path / "search_spaces" / "bad.yaml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_space(str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message, message


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.yaml: no such file$"):
        load_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(UsageError, match=r"unknown search space 'mnist' \(packaged: cifar10, "):
        load_space("mnist")


def test_schema_can_be_built_directly() -> None:
    space = SearchSpace.model_validate(
        {
            "name": "x",
            "dataset": "imdb",
            "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        }
    )
    assert space.fixed_settings()["dataset"] == "imdb"
    assert "epochs" not in space.fixed_settings()  # unset: the TrainConfig default applies
