import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

from baselines.denoisers import Denoiser  # noqa: E402
from baselines.exact import GaussianDenoiser, OptimalDenoiser  # noqa: E402
from baselines.runtime import tune_malloc  # noqa: E402
from baselines.tasks.fmnist import SCHEDULE_CONFIG  # noqa: E402

tune_malloc()


@pytest.fixture(scope="session")
def exact_data():
    g = torch.Generator().manual_seed(0)
    # A smooth low-dimensional data set: 16 images of 1x4x4.
    return (torch.rand(16, 1, 4, 4, generator=g) * 2 - 1).clamp(-0.9, 0.9)


@pytest.fixture(scope="session")
def exact_denoiser(exact_data):
    alphas = DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod
    return Denoiser(OptimalDenoiser(exact_data, alphas), SCHEDULE_CONFIG)


@pytest.fixture(scope="session")
def gaussian():
    alphas = DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod
    return Denoiser(GaussianDenoiser(0.3, 0.5, alphas), SCHEDULE_CONFIG)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Reference statistics go to a per-session cache, never the user's."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MORSE_BENCH_CACHE")
    os.environ["MORSE_BENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MORSE_BENCH_CACHE", None)
    else:
        os.environ["MORSE_BENCH_CACHE"] = old


@pytest.fixture
def one_thread():
    """Tiny networks run thousands of sub-millisecond ops, where a second thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
