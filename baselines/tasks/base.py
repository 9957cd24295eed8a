"""What a task gives the harness: the Dash and its schedule, conditions per seed, a decode step, the
metrics it declares and where their reference statistics come from, and a checksum of its weights.

A task is a class; `evaluate.run --task package.module:Class` takes your own. Subclass `Task` and set the
class attributes; override `dash()` and `checksum()` (and `conditions`, `decode`, `reference` where the
defaults do not fit). Its constructor receives the harness's options as keywords: `weights` (a folder or
file given with --weights), `random_weights` (latency-only runs: the real architecture, random values),
`reference` (--reference: an image folder or a .npz of mu/sigma) and `data_dir`.
"""

import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from baselines.checkpoint import CorruptWeightsError, sha256


class MissingWeightsError(FileNotFoundError):
    """The task's weights are not there; the message names the command that fetches them."""


class MissingReferenceError(FileNotFoundError):
    """A metric has no reference statistics; the message says what to pass."""


__all__ = ["CorruptWeightsError", "MissingReferenceError", "MissingWeightsError", "ReferenceSource", "Task"]


@dataclass(frozen=True)
class ReferenceSource:
    """Where a metric's reference statistics come from: a `.npz` holding `mu` and `sigma` (clean-fid and
    pytorch-fid write that format), a folder of images, or a split of the task's own data (`data(split)`)."""

    kind: str                  # "npz", "folder" or "split"
    path: Path | None = None
    split: str | None = None

    @classmethod
    def from_path(cls, path) -> "ReferenceSource":
        path = Path(path)
        if path.is_dir():
            return cls("folder", path)
        if path.suffix == ".npz" and path.is_file():
            return cls("npz", path)
        raise MissingReferenceError(f"--reference {path}: expected an image folder or a .npz file with mu and sigma")


class Task:
    name: str = ""
    image_shape: tuple[int, ...] = ()
    schedule_config: dict = {}       # diffusers scheduler kwargs of the Dash's training schedule
    metrics: tuple[str, ...] = ()    # quality metrics the task declares, primary first
    primary_metric: str = ""         # the one speedups at equal quality are read from
    default_fid_samples: int = 0     # samples per cell behind FID unless --fid-samples says otherwise
    default_budgets: str | None = None      # evaluate.run's --budgets when not given (None: the suite's)
    default_num_samples: int | None = None  # evaluate.run's --num-samples when not given (None: the suite's)
    # The worst baseline quality (on the primary metric) at which samples are still usable: budgets whose baseline
    # is worse are left out of mean speedups (a speedup there says nothing about usable sampling). None: no limit.
    meaningful_max: float | None = None

    def __init__(self, weights=None, random_weights: bool = False, reference=None, data_dir=None):
        self.weights = Path(weights) if weights is not None else None
        self.random_weights = random_weights
        self.reference_path = Path(reference) if reference is not None else None
        self.data_dir = data_dir

    def dash(self) -> nn.Module:
        raise NotImplementedError

    def checksum(self) -> str:
        """16 hex digits over every file `dash()` loads: the weights' part of each cache key."""
        raise NotImplementedError

    def conditions(self, seeds) -> torch.Tensor | None:
        """The condition of each seed's sample (prompt embeddings, class labels); None when unconditional."""
        return None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Sampler output -> images in [-1, 1]: identity for pixel-space models, the VAE for latent ones."""
        return x

    def reference(self, metric: str) -> ReferenceSource:
        """Where the reference statistics of `metric` come from: for FID --reference when given, else the
        task's train split (a classifier's Frechet distance always reads the split its classifier knows)."""
        if metric == "fid" and self.reference_path is not None:
            return ReferenceSource.from_path(self.reference_path)
        return ReferenceSource("split", split="train")


def complete(task):
    """A task object with everything the harness asks of one. Task classes written before this base (as the
    README once described them: name, image_shape, schedule_config, data(), dash(), classifier(), dash_path,
    classifier_path) get the base's defaults: metric fd_<name> on their classifier, weights checksum of
    dash_path."""
    if isinstance(task, Task):
        return task
    fill = dict(metrics=(f"fd_{task.name}",) if hasattr(task, "classifier") else (), default_fid_samples=0,
                reference_path=None, random_weights=False, data_dir=getattr(task, "data_dir", None),
                meaningful_max=None)
    for key, value in fill.items():
        if not hasattr(task, key):
            setattr(task, key, value)
    if not hasattr(task, "primary_metric"):
        task.primary_metric = task.metrics[0] if task.metrics else ""
    for key in ("conditions", "decode", "reference"):
        if not hasattr(task, key):
            setattr(task, key, types.MethodType(getattr(Task, key), task))
    if not hasattr(task, "checksum"):
        task.checksum = lambda: sha256(task.dash_path)[:16]
    return task
