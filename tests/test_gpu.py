"""On a CUDA device (skipped without one; `python -m evaluate.gpu_check` runs them): CUDA graphs and half
precision give what eager fp32 gives, and a sweep records how it ran."""

import pandas as pd
import pytest
import torch

from baselines.runtime import set_precision, speed_up
from baselines.tasks import get_task
from evaluate.run import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _dash():
    return get_task("fmnist").dash().cuda()


@pytest.mark.parametrize("dtype,atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_cuda_graph_replays_the_eager_forward(dtype, atol):
    set_precision("fp32")
    eager, graphed = _dash(), speed_up(_dash(), dtype, "graphs")
    for batch in (3, 5, 3):  # a second signature, then the first again: each replays its own capture
        x, t = torch.randn(batch, 1, 32, 32, device="cuda"), torch.randint(0, 1000, (batch,), device="cuda")
        with torch.inference_mode():
            want, got = eager(x, t).sample, graphed(x, t).sample
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_dot_graph_with_python_timesteps():
    from morse.pretrained import load_dot

    dash = _dash()
    dot, _ = load_dot("fmnist", dash)
    dot = dot.cuda().eval()
    x = torch.randn(4, 1, 32, 32, device="cuda")
    with torch.inference_mode():
        want = dot(x, x, x, 400, 500)
        speed_up(dot, "fp32", "graphs")
        got = [dot(x, x, x, 400, 500), dot(x, x, x, 300, 500)]
    torch.testing.assert_close(got[0], want, atol=1e-4, rtol=0)
    assert (got[1] - got[0]).abs().max() > 0  # the timestep is an input of the graph, not baked into it


def test_cuda_sweep_records_dtype_compile_and_device(tmp_path):
    out = tmp_path / "r"
    argv = ["--methods", "ddim", "--budgets", "2", "--num-samples", "250", "--force", "--bootstrap", "5",
            "--device", "cuda", "--dtype", "fp16", "--compile", "graphs", "--out", str(out)]
    assert main(argv) == 0
    df = pd.read_csv(out / "results.csv")
    assert (df.dtype == "float16").all() and (df["compile"] == "graphs").all()
    assert df.device_name.str.len().min() > 0 and (df.devices == 1).all()
    assert "peak_share" in (out / "index.md").read_text()
