"""Reference feature statistics of a task's metric: from a `.npz` of mu/sigma (clean-fid / pytorch-fid
format), or computed from an image folder or a split of the task's data, once per (source, count,
extractor), and cached with provenance in the user cache folder (never inside the installed package)."""

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from baselines.checkpoint import atomic_path
from evaluate.frechet import Stats, feature_stats

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ReferenceMismatchError(ValueError):
    """Reference statistics that cannot be compared with the extractor's features."""


def cache_root() -> Path:
    if os.environ.get("MORSE_BENCH_CACHE"):
        return Path(os.environ["MORSE_BENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "morse-bench"


def reference_stats(task, split: str, count: int | None, extractor) -> tuple[Stats, dict]:
    name = f"{task.name}-{split}-{count or 'all'}-{extractor.name}-{extractor.checksum}"
    path = cache_root() / "stats" / f"{name}.npz"
    cached = _read_cached(path)
    if cached is not None:
        return cached
    images, _ = task.data(split)
    if count:
        images = images[:count]
    feats, _ = extractor(images)
    stats = feature_stats(feats)
    prov = dict(task=task.name, split=split, count=len(images), extractor=extractor.name,
                extractor_sha256=extractor.checksum)
    return stats, _write_cached(path, stats, prov)


def _read_cached(path: Path) -> tuple[Stats, dict] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            prov = json.loads(str(z["provenance"]))
            stats = Stats(z["mu"], z["sigma"], int(z["count"]))
    except Exception as exc:
        warnings.warn(f"reference statistics {path} unreadable ({type(exc).__name__}); recomputing", stacklevel=3)
        return None
    prov["sha256"] = _checksum(stats)
    return stats, prov


def _write_cached(path: Path, stats: Stats, prov: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=stats.count, provenance=json.dumps(prov))
    return {**prov, "sha256": _checksum(stats)}


def _checksum(stats: Stats) -> str:
    """Of the statistics, not the file: np.savez stamps the write time into the archive, so the same
    statistics rebuilt on another machine (or another day) would get another file checksum."""
    h = hashlib.sha256()
    for part in (np.ascontiguousarray(stats.mu, np.float64), np.ascontiguousarray(stats.sigma, np.float64),
                 np.int64(stats.count)):
        h.update(part.tobytes())
    return h.hexdigest()[:16]


def task_reference(task, metric: str, extractor, count: int | None = None) -> tuple[Stats, dict]:
    """Statistics and provenance of the reference `task` names for `metric` (see `Task.reference`)."""
    source = task.reference(metric)
    if source.kind == "split":
        return reference_stats(task, source.split, count, extractor)
    if source.kind == "npz":
        return npz_stats(source.path, extractor)
    return folder_stats(task, source.path, count, extractor)


def npz_stats(path: Path, extractor) -> tuple[Stats, dict]:
    """mu and sigma from a .npz as clean-fid and pytorch-fid write them; their dimension must be the extractor's."""
    try:
        with np.load(path) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            count = int(z["count"]) if "count" in z.files else 0
    except (OSError, ValueError, KeyError) as e:
        raise ReferenceMismatchError(f"--reference {path}: not a .npz with arrays mu and sigma ({e})") from None
    d = extractor.feature_dim
    if mu.shape != (d,) or sigma.shape != (d, d):
        raise ReferenceMismatchError(f"--reference {path}: statistics of {mu.shape[-1] if mu.ndim else '?'}-d "
                                     f"features, but {extractor.name} gives {d}-d features; use statistics "
                                     f"of the same extractor")
    stats = Stats(mu, sigma, count)
    return stats, dict(split=path.name, source=str(path), count=count or "unknown", extractor=extractor.name,
                       extractor_sha256=extractor.checksum, sha256=_checksum(stats))


def folder_stats(task, folder: Path, count: int | None, extractor, chunk: int = 500) -> tuple[Stats, dict]:
    """Statistics of the images in `folder` (sorted by name, the first `count`), cached like a split's."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count or None]
    if not files:
        raise ReferenceMismatchError(f"--reference {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    listing = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}\n" for p in files).encode()).hexdigest()[:12]
    name = f"{task.name}-folder-{listing}-{len(files)}-{extractor.name}-{extractor.checksum}"
    path = cache_root() / "stats" / f"{name}.npz"
    cached = _read_cached(path)
    if cached is not None:
        return cached
    feats = np.concatenate([extractor(_read_images(files[k:k + chunk]))[0] for k in range(0, len(files), chunk)])
    stats = feature_stats(feats)
    prov = dict(task=task.name, split=Path(folder).name, source=str(folder), count=len(files), extractor=extractor.name,
                extractor_sha256=extractor.checksum)
    return stats, _write_cached(path, stats, prov)


def _read_images(files) -> torch.Tensor:
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len({a.shape for a in arrays}) > 1:
        raise ReferenceMismatchError(f"reference images differ in size ({files[0].parent}): resize them to one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
