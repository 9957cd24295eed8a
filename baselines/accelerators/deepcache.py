"""DeepCache (Ma, Fang and Wang, CVPR 2024): reuse a UNet's deep features between full steps.

At a full step the whole UNet runs and every block's output is kept; at the steps between, only the shallow
branch runs (the down and up layers above the cached branch, at the highest resolutions) and the deeper blocks
return what they gave at the last full step. Knobs: `cache_interval` (a full step every N steps), `cache_branch_id`
(where the shallow branch ends) and the schedule of full steps: `uniform`, or the paper's non-uniform 1:N schedule,
denser around `center` with exponent `power`.

The block wrapping is PyPI `DeepCache==0.1.1`'s `DeepCacheSDHelper`, driven from our loop by a subclass:
* the package finds the step with `t.item()` in the pipeline scheduler's list, which fails on the batched timesteps
  our denoiser passes; here the loop says which steps are shallow;
* its non-uniform schedule lives in its pipeline copies, which import names diffusers 0.42.1 no longer has, so
  `common.quadratic_full_steps` writes the schedule from the paper's formula;
* its branch numbering assumes 3 layers per UNet block (SD, google/ddpm): branch b is (block b // 3, layer b % 3).
  The embedded Dash has 1 layer per block (down: a resnet, then the downsampler as layer 1; up: 2 resnets), so
  layer 2 would only recompute a downsampler whose output no one reads: ids whose layer is above the block's
  layer count are refused. On the embedded Dash (3 blocks at 32², 16², 8²) the valid ids are 0 (conv_in and the
  last resnet at 32²), 1 (all of block 0 at 32²), 3, 4 (block 1 at 16²), 6 and 7 (block 2; 7 caches only the mid
  block).

The patched UNet is a copy the method owns (common.patched_copy), so the Dash is never touched. Its full steps
count as "dash" (the same network and cost), its shallow steps as "dash-shallow", timed by the cost model. Steps
per budget: the most steps whose full steps plus shallow steps, at the shallow call's FLOP share, fit the budget.

Setting (`deepcache` on DDIM; `deepcache-dpm` on DPM-Solver++(2M) takes the same): cache_interval 2, branch 0,
uniform, the lowest FD-fmnist at 4 and 8 LSD among intervals 2, 3, 5, branch 1 and the non-uniform schedule on
held-out seeds 100000-100199 (README: "DeepCache, PFDiff, Align Your Steps, ...").
"""

from contextlib import contextmanager
from types import SimpleNamespace

import torch
from DeepCache import DeepCacheSDHelper

from baselines.accelerators.common import (
    CheapCall,
    flop_fraction,
    knobs_from,
    like,
    longest_plan,
    patched_copy,
    quadratic_full_steps,
    sample_shape,
    uniform_full_steps,
)
from baselines.methods import Context, Network, dash_networks
from baselines.registry import get_baseline
from baselines.solvers import DEFAULT_SPACING, SchedulerMethod, traced_solve

MID = ("mid", "mid_block", 0, 0)  # the helper's key of the mid block's cached output


class _Helper(DeepCacheSDHelper):
    """DeepCache's block wrapping on `unet`, with the step's kind set by our loop (`shallow`) instead of read from
    the scheduler with `t.item()`."""

    def __init__(self, unet, cache_branch_id: int):
        super().__init__(SimpleNamespace(unet=unet))
        # cache_interval and skip_mode are the package's own step logic, unused: `shallow` decides.
        self.set_params(cache_interval=1, cache_branch_id=cache_branch_id, skip_mode="driven")
        self.shallow = False
        self.enable()

    def wrap_unet_forward(self):
        self.function_dict["unet_forward"] = None  # the UNet's own forward stays: no t.item()

    def is_skip_step(self, block_i, layer_i, blocktype="down"):
        return self.shallow and super().is_skip_step(block_i, layer_i, blocktype)

    def cached_rows(self) -> int | None:
        mid = self.cached_output.get(MID)
        return None if mid is None else mid.shape[0]


def check_branch(unet, cache_branch_id: int) -> None:
    block, layer = divmod(cache_branch_id, 3)
    blocks = len(unet.down_blocks)
    valid = [3 * b + k for b in range(blocks) for k in range(len(unet.up_blocks[-1 - b].resnets))]
    if cache_branch_id not in valid:
        raise ValueError(f"deepcache: cache_branch_id {cache_branch_id} (block {block}, layer {layer} in DeepCache's "
                         f"numbering of 3 layers per block) is not a branch of this UNet; valid: {valid}")


