"""Distil a Dot's groups onto the exact Dot's group ends: the objective is the state, not each estimate.

    python -m morse.distill --dot morse/weights/fmnist_dot.safetensors --out runs/ablation/distill-first
    python -m morse.distill --dot ... --groups long-lines --out runs/ablation/distill-long-lines

Why (issue 30): at 8 and 16 LSD the committed Dot samples at its plans' exact-Dot ceiling; what is left is the 2-4
LSD plans. There every Dot trained by morse.train, which regresses epsilon step by step on its own sampling path,
stays at FD 65-117 at 2 LSD against the exact Dot's 12.7, whatever its capacity (reports/fmnist/ablation, low-budget
section). Per-step errors compound over a group's steps, and a smaller epsilon error does not mean a better sample.
So here a group (a Dash step and the Dot steps after it) is unrolled through the solver's own updates
(differentiably: the Dot calls and the steps between them), and the Dot is trained so that the state the group
hands on (the next Dash step's input; after the plan's last Dash step, the sample) matches the one the exact Dot
reaches, the Dash at every step: the oracle's. The solver is the Dot's own, DDIM or DPM-Solver++(2M); the latter
also takes the exact trajectory's history (its converted estimate of the step before) at each later group's start.

Which groups: the first (--groups first, no earlier anchor; its learned part with factor 1 below --learned-below,
default 900 as the committed Dot's), and with --groups long-lines also the later groups on lines longer than the
gate's last length edge (1.5 in lambda on the committed Dot), where the committed Dot gives the plain line; with
--groups all every group with a Dot step below --learned-below (the shorter lines too, where the gate gave the prior
alone, so the opened gate acts at every budget: distil 12 and 16 LSD too). Each such group starts from the exact
trajectory's state and anchors, or with --inputs own from the starting Dot's own (where sampling puts it: a DAgger
round), and is pulled to the exact trajectory's end either way. Elsewhere the starting Dot's gate stands, so with
long-lines the plans with neither (12 and 16 LSD on the embedded default) sample as before. Each
group's loss is the mean squared error of its end state divided by the starting Dot's on the first 256 training
runs, so every group counts alike (the 2-LSD group ends in a clean image, the 8-LSD first group at t = 799).

--fine K: the exact Dot is the oracle of a Dot, not of a sample. Where Morse already samples better than the exact
Dot (DDIM, 8 and 16 LSD on the embedded default: the learned Dot's small bias offsets part of DDIM's own step
error), pulling groups to its ends pulls them back. With --fine K each group is pulled instead to the Dash's ODE
solution from the same noise (DPM-Solver++(2M) on the plan's own grid, each step cut in K; the group's inputs with
--inputs exact are that solution's too), so the Dot learns the DDIM steps' error as well as the Dash's estimate.
For a DPM-Solver++(2M) Dot the history each group hands on is pulled to the history that solver would hold on the
solution: the Dash's x0 at the solution's state at the group's last step (with K = 1 these are the exact Dot's).

A Dot of its own for the plans with k Dash steps (morse.sampler's plan Dots): distil those plans' budgets alone
(--budgets 2 for the 2-LSD plan's one group) and write the Dot beside the shared one as <stem>_dash<k>.safetensors
(--export morse/weights/fmnist_dot_dash1.safetensors); Morse gives those plans to it and every other plan to the
shared Dot, so the gate's opened cells act in those plans only.

Training runs: seeds seed * 10^6 + 800,000 + i (none that morse.train or morse.gate use); their exact inputs and
ends are cached in --out (targets.safetensors), and with --inputs own the starting Dot's inputs
(inputs.safetensors). The held-out error is measured on morse.train's held-out seeds twice: each group end's RMSE
against the exact one (reuse, the starting Dot and this one), and the per-step epsilon error as morse.train reports
it. Resumable: rerun the same command.

--eps-weight W adds that per-step epsilon error (relative to reuse's, on the path the group is unrolled along) to
each group's loss with factor W: how far a Dot can keep both, the state its groups hand on and its estimates. With
--eps-bound B it is a bound, not a price: the error relative to the Dot's prior's, pooled over the groups as the
card's held-out measure pools them, counts (times W) only while it is above B, so below B the groups' ends alone
decide where the Dot moves (PooledBound).

An ungated Dot (morse.train's, its learned part at every step) is distilled as it is with --groups all.
"""

import argparse
import copy
import json
import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

