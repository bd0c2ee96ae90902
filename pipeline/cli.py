"""The ``dynalay`` command.

Each subcommand is one ``_add_<command>`` function that registers its arguments and one
``_<command>`` function that runs it and returns the exit code. :func:`main` turns every
:class:`~pipeline.errors.UsageError`, argparse's complaints included, into one line on stderr,
``dynalay: error: ...``, and exit code 2. Heavy imports (torch, the models) happen inside the
subcommands, so ``dynalay --help`` and bad flags answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline import search_cli
from pipeline.cli_types import positive_int, seed_value
from pipeline.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["main"]

PROG = "dynalay"
USAGE_ERROR = 2
"""Exit code for bad input, the same argparse uses for bad flags."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing usage and exiting.

    argparse would print the usage block and the message: several lines. Raising keeps the
    one-line contract in one place, :func:`main`. Subparsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        raise UsageError(f"{command}: {message}" if command else message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dynalay`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except UsageError as error:
        # One line whatever the message holds (a wrapped library error may carry newlines).
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="DynaLay Search: train DynaLay models and search their accuracy-compute "
        "Pareto front.",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    _add_train(commands)
    search_cli.register(commands)
    return parser


# --------------------------------------------------------------------------------------- train


def _add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="train one model on one data set and report accuracy and compute",
        description="Train one model on a data set's train split and evaluate it on the test "
        "split. Settings come from the defaults (the thesis' values), then --config, then the "
        "flags.",
    )
    train.add_argument("--model", metavar="NAME",
                       help="dynalay, plain, fpi1, fpi2, fpi3 or deq "
                       "(default: 'model' in --config)")
    train.add_argument("--dataset", metavar="NAME",
                       help="digits, cifar10, cifar100, wikitext2, imdb, synthetic, "
                       "fashion_mnist, mnist or maze (default: 'dataset' in --config)")
    train.add_argument("--config", metavar="FILE",
                       help="YAML of flat run-config keys (ModelConfig/TrainConfig field names, "
                       "model, dataset)")
    train.add_argument("--epochs", type=int, metavar="N", help="training epochs, warm-up included")
    train.add_argument("--device", metavar="D",
                       help="torch device (default: cuda if available, else cpu)")
    train.add_argument("--seed", type=seed_value, metavar="S",
                       help="seeds the data split, the batch order and the model's randomness")
    train.add_argument("--data-dir", metavar="DIR", help="folder holding the data set's files")
    train.add_argument("--download", action="store_true",
                       help="fetch missing CIFAR files through torchvision where it imports")
    train.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=positive_int, metavar="N",
                       help="torch CPU threads (default: OMP_NUM_THREADS if set, else the CPUs "
                       "this process may use that others leave free, re-checked every epoch)")
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    import torch

    from models.factory import build_model
    from models.training import DivergenceError, evaluate, fit
    from pipeline.data import load_dataset, training_augmentation
    from pipeline.run_config import load_run_config, split_run_config
    from pipeline.threads import ThreadGovernor, requested_from_environment

    # Every check that needs no data comes first, so a typo fails before minutes of loading.
    values = load_run_config(args.config) if args.config else {}
    model_name = _required(args.model, values, "model", args.config)
    dataset_name = _required(args.dataset, values, "dataset", args.config)
    flags = {"model": model_name, "epochs": args.epochs, "seed": args.seed}
    merged = {**values, **{key: value for key, value in flags.items() if value is not None}}
    # The file's own values were checked as it loaded; what fails now came from the flags.
    model_cfg, train_cfg = split_run_config(merged, source="command line")
    augment = training_augmentation(dataset_name, seed=train_cfg.seed)  # checks the name
    device = _resolve_device(args.device)
    json_path = Path(args.json) if args.json else None
    if json_path is not None and not json_path.parent.is_dir():
        raise UsageError(f"--json {json_path}: no such directory {json_path.parent}")

    dataset = load_dataset(dataset_name, args.data_dir, args.download, seed=train_cfg.seed)
    torch.manual_seed(train_cfg.seed)  # the model's initial weights
    model = build_model(model_cfg, dataset.spec)
    threads = ThreadGovernor(requested=args.threads or requested_from_environment())
    started = time.perf_counter()
    try:
        history = fit(model, dataset.train, train_cfg, device, progress=not args.no_progress,
                      augment=augment, on_epoch=threads.on_epoch)
    except DivergenceError as error:
        # A failed run, not bad input: one line like every error, but exit code 1.
        print(f"{PROG}: error: training diverged: {error}", file=sys.stderr)
        return 1
    train_seconds = time.perf_counter() - started
    result = evaluate(model, dataset.test, device)

    report = {
        "model": model_name,
        "dataset": dataset_name,
        "device": str(device),
        "seed": train_cfg.seed,
        "epochs": train_cfg.epochs,
        "train_samples": len(dataset.train),
        "test_samples": len(dataset.test),
        "train_seconds": train_seconds,
        "threads_per_epoch": threads.per_epoch,
        **result.to_dict(),
        "model_config": model_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "history": history,
    }
    print(_summary(report))
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
        except OSError as error:
            raise UsageError(f"--json {json_path}: cannot write ({error.strerror})") from None
    return 0


def _required(flag: str | None, values: dict[str, Any], key: str, config: str | None) -> str:
    """The flag's value, else the config file's ``key``, else a UsageError."""
    if flag is not None:
        return flag
    if key in values:
        if not isinstance(values[key], str):
            raise UsageError(f"{config}: {key} must be a name, got {values[key]!r}")
        return values[key]
    raise UsageError(f"train needs --{key} (or '{key}:' in a --config file)")


def _resolve_device(name: str | None) -> torch.device:
    """``name`` as a torch device that exists here; default cuda if available, else cpu."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {name!r}: not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UsageError(f"--device {name}: only {count} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: unsupported device type {device.type!r}")
    return device


def _summary(report: dict[str, Any]) -> str:
    """The report as a short human-readable table."""
    actions = " ".join(f"{share:.3f}" for share in report["action_freq"])
    iterations = " ".join(f"L{i + 1} {n:.2f}" for i, n in enumerate(report["mean_iterations"]))
    lines = [
        f"{report['model']} on {report['dataset']}: {report['epochs']} epochs on "
        f"{report['device']} in {report['train_seconds']:.1f} s",
        f"  test accuracy        {report['accuracy']:.4f}  ({report['test_samples']} samples)",
        f"  FLOPs per sample     {report['flops_per_sample']:.4g}",
        f"  time per sample      {report['time_ms_per_sample']:.4f} ms",
        f"  actions 0/1/2/3      {actions}",
        f"  mean FPI iterations  {iterations}",
    ]
    if report.get("perplexity") is not None:
        lines.append(f"  test perplexity      {report['perplexity']:.2f}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """JSON for the tensors and NumPy values a history or result may carry."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


if __name__ == "__main__":
    sys.exit(main())
