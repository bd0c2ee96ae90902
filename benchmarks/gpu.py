"""GPU paths in one command: training throughput on CUDA in fp32 and bf16, and a search whose
trials share one GPU.

    make bench-gpu                                   # = python -m benchmarks.gpu --full
    python -m benchmarks.gpu [--quick|--full] [--kinds plain,dynalay] [--no-search]

Without a CUDA device it prints one line, ``bench-gpu: no CUDA device ...``, and exits with
``EXIT_NO_CUDA`` (0, so that `make bench-gpu` on a CPU host is not an error; ``--require-cuda``
makes it 3). ``--device cpu`` runs the same code on the CPU at small sizes (a dry run of the
logic, not a measurement to report).

What it measures, per model kind (Model 0, Model 3, DynaLay, the TorchDEQ baseline; width 32,
the thesis' defaults) on CIFAR-10-shaped synthetic images (3×32×32, 10 classes; timing only):

* training throughput, images/s: `models.training.fit` itself (its bf16 autocast on CUDA when
  ``amp``), one warm-up epoch, then one timed epoch of ``images`` images, with ``amp`` off
  (fp32) and on (bf16);
* inference throughput, images/s: `models.training.evaluate` on the same images;
* peak CUDA memory of the timed training epoch.

They are printed beside airbench's record, airbench94_muon: 94.01 % on CIFAR-10 in 2.59 s on a
400 W A100 (0.29 PFLOPs, torch 2.4.1; github.com/KellerJordan/cifar10-airbench), i.e. about
112 TFLOP/s sustained, next to ours from the measured images/s and the FLOPs per training image
(3× the forward FLOPs per sample: forward plus a backward of twice its cost).

Fractional GPUs per trial (``--search``, the default on CUDA): ``dynalay search`` on the digits
space with ``--gpus-per-trial 0.5 --cpus-per-trial 1``, so Ray places two trials on the one GPU
(pipeline.search gives each trial ``{"cpu": cpus_per_trial, "gpu": gpus_per_trial}``; a trial
trains on CUDA when Ray made a GPU visible to it: pipeline.trial). Reported: exit status, wall
time, trials completed.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import _common as C

NAME = "gpu"
EXIT_NO_CUDA = 0
EXIT_NO_CUDA_REQUIRED = 3
NO_CUDA_LINE = "bench-gpu: no CUDA device (torch.cuda.is_available() is False): nothing measured"

KINDS: tuple[str, ...] = ("plain", "fpi3", "dynalay", "deq")
AIRBENCH = {"script": "airbench94_muon.py", "accuracy": 0.9401, "seconds": 2.59, "pflops": 0.29,
            "gpu": "NVIDIA A100 (400 W)", "torch": "2.4.1"}
CIFAR_TRAIN_IMAGES = 50_000

MODES = {
    "quick": {"images": 10_240, "batch": 512, "search_samples": 2},
    "full": {"images": 50_000, "batch": 512, "search_samples": 4},
    "dry": {"images": 32, "batch": 16, "search_samples": 0},  # --device cpu: logic only
}


@dataclasses.dataclass
class Throughput:
    """One model kind's measured rates."""

    kind: str
    train_images_per_s: dict[str, float]
    inference_images_per_s: float
    forward_flops_per_image: float
    peak_memory_bytes: int | None


def synthetic_images(n: int, seed: int) -> Any:
    """CIFAR-10-shaped N(0, 1) images and uniform labels (timing only; values do not matter
    except through the FPI iteration counts, which stay those of an untrained model)."""
    from models import TensorPair

    generator = torch.Generator().manual_seed(seed)
    return TensorPair(torch.randn(n, 3, 32, 32, generator=generator),
                      torch.randint(0, 10, (n,), generator=generator))


def measure_kind(kind: str, data: Any, batch: int, device: torch.device, seed: int,
                 width: int = 32) -> Throughput:
    """Training images/s in fp32 and bf16 (one warm-up epoch first, each), inference images/s."""
    from models import ModelConfig, ModelSpec, TrainConfig, build_model, evaluate, fit

    spec = ModelSpec("image", (3, 32, 32), 10)
    clock = C.Clock(device)
    rates: dict[str, float] = {}
    peak: int | None = None
    model = None
    for precision, amp in (("fp32", False), ("bf16", True)):
        torch.manual_seed(seed)
        model = build_model(ModelConfig(kind=kind, width=width), spec)
        train_cfg = TrainConfig(epochs=1, warmup_epochs=0, batch_size=batch, seed=seed, amp=amp)
        fit(model, data, train_cfg, device)  # warm-up: kernels chosen, allocator grown
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = clock.now()
        fit(model, data, train_cfg, device)
        rates[precision] = len(data) / (clock.now() - started)
        if device.type == "cuda" and amp:
            peak = int(torch.cuda.max_memory_allocated(device))
    assert model is not None
    started = clock.now()
    result = evaluate(model, data, device)
    inference = len(data) / (clock.now() - started)
    return Throughput(kind, rates, inference, float(result.flops_per_sample), peak)


