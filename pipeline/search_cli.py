"""The search-side subcommands of ``dynalay``: search, pareto, ui, submit and jobs.

Each handler takes the parsed arguments and returns an exit code; bad input raises
:class:`~pipeline.errors.UsageError`, which :mod:`pipeline.cli` prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.cli_types import fold_count, non_negative_float, positive_float, positive_int, seed_value, tcp_port
from pipeline.errors import UsageError
from pipeline.outcome import OBJECTIVES
from pipeline.pruning import PRUNERS
from pipeline.samplers import SAMPLERS

DEFAULT_RUN_DIR = Path("runs")


def register(subparsers: Any) -> None:
    """Add search, pareto, ui, submit and jobs to the ``dynalay`` parser."""
    search = subparsers.add_parser("search", help="run a cross-validated multi-objective search")
    add_search_arguments(search)
    search.set_defaults(handler=search_command)

    pareto = subparsers.add_parser("pareto", help="show, select and export the Pareto front")
    pareto.add_argument("--experiment", required=True, help="the search's experiment name")
    _add_store_arguments(pareto)
    pick = pareto.add_mutually_exclusive_group()
    pick.add_argument("--select", metavar="EXPR", help="e.g. 'cv_accuracy>=0.97' or 'cv_flops<2e5,cv_accuracy>=0.9'")
    pick.add_argument("--knee", action="store_true", help="pick the knee of the front")
    pareto.add_argument(
        "--operating-point", metavar="RULE",
        help="a point of each chosen trial's operating curve (bias on the agent's plain action): "
        "knee | max-accuracy | flops<=X | bias=B; the export carries its route_bias",
    )
    pareto.add_argument("--export", type=Path, metavar="FILE", help="write the chosen configs as YAML for `dynalay train --config`")
    pareto.set_defaults(handler=pareto_command)

    ui = subparsers.add_parser("ui", help="open the MLflow UI on the search's tracking store")
    _add_store_arguments(ui)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=tcp_port, default=5000)
    ui.set_defaults(handler=ui_command)

    submit = subparsers.add_parser("submit", help="submit a search as a Ray job to a cluster")
    submit.add_argument("--address", required=True, help="the Ray dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--no-follow", action="store_true", help="print the job id and return")
    add_search_arguments(submit, with_address=False)
    submit.set_defaults(handler=submit_command)

    jobs = subparsers.add_parser("jobs", help="status, logs or stop of a submitted search")
    jobs.add_argument("action", choices=["status", "logs", "stop"])
    jobs.add_argument("job_id")
    jobs.add_argument("--address", required=True, help="the Ray dashboard, e.g. http://HEAD:8265")
    jobs.set_defaults(handler=jobs_command)


def add_search_arguments(parser: argparse.ArgumentParser, with_address: bool = True) -> None:
    """The flags of ``dynalay search`` (``dynalay submit`` passes them through)."""
    parser.add_argument("--space", required=True, help="a packaged space (digits, cifar10, ...) or a YAML file")
    parser.add_argument("--num-samples", type=positive_int, help="trial budget (default: the space's)")
    parser.add_argument("--folds", type=fold_count, help="cross-validation folds (default: the space's)")
    parser.add_argument("--max-concurrent", type=positive_int, help="trials at once (default: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=positive_float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=non_negative_float, default=0.0, help="fractions such as 0.25 share a GPU")
    parser.add_argument("--pruner", choices=list(PRUNERS), help="default: the space's")
    parser.add_argument("--sampler", choices=list(SAMPLERS), help="default: the space's")
    parser.add_argument("--experiment", help="MLflow experiment and search name (default: the space's name)")
    _add_store_arguments(parser)
    parser.add_argument("--storage", help="Optuna RDB storage URL (default: SQLite in the run directory)")
    if with_address:
        parser.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    parser.add_argument("--data-dir", help="where the real data sets are read from")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search")
    parser.add_argument("--seed", type=seed_value, help="sampler and fold seed (default: the space's)")


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in the run directory)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="where searches live (default: ./runs)")


# -- handlers -------------------------------------------------------------------------------
def search_command(args: argparse.Namespace) -> int:
    from pipeline.preflight import check_search
    from pipeline.search import SearchOptions, SearchStopped, run_search
    from pipeline.space import load_space

    space = load_space(args.space)
    options = SearchOptions(
        space=space,
        experiment=space.name if args.experiment is None else args.experiment,
        run_dir=args.run_dir.resolve(),
        # On --resume, no flag keeps the recorded budget; a larger one extends it.
        num_samples=args.num_samples if args.resume else (args.num_samples or space.num_samples),
        folds=args.folds or space.folds,
        max_concurrent=args.max_concurrent or space.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        pruner=args.pruner or space.pruner,
        sampler=args.sampler or space.sampler,
        tracking_uri=args.tracking_uri,
        storage=args.storage,
        address=args.address,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        resume=args.resume,
        seed=space.seed if args.seed is None else args.seed,
    )
    # Everything that can be checked before Ray starts and the stores are written is.
    check_search(options, _sources(args))
    try:
        options = run_search(options)
    except SearchStopped as stopped:
        print(f"dynalay: {stopped}", file=sys.stderr)
        return stopped.exit_code
    print()
    _print_front(options.resolved_tracking_uri, options.experiment)
    print(f"\nBrowse every trial:  dynalay ui --run-dir {args.run_dir}" + (
        f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
    ))
    print(f"Export the front:    dynalay pareto --experiment {options.experiment}"
          f"{_store_flags(args)} --export front.yaml")
    return 0


def pareto_command(args: argparse.Namespace) -> int:
    from pipeline.pareto import export_configs, knee, pareto_front, select
    from pipeline.preflight import check_writable_path
    from pipeline.run_config import run_config_keys
    from pipeline.search_records import check_readable_store, fail_fast_over_http, load_search

    # Refused before reading, and reading never creates, migrates or waits minutes on a store.
    if args.export:
        check_writable_path(args.export, "--export", directory=False)
    tracking_uri = _tracking_uri(args)
    check_readable_store(tracking_uri, _store_source(args))
    fail_fast_over_http()
    search = load_search(tracking_uri, args.experiment)
    front = pareto_front(search.trials)
    if not front:
        raise UsageError(f"--experiment: {args.experiment!r} has no finished trial yet")
    chosen = front
    if args.knee:
        chosen = [knee(front)]
    elif args.select:
        chosen = select(front, args.select)
        if not chosen:
            raise UsageError(f"--select: no trial on the front satisfies {args.select!r}")
    print(format_front(front, chosen if chosen is not front else None))
    if args.operating_point:
        chosen = [_at_operating_point(tracking_uri, record, args.operating_point) for record in chosen]
    if args.export:
        keys = set(run_config_keys())
        fixed = {k: v for k, v in search.params.items() if k in keys}
        written = export_configs(
            chosen, args.export, search.params.get("dataset", ""), search.params.get("model", "dynalay"), fixed
        )
        for path in written:
            print(f"wrote {path}")
    return 0


def _at_operating_point(tracking_uri: str, record: Any, rule: str) -> Any:
    """``record`` with the ``route_bias`` of the point ``rule`` picks on its operating curve."""
    import dataclasses

    from pipeline.operating_curve import choose_point, load_trial_curve

    if record.run_id is None:
        raise UsageError(f"--operating-point: trial {record.trial_id} has no MLflow run yet")
    point = choose_point(load_trial_curve(tracking_uri, record.run_id), rule)
    print(
        f"trial {record.trial_id} at {rule}: route_bias {point.bias:g}, accuracy "
        f"{100 * point.accuracy:.2f} %, {point.flops:.4g} FLOPs/sample, "
        f"{100 * point.fpi_fraction:.0f} % of samples to FPI"
    )
    return dataclasses.replace(record, params={**record.params, "route_bias": point.bias})


def ui_command(args: argparse.Namespace) -> int:
    from pipeline.search_records import check_readable_store

    tracking_uri = _tracking_uri(args)
    check_readable_store(tracking_uri, _store_source(args))
    _check_port_free(args.host, args.port)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [
        mlflow, "ui", "--backend-store-uri", tracking_uri,
        "--host", args.host, "--port", str(args.port),
    ]
    if args.tracking_uri is None:
        command += ["--default-artifact-root", (args.run_dir / "mlartifacts").resolve().as_uri()]
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    return _run_process_group(command)


def _run_process_group(command: list[str], grace_s: float = 10.0) -> int:
    """Run ``command`` in its own process group until it ends; SIGTERM/SIGINT stop the group.

    The MLflow server runs its workers as child processes that a signal to the server alone
    would leave behind; the whole group gets SIGTERM, and SIGKILL ``grace_s`` later. A stop
    asked for by a signal is a normal end: exit code 0.
    """
    process = subprocess.Popen(command, start_new_session=True)
    stop_asked: list[float] = []

    def forward(signum: int, frame: object) -> None:
        stop_asked.append(time.monotonic())
        _signal_group(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (code := process.poll()) is None:
            if stop_asked and time.monotonic() - stop_asked[0] > grace_s:
                _signal_group(process.pid, signal.SIGKILL)
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # The server's workers may outlive the server itself; none may outlive the command.
        _signal_group(process.pid, signal.SIGKILL)
    return 0 if stop_asked else code


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group has already ended


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on; MLflow would report it and exit 0."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UsageError(f"--port {port}: already in use on {host}") from None
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None


def submit_command(args: argparse.Namespace) -> int:
    from pipeline.jobs import JobFailedError, submit_search
    from pipeline.preflight import check_submission
    from pipeline.space import load_space

    # The job would fail on the cluster after the upload; what can be checked here is.
    space = load_space(args.space)
    seed = space.seed if args.seed is None else args.seed
    check_submission(space, space.name if args.experiment is None else args.experiment, seed, _sources(args))
    try:
        submit_search(
            args.address,
            _forwarded_search_args(args),
            follow=not args.no_follow,
            tracking_uri=args.tracking_uri,
        )
    except JobFailedError as failed:
        print(f"dynalay: {failed}", file=sys.stderr)
        return 1
    return 0


def jobs_command(args: argparse.Namespace) -> int:
    from pipeline import jobs

    if args.action == "status":
        print(jobs.job_status(args.address, args.job_id))
    elif args.action == "logs":
        print(jobs.job_logs(args.address, args.job_id), end="")
    else:
        jobs.stop_job(args.address, args.job_id)
        print(f"stopping {args.job_id}")
    return 0


# -- helpers --------------------------------------------------------------------------------
def format_front(front: list[Any], chosen: list[Any] | None = None) -> str:
    """The front as an aligned table, cheapest first; ``*`` marks chosen rows."""
    names = sorted({k for r in front for k in r.params})
    header = ["", "trial", *OBJECTIVES, *names]
    picked = {r.trial_id for r in chosen} if chosen else set()
    rows = [
        ["*" if r.trial_id in picked else "", r.trial_id, f"{r.cv_accuracy:.4f}", f"{r.cv_flops:,.0f}",
         *(_short(r.params.get(n, "")) for n in names)]
        for r in front
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    return f"Pareto front ({len(front)} trials; maximise accuracy, minimise FLOPs/sample)\n" + "\n".join(lines)


def _print_front(tracking_uri: str, experiment: str) -> None:
    from pipeline.pareto import pareto_front
    from pipeline.search_records import load_search

    search = load_search(tracking_uri, experiment)
    counts = {s: sum(t.state == s for t in search.trials) for s in ("finished", "pruned", "failed")}
    print(f"{len(search.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    front = pareto_front(search.trials)
    print(format_front(front) if front else "No finished trial: no Pareto front.")


def _short(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isfinite(number) and number == int(number) and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.3g}"


def _tracking_uri(args: argparse.Namespace) -> str:
    from pipeline.search import default_tracking_uri

    return args.tracking_uri or default_tracking_uri(args.run_dir)


def _store_source(args: argparse.Namespace) -> str:
    from pipeline.preflight import store_source

    return store_source("--tracking-uri", args.tracking_uri, args.run_dir)


def _sources(args: argparse.Namespace) -> Any:
    from pipeline.preflight import describe_sources
    from pipeline.space import space_source

    return describe_sources(space_source(args.space), args.experiment, args.folds)


def _store_flags(args: argparse.Namespace) -> str:
    flags = "" if args.run_dir == DEFAULT_RUN_DIR else f" --run-dir {args.run_dir}"
    return flags + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")


def _forwarded_search_args(args: argparse.Namespace) -> list[str]:
    """The ``dynalay search`` command line equivalent to a ``dynalay submit``'s arguments."""
    argv = []
    for name, value in vars(args).items():
        if name in ("address", "no_follow", "handler", "command") or value in (None, False):
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


