"""The metrics a task declares, computed on every cell, and the tidy results table.

A task names its metrics (`task.metrics`) and the primary one that speedups are computed on
(`task.primary_metric`). Names map to implementations by convention:

* `fd_<name>`: Frechet distance on the task classifier's penultimate features (fast on CPU), with the
  classifier's mean confidence, the smallest and largest class fraction of the samples, and, where each prompt
  names a class (`task.prompted_classes(seeds)`), the fraction of samples classified as their prompt's class;
* `kid_<name>`: KID (unbiased MMD^2, cubic polynomial kernel) on the same classifier features, against the
  first KID_REFERENCE images of the task's train split;
* `fid`: Frechet distance on TF-FID Inception features behind clean-fid's clean resize;
* `clip_score`: each sample's CLIP score against its own prompt (`task.prompts_for(seeds)`), computed for every
  task with prompts, with the open_clip model of --clip-model/--clip-weights (else the task's, else ViT-B-32
  with the openai weights, from the Hugging Face cache: never downloaded).

Every Frechet distance, KID and the CLIP score have a 95% bootstrap interval over seeds; the resampled indices are the
same for every cell (paired), so differences between cells are not blurred by resampling noise.
"""

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from baselines.checkpoint import sha256
from evaluate.features import ClassifierFeatures, InceptionFeatures
from evaluate.frechet import KernelDistance, Stats, feature_stats, frechet_distance
from evaluate.reference import task_reference

MAX_FID_RESAMPLES = 100  # 2048-d eigendecompositions cost ~1 s each; speedup intervals use 100
KID_REFERENCE = 2000     # reference images behind KID: their kernel matrix (32 MB) is computed once per run


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

    def __init__(self, name: str, task, opts, device):
        self.name, self.task = name, task
        self.extractor = ClassifierFeatures(task.classifier(), task.classifier_path)
        self.ref, self.ref_prov = task_reference(task, name, self.extractor)
        self.prov = dict(metric_impl=f"FD on classifier features (evaluate.frechet, float64); classifier sha256 "
                                     f"{self.extractor.checksum}",
                         reference=f"{self.ref_prov['split']} x{self.ref_prov['count']}",
                         reference_sha256=self.ref_prov["sha256"])

    def __call__(self, images: torch.Tensor, boot, seeds=None) -> Scores:
        feats, probs = self.extractor(images)
        fd = frechet_distance(self.ref, feature_stats(feats))
        resamples = bootstrap_fd(feats, self.ref, boot)
        lo, hi = interval(resamples)
        hist = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
        rows = [(self.name, fd, self.prov), (f"{self.name}_ci_low", lo, self.prov),
                (f"{self.name}_ci_high", hi, self.prov), ("confidence", float(probs.max(1).mean()), {}),
                ("class_min_frac", float(hist.min()), {}), ("class_max_frac", float(hist.max()), {})]
        if hasattr(self.task, "prompted_classes") and seeds is not None:  # prompts that name a class (else -1)
            want = self.task.prompted_classes(seeds).numpy()
            if (want >= 0).any():
                rows.append(("prompt_class_frac", float((probs.argmax(1) == want)[want >= 0].mean()), {}))
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


class ClassifierKID:
    """`kid_<name>`: KID on the task classifier's features against the first KID_REFERENCE images of the split the
    task's classifier metrics read (its train split), with its paired bootstrap interval."""

    def __init__(self, name: str, task, opts, device):
        self.name, self.task = name, task
        self.extractor = ClassifierFeatures(task.classifier(), task.classifier_path)
        split = task.reference(name).split
        if split is None:
            raise ValueError(f"task {task.name}: {name} needs a split of the task's own data as its reference")
        feats, _ = self.extractor(task.data(split)[0][:KID_REFERENCE])
        self.kid = KernelDistance(feats)
        self.reference = f"{split} x{len(feats)} (the first), features sha256 {sha256_bytes(feats)}"
        self.prov = dict(metric_impl=f"KID: unbiased MMD^2, cubic polynomial kernel, on classifier features "
                                     f"(evaluate.frechet, float64); classifier sha256 {self.extractor.checksum}",
                         reference=f"{split} x{len(feats)}")

    def __call__(self, images: torch.Tensor, boot, seeds=None) -> Scores:
        value, resamples = self.kid(self.extractor(images)[0], boot)
        lo, hi = interval(resamples)
        rows = [(self.name, value, self.prov), (f"{self.name}_ci_low", lo, self.prov),
                (f"{self.name}_ci_high", hi, self.prov)]
        return Scores(rows, resamples)

    def describe(self, n: int) -> dict:
        return {f"reference ({self.name})": f"{self.task.name} {self.reference}"}


