"""Methods as plug-ins: the protocol every method follows, the context a factory builds one from, and the
baselines' own methods (every solver of baselines.registry, and lcm).

A method is called as `method(denoiser, noise, budget, cond=None, seeds=None, spacing=...)` and returns
`(samples, trace)` (baselines.solvers.traced_solve runs the loop and keeps the trace). It also declares:

* `networks(denoiser)`: every network it calls, by the name its trace counts NFE under, each with one
  representative forward; the harness times them all in one process (evaluate.cost), so a method's
  cost in LSD is what its calls cost on this machine, whatever the method is;
* `wraps`: the solver it accelerates (speedup at equal quality is computed against it), or None;
* `config()`: everything that changes its samples (a cache key; include weight checksums).

A package registers its methods as a `METHODS` dict (name -> factory, or the factory's import path
"module:factory") under the entry-point group `morse_bench.methods` (pyproject.toml); the harness finds
them there (evaluate.methods) and imports no accelerator itself.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from baselines.denoisers import Denoiser
from baselines.lcm import lcm_solver, load_lcm
from baselines.registry import BASELINES, get_baseline
from baselines.solvers import DEFAULT_SPACING


@dataclass(frozen=True)
class Network:
    """A network a method calls, and one forward of it on (x, t) for the latency probe."""

    module: nn.Module
    forward: Callable


class Method(Protocol):
    name: str
    wraps: str | None

    def networks(self, denoiser) -> dict[str, Network]: ...

    def config(self) -> dict: ...

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, spacing=DEFAULT_SPACING): ...


@dataclass
class Context:
    """What a factory may build a method from: the task, its Dash and the run's options; each factory reads the
    ones it needs. `loaded_dot` and `loaded_lcm` hand in networks that would otherwise be loaded from the task's
    weights (a test's tiny ones): (network, card, checksum)."""

    task: object
    dash: nn.Module
    dot_ratio: float | None = None      # Morse: the N to plan with (None: its Dot card's)
    dots_per_dash: int | None = None    # Morse: Dot steps after each Dash step (None: its Dot card's)
    latency_only: bool = False          # only the networks' layers matter: untrained ones stand in where none exist
    options: dict = field(default_factory=dict)  # --method-options KEY=VALUE: each plug-in reads its own keys
    loaded_dot: tuple | None = field(default=None, repr=False)
    loaded_lcm: tuple | None = field(default=None, repr=False)
    _loaded: dict = field(default_factory=dict, repr=False)

    def once(self, key, load: Callable):
        """`load()`, called once per run and key: methods that share a network (morse and morse-oracle, one
        Dot) get the same object."""
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]


def dash_networks(denoiser) -> dict[str, Network]:
    net = denoiser.net
    return {"dash": Network(net, lambda x, t: denoiser.raw(x, t))}


class Solver:
    """A baseline solver as a method: one Dash call per NFE, accelerating nothing."""

    wraps = None

    def __init__(self, solver):
        self.solver, self.name = solver, solver.name

    def networks(self, denoiser) -> dict[str, Network]:
        return dash_networks(denoiser)

    def config(self) -> dict:
        return self.solver.config()

    def __call__(self, denoiser, noise, budget, **kwargs):
        return self.solver(denoiser, noise, budget, **kwargs)


def distilled_model(ctx: Context) -> tuple:
    """(network, card, checksum): the task's consistency-distilled model, loaded once. A task whose Dash is
    itself distilled (lcm-sdxl) hands it over as `lcm_dash()`."""
    if ctx.loaded_lcm is None:
        if hasattr(ctx.task, "lcm_dash"):
            ctx.loaded_lcm = ctx.task.lcm_dash(), {"distilled": True}, ctx.task.checksum()
        else:
            ctx.loaded_lcm = load_lcm(ctx.task, ctx.dash)
    return ctx.loaded_lcm


class LCM:
    """LCMScheduler on the task's consistency-distilled model. Where that model is not the Dash (fmnist: a distilled
    copy, same architecture), its calls are counted and timed under its own name, "lcm", so evaluate.cost prices
    what lcm really runs; the Dash is declared too, uncalled, as LSD is priced in Dash calls. Where the Dash is
    the distilled model (lcm-sdxl), lcm calls the Dash."""

    name, wraps = "lcm", None

    def __init__(self, net: nn.Module, card: dict, checksum: str):
        self.solver, self.net, self.checksum = lcm_solver(card), net, checksum

    def _denoiser(self, denoiser) -> tuple[Denoiser, str]:
        if self.net is denoiser.net:
            return denoiser, "dash"
        return Denoiser(self.net, denoiser.schedule_config, denoiser.guidance_scale, denoiser.uncond), "lcm"

    def networks(self, denoiser) -> dict[str, Network]:
        lcm, name = self._denoiser(denoiser)
        return {**dash_networks(denoiser), name: Network(self.net, lambda x, t: lcm.raw(x, t))}

    def config(self) -> dict:
        return {**self.solver.config(), "lcm_sha256": self.checksum}

    def __call__(self, denoiser, noise, budget, **kwargs):
        lcm, name = self._denoiser(denoiser)
        return self.solver(lcm, noise, budget, network=name, **kwargs)


def lcm(ctx: Context) -> Method:
    return LCM(*distilled_model(ctx))


def solver(name: str) -> Callable[[Context], Method]:
    return lambda ctx: Solver(get_baseline(name))


METHODS: dict[str, Callable[[Context], Method]] = {
    **{name: solver(name) for name in BASELINES},
    "lcm": lcm,  # LCMScheduler on the distilled model, not the Dash
}
