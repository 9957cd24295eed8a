"""The metrics a task declares, computed on every cell, and the tidy results table.

A task names its metrics (`task.metrics`) and the primary one that speedups are computed on
(`task.primary_metric`). Names map to implementations by convention:

* `fd_<name>`: Frechet distance on the task classifier's penultimate features (fast on CPU), with the
  classifier's mean confidence and the smallest and largest class fraction of the samples;
* `fid`: Frechet distance on TF-FID Inception features behind clean-fid's clean resize.

Every Frechet distance has a 95% bootstrap interval over seeds; the resampled indices are the same for
every cell (paired), so differences between cells are not blurred by resampling noise.
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from evaluate.features import ClassifierFeatures, InceptionFeatures
from evaluate.frechet import Stats, feature_stats, frechet_distance
from evaluate.reference import task_reference

MAX_FID_RESAMPLES = 100  # 2048-d eigendecompositions cost ~1 s each; speedup intervals use 100


@dataclass
class Scores:
    rows: list             # (metric, value, provenance columns)
    resamples: np.ndarray  # the main value on each bootstrap resample (empty without bootstrap)


def bootstrap_fd(feats, ref: Stats, indices) -> np.ndarray:
    """FD of each resample of the samples; the same indices for every cell make it paired."""
    return np.array([frechet_distance(ref, feature_stats(feats[ix])) for ix in indices])


def interval(values: np.ndarray) -> tuple[float, float]:
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if len(values) else \
        (math.nan, math.nan)


class ClassifierFD:
    """`fd_<name>`: the task classifier's features against the task's train set."""

    def __init__(self, name: str, task, opts: dict, device):
        self.name, self.task = name, task
        self.extractor = ClassifierFeatures(task.classifier(), task.classifier_path)
        self.ref, self.ref_prov = task_reference(task, name, self.extractor)
        self.prov = dict(metric_impl=f"FD on classifier features (evaluate.frechet, float64); classifier sha256 "
                                     f"{self.extractor.checksum}",
                         reference=f"{self.ref_prov['split']} x{self.ref_prov['count']}",
                         reference_sha256=self.ref_prov["sha256"])

    def __call__(self, images: torch.Tensor, boot) -> Scores:
        feats, probs = self.extractor(images)
        fd = frechet_distance(self.ref, feature_stats(feats))
        resamples = bootstrap_fd(feats, self.ref, boot)
        lo, hi = interval(resamples)
        hist = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
        rows = [(self.name, fd, self.prov), (f"{self.name}_ci_low", lo, self.prov),
                (f"{self.name}_ci_high", hi, self.prov), ("confidence", float(probs.max(1).mean()), {}),
                ("class_min_frac", float(hist.min()), {}), ("class_max_frac", float(hist.max()), {})]
        return Scores(rows, resamples)

    def describe(self, n: int) -> dict:
        ref = f"{self.task.name} {self.ref_prov['split']} x{self.ref_prov['count']}, sha256 {self.ref_prov['sha256']}"
        return {f"reference ({self.name})": ref, f"floor ({self.name})": self.floor(n)}

    def floor(self, n: int) -> str:
        """FD of real held-out images: what a perfect sampler would score with n samples."""
        try:
            test, _ = self.task.data("test")
            train, _ = self.task.data("train")
        except FileNotFoundError:
            return "n/a (data not available)"
        f_test = feature_stats(self.extractor(test[:n])[0])
        vs_train = frechet_distance(f_test, feature_stats(self.extractor(train[-n:])[0]))
        return (f"test x{n} vs train statistics: {frechet_distance(f_test, self.ref):.3f}; "
                f"test x{n} vs disjoint train subset x{n}: {vs_train:.3f}")


class InceptionFID:
    """`fid`: TF-FID Inception features of the first `fid_samples` samples against the task's reference."""

    def __init__(self, name: str, task, opts: dict, device):
        self.name, self.task = name, task
        self.samples = opts["fid_samples"] or task.default_fid_samples or opts["num_samples"]
        self.extractor = InceptionFeatures(device)
        self.ref, self.ref_prov = task_reference(task, name, self.extractor, opts["fid_reference"])
        self.prov = dict(metric_impl=f"TF-Inception (sha256 {self.extractor.checksum}) via clean-fid clean resize, "
                                     f"evaluate.frechet float64",
                         reference=f"{self.ref_prov['split']} x{self.ref_prov['count']}",
                         reference_sha256=self.ref_prov["sha256"])

    def __call__(self, images: torch.Tensor, boot) -> Scores:
        k = min(self.samples, len(images))
        feats, _ = self.extractor(images[:k])
        prov = dict(self.prov, n_samples=k)
        # The first k of each shared resample, folded into range: still the same indices for every cell.
        resamples = bootstrap_fd(feats, self.ref, [ix[:k] % k for ix in boot[:MAX_FID_RESAMPLES]])
        lo, hi = interval(resamples)
        rows = [(self.name, frechet_distance(feature_stats(feats), self.ref), prov),
                (f"{self.name}_ci_low", lo, prov), (f"{self.name}_ci_high", hi, prov)]
        return Scores(rows, resamples)

    def describe(self, n: int) -> dict:
        ref = f"{self.task.name} {self.ref_prov['split']} x{self.ref_prov['count']}, sha256 {self.ref_prov['sha256']}"
        return {f"reference ({self.name})": f"{ref}; {self.samples} samples per cell"}


