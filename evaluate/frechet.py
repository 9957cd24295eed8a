"""Feature statistics and the Frechet distance, in float64."""

from dataclasses import dataclass

import numpy as np
from scipy import linalg


@dataclass
class Stats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    _root: np.ndarray | None = None

    def root(self) -> np.ndarray:
        """Symmetric square root of sigma, kept: reference statistics meet many samples."""
        if self._root is None:
            w, v = linalg.eigh(self.sigma)
            self._root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        return self._root


def feature_stats(features) -> Stats:
    f = np.asarray(features, dtype=np.float64)
    return Stats(f.mean(0), np.cov(f, rowvar=False), len(f))


def frechet_distance(a: Stats, b: Stats) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).

    clean-fid takes sqrtm of the non-symmetric product S_a S_b, which can turn complex or
    singular for low-rank covariances (few samples). The symmetric form has the same trace
    and needs only eigendecompositions of symmetric PSD matrices, which are stable.
    """
    diff = a.mu - b.mu
    root_a = a.root()
    inner = root_a @ b.sigma @ root_a
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)


def kernel_inception_distance(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """KID by clean-fid's unbiased polynomial-kernel MMD estimate; clean-fid draws subsets from
    numpy's global RNG, so it is seeded here and the caller's RNG state is restored."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return kernel_distance(np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64), subsets, subset_size)
    finally:
        np.random.set_state(state)
