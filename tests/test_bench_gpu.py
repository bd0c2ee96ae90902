"""`make bench-gpu` (benchmarks.gpu): its CPU-side logic; the GPU figures need a CUDA host."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import gpu

torch.set_num_threads(1)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(),
                                   reason="checks the no-CUDA exit; this host has CUDA")


@needs_no_cuda
@pytest.mark.parametrize("argv, code", [([], gpu.EXIT_NO_CUDA), (["--full"], gpu.EXIT_NO_CUDA),
                                        (["--require-cuda"], gpu.EXIT_NO_CUDA_REQUIRED)])
def test_without_cuda_it_says_so_in_one_line(argv: list[str], code: int, capsys) -> None:
    assert gpu.main(argv) == code
    out = capsys.readouterr()
    assert out.out.strip().splitlines() == [gpu.NO_CUDA_LINE]
    assert out.err == ""


def test_unknown_kind_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--device", "cpu", "--kinds", "plain,resnet"])
    assert exit_info.value.code == 2
    assert "--kinds: resnet" in capsys.readouterr().err


def test_cpu_dry_run_measures_every_rate(capsys) -> None:
    assert gpu.main(["--device", "cpu", "--width", "4", "--kinds", "plain,dynalay", "--no-search"]) == 0
    text = capsys.readouterr().out
    assert "| plain |" in text and "| dynalay |" in text
    assert "airbench94_muon.py" in text and "2.59 s" in text


def test_throughput_is_finite_and_counts_flops() -> None:
    data = gpu.synthetic_images(32, seed=0)
    t = gpu.measure_kind("fpi3", data, batch=16, device=torch.device("cpu"), seed=0, width=4)
    assert set(t.train_images_per_s) == {"fp32", "bf16"}
    assert all(math.isfinite(v) and v > 0 for v in t.train_images_per_s.values())
    assert t.inference_images_per_s > 0 and t.peak_memory_bytes is None
    plain = gpu.measure_kind("plain", data, batch=16, device=torch.device("cpu"), seed=0, width=4)
    assert t.forward_flops_per_image > plain.forward_flops_per_image > 0  # FPI iterations cost
