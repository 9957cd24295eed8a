"""T-GATE (Zhang, Liu et al., 2024): cross-attention converges early in sampling, so after a gate step its output is
cached and reused, and classifier-free guidance, which acts through the text, is dropped. PyPI `tgate` supplies the
step plan (`tgate_scheduler`) and the attention forward that caches and reuses (`register_forward`); this file drives
them from our loop, in place of its pipeline copies.

* Steps before the gate are guided Dash calls ([uncond, cond] as 2B rows, "dash"); the last of them caches each
  cross-attention's output, averaged over the two halves as T-GATE does. Steps from the gate on are one B-row call with
  the cached cross-attention and the unconditional text, as T-GATE's pipelines pass it ("dash-gated": its own network,
  timed on its own forward). Without classifier-free guidance (an LCM's embedded guidance, or w = 1) the rows are not
  halves: the cache keeps them as they are and gated calls take the prompt, as T-GATE's SDXL pipeline does for LCM.
* Self-attention is computed at every step (`sp_interval = fi_interval = 1`): tgate's self-attention reuse (its later
  version) makes calls of further kinds, each of which the cost model would need as its own network.
* `register_forward` replaces each attention module's forward and keeps its cache on the module. `_registered`
  installs it for the length of one call and takes both off after it, keeping the caches in the method's run, so the
  Dash is the same module between calls. Text tasks only: on a UNet2DModel the plan has no cross-attention to gate.
* The gate sits at `gate_fraction` of the steps (T-GATE's SD default: step 10 of 25, 0.4), at least after the first.
"""

import importlib.metadata
from contextlib import contextmanager

import torch
from tgate.tgate_utils import register_forward, tgate_scheduler
from torch import nn

from baselines.accelerators.common import flop_fraction, like, longest_plan, sample_shape
from baselines.denoisers import Denoiser
from baselines.methods import Context, Network, dash_networks
from baselines.registry import get_baseline
from baselines.solvers import DEFAULT_SPACING, SchedulerMethod, traced_solve

ATTENTION = "Attention"  # the class register_forward patches
GATED = "dash-gated"


def _attention(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if type(m).__name__ == ATTENTION]


@contextmanager
def _registered(net: nn.Module, plan: tuple, caches: dict):
    """tgate's forward on every attention module of `net`, for the length of the block, with `plan` = (ca_kward,
    sa_kward, keep_shape) and the caches of earlier calls; afterwards the modules' own forward and no cache."""
    modules = _attention(net)
    ca, sa, keep_shape = plan
    register_forward(net, ATTENTION, keep_shape=keep_shape, ca_kward=ca, sa_kward=sa)
    for m in modules:
        m.cache = caches.get(m)
    try:
        yield
    finally:
        for m in modules:
            caches[m] = vars(m).pop("cache", None)
            vars(m).pop("forward", None)


class Call(nn.Module):
    """The Dash under one step's T-GATE plan: its own module, so that the trace counts it under its own name."""

    def __init__(self, net: nn.Module, caches: dict):
        super().__init__()
        self.net, self.config, self.caches, self.plan = net, net.config, caches, None

    def forward(self, *args, **kwargs):
        with _registered(self.net, self.plan, self.caches):
            return self.net(*args, **kwargs)