from baselines.checkpoint import sha256
from baselines.noise import initial_noise
from baselines.registry import get_baseline
from baselines.runtime import tune_malloc
from baselines.solvers import solve
from baselines.training.cards import loss_curve, publish
from baselines.training.loop import Checkpoint, Stepper, begin, run_steps
from baselines.training.recipe import TrainingError, command_text, one_line_errors, resume_key
from baselines.training.schedule import cosine_spans
from morse.dot import Dot
from morse.gate import T_EDGES, open_dot, training_numbers
from morse.interleave import Interleave
from morse.sampler import dot_condition
from morse.train import _cached_pairs, heldout_seeds, loss_log, optimiser, residual_error, sampling_pairs

SEED_OFFSET = 800_000
NORM_RUNS = 256
GROUPS = ("first", "long-lines", "all")
INPUTS = ("exact", "own")
GATE_FACTORS = ("one", "learn")
SOLVERS = ("ddim", "dpm")  # the solvers whose state at a Dash step the exact trajectory hands over whole


def at_step(scheduler, first: int, history=None):
    """A copy of `scheduler` standing at step `first`. A multistep solver (DPM-Solver++(2M)) also needs its history
    there, `history`: the converted estimate (x0) of step first - 1, as the solver kept it; DDIM keeps none."""
    scheduler = copy.copy(scheduler)
    if hasattr(scheduler, "model_outputs"):
        order = scheduler.config.solver_order
        if order > 2:
            raise TrainingError(f"morse.distill unrolls solvers of order 2 at most; this one has order {order}")
        scheduler.model_outputs = [None] * (order - 1) + [history]
        scheduler.lower_order_nums, scheduler._step_index = min(first, order), first
    return scheduler


