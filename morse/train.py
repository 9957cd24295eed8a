"""Train a Dot for a task's Dash.

    python -m morse.train --task fmnist --out runs/dot-fmnist

1. Pairs, on the sampler's own path: the Morse sampler (chosen solver, the budgets' plans) runs
   from per-seed noise with the current Dot; at every Dot step it records the inputs
   (x_ti, x_ts, z_s, t_i, t_s) and the target Dash(x_ti, t_i). So x_ti is exactly what sampling
   feeds the Dot, earlier Dot outputs included. (Pairs from Dash-only trajectories leak the
   Dash's previous estimate into x_ti: a Dot trained on them scored 0.41 of reuse-of-z_s there
   but 0.90 on its own sampling path.)
2. Rounds (DAgger): round 0 samples with the initial Dot, each later round with the Dot trained
   so far; pairs of all rounds are pooled. Regression of z_s + Dot(...) onto the target (MSE),
   only LoRA and new blocks trainable.
3. Held-out seeds, sampled with the final Dot, give its error against reusing z_s.

With `--solver lcm` the Dash is the task's consistency-distilled model (baselines.lcm), sampled by
LCMScheduler as it was distilled, and the Dot's residual lives in x0 (`--residual x0`, the default there; why:
morse.dot.Dot.reuse): loss and held-out error are measured in x0, against reuse of the anchor's x0.

Resumable: checkpoint.safetensors (trainable tensors, optimiser moments, RNG, step) is
rewritten atomically every --checkpoint-every iterations and at each round's end, and each
round's pairs are cached; rerun the same command to resume.

Under `torchrun --nproc-per-node K` (DDP, gloo on CPU, NCCL on CUDA): rank 0 makes each round's pairs
into the cache and the others read them; every rank draws the same global batch from the same RNG and
trains on its 1/K of it, so K processes reach the Dot one would (to rounding); rank 0 writes
checkpoints, the held-out error and the card. The checkpoint does not depend on K.
"""

import argparse
import json
import os
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from baselines.checkpoint import load_keyed, save_atomic, sha256
from baselines.denoisers import Condition, Denoiser
from baselines.distributed import World, ddp, session
from baselines.lcm import lcm_solver, load_lcm
from baselines.noise import initial_noise
from baselines.registry import get_baseline
from baselines.schedule import x0_from_eps
from baselines.tasks import get_task
from baselines.training.cards import loss_curve, publish
from baselines.training.loop import Checkpoint, Stepper, begin, run_steps
from baselines.training.recipe import TrainingError, command_text, device_of, one_line_errors, resume_key
from baselines.training.schedule import cosine_spans
from morse.dot import BODIES, Dot, DotConfig, detail
from morse.interleave import Interleave
from morse.latency import dash_dot_times
from morse.prior import PRIORS
from morse.sampler import Morse

FIELDS = ("x_ti", "x_ts", "z_s", "t_i", "t_s", "target")
# The anchor before s (x_ts', z_s', t_s'), recorded for Dots that see it or extrapolate from it; in the first group,
# where there is none, the anchor itself (t_s' = t_s marks it). "budget" tags each pair with the plan it came from.
PREV = ("x_tp", "z_p", "t_p")
LOSS_WEIGHTS = dict(across=4.0, blurring=16.0)  # --loss L with a weight: --L-weight's default (1 is the MSE)
ABLATIONS = ("prior", "history", "trajectory_inputs", "balance_budgets", "round_lr", "loss", "body", "dash_features",
             "pairs_from", "across_weight", "blurring_weight")
FEATURES = "features"  # the Dash's mid-block output at the anchor, recorded for Dots with dash_features
COND = "cond"  # a conditional task's pairs also hold the condition the Dot saw: "cond" or "cond.<field>"


def _cond_rows(cond) -> dict:
    if cond is None:
        return {}
    if isinstance(cond, Condition):
        return {f"{COND}.{k}": v for k, v in vars(cond).items() if v is not None}
    return {COND: cond}


def _cond_of(batch: dict):
    """The condition stored with a batch of pairs (None for an unconditional task)."""
    if COND in batch:
        return batch[COND]
    fields = {k[len(COND) + 1:]: v for k, v in batch.items() if k.startswith(COND + ".")}
    return Condition(**fields) if fields else None


class _FirstGroupDone(Exception):
    """A first-group recorder's stop at the first Dot step with an earlier anchor: the rest of the run makes no pair."""


