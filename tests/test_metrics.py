"""Frechet distance, FID pipeline parity with clean-fid, KID, reference-statistics cache."""

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid
from PIL import Image
from scipy import linalg

from evaluate.features import InceptionFeatures
from evaluate.frechet import KernelDistance, Stats, feature_stats, frechet_distance


def scipy_reference(a: Stats, b: Stats) -> float:
    covmean = linalg.sqrtm(a.sigma @ b.sigma).real
    d = a.mu - b.mu
    return float(d @ d + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim,n", [(8, 500), (64, 2000), (128, 1000)])
def test_frechet_matches_scipy_reference(dim, n):
    rng = np.random.default_rng(dim)
    a = feature_stats(rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)))
    b = feature_stats(rng.normal(0.3, 1.2, size=(n, dim)))
    ours, ref = frechet_distance(a, b), scipy_reference(a, b)
    assert abs(ours - ref) <= 1e-6 * abs(ref)
    assert abs(ours - cleanfid.frechet_distance(a.mu, a.sigma, b.mu, b.sigma)) <= 1e-6 * abs(ref)


def test_frechet_known_values():
    rng = np.random.default_rng(0)
    a = feature_stats(rng.normal(size=(3000, 4)))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Identity covariances, means 2 apart in one coordinate: FD = 4.
    eye = Stats(np.zeros(4), np.eye(4), 1)
    shifted = Stats(np.array([2.0, 0, 0, 0]), np.eye(4), 1)
    assert frechet_distance(eye, shifted) == pytest.approx(4.0, rel=1e-12)
    # Covariances 1 and 4 in every coordinate: FD = d * (1 + 4 - 2*2) = d.
    assert frechet_distance(eye, Stats(np.zeros(4), 4 * np.eye(4), 1)) == pytest.approx(4.0, rel=1e-12)


def test_frechet_stable_for_rank_deficient_covariances():
    rng = np.random.default_rng(1)
    a = feature_stats(rng.normal(size=(20, 64)))   # rank 19 < 64
    b = feature_stats(rng.normal(size=(20, 64)))
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 0


class TinyExtractor(torch.nn.Module):
    """A fixed random conv net standing in for Inception (the pipeline is what is tested)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, 16, 5, stride=4), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())

    def forward(self, x):  # our convention: RGB in [-1, 0.9921875] (x/128 - 1)
        return self.net(x)


def _images(seed, n=60):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    return torch.nn.functional.avg_pool2d(base, 3, 1, 1)


def _to_folder(images, folder):
    folder.mkdir()
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    for i, a in enumerate(u8):
        Image.fromarray(a, mode="L").save(folder / f"{i:04d}.png")


def test_fid_pipeline_equals_clean_fid(tmp_path):
    model = TinyExtractor().eval()
    a, b = _images(0), _images(1) * 0.8
    ours = InceptionFeatures(model=model)
    fa, _ = ours(a, batch_size=50)
    fb, _ = ours(b, batch_size=50)
    our_fid = frechet_distance(feature_stats(fa), feature_stats(fb))

    _to_folder(a, tmp_path / "a")
    _to_folder(b, tmp_path / "b")
    their = cleanfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", num_workers=0,
                                 batch_size=16, device=torch.device("cpu"), verbose=False,
                                 custom_feat_extractor=lambda x: model(x / 128.0 - 1.0))
    assert our_fid == pytest.approx(their, rel=1e-6)


def test_fid_independent_of_batch_size():
    ours = InceptionFeatures(model=TinyExtractor().eval())
    a, b = _images(2, 500), _images(3, 500)
    ref = feature_stats(ours(b, batch_size=500)[0])
    f50 = frechet_distance(feature_stats(ours(a, batch_size=50)[0]), ref)
    f500 = frechet_distance(feature_stats(ours(a, batch_size=500)[0]), ref)
    assert f50 == pytest.approx(f500, rel=1e-6)


def test_kid_ordered_with_bootstrap_around_it():
    rng = np.random.default_rng(0)
    kid = KernelDistance(rng.normal(size=(300, 16)))
    near, far = rng.normal(size=(400, 16)), rng.normal(0.3, 1.0, size=(400, 16))
    boot = [rng.integers(0, 400, 400) for _ in range(200)]
    (k_near, b_near), (k_far, b_far) = kid(near, boot), kid(far, boot)
    assert abs(k_near) < 1e-2 < k_far and len(b_far) == 200
    # Repeated draws of one sample are not paired with themselves: the resamples centre on the estimate.
    for k, b in ((k_near, b_near), (k_far, b_far)):
        assert np.percentile(b, 2.5) < k < np.percentile(b, 97.5)
    assert kid(far[::-1])[0] == pytest.approx(k_far)  # order does not matter


def test_inception_weights_checksum():
    from baselines.checkpoint import sha256
    from evaluate.features import INCEPTION_SHA256, inception_path

    assert sha256(inception_path()) == INCEPTION_SHA256


def test_reference_checksum_names_the_statistics_not_the_file(tmp_path, monkeypatch):
    from evaluate.reference import reference_stats

    monkeypatch.setenv("MORSE_BENCH_CACHE", str(tmp_path))

    class Task:
        name = "toy"

        def data(self, split):
            return torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0)), None

    class Flat:
        name, checksum = "flat", "0"

        def __call__(self, images):
            return images.flatten(1).numpy(), None

    _, fresh = reference_stats(Task(), "train", None, Flat())
    path = next(tmp_path.rglob("*.npz"))
    with np.load(path) as z:
        arrays = dict(z)
    np.savez_compressed(path, **arrays)  # the same statistics in other bytes, as a rebuild elsewhere writes
    _, cached = reference_stats(Task(), "train", None, Flat())
    assert cached["sha256"] == fresh["sha256"]
    np.savez(path, **{**arrays, "mu": arrays["mu"] + 1e-9})
    assert reference_stats(Task(), "train", None, Flat())[1]["sha256"] != fresh["sha256"]


class Flat(torch.nn.Module):
    """The same features for torchmetrics and for us: the images themselves, flattened."""

    num_features = 48

    def forward(self, x):
        return x.float().flatten(1)


def test_fid_and_kid_agree_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(0)
    real = torch.rand(300, 3, 4, 4, generator=g)
    fake = (torch.rand(300, 3, 4, 4, generator=g) * 0.8 + 0.1) ** 1.5
    fr, ff = Flat()(real).double().numpy(), Flat()(fake).double().numpy()

    fid = FrechetInceptionDistance(feature=Flat(), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert frechet_distance(feature_stats(fr), feature_stats(ff)) == pytest.approx(float(fid.compute()), rel=1e-5)

    # One subset holding every sample: both estimators are then the same unbiased MMD, whatever their RNGs draw.
    kid = KernelInceptionDistance(feature=Flat(), subsets=1, subset_size=300, normalize=True)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    theirs = float(kid.compute()[0])
    assert KernelDistance(fr)(ff)[0] == pytest.approx(theirs, rel=1e-5)
    assert KernelDistance(fr)(ff)[0] == pytest.approx(cleanfid.kernel_distance(ff, fr, 1, 300), rel=1e-9)
    assert theirs > 1e-3  # far from zero, so the comparison means something