def fractional_search(samples: int, run_dir: Path) -> dict[str, Any]:
    """`dynalay search` on the digits space with two trials per GPU; its outcome."""
    command = [sys.executable, "-m", "pipeline.cli", "search", "--space", "digits",
               "--num-samples", str(samples), "--folds", "2", "--cpus-per-trial", "1",
               "--gpus-per-trial", "0.5", "--run-dir", str(run_dir), "--experiment", "bench-gpu"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=C.ROOT, capture_output=True, text=True)
    return {"command": " ".join(command[1:]), "exit_status": done.returncode,
            "wall_s": time.perf_counter() - started, "output_tail": (done.stdout + done.stderr)[-2000:]}


def airbench_rate() -> float:
    """airbench94_muon's sustained FLOP/s: its total FLOPs over its time."""
    return AIRBENCH["pflops"] * 1e15 / AIRBENCH["seconds"]


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for t in payload["throughput"]:
        train_flops = 3 * t["forward_flops_per_image"]
        bf16 = t["train_images_per_s"]["bf16"]
        rows.append((
            t["kind"],
            C.fmt(t["train_images_per_s"]["fp32"], 4),
            C.fmt(bf16, 4),
            C.fmt(t["inference_images_per_s"], 4),
            C.fmt(CIFAR_TRAIN_IMAGES / bf16, 3),
            C.fmt(train_flops * bf16 / 1e12, 3),
            "–" if t["peak_memory_bytes"] is None else C.fmt(t["peak_memory_bytes"] / 2**20, 4),
        ))
    a = AIRBENCH
    lines = [
        "# GPU paths",
        "",
        C.env_line(payload["environment"]),
        "",
        f"CIFAR-10-shaped synthetic images, batch {payload['settings']['batch']}, "
        f"{payload['settings']['images']} images per timed epoch, models at width "
        f"{payload['width']} (other settings the thesis' defaults); `models.training.fit` with "
        "bf16 autocast (`amp`) off and on.",
        "",
        C.markdown_table(("model", "train img/s fp32", "train img/s bf16", "inference img/s",
                          "s per CIFAR-10 epoch (bf16)", "train TFLOP/s (bf16)",
                          "peak MiB (bf16)"), rows),
        "",
        f"Reference: airbench ({a['script']}) reaches {100 * a['accuracy']:.2f} % on CIFAR-10 in "
        f"{a['seconds']} s on an {a['gpu']} with torch {a['torch']}: {a['pflops']} PFLOPs, "
        f"{airbench_rate() / 1e12:.0f} TFLOP/s sustained.",
    ]
    search = payload.get("search")
    if search:
        lines += ["", f"Fractional GPUs per trial: `{search['command']}` exited "
                      f"{search['exit_status']} in {search['wall_s']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = C.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated model kinds (default {','.join(KINDS)})")
    parser.add_argument("--width", type=int, default=32, help="channel width (default 32, the thesis')")
    parser.add_argument("--no-search", dest="search", action="store_false",
                        help="skip the search with fractional GPUs per trial")
    parser.add_argument("--require-cuda", action="store_true",
                        help=f"exit {EXIT_NO_CUDA_REQUIRED} instead of {EXIT_NO_CUDA} without CUDA")
    args = C.parse(parser, argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: {', '.join(unknown)} not among {', '.join(KINDS)}")
    if args.device is None or args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(NO_CUDA_LINE, flush=True)
            return EXIT_NO_CUDA_REQUIRED if args.require_cuda else EXIT_NO_CUDA
    device = torch.device(args.device or "cuda")
    C.set_threads(device, args.threads)
    settings = dict(MODES["dry" if device.type == "cpu" else args.mode])
    env = C.environment(device, args.mode, args.seed)
    started = time.perf_counter()
    data = synthetic_images(settings["images"], args.seed)
    throughput = []
    for kind in kinds:
        t = measure_kind(kind, data, settings["batch"], device, args.seed, args.width)
        C.note(f"{kind}: train {t.train_images_per_s['fp32']:.0f} img/s fp32, "
               f"{t.train_images_per_s['bf16']:.0f} img/s bf16; inference {t.inference_images_per_s:.0f} img/s")
        throughput.append(dataclasses.asdict(t))
    payload: dict[str, Any] = {"environment": env, "settings": settings, "airbench": AIRBENCH,
                               "width": args.width, "throughput": throughput}
    if args.search and device.type == "cuda" and settings["search_samples"] > 0:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as run_dir:
            payload["search"] = fractional_search(settings["search_samples"], Path(run_dir))
    C.finish(env, started)
    text = markdown(payload)
    C.note(text)
    if device.type == "cuda":
        C.write_results(args.out, NAME, payload, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