class _Recorder(nn.Module):
    """Stands in for the Dot inside the Morse sampler: returns its residual, records the pair."""

    def __init__(self, dot, denoiser, first_group_only: bool = False):
        super().__init__()
        self.dot, self.rows, self.first_group_only = dot, {k: [] for k in FIELDS}, first_group_only
        self._denoiser = [denoiser]  # not a submodule: the sampler's own NFE hooks stay on the Dash

    @property
    def config(self):
        return self.dot.config

    def forward(self, x_ti, x_ts, z_s, t_i, t_s, cond=None, prev=None, features=None, noise=None):
        if self.first_group_only and prev is not None:
            raise _FirstGroupDone
        n = x_ti.shape[0]
        values = (x_ti, x_ts, z_s, torch.full((n,), float(t_i)), torch.full((n,), float(t_s)),
                  self._denoiser[0](x_ti, t_i, cond))
        rows = [*zip(FIELDS, values, strict=True), *_cond_rows(cond).items(), ("budget", torch.full((n,), self.budget))]
        if _sees_prev(self.dot):
            x_tp, z_p, t_p = prev if prev is not None else (x_ts, z_s, t_s)
            rows += [("x_tp", x_tp), ("z_p", z_p), ("t_p", torch.full((n,), float(t_p)))]
        if features is not None and self.config.dash_features:
            rows.append((FEATURES, features))
        for name, v in rows:
            self.rows.setdefault(name, []).append(v.cpu())  # the pool of all rounds lives in host memory
        return self.dot(x_ti, x_ts, z_s, t_i, t_s, cond, prev=prev, features=features, noise=noise)


def _sees_prev(dot) -> bool:
    config = _unwrap(dot).config
    return config.history or config.prior != "reuse" or config.gate is not None  # a gate's slope needs t_s'


def _prev_of(batch: dict):
    return tuple(batch[k] for k in PREV) if "t_p" in batch else None


@torch.inference_mode()
def sampling_pairs(denoiser, dot, solver, interleave, dot_ratio, budgets, seeds, shape, batch_size=64,
                   desc="pairs", device="cpu", conditions=None, first_group_only=False):
    """Dot training pairs from Morse sampling runs with `dot`, one per Dot step; `conditions(seeds)` gives a
    conditional task's conditions (the task's own). `first_group_only`: the pairs of the Dot steps before the second
    Dash step alone, each run stopped there (the rest of it would make none)."""
    recorder = _Recorder(dot, denoiser, first_group_only).eval()
    sampler = Morse(solver, recorder, dot_ratio, interleave)
    chunks = [seeds[k:k + batch_size] for k in range(0, len(seeds), batch_size)]
    with tqdm(total=len(budgets) * len(chunks), desc=desc, unit="batch") as bar:
        for budget in budgets:
            recorder.budget = float(budget)
            for chunk in chunks:
                cond = conditions(chunk) if conditions is not None else None
                try:
                    sampler(denoiser, initial_noise(chunk, shape, device=device), budget, cond=cond, seeds=chunk)
                except _FirstGroupDone:
                    pass
                bar.update()
    if not recorder.rows["target"]:
        raise ValueError(f"morse.train: no budget in {budgets} leaves room for a Dot step at N={dot_ratio}")
    return {k: torch.cat(v) for k, v in recorder.rows.items()}


def _rows(pool: list[dict], starts: torch.Tensor, idx: torch.Tensor, device="cpu") -> dict:
    """Rows `idx` of the rounds' pairs taken as one table, without concatenating the pool (GBs)."""
    rnd = torch.searchsorted(starts, idx, right=True) - 1
    return {k: torch.cat([q[k][idx[rnd == r] - starts[r]] for r, q in enumerate(pool)]).to(device)
            for k in pool[0]}


def _energy(dot, batch, gen) -> torch.Tensor:
    """The energy score of two draws of a stochastic Dot, per pair over the whole image, averaged:
    (|y1 - y| + |y2 - y|) / 2 - |y1 - y2| / 2. A proper scoring rule for a distribution of estimates (its expectation
    is least for the distribution of the target given the Dot's inputs): where the Dot cannot tell what the target
    is, it learns to spread its draws over it instead of regressing to their mean (issue 30: the MSE's mean narrows
    the samples). Both draws run as one doubled batch (one forward, as DDP wants). The norms get a tiny floor: the
    first draws coincide (zero output), and the gradient of |0| is 0 / 0."""
    both = {k: torch.cat([v, v]) for k, v in batch.items()}
    noise = torch.randn(both["x_ti"].shape, generator=gen).to(both["x_ti"])
    pred = both["z_s"] + dot(both["x_ti"], both["x_ts"], both["z_s"], both["t_i"], both["t_s"], _cond_of(both),
                             prev=_prev_of(both), features=both.get(FEATURES), noise=noise)
    space = _unwrap(dot).in_residual_space
    y1, y2 = space(pred, x_ti=both["x_ti"], t_i=both["t_i"]).chunk(2)
    target = space(batch["target"], x_ti=batch["x_ti"], t_i=batch["t_i"])
    dist = lambda a, b: ((a - b).square().flatten(1).sum(1) + 1e-12).sqrt()  # noqa: E731
    return (0.5 * (dist(y1, target) + dist(y2, target)) - 0.5 * dist(y1, y2)).mean()