def unroll(scheduler, first, end, step_kwargs, x, z, estimate, history=None):
    """The solver's updates first .. end - 1 from state x at the plan's Dash step `first`, with the Dash's estimate
    z there and `estimate(x_ti, t_i)` at the Dot steps after it: the state the group hands on (differentiable where
    `estimate` is), and the solver's history for the next group (None for DDIM)."""
    scheduler = at_step(scheduler, first, history)
    for i in range(first, end):
        t = scheduler.timesteps[i]
        eps = z if i == first else estimate(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x, getattr(scheduler, "model_outputs", [None])[-1]


def fine_grid(timesteps, k: int) -> tuple[list[int], list[int]]:
    """The plan's timesteps with each step cut into `k` (evenly in t; after the last, down to the sample at -1), and
    each plan step's index in it."""
    coarse = [int(t) for t in timesteps] + [-1]
    fine = list(dict.fromkeys(t for a, b in zip(coarse, coarse[1:]) for j in range(k)
                              if (t := round(a - j * (a - b) / k)) >= 0))
    return fine, [fine.index(t) for t in coarse[:-1]]


class Plans:
    """The budgets' plans, their groups (a Dash step and the Dot steps after it), and each group unrolled from given
    inputs with the exact Dot (the Dash) or with a Dot. With `fine` > 0 the targets are not the exact Dot's but the
    Dash's ODE solution: DPM-Solver++(2M) on the plan's grid with each step cut in `fine`."""

    def __init__(self, denoiser, solver, interleave, dot_ratio, budgets, conditions, device, fine: int = 0):
        self.denoiser, self.solver, self.conditions, self.fine, self.device = denoiser, solver, conditions, fine, device
        self.jumps = {b: interleave.plan(b, dot_ratio) for b in budgets}
        self.schedulers = {b: solver.make_scheduler(denoiser.schedule_config, len(p), device)
                           for b, p in self.jumps.items()}

    def groups(self, budget) -> list[tuple[int, int]]:
        """(its Dash step, the next Dash step or the plan's end) per group, in order."""
        starts = [i for i, jump in enumerate(self.jumps[budget]) if jump]
        return list(zip(starts, starts[1:] + [len(self.jumps[budget])], strict=True))

    def times(self, budget, group) -> list:
        first, end = self.groups(budget)[group]
        return self.schedulers[budget].timesteps[first:end]

    def cond(self, seeds):
        return self.conditions(seeds) if self.conditions is not None else None

    def end(self, budget, group, inputs, seeds, dot=None):
        """The group's end state from `inputs` (x, z and, after the first group, the earlier anchor xp, zp and for a
        multistep solver its history hp), with the Dash at every step (dot None) or z + dot(...) at the Dot steps."""
        return self.run(budget, group, inputs, seeds, dot)[0]

    def run(self, budget, group, inputs, seeds, dot=None):
        """`end`, and the solver's history after it."""
        scheduler, (first, end) = self.schedulers[budget], self.groups(budget)[group]
        cond, times, x, z = self.cond(seeds), scheduler.timesteps, inputs["x"], inputs["z"]
        prev = (inputs["xp"], inputs["zp"], times[self.groups(budget)[group - 1][0]]) if group else None
        if dot is None:
            estimate = lambda x_ti, t_i: self.denoiser(x_ti, t_i, cond)  # noqa: E731
        else:
            estimate = lambda x_ti, t_i: z + dot(x_ti, x, z, t_i, times[first],  # noqa: E731
                                                 dot_condition(self.denoiser, cond, x_ti), prev=prev)
        return unroll(scheduler, first, end, self.solver.step_kwargs, x, z, estimate, inputs.get("hp"))

    def fine_walk(self, budget, x_T, seeds) -> tuple[list, list, list, torch.Tensor]:
        """The Dash's ODE solution from x_T on the plan's grid cut in `fine`: at each of the plan's Dash steps the
        state and the Dash's estimate there; for a multistep solver, at the plan step before each later Dash step,
        the history that solver would hold on the solution (the Dash's x0 there; None for DDIM); and the sample."""
        fine, at_all = fine_grid(self.schedulers[budget].timesteps, self.fine)
        at = [at_all[first] for first, _ in self.groups(budget)]
        multistep = hasattr(self.schedulers[budget], "model_outputs")  # as at_step tells them apart
        before = [at_all[first - 1] for first, _ in self.groups(budget)[1:]] if multistep else []
        scheduler = get_baseline("dpm").make_scheduler(self.denoiser.schedule_config, len(fine), self.device,
                                                       timesteps=fine)
        states, estimates, starts, histories = [x_T], [], set(at), {}

        def keep(i, t, x, eps):
            states.append(x)
            estimates.append(eps if i in starts else None)
            if i in before:  # the fine solver's own history after step i: its converted estimate (x0) there
                histories[i] = scheduler.model_outputs[-1]

        sample = solve(scheduler, lambda x, t, i: self.denoiser(x, t, self.cond(seeds)), x_T, callback=keep)
        return [states[i] for i in at], [estimates[i] for i in at], [histories[i] for i in before], sample

    @torch.inference_mode()
    def exact(self, units, seeds, shape, device="cpu", dot=None) -> dict:
        """For each unit (budget, group): the exact trajectory's inputs to it ("x", "z", "xp", "zp", and "hp" for a
        multistep solver) and what it hands on: its end state ("end") and, for a multistep solver with a group after
        it, the history ("hend"). With `dot`, the trajectory is Morse's with that Dot instead: what sampling feeds
        each group; with `fine` and no `dot`, the Dash's ODE solution (`fine_walk`)."""
        x_T = initial_noise(seeds, shape, device=device)
        out = {}
        for budget in dict.fromkeys(b for b, _ in units):
            if self.fine and dot is None:
                states, estimates, histories, sample = self.fine_walk(budget, x_T, seeds)
                ends = states[1:] + [sample]
                for group in range(max(g for b, g in units if b == budget) + 1):
                    if (budget, group) in units:
                        inputs = dict(x=states[group], z=estimates[group], end=ends[group],
                                      **(dict(xp=states[group - 1], zp=estimates[group - 1]) if group else {}),
                                      **(dict(hp=histories[group - 1]) if group and histories else {}),
                                      **(dict(hend=histories[group]) if group < len(histories) else {}))
                        out.update({f"{k}/{unit_name(budget, group)}": v for k, v in inputs.items()})
                continue
            x, anchors, history = x_T, [], None
            for group in range(max(g for b, g in units if b == budget) + 1):
                first = self.groups(budget)[group][0]
                z = self.denoiser(x, self.schedulers[budget].timesteps[first], self.cond(seeds))
                inputs = dict(x=x, z=z, **(dict(xp=anchors[-1][0], zp=anchors[-1][1]) if anchors else {}),
                              **({"hp": history} if history is not None else {}))
                anchors.append((x, z))
                x, history = self.run(budget, group, inputs, seeds, dot)
                handed = {"end": x, **({"hend": history} if history is not None
                                       and group + 1 < len(self.groups(budget)) else {})}
                if (budget, group) in units:
                    out.update({f"{name}/{unit_name(budget, group)}": v for name, v in {**inputs, **handed}.items()})
        return out


def unit_name(budget, group) -> str:
    return f"{budget:g}:{group}"


def units_of(plans: Plans, dot: Dot, budgets, groups: str) -> list[tuple[float, int]]:
    """The (budget, group) pairs whose Dot steps the distilled Dot's gate lets its learned part act at: the first
    groups, with "long-lines" the later groups on lines longer than the gate's last length edge, with "all" every
    group (the opened gate says which have a Dot step below its threshold)."""
    units = []
    for budget in budgets:
        for group in range(len(plans.groups(budget)) if groups != "first" else 1):
            anchor = plans.times(budget, group)[0]
            earlier = None if group == 0 else (None, None, plans.times(budget, group - 1)[0])
            factors = [1.0 if dot.config.gate is None else dot.gate_factor(t, anchor, earlier, 1, torch.zeros(1)).item()
                       for t in plans.times(budget, group)[1:]]
            if any(factors):
                units.append((budget, group))
    return units


def opened_cells(gate: dict, below: float, groups: str) -> list[list[bool]]:
    """The gate's cells that distillation opens: below `below`, the first group's column, and with "long-lines"
    the later groups' columns of lines longer than the last length edge (as long as 12 and 16 LSD have none on the
    embedded default, their plans sample as before); with "all" every column."""
    if groups == "long-lines" and not gate.get("gap_edges"):
        raise TrainingError("morse.distill --groups long-lines: the starting Dot's gate has no line-length columns "
                            "(gate it with morse.gate --gap-edges)")
    long_cols = range(len(gate["scale"][0]) - (len(gate["slope_edges"]) + 1), len(gate["scale"][0]))
    opened = {0, *{"first": (), "long-lines": long_cols, "all": range(len(gate["scale"][0]))}[groups]}
    return [[low < below and c in opened for c in range(len(row))]
            for low, row in zip([0.0, *T_EDGES], gate["scale"], strict=True)]


def open_gate(gate: dict, below: float, groups: str) -> dict:
    """The gate with the learned part at factor 1 in the opened cells and off in the rest of their columns."""
    cells = opened_cells(gate, below, groups)
    columns = {c for row in cells for c, on in enumerate(row) if on}
    return {**gate, "scale": [[1.0 if on else 0.0 if c in columns else v for c, (on, v) in enumerate(zip(m, row))]
                              for m, row in zip(cells, gate["scale"], strict=True)]}


def learn_gate(dot: Dot, gate: dict, cells: list[list[bool]]) -> None:
    """--gate-factors learn: the gate's tables (on the learned part, and on the line where it has them) become
    parameters of `dot`, starting from `gate`'s values, trained in the opened `cells` alone. Opening a cell at 1
    puts a learned part in it that was switched off because it hurt, and the shared network's first repairs there
    cost the groups that were already good (the DPM-Solver++ Dot's --groups all run at factor 1: the first groups of
    3-8 LSD at 1.35-1.75 times their starting loss after 3,600 iterations); from the starting Dot's factors the
    distillation starts where the starting Dot samples (reports/fmnist/per-solver/dpm-dot.md)."""
    device = next(dot.parameters()).device  # the Dot is already where it trains (--device)
    mask = torch.tensor(cells, dtype=torch.float32, device=device)
    dot.config.gate = copy.deepcopy(gate)
    dot.gate_tables = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.tensor(gate[t], dtype=torch.float32,
                                                                                 device=device))
                                              for t in ("scale", "prior_scale") if t in gate})
    for table in dot.gate_tables.values():
        table.register_hook(lambda grad: grad * mask)


