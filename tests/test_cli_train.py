"""``dynalay train`` through the real console entry point: bad input, config merging, digits.

Bad input must end with exit code 2 and exactly one line on stderr, ``dynalay: error: ...``,
never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import pipeline.data
from pipeline.cli import main
from tests.fixtures_data import NOT_A_PICKLE, write_cifar, write_imdb, write_wikitext

torch.set_num_threads(1)

_CONSOLE_SCRIPT = Path(sys.executable).with_name("dynalay")
# The installed console script where there is one, else the module's __main__ guard.
_DYNALAY = (
    [str(_CONSOLE_SCRIPT)] if _CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "pipeline.cli"]
)
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_ROOT = Path(__file__).resolve().parents[1]


def run_dynalay(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_DYNALAY, *args], capture_output=True, text=True, timeout=timeout, env=_ENV, cwd=_ROOT
    )


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


# Each case: the arguments ({tmp} is a folder of prepared bad inputs) and the message pattern.
# These run through the console script, one process each (each imports torch: ~2.5 s of CPU).
_CONSOLE_CASES: dict[str, tuple[list[str], str]] = {
    "unknown model": (
        ["train", "--model", "resnet", "--dataset", "digits"],
        r"command line: unknown model 'resnet' \(known: dynalay, plain, fpi1, fpi2, fpi3, deq\)",
    ),
    "unknown data set": (
        ["train", "--model", "plain", "--dataset", "svhn"],
        r"unknown data set 'svhn' "
        r"\(known: digits, cifar10, cifar100, wikitext2, imdb, synthetic, fashion_mnist, mnist, "
        r"maze\)",
    ),
    "missing data dir": (
        ["train", "--model", "plain", "--dataset", "cifar10", "--data-dir", "{tmp}/absent"],
        r"--data-dir \S+/absent: no such directory",
    ),
    "truncated cifar tarball": (
        ["train", "--model", "plain", "--dataset", "cifar10", "--data-dir", "{tmp}/truncated"],
        r"\S+/truncated/cifar-10-python.tar.gz\S*: (not a readable gzip tarball|truncated)",
    ),
    "malformed config yaml": (
        ["train", "--config", "{tmp}/malformed.yaml"],
        r"\S+/malformed.yaml: malformed YAML at line 3, column 3",
    ),
    "unknown config key": (
        ["train", "--config", "{tmp}/typo.yaml"],
        r"\S+/typo.yaml: unknown key 'widht' \(known: .*width",
    ),
    "non-integer epochs": (
        ["train", "--model", "plain", "--dataset", "digits", "--epochs", "abc"],
        r"train: argument --epochs: invalid int value: 'abc'",
    ),
    "no command": ([], r"the following arguments are required: COMMAND"),
}

# The same contract, checked in this process through main() (same code path, no process start).
_IN_PROCESS_CASES: dict[str, tuple[list[str], str]] = {
    "no data dir given": (
        ["train", "--model", "plain", "--dataset", "imdb"],
        r"imdb is read from --data-dir, and none was given",
    ),
    "empty data dir": (
        ["train", "--model", "plain", "--dataset", "cifar10", "--data-dir", "{tmp}/empty"],
        r"\S+/empty: neither cifar-10-python.tar.gz nor cifar-10-batches-py/ is there",
    ),
    "corrupt cifar pickle": (
        ["train", "--model", "plain", "--dataset", "cifar100", "--data-dir", "{tmp}/corrupt"],
        r"\S+/cifar-100-python/train: not a CIFAR batch pickle",
    ),
    "aclImdb without neg": (
        ["train", "--model", "plain", "--dataset", "imdb", "--data-dir", "{tmp}/imdb"],
        r"\S+/aclImdb/train/neg: missing",
    ),
    "empty wikitext": (
        ["train", "--model", "plain", "--dataset", "wikitext2", "--data-dir", "{tmp}/wiki"],
        r"\S+/wiki.train.tokens: empty",
    ),
    "config not a mapping": (
        ["train", "--config", "{tmp}/list.yaml"],
        r"\S+/list.yaml: expected a mapping of settings",
    ),
    "config value of the wrong type": (
        ["train", "--config", "{tmp}/wrong_type.yaml"],
        r"\S+/wrong_type.yaml: lr: input should be a valid number.*'fast'",
    ),
    "missing config file": (
        ["train", "--config", "{tmp}/absent.yaml"],
        r"\S+/absent.yaml: no such file",
    ),
    "unknown model in config": (
        ["train", "--config", "{tmp}/unknown_model.yaml"],
        r"\S+/unknown_model.yaml: unknown model 'resnet'",
    ),
    "unknown data set in config": (
        ["train", "--config", "{tmp}/unknown_dataset.yaml"],
        r"unknown data set 'svhn'",
    ),
    "json into a missing folder": (
        ["train", "--model", "plain", "--dataset", "digits", "--json", "{tmp}/absent/out.json"],
        r"--json \S+/absent/out.json: no such directory",
    ),
    "zero epochs": (
        ["train", "--model", "plain", "--dataset", "digits", "--epochs", "0"],
        r"command line: epochs=0 must be a positive integer",
    ),
    "unknown flag": (
        ["train", "--model", "plain", "--dataset", "digits", "--bogus"],
        r"unrecognized arguments: --bogus",
    ),
    "no model": (
        ["train", "--dataset", "digits"],
        r"train needs --model \(or 'model:' in a --config file\)",
    ),
    "unknown device": (
        ["train", "--model", "plain", "--dataset", "digits", "--device", "quantum"],
        r"--device 'quantum': not a torch device",
    ),
    "download without torchvision": (
        ["train", "--model", "plain", "--dataset", "cifar10", "--data-dir", "{tmp}/empty",
         "--download"],
        r"--download needs torchvision, which does not import here \(.*\); "
        r"place cifar-10-python.tar.gz or its extracted folder cifar-10-batches-py/ in \S+/empty",
    ),
}


def _prepare_bad_inputs(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    truncated = write_cifar(tmp / "truncated", "cifar10", "tar").path
    truncated.write_bytes(truncated.read_bytes()[:2000])
    corrupt = write_cifar(tmp / "corrupt", "cifar100", "folder").path
    (corrupt / "train").write_bytes(NOT_A_PICKLE)
    imdb = write_imdb(tmp / "imdb")
    for review in (imdb / "train" / "neg").iterdir():
        review.unlink()
    (imdb / "train" / "neg").rmdir()
    wiki = write_wikitext(tmp / "wiki")
    (wiki / "wiki.train.tokens").write_text("")
    (tmp / "malformed.yaml").write_text("model: plain\nwidth: [16\nlr: 0.1\n")
    (tmp / "typo.yaml").write_text("model: plain\ndataset: digits\nwidht: 16\n")
    (tmp / "list.yaml").write_text("- model\n- plain\n")
    (tmp / "wrong_type.yaml").write_text("model: plain\ndataset: digits\nlr: fast\n")
    (tmp / "unknown_model.yaml").write_text("model: resnet\ndataset: digits\n")
    (tmp / "unknown_dataset.yaml").write_text("model: plain\ndataset: svhn\n")


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_inputs")
    _prepare_bad_inputs(tmp)
    return tmp


@pytest.fixture(scope="module")
def console_runs(bad_inputs: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every console case run once, two at a time (the machine has two cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            case: pool.submit(run_dynalay, *[arg.format(tmp=bad_inputs) for arg in args])
            for case, (args, _) in _CONSOLE_CASES.items()
        }
        return {case: future.result() for case, future in futures.items()}


def assert_one_line_error(code: int, stdout: str, stderr: str, pattern: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dynalay: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert stdout == ""


@pytest.mark.parametrize("case", list(_CONSOLE_CASES))
def test_bad_input_through_the_console_script_exits_2_with_one_line(
    case: str, console_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    run = console_runs[case]
    assert_one_line_error(run.returncode, run.stdout, run.stderr, _CONSOLE_CASES[case][1])


@pytest.mark.parametrize("case", list(_IN_PROCESS_CASES))
def test_bad_input_exits_2_with_one_line(
    case: str, bad_inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case == "download without torchvision" and _torchvision_imports():
        pytest.skip("torchvision imports here")
    args, pattern = _IN_PROCESS_CASES[case]
    code = main([arg.format(tmp=bad_inputs) for arg in args])
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, pattern)


def test_help_exits_0() -> None:
    run = run_dynalay("train", "--help")
    assert run.returncode == 0 and "--data-dir" in run.stdout and run.stderr == ""


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: plain\ndataset: digits\nepochs: 5\nwidth: 8\nseed: 1\nlr: 3e-3\n")
    report_path = tmp_path / "report.json"
    run = run_dynalay("train", "--config", str(config), "--epochs", "1", "--seed", "2",
                   "--device", "cpu", "--no-progress", "--json", str(report_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(report_path.read_text())
    assert (report["model"], report["dataset"], report["device"]) == ("plain", "digits", "cpu")
    assert report["epochs"] == 1 and report["seed"] == 2 and len(report["history"]) == 1
    assert report["model_config"]["kind"] == "plain" and report["model_config"]["width"] == 8
    assert report["train_config"]["lr"] == pytest.approx(3e-3)  # "3e-3" is a string to YAML
    assert 0.0 <= report["accuracy"] <= 1.0 and report["flops_per_sample"] > 0
    for key in ("time_ms_per_sample", "action_freq", "mean_iterations"):
        assert key in report
    assert f"test accuracy        {report['accuracy']:.4f}" in run.stdout


def test_cifar_trains_with_batch_augmentation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_cifar(tmp_path, "cifar10", "tar", per_batch=8)
    augmented_batches = []

    def spying_augmentation(name: str, seed: int = 0):  # type: ignore[no-untyped-def]
        augment = real_augmentation(name, seed)
        assert augment is not None

        def spy(x: torch.Tensor) -> torch.Tensor:
            augmented_batches.append(x.shape)
            return augment(x)

        return spy

    real_augmentation = pipeline.data.training_augmentation
    monkeypatch.setattr(pipeline.data, "training_augmentation", spying_augmentation)
    config = tmp_path / "small.yaml"
    config.write_text("width: 4\nbatch_size: 16\nwarmup_epochs: 0\n")
    code = main(["train", "--model", "plain", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                 "--config", str(config), "--epochs", "1", "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert augmented_batches == [(16, 3, 32, 32), (16, 3, 32, 32), (8, 3, 32, 32)]
    assert "plain on cifar10: 1 epochs on cpu" in capsys.readouterr().out


def test_a_diverging_run_ends_with_one_line_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import models.training

    def diverging_fit(*args: object, **kwargs: object) -> list[dict[str, object]]:
        raise models.training.DivergenceError("training loss is nan at epoch 0, step 3")

    monkeypatch.setattr(models.training, "fit", diverging_fit)
    code = main(["train", "--model", "plain", "--dataset", "digits", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err == (
        "dynalay: error: training diverged: training loss is nan at epoch 0, step 3\n"
    )


def test_dynalay_reaches_95_percent_on_digits_in_10_epochs(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """The headline: the full DynaLay model, default settings, seed 0, 10 epochs, 2-core CPU."""
    report_path = tmp_path / "digits.json"
    started = time.perf_counter()
    run = run_dynalay("train", "--model", "dynalay", "--dataset", "digits", "--epochs", "10",
                   "--seed", "0", "--device", "cpu", "--json", str(report_path), timeout=900)
    wall_seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(report_path.read_text())
    record_property("digits_accuracy", report["accuracy"])
    record_property("digits_wall_seconds", round(wall_seconds, 1))
    print(f"digits: accuracy {report['accuracy']:.4f}, wall {wall_seconds:.1f} s, "
          f"training {report['train_seconds']:.1f} s")
    assert report["accuracy"] >= 0.95