class DeepCache:
    def __init__(self, solver: SchedulerMethod, cache_interval: int = 2, cache_branch_id: int = 0,
                 uniform: bool = True, center: float = 0.3, power: float = 1.4):
        if cache_interval < 1:
            raise ValueError(f"deepcache: cache_interval must be at least 1, got {cache_interval}")
        self.solver, self.wraps = solver, solver.name
        self.name = "deepcache" if solver.name == "ddim" else f"deepcache-{solver.name}"
        self.knobs = dict(cache_interval=cache_interval, cache_branch_id=cache_branch_id, uniform=uniform,
                          center=center, power=power)
        self._patched = {}  # id(Dash) -> (Dash, copy, helper, its cheap call, the cheap call's FLOP share)
        self.plan_prices = {}  # what the last plan priced each cheap call at, in Dash calls

    def config(self) -> dict:
        return dict(name=self.name, solver=self.solver.config(), deepcache="0.1.1", **self.knobs)

    def full_steps(self, steps: int) -> set:
        k = self.knobs
        if k["uniform"]:
            return uniform_full_steps(steps, k["cache_interval"])
        return quadratic_full_steps(steps, k["cache_interval"], k["center"], k["power"])

    def _patch(self, denoiser):
        net = denoiser.net
        if id(net) not in self._patched:
            check_branch(net, self.knobs["cache_branch_id"])
            twin, helper = patched_copy(net, lambda u: _Helper(u, self.knobs["cache_branch_id"]))
            cheap = CheapCall(twin, lambda: _shallow(helper))
            self._patched[id(net)] = [net, twin, helper, cheap, None]
        return self._patched[id(net)]

    def _probe(self, denoiser):
        """The shallow call on (x, t), after a full call fills the cache at this batch size (a full call first at
        batch 1 here, so that the FLOP counter, which the harness runs at batch 1, sees only the shallow call)."""
        _, twin, helper, cheap, _ = self._patch(denoiser)
        full, shallow = like(denoiser, twin), like(denoiser, cheap)

        def forward(x, t):  # unguided, as the Dash's probe (denoiser.raw without a condition): one row per sample
            if helper.cached_rows() != x.shape[0]:
                full.raw(x, t)
            return shallow.raw(x, t)

        x1 = torch.randn(1, *sample_shape(twin), device=twin.device, dtype=twin.dtype)
        with torch.inference_mode():
            forward(x1, torch.full((1,), 500, device=twin.device))
        return forward

    def networks(self, denoiser) -> dict[str, Network]:
        return {**dash_networks(denoiser), "dash-shallow": Network(self._patch(denoiser)[3], self._probe(denoiser))}

    def _cheap_share(self, denoiser, noise, cond) -> float:
        entry = self._patch(denoiser)
        if entry[4] is None:
            full, shallow = like(denoiser, entry[1]), like(denoiser, entry[3])
            x, t, c = noise[:1], torch.full((1,), 500, device=noise.device), None if cond is None else cond[:1]
            entry[4] = flop_fraction(lambda: full(x, t, c), lambda: shallow(x, t, c))
        return entry[4]

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, callback=None, spacing=DEFAULT_SPACING):
        _, twin, helper, cheap, _ = self._patch(denoiser)
        self.plan_prices = {"dash-shallow": self._cheap_share(denoiser, noise, cond)}
        steps = longest_plan(budget, self.full_steps, self.plan_prices["dash-shallow"])
        full_steps = self.full_steps(steps)
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, steps, noise.device, spacing)
        full, shallow = like(denoiser, twin), like(denoiser, cheap)

        def estimate(x, t, i):
            return (full if i in full_steps else shallow)(x, t, cond)

        return traced_solve(scheduler, estimate, noise, {"dash": twin, "dash-shallow": cheap}, seeds,
                            self.solver.step_kwargs, callback,
                            labels=lambda i: "dash" if i in full_steps else "dash-shallow")


@contextmanager
def _shallow(helper: _Helper):
    """Within it, the helper's wrapped blocks below the branch return their cached outputs."""
    helper.shallow = True
    try:
        yield
    finally:
        helper.shallow = False


DEFAULTS = dict(cache_interval=2, cache_branch_id=0, uniform=True, center=0.3, power=1.4)


def deepcache(solver: str, **knobs):
    """`--method-options deepcache_cache_interval=N,deepcache_cache_branch_id=B,deepcache_uniform=0,...` override
    the knobs (a sweep's)."""
    def build(ctx: Context) -> DeepCache:
        if not all(hasattr(ctx.dash, a) for a in ("down_blocks", "mid_block", "up_blocks")):
            raise ValueError(f"deepcache caches a UNet's deep blocks; task {ctx.task.name}'s Dash "
                             f"({type(ctx.dash).__name__}) has none")
        chosen = knobs_from(ctx, "deepcache", {**DEFAULTS, **knobs})
        check_branch(ctx.dash, chosen["cache_branch_id"])
        return DeepCache(get_baseline(solver), **chosen)
    return build