def fix_gate(dot: Dot) -> None:
    """The learnt tables back into the Dot's gate, as numbers its card and sampler read."""
    if getattr(dot, "gate_tables", None) is not None:
        dot.config.gate = {**dot.config.gate, **{t: v.detach().tolist() for t, v in dot.gate_tables.items()}}
        del dot.gate_tables


def _batch(pool: dict, name: str, idx, device) -> dict:
    return {k.split("/")[0]: v[idx].to(device) for k, v in pool.items() if k.endswith("/" + name)}


@torch.inference_mode()
def group_end_error(plans: Plans, units, dots: dict, pool: dict, seeds, batch_size=64, device="cpu") -> dict:
    """{unit: {name: RMSE of its end state against the exact one}} for each Dot in `dots` (None: reuse), on the
    exact inputs in `pool` (of `seeds`); and {"<unit> history": ...} for the history it hands on, where the pool
    has one (a multistep solver's group with a group after it)."""
    zero = lambda x_ti, *_, **__: torch.zeros_like(x_ti)  # noqa: E731
    out = {}
    for budget, group in units:
        name = unit_name(budget, group)
        handed = [k for k in ("end", "hend") if f"{k}/{name}" in pool]
        sums = {(k, dot_name): 0.0 for k in handed for dot_name in dots}
        for k in range(0, len(seeds), batch_size):
            b = _batch(pool, name, torch.arange(k, min(k + batch_size, len(seeds))), device)
            for dot_name, dot in dots.items():
                got = dict(zip(("end", "hend"), plans.run(budget, group, b, seeds[k:k + batch_size], dot or zero)))
                for key in handed:
                    sums[key, dot_name] += (got[key] - b[key]).double().square().sum().item()
        for key in handed:
            out[name + ("" if key == "end" else " history")] = {
                dot_name: (sums[key, dot_name] / pool[f"{key}/{name}"].numel()) ** 0.5 for dot_name in dots}
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dot", type=Path, required=True, help="the gated Dot to start from (its card, .json, beside it)")
    p.add_argument("--out", type=Path, required=True, help="folder for the distilled Dot, its card and the targets")
    p.add_argument("--budgets", default="2,3,4,6,8", help="LSD budgets whose groups to distil")
    p.add_argument("--groups", choices=GROUPS, default="first", help="first: the first groups; long-lines: also the "
                   "later groups' Dot steps on lines longer than the gate's last length edge; all: every group's, the "
                   "shorter lines too (add 12,16 to --budgets: the opened gate acts at every budget); each later "
                   "group from the state at its Dash step that --inputs names")
    p.add_argument("--gate-factors", choices=GATE_FACTORS, default="one", help="one: the learned part acts at "
                   "factor 1 in the opened cells; learn: the gate's factors there (on the learned part, and on the "
                   "line) start from the starting Dot's and are trained with it")
    p.add_argument("--inputs", choices=INPUTS, default="exact", help="what each group starts from in training: "
                   "the exact trajectory's state, anchors and history, or the starting Dot's own (what sampling "
                   "feeds it; one DAgger round); either way it is trained towards the exact trajectory's end")
    p.add_argument("--fine", type=int, default=0, help="0: each group is pulled to the exact Dot's end (the "
                   "oracle's); K > 0: to the Dash's ODE solution instead, DPM-Solver++(2M) on the plan's grid with "
                   "each step cut in K, so the Dot may also correct the solver's own step error (for "
                   "DPM-Solver++ the handed-on history too: the Dash's x0 on the solution)")
    p.add_argument("--runs", type=int, default=4096, help="training runs (noises), each unrolled at every budget")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--first-weight", type=float, default=1.0, help="loss factor of the first groups against the "
                   "later ones (with --groups long-lines): sharing the Dot among eleven groups costs the first ones "
                   "part of what they reach alone")
    p.add_argument("--history-weight", type=float, default=1.0, help="for DPM-Solver++: loss factor of the history "
                   "a group hands on (its last estimate, as the solver keeps it for the next step) beside its end "
                   "state, each relative to the starting Dot's error (0: the state alone)")
    p.add_argument("--eps-weight", type=float, default=0.0, help="loss factor of the per-step epsilon error beside "
                   "the group's end: at each Dot step of the unrolled group, |z + Dot - the Dash's epsilon there|^2 "
                   "relative to reuse's (an extra Dash call per Dot step, without gradient). 0: the end alone; larger "
                   "weighs a small per-step error against the state the groups hand on")
    p.add_argument("--eps-bound", type=float, default=None, help="with --eps-weight: count the per-step epsilon "
                   "error only above this share of the Dot's prior's (the held-out measure of morse.train's cards), "
                   "hinged: the bound a Dot must keep while its groups' ends are distilled, not a price on every "
                   "step")
    p.add_argument("--head-lr-mult", type=float, default=10.0, help="learning-rate factor of the linear path's head")
    p.add_argument("--learned-below", type=float, default=900.0, help="the learned part acts at Dot steps with t_i "
                   "below this, one of the gate's row edges")
    p.add_argument("--heldout", type=int, default=64, help="held-out runs per budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--export", type=Path, default=None, help="also write the distilled Dot here with its card")
    return p


