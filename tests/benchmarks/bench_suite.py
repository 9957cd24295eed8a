"""Benchmarks (pytest-benchmark): `tox -e bench`, or
    python -m pytest tests/benchmarks/bench_suite.py --benchmark-only

Not collected by the plain test run (the file name is not test_*.py). Ratios that matter
(Dash/Dot = N, harness cost per step vs a Dash step) are stored in each benchmark's extra_info.
"""

import numpy as np
import pytest
import torch

from baselines.denoisers import Denoiser
from baselines.noise import initial_noise
from baselines.registry import get_baseline
from baselines.runtime import tune_malloc
from baselines.tasks import get_task
from evaluate.features import ClassifierFeatures
from evaluate.frechet import feature_stats, frechet_distance
from morse import Interleave, Morse
from morse.pretrained import load_dot

tune_malloc()
TASK = get_task("fmnist")
DASH = TASK.dash()
DOT, CARD = load_dot("fmnist", DASH)
BATCH = 64


@pytest.fixture(scope="module")
def batch():
    x = torch.randn(BATCH, *TASK.image_shape)
    return x, torch.full((BATCH,), 500)


def test_dash_forward(benchmark, batch):
    x, t = batch
    with torch.inference_mode():
        benchmark(lambda: DASH(x, t))
    benchmark.extra_info["ms_per_image"] = benchmark.stats.stats.median / BATCH * 1e3


def test_dot_forward(benchmark, batch):
    x, t = batch
    with torch.inference_mode():
        benchmark(lambda: DOT(x, x, x, t, t + 100))
    benchmark.extra_info["ms_per_image"] = benchmark.stats.stats.median / BATCH * 1e3


class Free(torch.nn.Module):
    """A network that costs nothing, so the loop's own cost per step is what gets timed."""

    def forward(self, x, t):
        return x


class FreeDot(torch.nn.Module):
    config = DOT.config

    def forward(self, x_ti, x_ts, z_s, t_i, t_s, cond=None):
        return torch.zeros_like(x_ti)


@pytest.mark.parametrize("method", ["ddim", "dpm", "morse"])
def test_harness_overhead_per_step(benchmark, method):
    den = Denoiser(Free(), TASK.schedule_config)
    seeds = list(range(BATCH))
    noise = initial_noise(seeds, TASK.image_shape)
    if method == "morse":
        sampler = Morse(get_baseline("ddim"), FreeDot(), 6.0, Interleave(3))
        budget = 16
        steps = len(sampler.plan(budget))
    else:
        sampler, steps, budget = get_baseline(method), 20, 20
    benchmark(lambda: sampler(den, noise, budget, seeds=seeds))
    benchmark.extra_info["ms_per_step"] = benchmark.stats.stats.median / steps * 1e3


@pytest.mark.parametrize("dim", [128, 2048])
def test_frechet_distance(benchmark, dim):
    rng = np.random.default_rng(0)
    a = feature_stats(rng.normal(size=(3 * dim, dim)))
    b = feature_stats(rng.normal(size=(3 * dim, dim)))
    benchmark(lambda: frechet_distance(a, b))


def test_classifier_features(benchmark):
    extractor = ClassifierFeatures(TASK.classifier(), TASK.classifier_path)
    images = torch.rand(1000, *TASK.image_shape) * 2 - 1
    benchmark.pedantic(lambda: extractor(images), rounds=3, iterations=1)
    benchmark.extra_info["images_per_s"] = 1000 / benchmark.stats.stats.median
