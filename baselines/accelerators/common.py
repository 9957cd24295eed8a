"""What the caching accelerators share: a cheaper call as its own network, and a plan that fits a budget.

A caching accelerator (DeepCache, TaylorSeer, Pyramid Attention Broadcast) makes some steps cheaper than a
Dash call. Those steps are counted and timed as their own network (evaluate.cost prices them by measured
latency), so the cheaper call goes through a module of its own, `CheapCall`, and never through `denoiser.net`.
The patches live on a copy of the Dash that the method owns (`patched_copy`): the Dash itself is never touched,
so every other method in the same run, and the latency probe of the Dash, see the network they were given.
"""

import copy
import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from baselines.denoisers import Denoiser
from baselines.solvers import DEFAULT_SPACING, traced_solve


class CheapCall(nn.Module):
    """`net`'s forward under `mode()` (a context manager that makes the patched copy take its cheap path), as a
    module of its own so that the NFE hooks count it under its own name. It calls `net.forward` directly:
    the hooks on `net` count only the full steps."""

    def __init__(self, net: nn.Module, mode: Callable):
        super().__init__()
        self.net, self.mode = net, mode
        self.config = getattr(net, "config", None)  # what Denoiser reads (cross-attention, guidance embedding)

    def forward(self, *args, **kwargs):
        with self.mode():
            return self.net.forward(*args, **kwargs)


def patched_copy(net: nn.Module, patch: Callable[[nn.Module], object]) -> tuple[nn.Module, object]:
    """A copy of `net` (same weights, device and dtype) with `patch(copy)` applied; `patch` returns its handle."""
    twin = copy.deepcopy(net)
    return twin, patch(twin)


def like(denoiser: Denoiser, net: nn.Module) -> Denoiser:
    """`denoiser` (its schedule, guidance, unconditional condition) on another network."""
    return Denoiser(net, denoiser.schedule_config, denoiser.guidance_scale, denoiser.uncond)


def sample_shape(net: nn.Module) -> tuple:
    """One sample's shape, from a diffusers UNet's config."""
    size = net.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (net.config.in_channels, *size)


