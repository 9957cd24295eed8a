"""Methods as plug-ins: one protocol, one registry (`METHODS`, name -> factory).

A method is called as `method(denoiser, noise, budget, cond=None, seeds=None, spacing=...)` and
returns `(samples, trace)` (baselines.solvers describes the call). It also declares:

* `networks(denoiser)`: every network it calls, by the name its trace counts NFE under, each with one
  representative forward; the harness times them all in one process (evaluate.cost), so a method's
  cost in LSD is what its calls cost on this machine, whatever the method is;
* `wraps`: the solver it accelerates (speedup at equal quality is computed against it), or None;
* `config()`: everything that changes its samples (a cache key; include weight checksums).

Adding an accelerator is one file with its class and factory plus one line in `METHODS` (README: "Add an
accelerator").
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from baselines.checkpoint import sha256, verify_weights
from baselines.denoisers import Denoiser
from baselines.lcm import lcm_solver, load_lcm
from baselines.registry import BASELINES, get_baseline
from baselines.solvers import DEFAULT_SPACING, SchedulerMethod
from morse import Interleave, Morse, MorseOracle
from morse.pretrained import dot_path, load_dot


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
    """What a factory may build a method from: the task, its Dash, and the run's Morse options."""

    task: object
    dash: nn.Module
    dot_ratio: float | None = None
    dots_per_dash: int | None = None
    loaded_dot: tuple | None = field(default=None, repr=False)  # (Dot, card, checksum) for every solver, e.g. a test's
    # tiny Dot
    loaded_lcm: tuple | None = field(default=None, repr=False)  # (network, card, checksum) of a consistency-distilled
    # model, e.g. a test's tiny one
    _dots: dict = field(default_factory=dict, repr=False)

    def dot(self, solver: str = "ddim") -> tuple:
        """(Dot, card, checksum): the Dot trained on `solver`'s sampling path, loaded once. A Dot trained on
        another solver's path would be fed states it never saw, so a missing one is an error, not a fallback."""
        if self.loaded_dot is not None:
            return self.loaded_dot
        if solver not in self._dots:
            path = dot_path(self.task.name, solver)
            if path.exists():
                verify_weights(path)
            # Morse-LCM's Dash is the distilled model, so its Dot shares that model's layers.
            base = self.lcm()[0] if solver == "lcm" else self.dash
            dot, card = load_dot(self.task.name, base, solver)
            retrain = f"retrain with `python -m morse.train --task {self.task.name} --solver {solver}`"
            if card.get("solver", "ddim") != solver:
                raise ValueError(f"{path} was trained on {card['solver']!r} trajectories, not {solver!r}: {retrain}")
            # Morse-LCM's Dot learnt one distilled model's path: another one's would feed it states it never saw.
            if solver == "lcm" and card.get("lcm_sha256", self.lcm()[2]) != self.lcm()[2]:
                raise ValueError(f"{path} was trained on the distilled model {card['lcm_sha256']}, not on "
                                 f"{self.lcm()[2]} now at the task's lcm_path: {retrain}")
            self._dots[solver] = dot, card, sha256(path)[:16]
        return self._dots[solver]

    def lcm(self) -> tuple:
        """(network, card, checksum): the task's consistency-distilled model, loaded once. A task whose Dash is
        itself distilled (lcm-sdxl) hands it over as `lcm_dash()`."""
        if self.loaded_lcm is None:
            if hasattr(self.task, "lcm_dash"):
                self.loaded_lcm = self.task.lcm_dash(), {"distilled": True}, self.task.checksum()
            else:
                self.loaded_lcm = load_lcm(self.task, self.dash)
        return self.loaded_lcm


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


class MorseMethod:
    """Morse (or a variant of it) as a method: it calls the Dash and the Dot and accelerates the solver it
    wraps."""

    def __init__(self, morse: Morse, dot_checksum: str):
        self.morse, self.dot_checksum = morse, dot_checksum
        self.name, self.wraps = morse.name, morse.wraps

    def networks(self, denoiser) -> dict[str, Network]:
        dot = self.morse.dot
        # Timed on the unconditional condition: a cross-attention Dot (and SDXL's added conditioning) needs one.
        return {**dash_networks(denoiser),
                "dot": Network(dot, lambda x, t: dot(x, x, x, t, t + 100, denoiser.condition(None, x)))}

    def config(self) -> dict:
        return {**self.morse.config(), "dot_sha256": self.dot_checksum}

    def __call__(self, denoiser, noise, budget, **kwargs):
        return self.morse(denoiser, noise, budget, **kwargs)


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
    return LCM(*ctx.lcm())


