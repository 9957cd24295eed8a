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

import copy
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from safetensors.torch import load_file
from torch import nn

from baselines.checkpoint import sha256, verify_weights
from baselines.denoisers import Denoiser
from baselines.registry import BASELINES, get_baseline
from baselines.solvers import DEFAULT_SPACING
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
            dot, card = load_dot(self.task.name, self.dash, solver)
            if card.get("solver", "ddim") != solver:
                raise ValueError(f"{path} was trained on {card['solver']!r} trajectories, not {solver!r}: retrain "
                                 f"with `python -m morse.train --task {self.task.name} --solver {solver}`")
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


def load_lcm(task, dash: nn.Module) -> tuple:
    """The distilled model at the task's `lcm_path`, in a copy of the Dash (same architecture, same device).
    LCMScheduler's steps assume a model distilled for them: on any other they measure nothing about LCM, so a
    missing model, or one whose card does not say `distilled: true`, is refused."""
    if getattr(task, "random_weights", False):  # latency only: the Dash's layers cost what the distilled ones do
        return copy.deepcopy(dash), {}, "random"
    path = getattr(task, "lcm_path", None)
    fix = (f"distil one with `python -m baselines.tasks.train_lcm --export {path}`" if path is not None else
           "baselines.tasks.train_lcm distils the fmnist Dash; a task offers its own as `lcm_path`")
    if path is None or not Path(path).exists():
        where = f" at {path}" if path is not None else ""
        raise FileNotFoundError(f"lcm samples a consistency-distilled model and task {task.name!r} has none{where}: "
                                f"{fix}")
    verify_weights(path)
    card = json.loads(Path(path).with_suffix(".json").read_text())
    if card.get("distilled") is not True:
        raise ValueError(f"{path} was never consistency-distilled (its card lacks `distilled: true`), and "
                         f"LCMScheduler on such a model measures nothing about LCM: {fix}")
    net = copy.deepcopy(dash)
    net.load_state_dict(load_file(path))
    return net, card, sha256(path)[:16]


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
        return {**dash_networks(denoiser), "dot": Network(dot, lambda x, t: dot(x, x, x, t, t + 100))}

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
        base = get_baseline("lcm")
        # The scheduler's grid and boundary scalings are the ones the model was distilled with.
        trained = {k: v for k, v in card.get("scheduler", {}).items() if k in ("original_inference_steps",
                                                                             "timestep_scaling")}
        self.solver = replace(base, overrides={**base.overrides, **trained},
                              max_steps=trained.get("original_inference_steps", base.max_steps))
        self.net, self.checksum = net, checksum

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


def morse(solver_name: str, variant: type = Morse, dot_solver: str | None = None) -> Callable[[Context], Method]:
    """`dot_solver`: whose Dot to load when it is not `solver_name`'s (an oracle only prices the Dot's calls, and
    every solver's Dot has the same layers)."""
    def build(ctx: Context) -> Method:
        dot, card, checksum = ctx.dot(dot_solver or solver_name)
        dots = ctx.dots_per_dash if ctx.dots_per_dash is not None else card["dots_per_dash"]
        plan_ratio = ctx.dot_ratio or card["dot_ratio_planned"]
        return MorseMethod(variant(get_baseline(solver_name), dot, plan_ratio, Interleave(dots)), checksum)
    return build


MORSE_SOLVERS = [n for n, m in BASELINES.items() if m.evals_per_step == 1]

METHODS: dict[str, Callable[[Context], Method] | str] = {
    **{name: solver(name) for name in BASELINES},
    "lcm": lcm,  # LCMScheduler on the distilled model, not the Dash
    "morse": morse("ddim"),
    "morse-oracle": morse("ddim", MorseOracle),  # Morse's ceiling: its schedules with an exact Dot
    **{f"morse-{name}": morse(name) for name in MORSE_SOLVERS if name != "ddim"},
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