def _start(args):
    """(the starting Dot's card, the device, task, the Dash's checksum, solver, denoiser, the starting Dot, the Dot to
    train)."""
    if args.eps_bound is not None and not (args.eps_bound > 0 and args.eps_weight > 0):
        raise TrainingError(f"morse.distill --eps-bound {args.eps_bound}: give a positive bound and the factor on "
                            f"the error above it (--eps-weight, now {args.eps_weight})")
    if args.fine < 0:
        raise TrainingError(f"morse.distill --fine {args.fine}: give a positive number of cuts per step, or 0 for the "
                            f"exact Dot's ends")
    card, device, task, dash, dash_sum, solver, denoiser = open_dot(
        "morse.distill", args, "train one with python -m morse.train and gate it with python -m morse.gate")
    card = training_numbers(card)
    if solver.name not in SOLVERS:
        raise TrainingError(f"morse.distill unrolls {' and '.join(SOLVERS)} steps; this Dot wraps {solver.name}")
    start_dot, dot = (Dot.load(dash, args.dot).to(device) for _ in range(2))
    if args.gate_factors == "learn" and start_dot.config.gate is None:
        raise TrainingError("morse.distill --gate-factors learn: the starting Dot has no gate to learn (gate it with "
                            "python -m morse.gate, or leave --gate-factors one)")
    if dot.config.gate is None and args.groups != "all":
        raise TrainingError(f"morse.distill --groups {args.groups}: start from a gated Dot (python -m morse.gate "
                            "--learned first-group ...), whose groups are kept as gated where they are not distilled; "
                            "an ungated Dot is distilled with --groups all")
    if dot.config.gate is not None:  # an ungated Dot's learned part acts at every step already
        dot.config.gate = open_gate(dot.config.gate, args.learned_below, args.groups)
    return card, device, task, dash_sum, solver, denoiser, start_dot, dot


