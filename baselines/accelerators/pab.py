"""Pyramid Attention Broadcast (Zhao et al., ICLR 2025): reuse a self-attention layer's output from an earlier step
for the steps in the middle of sampling, where attention outputs change least.

diffusers' own hook (`diffusers.hooks.apply_pyramid_attention_broadcast`, diffusers==0.42.1, pinned), on every
self-attention layer of the UNet (its default identifiers match the UNets' "..._blocks" names; cross-attention
layers are left alone). Knobs: `skip_range` r (attention recomputed every r-th step) and `timestep_range` (only
steps with lo < t < hi broadcast). The hook reads the step's timestep through `current_timestep_callback`, which
0.42.1 still requires; the loop sets it. The hook's rule makes step i full when i = 0, t is outside the range or
i % r = 0: those count as "dash", the broadcast steps as "dash-pab" (common.HookCache).

Setting: diffusers' defaults (skip range 2, 100 < t < 800), not searched: on the embedded Dash, with self-attention
at 8² only, a broadcast step saves 1.3% of a Dash call's FLOPs.
"""

from baselines.accelerators.common import HookCache, knobs_from
from baselines.methods import Context
from baselines.registry import get_baseline


class PAB(HookCache):
    cheap = "dash-pab"

    def __init__(self, solver, skip_range: int = 2, timestep_range: tuple[int, int] = (100, 800)):
        super().__init__(solver, skip_range=skip_range, timestep_range=list(timestep_range))
        self.name = "pab" if solver.name == "ddim" else f"pab-{solver.name}"

    def full(self, i: int, t: float) -> bool:
        lo, hi = self.knobs["timestep_range"]
        return i == 0 or not lo < t < hi or i % self.knobs["skip_range"] == 0

    def hook(self, twin, probe: bool) -> None:
        from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        apply_pyramid_attention_broadcast(twin, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=10 ** 9 if probe else self.knobs["skip_range"],
            spatial_attention_timestep_skip_range=(-1, 10 ** 9) if probe else tuple(self.knobs["timestep_range"]),
            current_timestep_callback=lambda: self.t))


def pab(solver: str, skip_range: int = 2):
    """`--method-options pab_skip_range=R` overrides the knob (a sweep's)."""
    def build(ctx: Context) -> PAB:
        from diffusers.models.attention_processor import Attention

        if not any(isinstance(m, Attention) and not m.is_cross_attention for m in ctx.dash.modules()):
            raise ValueError(f"pab broadcasts self-attention; task {ctx.task.name}'s Dash "
                             f"({type(ctx.dash).__name__}) has no self-attention layer")
        return PAB(get_baseline(solver), **knobs_from(ctx, "pab", dict(skip_range=skip_range)))
    return build
