"""Checks a search's inputs before anything starts: no Ray, no file written, no trial run.

A search that starts on bad input fails in every trial, far from the cause, after Ray and the
stores have started; these checks refuse it first, each with one
:class:`~pipeline.errors.UsageError` line naming the setting and where it came from:

* the space against the model: every value a trial could draw (each range's ends, each
  choice, each fixed setting) is built into a run config and validated by
  :func:`~pipeline.run_config.split_run_config`, exactly as a trial builds it;
* the experiment name (a plain name: it becomes a folder under the run directory), the run
  directory, the stores' SQLite files, the Ray address (reachable, so that ``ray.init`` does not
  retry forever), the resources asked per trial;
* the data: read once here, as every trial reads it, and the folds checked against its class
  counts.

:func:`check_search` runs them all for ``dynalay search``; :func:`check_submission` runs the
ones that hold on any machine for ``dynalay submit`` (the data, the run directory and the
stores live on the cluster, where the submitted search checks them again). Heavy imports
happen inside the checks, so importing this module costs nothing.
"""

from __future__ import annotations

import os
import socket
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.search import SearchOptions
    from pipeline.space import SearchSpace

__all__ = [
    "Sources",
    "check_data",
    "check_experiment_name",
    "check_ray_address",
    "check_resources",
    "check_search",
    "check_space",
    "check_submission",
    "check_writable_path",
    "describe_sources",
    "store_source",
    "unreachable",
]

CONNECT_TIMEOUT_S = 5.0
"""How long a reachability check waits for a TCP connection."""

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Sources:
    """Where each checked setting came from, as messages name it.

    ``space`` is the space file (``search_spaces/digits.yaml``); ``experiment`` and ``folds`` are
    the flag (``--experiment``) or the space's key (``search_spaces/digits.yaml: name``).
    """

    space: str
    experiment: str
    folds: str


def describe_sources(space_source: str, experiment_flag: str | None, folds_flag: int | None) -> Sources:
    """The :class:`Sources` of a search given ``--experiment``/``--folds`` or not (``None``)."""
    return Sources(
        space=space_source,
        experiment=f"{space_source}: name" if experiment_flag is None else "--experiment",
        folds=f"{space_source}: folds" if folds_flag is None else "--folds",
    )


def store_source(flag: str, uri: str | None, run_dir: Path) -> str:
    """How messages name a store: ``<flag> <uri>`` when given, else the run directory holding it."""
    return f"{flag} {uri}" if uri else f"--run-dir {run_dir}"


def check_search(options: SearchOptions, sources: Sources) -> None:
    """Every check a local ``dynalay search`` needs, cheapest first; the data is read last.

    Raises:
        UsageError: the first problem found, in one line naming the setting.
    """
    from pipeline.search_records import check_database_file

    check_experiment_name(options.experiment, sources.experiment)
    check_writable_path(options.run_dir, "--run-dir", directory=True)
    check_writable_path(options.experiment_dir, "--run-dir", directory=True)
    check_resources(options.address, options.cpus_per_trial, options.gpus_per_trial)
    check_space(options.space, sources.space, options.seed)
    stores = (
        ("--tracking-uri", options.tracking_uri, options.resolved_tracking_uri),
        ("--storage", options.storage, options.resolved_storage),
    )
    for flag, given, uri in stores:
        # The default stores live in the run directory, which the search creates.
        if given or options.run_dir.is_dir():
            check_database_file(uri, store_source(flag, given, options.run_dir))
    check_ray_address(options.address)
    check_data(options.space.dataset, options.data_dir, options.folds, options.seed, sources.folds)


def check_submission(space: SearchSpace, experiment: str, seed: int, sources: Sources) -> None:
    """The checks of :func:`check_search` that hold wherever the search will run.

    Raises:
        UsageError: the first problem found, in one line naming the setting.
    """
    check_experiment_name(experiment, sources.experiment)
    check_space(space, sources.space, seed)


def check_experiment_name(name: str, source: str) -> None:
    """Refuse a name that is not one plain path component: it names ``<run-dir>/<name>/``.

    Raises:
        UsageError: empty, ``.`` or ``..``, or holding a path separator or a NUL.
    """
    separators = {"/", "\0", os.sep, os.altsep or "/"}
    if name in ("", ".", "..") or any(sep in name for sep in separators) or name != name.strip():
        raise UsageError(
            f"{source} {name!r}: must be a plain name (no '/', not '.' or '..', no surrounding "
            "spaces); it names a folder in the run directory"
        )


def check_writable_path(path: Path, source: str, *, directory: bool) -> None:
    """Refuse a path that cannot be created or written, without creating anything.

    ``path`` may exist (then it must be a directory if ``directory``, else a file) or not (then
    its nearest existing ancestor must be a writable directory).

    Raises:
        UsageError: naming ``source`` and the path.
    """
    if path.exists():
        if directory and not path.is_dir():
            raise UsageError(f"{source} {path}: not a directory")
        if not directory and path.is_dir():
            raise UsageError(f"{source} {path}: is a directory; give a file name")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{source} {path}: not writable")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{source} {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{source} {path}: cannot create it in {ancestor} (not writable)")