def eps_recorder(dot, plans, seeds, steps: list):
    """`dot` as Plans.run calls it, also appending to `steps`, at each Dot step, the squared error of z + Dot against
    the Dash's epsilon at the same state (differentiable in the Dot), reuse's (z's) and the Dot's prior's there:
    morse.train's per-step error, on the path the group is unrolled along."""
    cond = plans.cond(seeds)

    def call(x_ti, x_ts, z_s, t_i, t_s, dot_cond=None, prev=None):
        eta = dot(x_ti, x_ts, z_s, t_i, t_s, dot_cond, prev=prev)
        with torch.no_grad():
            target = plans.denoiser(x_ti, t_i, cond)
            base = dot.prior_estimate(z_s, t_i, t_s, prev)
        steps.append(((z_s + eta - target).square().sum(), (z_s - target).square().sum(),
                      (base - target).square().sum()))
        return eta
    return call


class PooledBound:
    """--eps-bound: a hinge on the per-step epsilon error relative to the prior's, pooled over the units as the card's
    held-out measure pools every Dot step of a plan. A batch holds one unit, whose ratio alone says nothing of the
    pooled one (the first group's steps, from t = 999, carry most of the prior's error), so each unit's squared
    errors are kept as running means and the hinge acts on their pooled ratio; while it is above the bound, each
    batch adds its error in the pooled ratio's units (its gradient is the pooled ratio's, times the weight)."""

    def __init__(self, bound: float, weight: float, units: int, decay: float = 0.8):
        self.bound, self.weight, self.units, self.decay = bound, weight, units, decay
        self.dot: dict = {}
        self.prior: dict = {}

    def term(self, unit: str, steps: list) -> torch.Tensor:
        err = sum(e for e, _, _ in steps)
        for mean, value in ((self.dot, err.item()), (self.prior, sum(p for _, _, p in steps).item())):
            mean[unit] = value if unit not in mean else self.decay * mean[unit] + (1 - self.decay) * value
        above = len(self.prior) == self.units and self.ratio() > self.bound  # pooled once every unit is seen
        return self.weight * err / sum(self.prior.values()) if above else err.new_zeros(())

    def ratio(self) -> float:
        return (sum(self.dot.values()) / sum(self.prior.values())) ** 0.5

    def record(self) -> dict:
        return {"eps_ratio": round(self.ratio(), 5)} if self.prior else {}

    def state(self) -> dict:
        """The running means as checkpoint tensors, so that a resumed run hinges on the ratio the killed one read."""
        return {f"bound/{kind}/{unit}": torch.tensor(v, dtype=torch.float64)
                for kind, means in (("dot", self.dot), ("prior", self.prior)) for unit, v in means.items()}

    def restore(self, tensors: dict) -> None:
        for key, value in tensors.items():
            if key.startswith("bound/"):
                _, kind, unit = key.split("/", 2)
                getattr(self, kind)[unit] = value.item()