def flop_fraction(full: Callable, cheap: Callable) -> float:
    """FLOPs of one cheap call over one full call (torch's FLOP counter; `full` runs first, so it may fill a cache
    `cheap` reads): what a method plans its budget with, as it does not depend on the machine; the report prices
    the calls with their measured latency."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for fn in (full, cheap):
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            fn()
        counts.append(counter.get_total_flops())
    return counts[1] / counts[0]


def longest_plan(budget: float, full_steps: Callable[[int], set], cheap_cost: float, max_steps: int = 1000) -> int:
    """The most steps whose full steps (cost 1) and cheap steps (cost `cheap_cost`) fit `budget` Dash calls."""
    if not budget >= 1:
        raise ValueError(f"budget must be at least 1 Dash call, got {budget}")

    def cost(steps):
        full = len(full_steps(steps))
        return full + (steps - full) * cheap_cost

    steps = 1
    # Cost grows with the step count by at most 1 per step, so a doubling search then a linear walk is enough.
    while steps < max_steps and cost(min(2 * steps, max_steps)) <= budget + 1e-9:
        steps = min(2 * steps, max_steps)
    while steps < max_steps and cost(steps + 1) <= budget + 1e-9:
        steps += 1
    return steps


def uniform_full_steps(steps: int, interval: int) -> set:
    return set(range(0, steps, interval))


def quadratic_full_steps(steps: int, interval: int, center: float, power: float) -> set:
    """DeepCache's non-uniform 1:N schedule: ceil(steps / interval) full steps, step 0 always among them, denser
    around `center` (a fraction of the steps): the indices are c + sign(u)|u|^p for u evenly spaced between
    -c^(1/p) and (steps - c)^(1/p). DeepCache's pipelines compute the same with a negative number raised to a
    fractional power (a complex number in Python); this is its real-valued reading. As there, the power is
    lowered in steps of 0.02 until the indices are distinct, down to uniform spacing."""
    n = math.ceil(steps / interval)
    c = center * steps
    while power > 1:
        u = torch.linspace(-(c ** (1 / power)), (steps - c) ** (1 / power), n + 1, dtype=torch.float64)
        idx = {0} | {int(v) for v in (u.sign() * u.abs() ** power + c)[1:-1].tolist()}
        if len(idx) == n and max(idx) < steps:
            return idx
        power -= 0.02
    return {round(i * steps / n) for i in range(n)}


class HookCache:
    """A cache of diffusers' own (diffusers.hooks) on a copy of the Dash, driven from our loop: the hooks' stateful
    step counters are reset before each sampling loop, and the steps the hooks' own rule (`full`) makes cheap go
    through `CheapCall`, counted as the network `cheap`. The latency probe times a second copy whose hooks
    (`hook(twin, probe=True)`) make every call after the first `primes` ones cheap."""

    cheap: str
    name: str
    primes = 1

    def __init__(self, solver, **knobs):
        self.solver, self.wraps, self.knobs = solver, solver.name, knobs
        self._twins = {}  # (id(Dash), probe) -> (Dash, its patched copy)
        self._probes = {}  # id(Dash) -> (probe forward, the cheap call's FLOP share)
        self.t = None  # the current timestep, for hooks that ask for it
        self.plan_prices = {}

    def hook(self, twin: nn.Module, probe: bool) -> None:
        raise NotImplementedError

    def full(self, i: int, t: float) -> bool:
        raise NotImplementedError

    def config(self) -> dict:
        import diffusers

        return dict(name=self.name, solver=self.solver.config(), diffusers=diffusers.__version__, **self.knobs)

    def _twin(self, net: nn.Module, probe: bool = False) -> nn.Module:
        key = (id(net), probe)
        if key not in self._twins:
            self._twins[key] = net, patched_copy(net, lambda twin: self.hook(twin, probe))[0]
        return self._twins[key][1]

    @staticmethod
    def _context(twin):
        """The cache context diffusers' stateful hooks keep their state under. The UNet classes do not inherit
        diffusers' CacheMixin, whose `cache_context` sets it; it is called on the UNet as a plain function."""
        from diffusers.models.cache_utils import CacheMixin

        return CacheMixin.cache_context(twin, "dash")

    @staticmethod
    def _reset(twin) -> None:
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(twin).reset_stateful_hooks(recurse=True)

    def _probe(self, denoiser) -> tuple[Callable, float]:
        """The cheap call on (x, t) (its copy primed again whenever the batch size changes, in the probe's warm-up),
        and its FLOP share, counted at batch 1 after priming there."""
        if id(denoiser.net) not in self._probes:
            twin = self._twin(denoiser.net, probe=True)
            probe, rows = like(denoiser, twin), []

            def forward(x, t):
                self.t = 500
                prime = rows != [x.shape[0]]
                if prime:
                    self._reset(twin)  # which also clears the cache context: set it after
                    rows[:] = [x.shape[0]]
                with self._context(twin):
                    for _ in range(self.primes if prime else 0):
                        probe.raw(x, t)
                    return probe.raw(x, t)

            x1 = torch.randn(1, *sample_shape(twin), device=twin.device, dtype=twin.dtype)
            t1 = torch.full((1,), 500, device=twin.device)
            with torch.inference_mode():
                forward(x1, t1)
            share = flop_fraction(lambda: denoiser.raw(x1, t1), lambda: forward(x1, t1))
            self._probes[id(denoiser.net)] = forward, share
        return self._probes[id(denoiser.net)]

    def networks(self, denoiser) -> dict:
        from baselines.methods import Network, dash_networks

        return {**dash_networks(denoiser), self.cheap: Network(self._twin(denoiser.net, probe=True),
                                                               self._probe(denoiser)[0])}

    def full_steps(self, denoiser, steps: int, spacing) -> set:
        times = self.solver.make_scheduler(denoiser.schedule_config, steps, "cpu", spacing).timesteps.tolist()
        return {i for i, t in enumerate(times) if self.full(i, t)}

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, callback=None, spacing=DEFAULT_SPACING):
        twin = self._twin(denoiser.net)
        cheap = CheapCall(twin, nullcontext)
        full_den, cheap_den = like(denoiser, twin), like(denoiser, cheap)
        self.plan_prices = {self.cheap: self._probe(denoiser)[1]}
        steps = longest_plan(budget, lambda n: self.full_steps(denoiser, n, spacing), self.plan_prices[self.cheap])
        full = self.full_steps(denoiser, steps, spacing)
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, steps, noise.device, spacing)

        def estimate(x, t, i):
            self.t = float(t)
            return (full_den if i in full else cheap_den)(x, t, cond)

        self._reset(twin)
        with self._context(twin):
            return traced_solve(scheduler, estimate, noise, {"dash": twin, self.cheap: cheap}, seeds,
                                self.solver.step_kwargs, callback, labels=lambda i: "dash" if i in full else self.cheap)


def knobs_from(ctx, prefix: str, defaults: dict) -> dict:
    """`defaults` with the run's `--method-options PREFIX_KEY=VALUE` in place (each cast to its default's type)."""
    out = dict(defaults)
    for key, default in defaults.items():
        text = ctx.options.get(f"{prefix}_{key}")
        if text is None:
            continue
        try:
            out[key] = text.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(text)
        except ValueError:
            raise ValueError(f"{prefix}: --method-options {prefix}_{key} takes a {type(default).__name__}, "
                             f"got {text!r}") from None
    return out
