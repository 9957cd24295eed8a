"""TaylorSeer (Liu et al., ICCV 2025, "From Reusing to Forecasting"): between full steps, forecast the outputs of a
UNet's deep modules by a Taylor expansion in the step index of their last full-step outputs (finite differences).

diffusers' own hook (`diffusers.hooks.apply_taylorseer_cache`, diffusers==0.42.1, pinned: the hook API moves
between releases), on the UNet's deep end by default: `cache_identifiers` = ["mid_block", r"up_blocks\\.0"] (the
mid block and the first, lowest-resolution up block). The down blocks still run at every step, as the up blocks
read their skip connections. Knobs: `cache_interval` (N), `disable_cache_before_step` (W, full steps first), and
`max_order` of the expansion. The hook's own rule makes step i full when i < W or (i - W - 1) % N == 0; those are
counted as "dash", the forecast steps as "dash-taylorseer" (common.HookCache drives the hooks from our loop).

Setting: cache_interval 2, 2 full steps first, order 1: a lower FD-fmnist at 8 LSD than cache_interval 3 (the same
steps at 4) on held-out seeds 100000-100199 (README: "DeepCache, PFDiff, Align Your Steps, ...").
"""

from baselines.accelerators.common import HookCache, knobs_from
from baselines.methods import Context
from baselines.registry import get_baseline

IDENTIFIERS = ("mid_block", r"up_blocks\.0")


class TaylorSeer(HookCache):
    cheap = "dash-taylorseer"

    def __init__(self, solver, cache_interval: int = 2, disable_cache_before_step: int = 2, max_order: int = 1):
        if disable_cache_before_step < max_order + 1:
            raise ValueError(f"taylorseer: an order-{max_order} forecast needs {max_order + 1} full steps first, got "
                             f"disable_cache_before_step={disable_cache_before_step}")
        super().__init__(solver, cache_interval=cache_interval, disable_cache_before_step=disable_cache_before_step,
                         max_order=max_order, cache_identifiers=list(IDENTIFIERS))
        self.name = "taylorseer" if solver.name == "ddim" else f"taylorseer-{solver.name}"
        # The probe's copy: after W full calls, one forecast, one full call (the hook's rule), every call forecasts.
        self.primes = max_order + 3

    def full(self, i: int, t: float) -> bool:
        k = self.knobs
        return i < k["disable_cache_before_step"] or (i - k["disable_cache_before_step"] - 1) % k["cache_interval"] == 0

    def hook(self, twin, probe: bool) -> None:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

        k = self.knobs
        apply_taylorseer_cache(twin, TaylorSeerCacheConfig(
            cache_interval=10 ** 9 if probe else k["cache_interval"],
            disable_cache_before_step=k["max_order"] + 1 if probe else k["disable_cache_before_step"],
            max_order=k["max_order"], taylor_factors_dtype=twin.dtype, cache_identifiers=list(IDENTIFIERS)))


def taylorseer(solver: str, cache_interval: int = 2, disable_cache_before_step: int = 2, max_order: int = 1):
    """`--method-options taylorseer_cache_interval=N,taylorseer_disable_cache_before_step=W,taylorseer_max_order=O`
    override the knobs (a sweep's)."""
    knobs = dict(cache_interval=cache_interval, disable_cache_before_step=disable_cache_before_step,
                 max_order=max_order)

    def build(ctx: Context) -> TaylorSeer:
        names = dict(ctx.dash.named_modules())
        if not all(n.replace("\\", "") in names for n in IDENTIFIERS):
            raise ValueError(f"taylorseer forecasts a UNet's mid_block and up_blocks.0; task {ctx.task.name}'s Dash "
                             f"({type(ctx.dash).__name__}) has no such modules")
        return TaylorSeer(get_baseline(solver), **knobs_from(ctx, "taylorseer", knobs))
    return build