class TGate:
    """T-GATE around a solver: the first `gate(steps)` steps guided, the rest gated; the most steps that fit the
    budget with a gated step at its FLOP share of a guided one."""

    def __init__(self, name: str, solver: SchedulerMethod, gate_fraction: float):
        self.name, self.solver, self.wraps, self.gate_fraction = name, solver, solver.name, gate_fraction
        self._share = {}  # by guided or not: a gated step's FLOP share of a guided one
        self.plan_prices = {}  # what the last plan priced a gated call at, in guided Dash calls

    def gate(self, steps: int) -> int:
        return max(1, round(self.gate_fraction * steps))

    def _calls(self, denoiser) -> tuple[Denoiser, Denoiser]:
        """The guided and the gated call, each its own module, sharing the run's cross-attention caches."""
        caches = {}
        return like(denoiser, Call(denoiser.net, caches)), like(denoiser, Call(denoiser.net, caches))

    def networks(self, denoiser) -> dict[str, Network]:
        guided, gated = self._calls(denoiser)
        # The probe's gated call needs caches: one row's, made here untimed, which reuse broadcasts over any batch.
        x1 = torch.zeros(1, *sample_shape(denoiser.net), device=denoiser.net.device, dtype=denoiser.net.dtype)
        guided.net.plan = dict(cache=True, reuse=False), dict(cache=False, reuse=False), True
        with torch.inference_mode():
            guided.raw(x1, torch.full((1,), 500, device=x1.device))
        gated.net.plan = plan(1, 1, True)
        return {**dash_networks(denoiser), GATED: Network(gated.net, lambda x, t: gated.raw(x, t))}

    def config(self) -> dict:
        return dict(name=self.name, solver=self.solver.config(), gate_fraction=self.gate_fraction, sp_interval=1,
                    fi_interval=1, tgate=importlib.metadata.version("tgate"))

    def _steps(self, denoiser, budget, noise, cond) -> int:
        halves = denoiser.classifier_free and cond is not None
        if halves not in self._share:
            guided, gated = self._calls(denoiser)
            x, t, c = noise[:1], torch.full((1,), 500, device=noise.device), None if cond is None else cond[:1]
            guided.net.plan, gated.net.plan = plan(0, 1, halves), plan(1, 1, halves)
            self._share[halves] = flop_fraction(lambda: guided(x, t, c), lambda: gated(x, t, c if not halves else None))
        self.plan_prices = {GATED: self._share[halves]}
        return longest_plan(budget, lambda steps: set(range(self.gate(steps))), self._share[halves])

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, spacing=DEFAULT_SPACING, callback=None):
        guided, gated = self._calls(denoiser)
        steps = self._steps(denoiser, budget, noise, cond)
        gate, halves = self.gate(steps), denoiser.classifier_free and cond is not None
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, steps, noise.device, spacing)

        def estimate(x, t, i):
            call = guided if i < gate else gated
            call.net.plan = plan(i, gate, halves)
            return call(x, t, cond if i < gate or not halves else None)

        return traced_solve(scheduler, estimate, noise, {"dash": guided.net, GATED: gated.net}, seeds,
                            self.solver.step_kwargs, callback, labels=lambda i: "dash" if i < gate else GATED)


def plan(step: int, gate: int, halves: bool) -> tuple:
    """tgate's plan for `step` with the gate at `gate`: cross-attention computed, cached at gate - 1, then reused;
    self-attention always computed. The cache averages the [uncond, cond] halves of a guided call, if it has them."""
    ca, sa, keep_shape = tgate_scheduler(step, gate_step=gate, sp_interval=1, fi_interval=1, warm_up=0)
    return ca, sa, keep_shape or not halves


def tgate(solver: str = "ddim", gate_fraction: float = 0.4):
    """`--method-options tgate_gate=F` overrides the gate's fraction of the steps (a sweep's knob)."""
    name = "tgate" if solver == "ddim" else f"tgate-{solver}"

    def build(ctx: Context) -> TGate:
        if not getattr(ctx.dash.config, "cross_attention_dim", None):
            raise ValueError(f"{name}: task {ctx.task.name}'s Dash has no cross-attention to gate; T-GATE runs on "
                             "the text tasks (fmnist-text, sd14-coco, lcm-sdxl)")
        gate = float(ctx.options.get("tgate_gate", gate_fraction))
        if not 0 < gate <= 1:
            raise ValueError(f"{name}: the gate's fraction of the steps must be in (0, 1], got {gate}")
        return TGate(name, get_baseline(solver), gate)
    return build
