"""T-Stitch (Pan, Zhuang et al., 2024, arXiv:2402.14167): trajectory stitching. A small denoiser trained on the
same data and noise schedule takes the first fraction of the sampling steps, where the state is mostly noise and a
coarse estimate is enough, and the Dash takes the rest, on one solver schedule.

Written from the paper's description (the authors' code is CC-BY-NC): the switch is a fraction of the steps, and
the solver carries on across it (a multistep solver's history holds the small model's estimates, as in the paper's
DPM-Solver runs). The small model's calls count as their own network, "dash-small", timed by the cost model. Steps
per budget: the most steps whose Dash steps plus small steps, at the small call's FLOP share, fit the budget.

A task's small denoiser is `<task>_dash_small.safetensors` beside its weights, a UNet2DModel of the layout its card
gives (the embedded default's: `python -m baselines.tasks.train_dash --channels 8,16,32`, see its card); a test hands
in its own with `ctx.once(SMALL, ...)`.
"""

import json

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file
from torch import nn

from baselines.accelerators.common import flop_fraction, like, longest_plan
from baselines.checkpoint import sha256, verify_weights
from baselines.methods import Context, Network, dash_networks
from baselines.registry import get_baseline
from baselines.solvers import DEFAULT_SPACING, SchedulerMethod, traced_solve
from baselines.tasks.fmnist import WEIGHTS

SMALL = "tstitch-small"  # the Context.once key of (small network, its schedule config, checksum)
NETWORK = "dash-small"


def load_small(task) -> tuple[nn.Module, dict, str]:
    """(network, schedule config, checksum) of the task's committed small denoiser."""
    path = WEIGHTS / f"{task.name}_dash_small.safetensors"
    if not path.exists():
        raise ValueError(f"tstitch: task {task.name} has no small denoiser ({path.name}); T-Stitch runs on the "
                         "embedded default, fmnist")
    verify_weights(path)
    card = json.loads(path.with_suffix(".json").read_text())
    net = UNet2DModel(**card["config"])
    net.load_state_dict(load_file(path))
    return net.eval().requires_grad_(False), card["schedule"], sha256(path)[:16]


class TStitch:
    def __init__(self, name: str, solver: SchedulerMethod, small: nn.Module, checksum: str, fraction: float):
        self.name, self.solver, self.wraps = name, solver, solver.name
        self.small, self.checksum, self.fraction = small, checksum, fraction
        self.plan_prices = {}  # what the plan prices a small call at, in Dash calls (its FLOP share)

    def switch(self, steps: int) -> int:
        """Steps the small denoiser takes: the fraction of `steps`, rounded, always leaving the Dash the last one."""
        return min(round(self.fraction * steps), steps - 1)

    def networks(self, denoiser) -> dict[str, Network]:
        small = like(denoiser, self.small)
        return {**dash_networks(denoiser), NETWORK: Network(self.small, lambda x, t: small.raw(x, t))}

    def config(self) -> dict:
        return dict(name=self.name, solver=self.solver.config(), fraction=self.fraction, small_sha256=self.checksum)

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, spacing=DEFAULT_SPACING, callback=None):
        small = like(denoiser, self.small)
        if not self.plan_prices:
            x, t = noise[:1], torch.full((1,), 500, device=noise.device)
            self.plan_prices = {NETWORK: flop_fraction(lambda: denoiser(x, t), lambda: small(x, t))}
        steps = longest_plan(budget, lambda steps: set(range(self.switch(steps), steps)), self.plan_prices[NETWORK])
        switch = self.switch(steps)
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, steps, noise.device, spacing)

        def estimate(x, t, i):
            return (small if i < switch else denoiser)(x, t, cond)

        return traced_solve(scheduler, estimate, noise, {"dash": denoiser.net, NETWORK: self.small}, seeds,
                            self.solver.step_kwargs, callback, labels=lambda i: NETWORK if i < switch else "dash")


def tstitch(solver: str = "ddim", fraction: float = 0.1):
    """`--method-options tstitch_fraction=F` overrides the fraction (a sweep's knob). The default is the best of
    0.1 / 0.2 / 0.4 / 0.6 on fmnist's held-out seeds (the small denoiser's card gives the sweep)."""
    name = "tstitch" if solver == "ddim" else f"tstitch-{solver}"

    def build(ctx: Context) -> TStitch:
        share = float(ctx.options.get("tstitch_fraction", fraction))
        if not 0 <= share < 1:
            raise ValueError(f"{name}: the small denoiser's fraction of the steps must be in [0, 1), got {share}")
        small, schedule, checksum = ctx.once(SMALL, lambda: load_small(ctx.task))
        if dict(schedule) != dict(ctx.task.schedule_config):
            raise ValueError(f"{name}: the small denoiser was trained on another noise schedule than task "
                             f"{ctx.task.name}'s; retrain it on the task's schedule")
        first = next(ctx.dash.parameters())
        if small.dtype != first.dtype:  # diffusers warns on any dtype given to `to`, even the model's own
            small.to(dtype=first.dtype)
        return TStitch(name, get_baseline(solver), small.to(first.device), checksum, share)
    return build