def _train(args, dot, plans, units, pool, norm, seeds, key, device) -> float:
    """Train `dot` on the units in turn (resumable); returns the seconds spent."""
    gen = begin(args.seed)
    params, opt = optimiser(dot, args)
    state = Checkpoint(args.out / "checkpoint.safetensors", key, opt, params, gen, "delete it or use another --out")
    first, own, _ = state.load()
    dot.load_state_dict({k[4:]: v for k, v in own.items() if k.startswith("dot/")}, strict=False)
    stepper = Stepper(dot, opt, args.lr, cosine_spans([0, args.iters]))
    bound = None if args.eps_bound is None else PooledBound(args.eps_bound, args.eps_weight, len(units))
    if bound:
        bound.restore(own)
    parts = {}  # the last step's group-end and epsilon parts of its loss, for the log

    def loss_at(it):
        budget, group = units[it % len(units)]
        idx = torch.randint(len(seeds), (args.batch_size,), generator=state.gen)
        b = _batch(pool, unit_name(budget, group), idx, device)
        name, batch_seeds = unit_name(budget, group), [seeds[i] for i in idx.tolist()]
        steps = [] if args.eps_weight else None
        end, history = plans.run(budget, group, b, batch_seeds, dot if steps is None else
                                 eps_recorder(dot, plans, batch_seeds, steps))
        loss = (end - b["end"]).square().mean() / norm[name]
        parts["end"] = loss.item()
        if steps:
            eps = (args.eps_weight * sum(e for e, _, _ in steps) / sum(r for _, r, _ in steps) if bound is None
                   else bound.term(name, steps))
            loss, parts["eps"] = loss + eps, eps.item()
        if "hend" in b:  # a multistep solver's next step reads the history as well as the state
            loss = loss + args.history_weight * (history - b["hend"]).square().mean() / norm[name + " history"]
        return (1.0 if group else args.first_weight) * loss

    def save(step):
        log.flush()
        state.save({**{f"dot/{k}": v for k, v in dot.trainable_state_dict().items()},
                    **(bound.state() if bound else {})}, step)

    def write(it, value):
        log.write(json.dumps({"iter": it, "unit": unit_name(*units[it % len(units)]), "loss": value,
                              **{k: round(v, 6) for k, v in parts.items()}, **(bound.record() if bound else {})})
                  + "\n")

    t0 = time.perf_counter()
    dot.train()
    with loss_log(args.out / "loss.jsonl", first, True) as log:
        run_steps(stepper, loss_at, first, args.iters, log=write, save=save, every=args.checkpoint_every,
                  save_at_end=True, desc="distil", unit="it")
    dot.eval()
    return time.perf_counter() - t0


def distill(args) -> dict:
    tune_malloc()  # before the target walks, which are most of the Dash calls (begin() would tune it only later)
    card, device, task, dash_sum, solver, denoiser, start_dot, dot = _start(args)
    interleave, ratio, shape = Interleave(card["dots_per_dash"]), card["dot_ratio_planned"], task.image_shape
    budgets = [float(b) for b in args.budgets.split(",")]
    _check_plan_export(args.export, budgets, interleave, ratio)
    plans = Plans(denoiser, solver, interleave, ratio, budgets, task.conditions, device, args.fine)
    if any(len(plans.times(b, 0)) < 2 for b in budgets):
        raise TrainingError(f"morse.distill: some budget in {budgets} has no Dot step in its first group")
    units = units_of(plans, dot, budgets, args.groups)
    if args.gate_factors == "learn":
        learn_gate(dot, start_dot.config.gate, opened_cells(start_dot.config.gate, args.learned_below, args.groups))
    args.out.mkdir(parents=True, exist_ok=True)
    command = command_text("morse.distill", {k: v for k, v in vars(args).items()
                                             if k not in ("out", "export", "device")
                                             and (k, v) not in (("groups", "first"), ("first_weight", 1.0), ("fine", 0),
                                                                  ("history_weight", 1.0), ("inputs", "exact"),
                                                                  ("eps_weight", 0.0), ("eps_bound", None),
                                                                  ("gate_factors", "one"))})
    key = resume_key(command, dash_sum, sha256(args.dot)[:16])
    seeds = [args.seed * 10**6 + SEED_OFFSET + i for i in range(args.runs)]
    t0 = time.perf_counter()
    # The targets depend on the Dash, the solver and the units alone: another recipe on the same runs reuses them
    # ("+hend": a multistep solver's targets hold the history each group hands on, which earlier ones lacked).
    pool = _cached_pairs(args.out / "targets.safetensors", resume_key("/".join(map(str, (
        dash_sum, solver.name + ("" if solver.name == "ddim" else "+hend"), seeds[0], args.runs, units, ratio,
        card["dots_per_dash"], *([f"fine{args.fine}"] if args.fine else []))))),
        lambda: _exact(plans, units, seeds, shape, device))
    if args.inputs == "own":
        # Later groups start where the starting Dot's sampling stands, not where the Dash's does, and are still
        # pulled to the exact trajectory's end: the error they inherit is the one sampling hands them.
        own = _cached_pairs(args.out / "inputs.safetensors", resume_key("/".join(map(str, (
            dash_sum, solver.name, sha256(args.dot), seeds[0], args.runs, units, ratio, card["dots_per_dash"])))),
            lambda: _exact(plans, units, seeds, shape, device, dot=start_dot))
        pool = _with_inputs(pool, own)
    target_time = time.perf_counter() - t0
    # Each unit's loss is relative to the starting Dot's error there, so every group counts alike.
    few = {k: v[:NORM_RUNS] for k, v in pool.items()}
    norm = {u: e["start"] ** 2 for u, e in group_end_error(plans, units, {"start": start_dot}, few,
                                                           seeds[:NORM_RUNS], device=device).items()}
    train_time = _train(args, dot, plans, units, pool, norm, seeds, key, device)
    fix_gate(dot)
    held = heldout_seeds(args.seed, args.heldout)
    dots = {"reuse": None, "start": start_dot, "distilled": dot}
    held_pool = _exact(plans, units, held, shape, device)
    ends = group_end_error(plans, units, dots, held_pool, held, device=device)
    own_ends = None if args.inputs == "exact" else group_end_error(
        plans, units, dots, _with_inputs(held_pool, _exact(plans, units, held, shape, device, dot=start_dot)), held,
        device=device)
    eps = residual_error(dot, sampling_pairs(denoiser, dot, solver, interleave, ratio,
                                             [float(b) for b in card["budgets"]], held, shape, desc="held-out pairs",
                                             device=device, conditions=task.conditions), device=device)
    out = _card(args, card, dot, ends, own_ends, eps, command, target_time, train_time, budgets)
    publish([args.out / "dot.safetensors"] + ([args.export] if args.export else []),
            lambda path: dot.save(path, {"card": json.dumps(out)}), out)
    (args.out / "checkpoint.safetensors").unlink(missing_ok=True)
    return out


