"""Reference feature statistics, computed once per (task, split, count, extractor) and cached
with provenance in the user cache folder (never inside the installed package)."""

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from baselines.checkpoint import atomic_path
from evaluate.frechet import Stats, feature_stats


def cache_root() -> Path:
    if os.environ.get("MORSE_BENCH_CACHE"):
        return Path(os.environ["MORSE_BENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "morse-bench"


def reference_stats(task, split: str, count: int | None, extractor) -> tuple[Stats, dict]:
    name = f"{task.name}-{split}-{count or 'all'}-{extractor.name}-{extractor.checksum}"
    path = cache_root() / "stats" / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                prov = json.loads(str(z["provenance"]))
                stats = Stats(z["mu"], z["sigma"], int(z["count"]))
            prov["sha256"] = _checksum(stats)
            return stats, prov
        except Exception as exc:
            warnings.warn(f"reference statistics {path} unreadable ({type(exc).__name__}); recomputing",
                          stacklevel=2)
    images, _ = task.data(split)
    if count:
        images = images[:count]
    feats, _ = extractor(images)
    stats = feature_stats(feats)
    prov = dict(task=task.name, split=split, count=len(images), extractor=extractor.name,
                extractor_sha256=extractor.checksum)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=stats.count, provenance=json.dumps(prov))
    prov["sha256"] = _checksum(stats)
    return stats, prov


def _checksum(stats: Stats) -> str:
    """Of the statistics, not the file: np.savez stamps the write time into the archive, so the same
    statistics rebuilt on another machine (or another day) would get another file checksum."""
    h = hashlib.sha256()
    for part in (np.ascontiguousarray(stats.mu, np.float64), np.ascontiguousarray(stats.sigma, np.float64),
                 np.int64(stats.count)):
        h.update(part.tobytes())
    return h.hexdigest()[:16]
