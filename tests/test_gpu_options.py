"""The GPU speed options where CI can run them (CPU): precision casts, the torch.compile path, the peak table,
the recorded rows, and gpu_check's refusal without CUDA and its FD comparison."""

import math

import pandas as pd
import pytest
import torch

from baselines.runtime import speed_up
from baselines.tasks import get_task
from baselines.tasks.cifar10 import CIFAR10
from baselines.trace import Trace, count_nfe
from evaluate import gpu_check
from evaluate.cost import peak_tflops
from evaluate.run import main


class TinyCifar(CIFAR10):
    """cifar10's architecture, 8-16 channels wide."""

    def architecture(self):
        return {**super().architecture(), "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4}


def test_bf16_forward_returns_float32_and_keeps_nfe_hooks():
    dash, fast = get_task("fmnist").dash(), speed_up(get_task("fmnist").dash(), "bf16")
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([700, 100])
    trace = Trace()
    with torch.inference_mode(), count_nfe(trace, 2, dash=fast):
        got = fast(x, t).sample
    want = dash(x, t).sample.detach()
    assert got.dtype == torch.float32 and trace.nfe["dash"] == 1
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_compile_path_takes_python_timesteps_as_tensors(monkeypatch):
    """torch.compile's inductor takes ~40 s per network on a busy CPU; dynamo's eager backend runs the same
    wrapper and tracing in seconds."""
    from morse.pretrained import load_dot

    real, modes = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, mode: modes.append(mode) or real(fn, backend="eager"))
    dot, _ = load_dot("fmnist", get_task("fmnist").dash())
    dot.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        want = dot(x, x, x, 400, 500)
        speed_up(dot, "fp32", "reduce-overhead")
        got = dot(x, x, x, 400, 500)
    assert modes == ["reduce-overhead"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_peak_table():
    assert peak_tflops("NVIDIA H200", "fp16") == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.0)
    assert peak_tflops("NVIDIA H100 80GB HBM3", "tf32") == pytest.approx(494.7)
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(19.5)
    assert peak_tflops("NVIDIA L4", "fp16") == pytest.approx(121.0)
    assert peak_tflops("NVIDIA GeForce RTX 4090", "bf16") == pytest.approx(165.2)
    assert math.isnan(peak_tflops("Tesla T4", "bf16")) and math.isnan(peak_tflops("cpu (AMD EPYC)", "fp32"))


def test_latency_only_records_dtype_compile_and_peak_share(tmp_path):
    out = tmp_path / "latency"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--task", f"{__name__}:TinyCifar", "--methods", "ddim", "--latency-only",
                     "--random-weights", "--latency-batches", "1", "--dtype", "bf16", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    table = pd.read_csv(out / "cifar10.csv")
    assert (table.dtype == "bf16").all() and (table["compile"] == "none").all() and table.peak_share.isna().all()
    assert "bf16, compile none" in (out / "cifar10.md").read_text()


def test_gpu_check_without_cuda_is_one_error_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "CUDA" in err[0]
    assert not (tmp_path / "g").exists()


def test_gpu_check_fd_comparison():
    ref = pd.DataFrame(dict(method=["ddim", "ddim", "ddim"], budget=[4.0, 4.0, 8.0],
                            metric=["fd_fmnist", "fd_fmnist_ci_low", "fd_fmnist"], value=[10.0, 9.0, 5.0]))
    close = ref.assign(value=[10.05, 1.0, 5.02])
    ok, lines = gpu_check.compare_fd(ref, close)
    assert ok and len(lines) == 4
    assert not gpu_check.compare_fd(ref, ref.assign(value=[10.2, 9.0, 5.0]))[0]
    assert not gpu_check.compare_fd(ref, ref.assign(method="dpm"))[0]