def along_prior(e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per pair, the energy of error `e`'s part along `r`, the prior's own error: <e, r>^2 / |r|^2 (each flattened).
    What the across loss counts once, and `morse.ablation --error-parts` reports."""
    e, r = e.flatten(1), r.flatten(1)
    return (e * r).sum(1).square() / r.square().sum(1).clamp_min(1e-12)


def dot_loss(dot, batch, relative: bool = False, gains: dict | None = None, energy_gen: torch.Generator | None = None,
             across: float | None = None, blurring: float | None = None):
    """MSE of z_s + Dot(...) against the target, measured where the residual lives (epsilon, or x0).

    `relative`: each pair's squared error divided by its prior's plus the batch's median prior error, averaged. Why
    (issue 30): the plain MSE is dominated by the last steps, where epsilon is hardest to predict from a nearly clean
    image (the prior's error there is 100-1000x that of a mid-trajectory step), so a Dot trained on it spends its
    capacity there and is worse than the prior on the steps the prior already gets right (measured on the extrap
    row's pairs at 12 and 16 LSD). The median floor bounds the weights: dividing by the pair's own error alone
    diverged at the first updates (loss 1 -> 866), on pairs whose prior error is 1e-6.

    `gains` ({(budget, t_i): g}, from `step_gains`): each pair's squared error weighted by g^2, the factor by which
    the DDIM step from t_i multiplies an epsilon error into the next state (issue 30's "loss weighted by how much
    the solver step amplifies the error"): about 0.6 on the first steps, 0.17 on the last.

    `energy_gen`: a stochastic Dot's energy score instead (`_energy`), its noise drawn from this generator.

    `across` (w): the part of each pair's error across the prior's own error counts w times, the part along it once.
    Why (issue 30): an error along the prior's (the estimate left between the prior and the target) costs the
    samples little: the Dash's estimate moved back 0.7 of the way to the formula still beats the formula at every
    budget (morse-extrap exact_mix=0.3), while an epsilon-trained Dot with the same error, 40% of it across, loses
    to it at 8 LSD. Weighted so, a Dot unsure of a correction's direction stays nearer its prior (measured in the
    ablation's plan-8lsd-across rows: it moves the 8-LSD samples towards the formula's, not past them).

    `blurring` (w): the part of each pair's epsilon error along d = x0 - blur(x0), x0 the target's estimate of the
    clean image, counts w times (an epsilon error along +d moves the x0 estimate towards its blur, along -d away).
    Why (issue 30): at the same size, 0.7 of the prior's error, an error in that direction cost the samples far
    more than any other shape measured (morse-extrap exact_shape=blurry against the pull, in the ablation's ceiling
    table)."""
    if energy_gen is not None:
        return _energy(dot, batch, energy_gen)
    pred = batch["z_s"] + dot(batch["x_ti"], batch["x_ts"], batch["z_s"], batch["t_i"], batch["t_s"], _cond_of(batch),
                              prev=_prev_of(batch), features=batch.get(FEATURES))
    space = partial(_unwrap(dot).in_residual_space, x_ti=batch["x_ti"], t_i=batch["t_i"])
    target = space(batch["target"])
    if gains is not None:
        w = torch.tensor([gains[(float(b), float(t))] ** 2 for b, t in zip(batch["budget"], batch["t_i"], strict=True)],
                         device=target.device)
        return (w * (space(pred) - target).square().flatten(1).mean(1)).sum() / w.sum()
    if blurring is not None:
        x0 = x0_from_eps(_unwrap(dot).alphas_cumprod, batch["x_ti"], target, batch["t_i"])
        e = (pred - target).flatten(1)
        return (e.square().sum(1) + (blurring - 1) * along_prior(e, detail(x0))).mean() / e.shape[1]
    if not relative and across is None:
        return torch.nn.functional.mse_loss(space(pred), target)
    start = _unwrap(dot).prior_estimate(batch["z_s"], batch["t_i"], batch["t_s"], _prev_of(batch))
    if across is not None:
        e = (space(pred) - target).flatten(1)
        along = along_prior(e, space(start) - target)
        return (across * e.square().sum(1) - (across - 1) * along).mean() / e.shape[1]
    per_pair = lambda x: (space(x) - target).square().flatten(1).mean(1)  # noqa: E731
    floor = per_pair(start)
    return (per_pair(pred) / (floor + floor.median())).mean()


def step_gains(solver, schedule_config, interleave, dot_ratio, budgets, alphas_cumprod) -> dict:
    """{(budget, t_i): sigma_next - alpha_next sigma_i / alpha_i} for every step of the budgets' plans: the factor by
    which a DDIM step from t_i to the plan's next timestep (t = -1: the clean image) carries an epsilon error."""
    ac = lambda t: alphas_cumprod[t].double() if t >= 0 else torch.tensor(1.0, dtype=torch.float64)  # noqa: E731
    gains = {}
    for budget in budgets:
        steps = solver.make_scheduler(schedule_config, len(interleave.plan(budget, dot_ratio))).timesteps.tolist()
        for t, nxt in zip(steps, steps[1:] + [-1], strict=True):
            a_i, a_n = ac(int(t)), ac(int(nxt))
            gains[(float(budget), float(t))] = ((1 - a_n).sqrt() - (a_n * (1 - a_i) / a_i).sqrt()).item()
    return gains


def _draw(pool: list[dict], starts: torch.Tensor, n: int, gen, balance: bool | None) -> torch.Tensor:
    """Row indices of one training batch: uniform over all pairs, or with every budget's plan equally likely (long
    plans make more Dot steps, so uniform draws favour the largest budgets)."""
    if not balance:
        return torch.randint(int(starts[-1]), (n,), generator=gen)
    budgets = torch.cat([q["budget"] for q in pool])
    _, inverse, counts = budgets.unique(return_inverse=True, return_counts=True)
    return torch.multinomial(1.0 / counts[inverse].double(), n, replacement=True, generator=gen)


def _unwrap(dot):
    return getattr(dot, "module", dot)  # DDP wraps the Dot


@torch.inference_mode()
def residual_error(dot, pairs, batch_size=256, device="cpu") -> dict:
    """|z_s + eta - target| against the error of reusing the last Dash estimate (z_s; in "x0" mode its x0) and
    against the Dot's prior (what it returns untrained), all measured where the residual lives; pooled over every
    pair and per budget (the plan the pair came from)."""
    sums: dict = {}
    for k in range(0, len(pairs["target"]), batch_size):
        b = {n: v[k:k + batch_size].to(device) for n, v in pairs.items()}
        args = (b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"])
        space = partial(dot.in_residual_space, x_ti=b["x_ti"], t_i=b["t_i"])
        target = space(b["target"])
        start = dot.reuse(*args) if dot.config.residual != "eps" else dot.prior_estimate(
            b["z_s"], b["t_i"], b["t_s"], _prev_of(b))
        guesses = dict(dot=b["z_s"] + dot(*args, _cond_of(b), prev=_prev_of(b), features=b.get(FEATURES)),
                       reuse=dot.reuse(*args), prior=start)
        budgets = b["budget"] if "budget" in b else torch.zeros(len(target))
        for name, guess in guesses.items():
            err = (space(guess) - target).double().square().flatten(1).sum(1).cpu()
            for budget in [None, *budgets.unique().tolist()]:
                rows = slice(None) if budget is None else (budgets.cpu() == budget)
                acc = sums.setdefault(budget, {}).setdefault(name, [0.0, 0])
                acc[0] += err[rows].sum().item()
                acc[1] += int(err[rows].numel()) * target[0].numel()
    return {**_ratios(sums.pop(None)), "per_budget": {f"{b:g}": _ratios(v) for b, v in sorted(sums.items())}}


def _ratios(acc: dict) -> dict:
    rmse = {name: (total / count) ** 0.5 for name, (total, count) in acc.items()}
    return dict(dot_rmse=rmse["dot"], reuse_rmse=rmse["reuse"], prior_rmse=rmse["prior"],
                ratio=rmse["dot"] / rmse["reuse"], prior_ratio=rmse["dot"] / rmse["prior"])


def _cached_pairs(path: Path, key: str, make, world: World | None = None):
    """The pairs cached at `path`, made (by rank 0 alone under torchrun) where there are none."""
    if world is not None and not world.main:
        world.barrier()  # rank 0 is making them
        return load_keyed(path, key, "Dot training pairs")[0]
    got = load_keyed(path, key, "Dot training pairs")
    pairs = got[0] if got is not None else make()
    if got is None:
        save_atomic(pairs, path, {"key": key})
    if world is not None:
        world.barrier()
    return pairs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="fmnist")
    p.add_argument("--solver", default="ddim", help="the solver Morse wraps while making pairs")
    p.add_argument("--dots-per-dash", type=int, default=3)
    p.add_argument("--dot-ratio", type=float, default=6.0, help="N assumed when planning schedules")
    p.add_argument("--budgets", default="2,3,4,6,8,12,16", help="LSD budgets whose schedules to train on")
    p.add_argument("--trajectories", type=int, default=256, help="sampling runs per budget and round")
    p.add_argument("--rounds", type=int, default=3, help="pair-making rounds, each with the Dot trained so far")
    p.add_argument("--heldout", type=int, default=64, help="held-out sampling runs per budget")
    p.add_argument("--iters", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head-lr-mult", type=float, default=10.0, help="learning-rate factor of the linear path's head")
    p.add_argument("--width", type=int, default=DotConfig.width)
    p.add_argument("--m", type=int, default=DotConfig.m)
    p.add_argument("--lora-rank", type=int, default=DotConfig.lora_rank)
    p.add_argument("--skip-levels", type=int, default=1, help="deepest Dash levels (and mid block) the Dot leaves out")
    p.add_argument("--residual", choices=("eps", "x0"), default=None,
                   help="where the Dot's residual lives (default: x0 for --solver lcm, else eps; see morse.dot)")
    # Issue 30's ablations. Each option enters the resume key and the card's command only when given.
    p.add_argument("--prior", choices=PRIORS, default=None, help="what the untrained Dot returns (morse.prior; "
                   "default reuse)")
    p.add_argument("--history", choices=("on", "off"), default=None, help="the Dot also sees the anchor before s and "
                   "the prior (default: on with --prior extrap)")
    p.add_argument("--trajectory-inputs", choices=("on", "off"), default=None, help="off: the Dot sees x_ti and t_i "
                   "only, not the anchor's x_ts and z_s (ablation; default on)")
    p.add_argument("--balance-budgets", action="store_const", const=True, default=None,
                   help="draw training pairs evenly over the budgets' plans (default: as many as they make)")
    p.add_argument("--round-lr", action="store_const", const=True, default=None,
                   help="restart the cosine learning-rate schedule at every DAgger round (default: one schedule)")
    p.add_argument("--loss", choices=("mse", "relative", "amplified", "energy", "across", "blurring"), default=None,
                   help="relative: each pair's error over its prior's; amplified: weighted by the square of the DDIM "
                   "step's factor on it; energy: a stochastic Dot trained by the energy score of two draws; across / "
                   "blurring: the error's part across the prior's own / along the direction that blurs the x0 "
                   "estimate weighted --across-weight / --blurring-weight times (see dot_loss; default mse)")
    for loss, default in LOSS_WEIGHTS.items():
        p.add_argument(f"--{loss}-weight", type=float, default=None, help=f"with --loss {loss} (default {default:g})")
    p.add_argument("--dash-features", choices=("on", "off"), default=None, help="on: the Dot also sees the Dash's "
                   "mid-block output at the anchor (ablation; default off)")
    p.add_argument("--body", choices=BODIES, default=None, help="copy: a fully fine-tuned copy of the Dash's layers; "
                   "fresh: the same layers re-initialised (ablations of weight sharing; default shared, with LoRA)")
    p.add_argument("--pairs-from", choices=("all", "first-group"), default=None, help="first-group: train on the "
                   "Dot steps before the second Dash step alone, where the Dot has no earlier anchor and the prior is "
                   "reuse (a specialist for morse.gate --learned first-group; the held-out error is measured there "
                   "too; default all)")
    p.add_argument("--init", type=Path, default=None, help="start from this Dot's weights instead of zero residual")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--latency-batches", default="1,64,256", help="batch sizes at which N is measured for the card")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--weights", default=None, help="the task's weights folder (text-to-image tasks: diffusers layout)")
    p.add_argument("--prompts", default=None, help="prompt file of a text-to-image task (one per line, or MS-COCO "
                   "captions JSON)")
    p.add_argument("--device", default="cpu", help="e.g. cuda (N on the card is then measured there too)")
    p.add_argument("--out", type=Path, default=Path("runs/dot-fmnist"))
    p.add_argument("--export", type=Path, default=None, help="also write the final Dot here with its card; "
                   "the committed ones are morse.pretrained.dot_path(task, solver), e.g. "
                   "morse/weights/fmnist_dot.safetensors for ddim, fmnist_dot_dpm.safetensors for dpm")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        if args.rounds < 1 or args.iters < args.rounds:
            raise TrainingError(f"need 1 <= --rounds <= --iters, got --rounds {args.rounds} --iters {args.iters}")
        for loss in LOSS_WEIGHTS:
            weight = getattr(args, f"{loss}_weight")
            if weight is not None and (args.loss != loss or weight < 1):
                raise TrainingError(f"--{loss}-weight {weight} needs --loss {loss} and a weight >= 1")
        if args.loss == "blurring" and residual_of(args) != "eps":
            raise TrainingError("--loss blurring measures an epsilon error: it needs --residual eps")
        with session(args.device) as world:
            train(args, world)


def residual_of(args) -> str:
    return args.residual or ("x0" if args.solver == "lcm" else "eps")


def recipe(args, dash_sum: str, init_sum: str | None = None) -> tuple[str, str]:
    """The command the card records (every option but the run's places and the latency batches) and the resume
    key: a hash of the arguments with the checksums of the Dash (`dash_sum`, 16 hex digits) and of the --init Dot,
    since pairs and checkpoints are valid only for the Dash (and initial Dot) that made them. Options added later
    enter the key only when given, so the keys of earlier commands stay the same (tests/test_training_keys.py)."""
    resumable = {k: v for k, v in vars(args).items()
                 if k not in ("export", "latency_batches", "checkpoint_every", "device")
                 and not (k in ("weights", "prompts", "residual", *ABLATIONS) and v is None)}
    if residual_of(args) != "eps":  # the key of every epsilon-residual command stays what it was before the option
        resumable["residual"] = residual_of(args)
    resumable.update(dash=dash_sum, init=init_sum)
    command = command_text("morse.train", {k: v for k, v in vars(args).items()
                                           if k not in ("out", "export", "data_dir", "latency_batches", "device")})
    return command, resume_key(json.dumps(resumable, default=str))


def setup(args, device) -> tuple:
    """(task, Dash, the Dash's checksum, solver, denoiser). With --solver lcm the Dash is the task's
    consistency-distilled model, sampled as it was distilled (Morse-LCM)."""
    try:
        task = get_task(args.task, data_dir=args.data_dir, weights=args.weights, prompts=args.prompts)
        dash = task.dash().to(device)
    except (FileNotFoundError, ValueError) as e:
        raise TrainingError(str(e)) from None
    solver, dash_sum = get_baseline(args.solver), None
    if args.solver == "lcm":
        try:
            dash, lcm_card, dash_sum = load_lcm(task, dash)
        except (FileNotFoundError, ValueError) as e:
            raise TrainingError(str(e)) from None
        solver = lcm_solver(lcm_card)
    # A guided task's Dot learns to correct the guided estimate, at the task's default guidance scale.
    denoiser = (task.denoiser(dash) if hasattr(task, "denoiser") else Denoiser(dash, task.schedule_config)).to(device)
    dash_sum = dash_sum or (sha256(task.dash_path)[:16] if hasattr(task, "dash_path") else task.checksum())
    return task, dash, dash_sum, solver, denoiser


def build_dot(args, dash, task, solver, device) -> Dot:
    residual = residual_of(args)
    dot = Dot(dash, DotConfig(m=args.m, width=args.width, lora_rank=args.lora_rank, skip_levels=args.skip_levels,
                              schedule=dict(task.schedule_config), residual=residual,
                              clip_x0=residual == "x0" and solver.overrides.get("clip_sample", False),
                              prior=args.prior or "reuse", trajectory=args.trajectory_inputs != "off",
                              history=(args.history or ("on" if args.prior == "extrap" else "off")) == "on",
                              body=args.body or "shared", dash_features=args.dash_features == "on",
                              stochastic=args.loss == "energy")).to(device)
    if args.init is not None:
        dot.load_state_dict(Dot.load(dash, args.init).trainable_state_dict(), strict=False)
    return dot


def optimiser(dot, args) -> tuple[dict, torch.optim.Optimizer]:
    """(the trainable parameters by name, AdamW over them). The linear path's coefficients reach O(10)
    (least-squares fits on Dash trajectories); at the body's learning rate they lag the rest of the Dot for
    thousands of iterations, so their group's rate is --head-lr-mult times the rest's."""
    params = {n: q for n, q in dot.named_parameters() if q.requires_grad}
    head = list(dot.linear_coeffs.parameters()) + list(getattr(dot, "gate_tables", {}).values())  # factors too
    head_ids = {id(q) for q in head}
    rest = [q for q in params.values() if id(q) not in head_ids]
    opt = torch.optim.AdamW([dict(params=rest, lr_mult=1.0), dict(params=head, lr_mult=args.head_lr_mult)],
                            lr=args.lr, weight_decay=0.0)
    return params, opt


@contextmanager
def loss_log(path: Path, start: int, main: bool):
    """The loss log, one JSON line per iteration, to append to after the `start` iterations a resumed run keeps:
    lines of later iterations (written after its checkpoint, before the kill) are dropped, as those iterations run
    again. Only rank 0 writes one."""
    if not main:
        with open(os.devnull, "w") as f:
            yield f
        return
    lines = {}
    for line in path.read_text().splitlines() if start and path.exists() else []:
        try:
            lines[json.loads(line)["iter"]] = line + "\n"
        except ValueError:  # a line cut short by the kill
            continue
    with open(path, "w") as f:
        f.writelines(lines[i] for i in sorted(lines) if i < start)
        yield f


def train_round(args, world, r: int, first: int, end: int, pool: list[dict], stepper: Stepper, state: Checkpoint,
                net, log, device, gains: dict | None = None) -> None:
    """Iterations `first` .. `end` - 1 of round r on the pool of all rounds' pairs, through the training wing's
    loop; the checkpoint (the Dot's trainable tensors) is written every --checkpoint-every iterations and at the
    round's end, after the loss log is flushed up to it."""
    dot = _unwrap(net)
    starts = torch.tensor([0] + [len(q["target"]) for q in pool]).cumsum(0)

    weights = {loss: getattr(args, f"{loss}_weight") or default for loss, default in LOSS_WEIGHTS.items()
               if args.loss == loss}

    def loss_at(it):
        idx = _draw(pool, starts, args.batch_size, state.gen, args.balance_budgets)[world.part(args.batch_size)]
        return dot_loss(net, _rows(pool, starts, idx, device), relative=args.loss == "relative", gains=gains,
                        energy_gen=state.gen if args.loss == "energy" else None, **weights)

    def save(step):
        log.flush()
        state.save({f"dot/{k}": v for k, v in dot.trainable_state_dict().items()}, step)

    run_steps(stepper, loss_at, first, end,
              log=lambda it, value: log.write(json.dumps({"iter": it, "round": r, "loss": value}) + "\n"),
              save=save if world.main else None, every=args.checkpoint_every, save_at_end=True,
              loss_value=world.mean, total=args.iters, desc=f"round {r + 1}/{args.rounds} train", unit="it")


def fit(args, world, net, state: Checkpoint, make_pairs, device, gains: dict | None = None
        ) -> tuple[list[dict], float, float]:
    """The DAgger rounds, resumed from the checkpoint where it holds this run: each round's pairs (cached) come
    from sampling with the Dot trained so far, then the Dot trains on all rounds' pairs. Returns the pool of pairs,
    and the seconds spent making pairs and training."""
    dot = _unwrap(net)
    start, own, _ = state.load()
    dot.load_state_dict({k[4:]: v for k, v in own.items() if k.startswith("dot/")}, strict=False)
    ends = [(r + 1) * args.iters // args.rounds for r in range(args.rounds)]
    stepper = Stepper(dot, state.opt, args.lr, cosine_spans([0] + ends if args.round_lr else [0, args.iters]))
    pool, pair_time, train_time = [], 0.0, 0.0
    with loss_log(args.out / "loss.jsonl", start, world.main) as log:
        for r, end in enumerate(ends):
            t0 = time.perf_counter()
            seeds = [args.seed * 10**6 + r * args.trajectories + i for i in range(args.trajectories)]
            dot.eval()
            desc = f"round {r + 1}/{args.rounds} pairs"
            pool.append(_cached_pairs(args.out / f"pairs-round{r}.safetensors", f"{state.key}/{r}",
                                      lambda seeds=seeds, desc=desc: make_pairs(dot, seeds, desc), world))
            pair_time += time.perf_counter() - t0
            if end <= start:
                continue  # trained before the resume; its pairs stay in the pool
            dot.train()
            t1 = time.perf_counter()
            train_round(args, world, r, max(start, ends[r - 1] if r else 0), end, pool, stepper, state, net, log,
                        device, gains)
            train_time += time.perf_counter() - t1
    return pool, pair_time, train_time


def heldout_seeds(seed: int, n: int) -> list[int]:
    """The held-out sampling runs' seeds of a training run with --seed `seed` (disjoint from its training seeds)."""
    return [seed * 10**6 + 500_000 + i for i in range(n)]


def measure(args, dot, dash, denoiser, task, make_pairs, device) -> tuple[dict, dict, dict]:
    """(held-out error, measured N per latency batch, ms per image of Dash and Dot per latency batch)."""
    err = residual_error(dot, make_pairs(dot, heldout_seeds(args.seed, args.heldout), "held-out pairs"), device=device)
    timed_dash, timed_dot = dash, dot
    if getattr(denoiser, "uncond", None) is not None:  # a text UNet needs a condition: the unconditional one
        timed_dash = lambda x, t: denoiser.raw(x, t)  # noqa: E731
        timed_dot = lambda *a: dot(*a, denoiser.condition(None, a[0]))  # noqa: E731
    times = {b: dash_dot_times(timed_dash, timed_dot, task.image_shape, int(b), device=device)
             for b in args.latency_batches.split(",")}
    ratios = {b: round(dash_s / dot_s, 2) for b, (dash_s, dot_s) in times.items()}
    ms_per_image = {b: dict(dash=round(dash_s * 1e3 / int(b), 3), dot=round(dot_s * 1e3 / int(b), 3))
                    for b, (dash_s, dot_s) in times.items()}
    return err, ratios, ms_per_image


def train(args, world: World) -> None:
    device = world.device(str(device_of(args.device)))
    world.check_batch(args.batch_size)
    gen = begin(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    task, dash, dash_sum, solver, denoiser = setup(args, device)
    interleave = Interleave(args.dots_per_dash)
    budgets = [float(b) for b in args.budgets.split(",")]
    make_pairs = lambda dot, seeds, desc: sampling_pairs(  # noqa: E731
        denoiser, dot, solver, interleave, args.dot_ratio, budgets, seeds, task.image_shape, desc=desc,
        device=device, conditions=task.conditions, first_group_only=args.pairs_from == "first-group")
    dot = build_dot(args, dash, task, solver, device)
    net = ddp(dot, world, device)
    params, opt = optimiser(dot, args)
    command, key = recipe(args, dash_sum, sha256(args.init)[:16] if args.init else None)
    state = Checkpoint(args.out / "checkpoint.safetensors", key, opt, params, gen, "delete it or use another --out")
    gains = step_gains(solver, task.schedule_config, interleave, args.dot_ratio, budgets,
                       dot.alphas_cumprod) if args.loss == "amplified" else None
    pool, pair_time, train_time = fit(args, world, net, state, make_pairs, device, gains)
    if not world.main:
        return
    dot.eval()
    err, ratios, ms_per_image = measure(args, dot, dash, denoiser, task, make_pairs, device)
    with open(args.out / "loss.jsonl") as f:
        losses = [json.loads(line)["loss"] for line in f]
    card = dict(task=args.task, dot_config=vars(dot.config), dot_ratio_planned=args.dot_ratio,
                dot_ratio_measured=ratios, ms_per_image=ms_per_image, device=str(device),
                dots_per_dash=args.dots_per_dash, solver=args.solver, budgets=budgets, rounds=args.rounds,
                iters=args.iters, batch_size=args.batch_size, trajectories=args.trajectories,
                train_pairs=sum(len(q["target"]) for q in pool), heldout_runs_per_budget=args.heldout,
                trainable_parameters=sum(q.numel() for q in params.values()),
                dash_parameters=sum(q.numel() for q in dash.parameters()),
                heldout_error=err, pair_generation_s=round(pair_time, 1), train_time_s=round(train_time, 1),
                loss_per_100_iters=[round(v, 6) for v in loss_curve(losses)],
                **({"lcm_sha256": dash_sum} if args.solver == "lcm" else {}), command=command)
    publish([args.out / "dot.safetensors"] + ([args.export] if args.export else []),
            lambda path: dot.save(path, {"card": json.dumps(card)}), card)
    print(json.dumps({"heldout_error": err, "dot_ratio": ratios}, indent=1))

if __name__ == "__main__":
    main()
