"""ToMe for Stable Diffusion (Bolya & Hoffman, 2023): merge similar tokens before the self-attention of the UNet's
transformer blocks and unmerge after it, so each call attends over fewer tokens. The patch is PyPI `tomesd`
(`apply_patch` / `remove_patch`); this file only drives it from our loop.

* Every call of a ToMe run is a merged call: the trace counts it under its own network, "dash-tome-<ratio>", timed by
  the cost model on its own forward (a merged call of the Dash); the Dash is declared uncalled, as LSD's unit. Steps
  per budget: the most merged calls that fit it at their FLOP share of a Dash call (common.longest_plan).
* tomesd patches the transformer blocks' classes in place. `Merged` patches for the length of one call and unpatches
  after it, removing every attribute tomesd left behind, so the Dash is the same module between calls (another
  method's call, or the latency probe of "dash", never sees a patched block).
* Merging is random in tomesd (`use_rand`: one destination token drawn per 2x2 cell, the same draw for every row of a
  batched call) from a generator it forks from the global RNG on first use, so a sample would depend on what ran
  before it. Here the generator is reseeded before every call from the step index, so a step's partition is the
  same whatever the batch size and run order. It cannot be drawn per sample (one partition per batched call), and
  tomesd turns randomness off for odd batches (meant for [uncond, cond] pairs): without classifier-free guidance
  the rows per call may be odd, so there merging runs deterministically (use_rand off), as tomesd does for them.
* `max_downsample`: tomesd merges in blocks at most this many times downsampled; by default the finest level that has
  transformer blocks (1 on SD v1.x, as tomesd's default; 2 on SDXL, whose first level has none; 4 on fmnist-text,
  whose attention is at 8x8), so that ToMe merges where tokens are most numerous on every UNet.
"""

import importlib.metadata

import tomesd
import torch
from tomesd.utils import isinstance_str
from torch import nn

from baselines.accelerators.common import flop_fraction, like, longest_plan
from baselines.denoisers import Denoiser
from baselines.methods import Context, Network, dash_networks
from baselines.registry import get_baseline
from baselines.solvers import DEFAULT_SPACING, SchedulerMethod, traced_solve

BLOCK = "BasicTransformerBlock"


def transformer_blocks(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance_str(m, BLOCK)]


def finest_attention_level(net: nn.Module) -> int:
    """The downsampling factor of the finest UNet level with transformer blocks (the mid block sits at the coarsest)."""
    config = net.config
    levels = [2 ** i for i, kind in enumerate(config.down_block_types) if "CrossAttn" in kind]
    return min(levels) if levels else 2 ** (len(config.down_block_types) - 1)


class Merged(nn.Module):
    """The Dash with ToMe patched in for the length of each call: a module of its own, so that the trace counts merged
    calls apart from the Dash's. `step` seeds the merge's random partition (set by the loop before each call)."""

    def __init__(self, net: nn.Module, args: dict):
        super().__init__()
        self.net, self.config, self.args, self.step = net, net.config, args, 0

    def forward(self, x, *args, **kwargs):
        modules = [self.net, *transformer_blocks(self.net)]
        before = [set(vars(m)) for m in modules]
        tomesd.apply_patch(self.net, **self.args)
        try:
            self.net._tome_info["args"]["generator"] = torch.Generator(x.device).manual_seed(self.step)
            return self.net(x, *args, **kwargs)
        finally:
            tomesd.remove_patch(self.net)
            for m, keys in zip(modules, before):  # _tome_info and the flags tomesd sets on older-style blocks
                for key in set(vars(m)) - keys:
                    delattr(m, key)


class ToMe:
    """A solver whose every Dash call is a merged call: the most steps whose merged calls, at their FLOP share of a
    Dash call, fit the budget."""

    def __init__(self, name: str, solver: SchedulerMethod, ratio: float, max_downsample: int):
        self.name, self.solver, self.wraps = name, solver, solver.name
        self.ratio, self.max_downsample = ratio, max_downsample
        self.network = f"dash-tome-{ratio:g}"
        self._share = {}  # by guided or not: the merged call's FLOP share
        self.plan_prices = {}  # what the last plan priced each call at, in Dash calls

    def _merged(self, denoiser, guided: bool) -> Denoiser:
        """`guided`: the calls run [uncond, cond] rows, an even count whatever the batch, so tomesd's random
        partition stays on (it turns it off for odd row counts)."""
        args = dict(ratio=self.ratio, max_downsample=self.max_downsample, use_rand=guided)
        return like(denoiser, Merged(denoiser.net, args))

    def networks(self, denoiser) -> dict[str, Network]:
        merged = self._merged(denoiser, guided=False)  # the probe's call: unconditional rows
        return {**dash_networks(denoiser), self.network: Network(merged.net, lambda x, t: merged.raw(x, t))}

    def config(self) -> dict:
        return dict(name=self.name, solver=self.solver.config(), ratio=self.ratio, max_downsample=self.max_downsample,
                    sx=2, sy=2, merge="self-attention", partition_seed="step index",
                    tomesd=importlib.metadata.version("tomesd"))

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, spacing=DEFAULT_SPACING, callback=None):
        guided = denoiser.classifier_free and cond is not None
        merged = self._merged(denoiser, guided)
        if guided not in self._share:
            x, t, c = noise[:1], torch.full((1,), 500, device=noise.device), None if cond is None else cond[:1]
            self._share[guided] = flop_fraction(lambda: denoiser(x, t, c), lambda: merged(x, t, c))
        self.plan_prices = {self.network: self._share[guided]}
        steps = longest_plan(budget, lambda steps: set(), self._share[guided])
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, steps, noise.device, spacing)

        def estimate(x, t, i):
            merged.net.step = i
            return merged(x, t, cond)

        return traced_solve(scheduler, estimate, noise, {self.network: merged.net}, seeds, self.solver.step_kwargs,
                            callback, labels=lambda i: self.network)


def tome(solver: str = "ddim", ratio: float = 0.5, max_downsample: int | None = None):
    """`--method-options tome_ratio=R` overrides the ratio (a sweep's knob)."""
    name = "tome" if solver == "ddim" else f"tome-{solver}"

    def build(ctx: Context) -> ToMe:
        if not transformer_blocks(ctx.dash):
            raise ValueError(f"{name}: task {ctx.task.name}'s Dash has no transformer blocks to merge tokens in; "
                             "ToMe runs on the text tasks (fmnist-text, sd14-coco, lcm-sdxl)")
        merge = float(ctx.options.get("tome_ratio", ratio))
        if not 0 < merge <= 0.75:  # tomesd merges at most 3 of each 2x2 cell's 4 tokens
            raise ValueError(f"{name}: the merge ratio must be in (0, 0.75], got {merge}")
        return ToMe(name, get_baseline(solver), merge, max_downsample or finest_attention_level(ctx.dash))
    return build