def sha256_bytes(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


class InceptionFID:
    """`fid`: TF-FID Inception features of the first `fid_samples` samples against the task's reference."""

    def __init__(self, name: str, task, opts, device):
        self.name, self.task = name, task
        self.samples = opts.fid_samples or task.default_fid_samples or opts.num_samples
        self.extractor = InceptionFeatures(device)
        self.ref, self.ref_prov = task_reference(task, name, self.extractor, opts.fid_reference)
        self.prov = dict(metric_impl=f"TF-Inception (sha256 {self.extractor.checksum}) via clean-fid clean resize, "
                                     f"evaluate.frechet float64",
                         reference=f"{self.ref_prov['split']} x{self.ref_prov['count']}",
                         reference_sha256=self.ref_prov["sha256"])

    def __call__(self, images: torch.Tensor, boot, seeds=None) -> Scores:
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


def clip_choice(task, opts) -> tuple[str, str]:
    """(open_clip model name, weights: a file or a pretrained tag): the flags', else the task's, else ViT-B-32 with
    the openai weights."""
    return (opts.clip_model or getattr(task, "clip_model", None) or "ViT-B-32",
            opts.clip_weights or getattr(task, "clip_weights", None) or "openai")


class ClipScore:
    """`clip_score`: 100 max(cos, 0) of each sample against its own prompt (torchmetrics' convention), its mean
    over the samples. Higher is better. Every row carries the CLIP model's name and its weights' sha256."""

    def __init__(self, name: str, task, opts, device):
        from evaluate.clip_score import ClipScorer  # open_clip is imported only by runs that score prompts

        if not hasattr(task, "prompts_for"):
            raise ValueError(f"task {task.name} declares {name} but has no prompts (prompts_for) to score against")
        self.name, self.task = name, task
        self.model_name, weights = clip_choice(task, opts)
        hint = "pass --clip-model NAME --clip-weights FILE (or a pretrained tag in the Hugging Face cache)"
        try:
            self.scorer = ClipScorer(self.model_name, weights, device)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{name} needs a CLIP model: {e}; or {hint}") from None
        except RuntimeError as e:  # an unknown model name, or a file holding another model's weights
            raise ValueError(f"{name}: CLIP {self.model_name} does not load from {weights!r} "
                             f"({str(e).strip().splitlines()[0]}); {hint}") from None
        self.weights = self.scorer.weights
        self.prov = dict(metric_impl="CLIP score 100 * max(cos, 0) against each sample's prompt (open_clip)",
                         clip_model=self.model_name, clip_sha256=sha256(self.weights))

    def __call__(self, images: torch.Tensor, boot, seeds=None) -> Scores:
        scores = self.scorer.score(images, self.task.prompts_for(seeds))
        resamples = np.array([scores[ix].mean() for ix in boot])
        lo, hi = interval(resamples)
        rows = [(self.name, float(scores.mean()), self.prov), (f"{self.name}_ci_low", lo, self.prov),
                (f"{self.name}_ci_high", hi, self.prov)]
        return Scores(rows, resamples)

    def describe(self, n: int) -> dict:
        return {f"CLIP model ({self.name})": f"open_clip {self.model_name}, weights {self.weights}, sha256 "
                                             f"{self.prov['clip_sha256']}"}


METRICS = {"fid": InceptionFID, "clip_score": ClipScore}  # by name; fd_<name> and kid_<name> by prefix
HIGHER_IS_BETTER = {"clip_score"}


def metric_class(name: str):
    if name in METRICS:
        return METRICS[name]
    if name.startswith("fd_"):
        return ClassifierFD
    if name.startswith("kid_"):
        return ClassifierKID
    raise ValueError(f"no implementation for metric {name!r}: known are {', '.join(METRICS)}, fd_<classifier> and "
                     "kid_<classifier>")


def declared(task, opts) -> tuple[list[str], str]:
    """(metric names to compute, the primary one): the task's, FID only where it has samples to run on (the
    task's default or --fid-samples; it is slow on a CPU), and CLIP score wherever the task has prompts."""
    fid = opts.fid_samples or task.default_fid_samples
    names = [n for n in task.metrics if n != "fid" or fid or n == task.primary_metric]
    if opts.fid_samples and "fid" not in names:
        names.append("fid")
    if hasattr(task, "prompts_for") and "clip_score" not in names:
        names.append("clip_score")
    return names, task.primary_metric


def build(task, opts, device) -> tuple[dict, str]:
    """{name: metric} of every metric the run computes, and the primary's name. `opts`: the run's Options."""
    names, primary = declared(task, opts)
    return {name: metric_class(name)(name, task, opts, device) for name in names}, primary


def cost_rows(cost, cell) -> tuple[float, list]:
    """The cell's cost (CellCost) and its rows. Wall time per image is priced only from the samples drawn in this
    run (`cell.fresh_samples`): a cached shard's time was measured by another run, under another load. A cell read
    whole from the cache has no wall time (NaN)."""
    c = cost.cell_cost(cell.nfe, cell.wall_time_s, sum(cell.network_time_s.values()), max(cell.fresh_samples, 1))
    if not cell.fresh_samples:
        c = replace(c, ms_per_image=math.nan, network_ms_per_image=math.nan)
    rows = [(f"nfe_{net}", c.calls.get(net, 0.0), {}) for net in cost.networks]
    others = [net for net in cost.networks if net != "dash"]
    n = {"N": round(cost.ratio_summary(others[0])["median"], 3)} if others else {}
    rows += [("nfe_total", sum(c.calls.values()), {}), ("lsd", c.lsd, n),
             ("ms_per_image", c.ms_per_image, {}), ("network_ms_per_image", c.network_ms_per_image, {})]
    return c, rows


def score(cells, metrics: dict, task, cost, prov: dict, boot, seeds) -> tuple[pd.DataFrame, dict, dict]:
    """The tidy table (one row per method x budget x guidance x metric; guidance NaN for an unguided task), each
    metric's bootstrap resamples per cell ({metric: {(method, budget, guidance): values}}) and each cell's cost
    ({(method, budget, guidance): CellCost}). `seeds`: the samples' seeds, in order (a prompt's CLIP score needs
    the prompt). With `prov["clamped"]` the metrics see the images clamped to the data range, [-1, 1]: the column
    the rows carry is what decides it, so the two cannot disagree."""
    rows, resamples, costs = [], {name: {} for name in metrics}, {}
    for cell in tqdm(cells, desc="metrics", unit="cell"):
        key = (cell.method, cell.budget, cell.guidance)
        costs[key], cell_rows = cost_rows(cost, cell)
        images = task.decode(cell.samples)  # identity for pixel models, the VAE for latent ones
        if prov["clamped"]:
            images = images.clamp(-1, 1)
        for name, metric in metrics.items():
            got = metric(images, boot, seeds)
            resamples[name][key] = got.resamples
            cell_rows = got.rows + cell_rows if name == next(iter(metrics)) else cell_rows + got.rows
        guidance = math.nan if cell.guidance is None else cell.guidance
        base = {"task": prov["task"], "method": cell.method, "budget": cell.budget, "guidance": guidance,
                "n_samples": len(cell.samples), **prov}
        rows += [{**base, "lsd": costs[key].lsd, "metric": m, "value": v, **extra} for m, v, extra in cell_rows]
    return pd.DataFrame(rows), resamples, costs