def check_resources(address: str | None, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Refuse per-trial resources this machine lacks when the search runs locally."""
    if address is not None:
        return  # a cluster's resources are Ray's to judge
    if gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "--gpus-per-trial: this machine has no CUDA GPU; use 0 or --address of a GPU cluster"
            )
    if cpus_per_trial > (os.cpu_count() or 1):
        raise UsageError(
            f"--cpus-per-trial: {cpus_per_trial:g} is more than this machine's {os.cpu_count()} CPUs"
        )


def check_space(space: SearchSpace, source: str, seed: int) -> None:
    """Refuse a space with a value the model or the training would refuse in a trial.

    Each fixed setting, and each searched parameter at each end of its range (or at each
    choice), is merged into a trial's run config (model, seed, the shared settings) and
    validated as a trial validates it. The configs' constraints are intervals and choice sets,
    so a range whose ends pass passes everywhere; a float range over an integer setting is
    refused outright, since its inner values would not be integers.

    Raises:
        UsageError: ``<source>: fixed.<key>: ...`` or ``<source>: params.<key>: ...``.
    """
    from pipeline.run_config import split_run_config
    from pipeline.space import CategoricalParam, IntParam

    shared = {"model": space.model, "seed": seed, **space.shared_run_config()}
    for key, value in space.fixed.items():
        split_run_config({"model": space.model, key: value}, source=f"{source}: fixed.{key}")
    split_run_config(shared, source=source)
    integers = _integer_settings()
    for name, dist in space.params.items():
        where = f"{source}: params.{name}"
        if isinstance(dist, CategoricalParam):
            points = [(f"choice {choice!r}", choice) for choice in dist.choices]
        else:
            if name in integers and not isinstance(dist, IntParam):
                raise UsageError(
                    f"{where}: {name} is an integer setting; use type: int "
                    f"(e.g. {{type: int, low: {int(dist.low)}, high: {int(dist.high)}}})"
                )
            points = [(f"low {dist.low!r}", dist.low), (f"high {dist.high!r}", dist.high)]
        for label, value in points:
            split_run_config({**shared, name: value}, source=f"{where} ({label})")


def _integer_settings() -> frozenset[str]:
    """The ModelConfig/TrainConfig fields typed ``int``."""
    from models.config import ModelConfig, TrainConfig

    hints = {**typing.get_type_hints(ModelConfig), **typing.get_type_hints(TrainConfig)}
    return frozenset(name for name, hint in hints.items() if hint is int)


def check_data(dataset: str, data_dir: str | None, folds: int, seed: int, folds_source: str) -> None:
    """Read the data set as every trial will, and refuse folds it cannot be split into.

    Class-labelled sets are split by stratified k-fold, which needs every class to have at
    least ``folds`` samples; other targets need ``folds`` samples in all.

    Raises:
        UsageError: the data is missing or unreadable (the reader's message), or ``folds`` is
            more than the smallest class (or the data set) holds.
    """
    import torch

    from pipeline.data import load_dataset

    targets = load_dataset(dataset, data_dir, seed=seed).train.y
    if targets.ndim == 1:
        classes, counts = torch.unique(targets, return_counts=True)
        smallest = int(counts.argmin())
        if folds > int(counts[smallest]):
            raise UsageError(
                f"{folds_source} {folds}: class {int(classes[smallest])} has only "
                f"{int(counts[smallest])} samples in the {dataset} training split; stratified "
                "cross-validation needs at least one per fold"
            )
    elif folds > len(targets):
        raise UsageError(
            f"{folds_source} {folds}: the {dataset} training split has only {len(targets)} samples"
        )


def check_ray_address(address: str | None) -> None:
    """Refuse a Ray address nothing answers at: ``ray.init`` would retry it forever.

    ``auto`` and ``local`` (and no address) are Ray's to resolve. A loopback host is checked at
    this node's IP, which is where Ray connects for it.

    Raises:
        UsageError: a malformed address, a dashboard URL, or no TCP answer within
            :data:`CONNECT_TIMEOUT_S`.
    """
    if address is None or address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise UsageError(
            f"--address {address}: that is a dashboard URL; give the Ray head's HOST:PORT "
            "(e.g. 10.0.0.1:6379), or use `dynalay submit --address` with the dashboard URL"
        )
    host, port = _host_port(address.removeprefix("ray://"), address)
    target = host
    if host in _LOOPBACK:
        from ray.util import get_node_ip_address

        target = get_node_ip_address()
    reason = unreachable(target, port)
    if reason is not None:
        raise UsageError(f"--address {address}: cannot reach Ray at {target}:{port} ({reason})")


def _host_port(text: str, address: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--address {address}: expected the Ray head's HOST:PORT (e.g. 10.0.0.1:6379) or auto"
        )
    return host.strip("[]"), int(port)


def unreachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why nothing accepts a TCP connection at ``host:port`` (``None``: something does).

    A check that takes at most ``timeout`` seconds, for services whose clients retry for minutes
    before giving up (Ray's GCS client, MLflow's HTTP client).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except OSError as error:
        return error.strerror or type(error).__name__