def _check_plan_export(export, budgets, interleave, ratio) -> None:
    """An --export named as a plan Dot (<stem>_dash<k>) must be distilled on plans with k Dash steps alone: Morse
    would give it those plans and no others."""
    match = re.fullmatch(r".*_dash(\d+)", export.stem) if export is not None else None
    if match and any(interleave.counts(b, ratio)[0] != int(match[1]) for b in budgets):
        steps = {b: interleave.counts(b, ratio)[0] for b in budgets}
        raise TrainingError(f"morse.distill: --export {export} names a Dot for the plans with {match[1]} Dash steps, "
                            f"but the budgets' plans have {steps}; distil those plans' budgets alone")


def _with_inputs(exact: dict, own: dict) -> dict:
    """The exact pool with each group's inputs taken from `own` (another trajectory's), its targets kept."""
    return {**exact, **{k: v for k, v in own.items() if k.split("/")[0] not in ("end", "hend")}}


def _exact(plans, units, seeds, shape, device, batch_size=64, dot=None) -> dict:
    parts = [plans.exact(units, seeds[k:k + batch_size], shape, device, dot)
             for k in tqdm(range(0, len(seeds), batch_size), desc="exact groups" if dot is None else "own groups",
                           unit="batch")]
    return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}


def _end_table(ends) -> list[str]:
    return ["| budget:group | reuse | starting Dot | distilled | distilled / starting |", "|---|---|---|---|---|",
            *[f"| {u} | {e['reuse']:.4f} | {e['start']:.4f} | {e['distilled']:.4f} | "
              f"{e['distilled'] / e['start']:.3f} |" for u, e in ends.items()]]


def _card(args, card, dot, ends, own_ends, eps, command, target_time, train_time, budgets) -> dict:
    losses = [json.loads(line)["loss"] for line in (args.out / "loss.jsonl").read_text().splitlines()]
    target = "the ODE solution's (--fine)" if args.fine else "the exact Dot's"
    section = [f"These weights are the Dot above, distilled: `{command}` (with `--dot` the starting Dot's path). "
               f"Group-end RMSE against {target}, held-out runs, per budget and group (0: the first), each "
               "group fed the exact trajectory's inputs:", "", *_end_table(ends)]
    if own_ends is not None:
        section += ["", "The same, each group fed the starting Dot's own trajectory's inputs (as in training):", "",
                    *_end_table(own_ends)]
    return {**card, "dot_config": vars(dot.config), "heldout_error": eps,
            "distill": dict(start_dot_sha256=sha256(args.dot), heldout_error_before=card["heldout_error"],
                            group_end_rmse=ends, **({"group_end_rmse_own": own_ends} if own_ends else {}),
                            inputs=args.inputs, fine=args.fine, gate_factors=args.gate_factors, runs=args.runs,
                            eps_weight=args.eps_weight, **({"eps_bound": args.eps_bound} if args.eps_bound else {}),
                            budgets=budgets,
                            groups=args.groups,
                            iters=args.iters, batch_size=args.batch_size, target_time_s=round(target_time, 1),
                            train_time_s=round(train_time, 1),
                            loss_per_100_iters=[round(v, 6) for v in loss_curve(losses)], command=command),
            "sections": card.get("sections", []) + [dict(title="Distilled on the group's end (morse.distill)",
                                                         lines=section)]}


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        card = distill(args)
    print(json.dumps(dict(group_end_rmse=card["distill"]["group_end_rmse"],
                          prior_ratio=card["heldout_error"]["prior_ratio"]), indent=1))


if __name__ == "__main__":
    main()