def solver(name: str) -> Callable[[Context], Method]:
    return lambda ctx: Solver(get_baseline(name))


class MorseLCM(MorseMethod):
    """Morse around LCM: LCMScheduler's multistep sampling of the distilled model, with the Dot between its calls.
    As for lcm, the distilled model's calls are counted and timed as "lcm" and the Dash is declared uncalled.

    The residual lives in the distilled network's epsilon, the quantity LCMScheduler consumes and the one
    every other solver's Dot corrects. LCM's consistency output f = c_skip x + c_out (x - sigma eps) / alpha is
    affine in eps with coefficients known at each step, so an epsilon residual is an exact f (x0) residual
    scaled by -c_out sigma / alpha; predicting eps keeps one Dot interface and one loss for all solvers."""

    def __init__(self, morse: Morse, dot_checksum: str, net: nn.Module, lcm_checksum: str):
        super().__init__(morse, dot_checksum)
        self.net, self.lcm_checksum = net, lcm_checksum

    def _denoiser(self, denoiser) -> Denoiser:
        return Denoiser(self.net, denoiser.schedule_config, denoiser.guidance_scale, denoiser.uncond)

    def networks(self, denoiser) -> dict[str, Network]:
        lcm = self._denoiser(denoiser)
        return {**super().networks(denoiser), "lcm": Network(self.net, lambda x, t: lcm.raw(x, t))}

    def config(self) -> dict:
        return {**super().config(), "lcm_sha256": self.lcm_checksum}

    def __call__(self, denoiser, noise, budget, **kwargs):
        return self.morse(self._denoiser(denoiser), noise, budget, network="lcm", **kwargs)


def _morse(ctx: Context, solver: SchedulerMethod, variant: type, dot_solver: str) -> Morse:
    dot, card, checksum = ctx.dot(dot_solver)
    dots = ctx.dots_per_dash if ctx.dots_per_dash is not None else card["dots_per_dash"]
    plan_ratio = ctx.dot_ratio or card["dot_ratio_planned"]
    return variant(solver, dot, plan_ratio, Interleave(dots)), checksum


def morse(solver_name: str, variant: type = Morse, dot_solver: str | None = None) -> Callable[[Context], Method]:
    """`dot_solver`: whose Dot to load when it is not `solver_name`'s (an oracle only prices the Dot's calls, and
    every solver's Dot has the same layers)."""
    return lambda ctx: MorseMethod(*_morse(ctx, get_baseline(solver_name), variant, dot_solver or solver_name))


def morse_lcm(variant: type = Morse) -> Callable[[Context], Method]:
    def build(ctx: Context) -> Method:
        net, card, lcm_checksum = ctx.lcm()
        return MorseLCM(*_morse(ctx, lcm_solver(card), variant, "lcm"), net, lcm_checksum)
    return build


MORSE_SOLVERS = [n for n, m in BASELINES.items() if m.evals_per_step == 1]

METHODS: dict[str, Callable[[Context], Method] | str] = {
    **{name: solver(name) for name in BASELINES},
    "lcm": lcm,  # LCMScheduler on the distilled model, not the Dash
    "morse": morse("ddim"),
    "morse-oracle": morse("ddim", MorseOracle),  # Morse's ceiling: its schedules with an exact Dot
    **{f"morse-{name}": morse(name) for name in MORSE_SOLVERS if name not in ("ddim", "lcm")},
    "morse-lcm": morse_lcm(),  # its Dash is the distilled model, as for lcm
    "morse-lcm-oracle": morse_lcm(MorseOracle),
    # the ceilings of the paper's CIFAR-10 group A, which wraps DDPM, DDIM and DPM-Solver
    **{f"morse-{name}-oracle": morse(name, MorseOracle, dot_solver="ddim") for name in ("dpm", "ddpm")},
}


def valid_names() -> list[str]:
    return list(METHODS)


def check_names(names: list[str]) -> None:
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise ValueError(f"unknown method {', '.join(map(repr, bad))}; valid: {', '.join(valid_names())}")


def resolve(name: str, ctx: Context) -> Method:
    """The method registered as `name`; a registry entry may be a factory or its import path "module:factory"
    (so a method in another package costs no import here)."""
    check_names([name])
    factory = METHODS[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(ctx)