def metric_class(name: str):
    if name == "fid":
        return InceptionFID
    if name.startswith("fd_"):
        return ClassifierFD
    raise ValueError(f"no implementation for metric {name!r}: known are fid and fd_<classifier>")


def declared(task, opts: dict) -> tuple[list[str], str]:
    """(metric names to compute, the primary one): the task's, FID only where it has samples to run on (the
    task's default or --fid-samples; it is slow on a CPU)."""
    fid = opts["fid_samples"] or task.default_fid_samples
    names = [n for n in task.metrics if n != "fid" or fid or n == task.primary_metric]
    if opts["fid_samples"] and "fid" not in names:
        names.append("fid")
    return names, task.primary_metric


def build(task, opts: dict, device) -> tuple[dict, str]:
    names, primary = declared(task, opts)
    return {name: metric_class(name)(name, task, opts, device) for name in names}, primary


def cost_rows(cost, cell, n_samples: int) -> tuple[float, list]:
    c = cost.cell_cost(cell.nfe, cell.wall_time_s, sum(cell.network_time_s.values()), n_samples)
    rows = [(f"nfe_{net}", c.calls.get(net, 0.0), {}) for net in cost.networks]
    others = [net for net in cost.networks if net != "dash"]
    n = {"N": round(cost.ratio_summary(others[0])["median"], 3)} if others else {}
    rows += [("nfe_total", sum(c.calls.values()), {}), ("lsd", c.lsd, n),
             ("ms_per_image", c.ms_per_image, {}), ("network_ms_per_image", c.network_ms_per_image, {})]
    return c, rows


def score(cells, metrics: dict, task, cost, prov: dict, boot) -> tuple[pd.DataFrame, dict, dict]:
    """The tidy table (one row per method x budget x metric), each metric's bootstrap resamples per cell
    ({metric: {(method, budget): values}}) and each cell's cost ({(method, budget): CellCost})."""
    rows, resamples, costs = [], {name: {} for name in metrics}, {}
    for cell in tqdm(cells, desc="metrics", unit="cell"):
        key = (cell.method, cell.budget)
        costs[key], cell_rows = cost_rows(cost, cell, len(cell.samples))
        images = task.decode(cell.samples)  # identity for pixel models, the VAE for latent ones
        for name, metric in metrics.items():
            got = metric(images, boot)
            resamples[name][key] = got.resamples
            cell_rows = got.rows + cell_rows if name == next(iter(metrics)) else cell_rows + got.rows
        base = {"task": prov["task"], "method": cell.method, "budget": cell.budget, "n_samples": len(cell.samples),
                **prov}
        rows += [{**base, "lsd": costs[key].lsd, "metric": m, "value": v, **extra} for m, v, extra in cell_rows]
    return pd.DataFrame(rows), resamples, costs
