"""The Optuna samplers a search can name, seeded: the one list the space and CLI check against."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from pipeline.errors import UsageError

#: name → seeded constructor. TPE is multivariate with a constant liar, because Ray Tune asks
#: for several configurations before the first trial reports; NSGA-II's population is small
#: because a search is tens of trials, not thousands; GP starts modelling after 4 trials.
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=8),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=4),
}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` in :data:`SAMPLERS`, seeded with ``seed``.

    Raises:
        UsageError: for a name not in :data:`SAMPLERS`.
    """
    if name not in SAMPLERS:
        raise UsageError(f"--sampler: unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
    return SAMPLERS[name](seed)
