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


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel: (a.b / d + 1)^3."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


class KernelDistance:
    """KID (Binkowski et al., 2018): the unbiased MMD^2 between samples and a fixed reference set under the cubic
    polynomial kernel, on every sample at once. clean-fid and torchmetrics average it over random subsets drawn from
    a global RNG; with one subset holding every sample they compute this same estimate. Written here because the
    paired bootstrap needs the kernel matrices once per cell: a resample's estimate is then sums weighted by how
    often it draws each sample."""

    def __init__(self, reference):
        self.ref = np.asarray(reference, dtype=np.float64)
        k = polynomial_kernel(self.ref, self.ref)
        m = len(self.ref)
        self.ref_term = (k.sum() - np.trace(k)) / (m * (m - 1))

    def __call__(self, features, resamples=()) -> tuple[float, np.ndarray]:
        """(KID of `features`, KID of each resample: index arrays into `features`)."""
        x = np.asarray(features, dtype=np.float64)
        n, m = len(x), len(self.ref)
        kxx, kxy = polynomial_kernel(x, x), polynomial_kernel(x, self.ref).sum(1)
        counts = np.stack([np.ones(n)] + [np.bincount(ix, minlength=n) for ix in resamples]).astype(np.float64)
        # Pairs of two different samples only: a resample's repeated draws of one sample would pair it with itself
        # and bias its estimate upward.
        squares = counts ** 2
        pairs = ((counts @ kxx) * counts).sum(1) - squares @ np.diag(kxx)
        values = pairs / (n * n - squares.sum(1)) + self.ref_term - 2 * counts @ kxy / (n * m)
        return float(values[0]), values[1:]
