"""Morse's methods, registered with the harness as a plug-in: pyproject.toml names this module's `METHODS` under
the entry-point group `morse_bench.methods`, and the harness (evaluate.methods) finds them there without
importing morse. The worked example of README "Add an accelerator".

    morse, morse-<solver>   Morse wrapping DDIM or another one-estimate solver, with the Dot trained on its path
    morse-oracle, ...       Morse's schedules with an exact Dot, charged as the Dot (its ceiling)
    morse-extrap            Morse's schedules with the Dot's extrapolation prior in place of the Dot
    morse-lcm               Morse around LCM: its Dash is the task's consistency-distilled model
"""

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from baselines.checkpoint import sha256, verify_weights
from baselines.denoisers import Denoiser
from baselines.lcm import lcm_solver
from baselines.methods import Context, Method, Network, dash_networks, distilled_model
from baselines.registry import BASELINES, get_baseline
from baselines.solvers import SchedulerMethod
from baselines.tasks import DEFAULT_TASK
from morse.dot import SAMPLING_OPTIONS, Dot, DotConfig
from morse.interleave import Interleave
from morse.pretrained import dot_path, load_dot, plan_dot_options, plan_dot_paths
from morse.sampler import Morse, MorseExtrap, MorseOracle

# The recipe of an untrained Dot on a task with no Dot card (latency only: the paper's tasks): the embedded
# default's Dot card, read here so that it follows every retraining.
RECIPE = dot_path(DEFAULT_TASK).with_suffix(".json")


def dot_for(ctx: Context, solver: str = "ddim") -> tuple:
    """(Dot, card, checksum): the Dot trained on `solver`'s sampling path, loaded once per run. A Dot trained on
    another solver's path would be fed states it never saw, so a missing one is an error, not a fallback; only a
    latency-only run, where the layers are all that matter, gets an untrained one built from the card."""
    if ctx.loaded_dot is not None:
        return ctx.loaded_dot
    return ctx.once(("morse.dot", solver), lambda: _load_dot(ctx, solver))


def _main_path(ctx: Context, solver: str) -> Path:
    # --method-options dot=FILE: a Dot of one's own (an ablation row, a retraining) in place of the committed one.
    return Path(ctx.options["dot"]) if "dot" in ctx.options else dot_path(ctx.task.name, solver)


def _base(ctx: Context, solver: str) -> nn.Module:
    """The network whose layers a Dot shares: Morse-LCM's Dash is the distilled model, every other solver's the Dash."""
    return distilled_model(ctx)[0] if solver == "lcm" else ctx.dash


def _load_dot(ctx: Context, solver: str) -> tuple:
    path = _main_path(ctx, solver)
    base = _base(ctx, solver)
    if ctx.latency_only and (getattr(ctx.task, "random_weights", False) or not path.exists()):
        return untrained_dot(ctx.task, base, path)
    if path.exists():
        verify_weights(path)
    loaded, card = load_dot(ctx.task.name, base, solver, path)
    retrain = f"retrain with `python -m morse.train --task {ctx.task.name} --solver {solver}`"
    if card.get("solver", "ddim") != solver:
        raise ValueError(f"{path} was trained on {card['solver']!r} trajectories, not {solver!r}: {retrain}")
    # Morse-LCM's Dot learnt one distilled model's path: another one's would feed it states it never saw.
    lcm_checksum = distilled_model(ctx)[2] if solver == "lcm" else None
    if solver == "lcm" and card.get("lcm_sha256", lcm_checksum) != lcm_checksum:
        raise ValueError(f"{path} was trained on the distilled model {card['lcm_sha256']}, not on "
                         f"{lcm_checksum} now at the task's lcm_path: {retrain}")
    return loaded, card, sha256(path)[:16]


def plan_dots_for(ctx: Context, solver: str, card: dict) -> tuple[dict, dict]:
    """({k: Dot}, {k: checksum}): the Dots of their own for the plans with k Dash steps (morse.sampler). They are the
    files beside the Dot in use (`<stem>_dash<k>.safetensors`), with --method-options plan_dot<k>=FILE one of one's
    own, and none with plan_dots=none. Only Dots loaded from files have them; the Dot they sit beside (its `card`)
    fixes the plans, so they must plan alike."""
    if ctx.options.get("plan_dots") == "none" or ctx.loaded_dot is not None or ctx.latency_only:
        return {}, {}
    paths = plan_dot_paths(_main_path(ctx, solver))
    for k, path in plan_dot_options(ctx.options).items():
        if not path.exists():
            raise FileNotFoundError(f"--method-options plan_dot{k}={path}: no such file; distil one with `python -m "
                                    "morse.distill --budgets B ...` or leave the option out")
        paths[k] = path
    loaded = {k: ctx.once(("morse.plan_dot", solver, k, str(p)),
                          lambda k=k, p=p: _load_plan_dot(ctx, solver, card, k, p)) for k, p in paths.items()}
    return {k: v[0] for k, v in loaded.items()}, {k: v[1] for k, v in loaded.items()}


def _load_plan_dot(ctx: Context, solver: str, card: dict, dash_steps: int, path: Path) -> tuple:
    verify_weights(path)
    dot, own = load_dot(ctx.task.name, _base(ctx, solver), solver, path)
    fix = (f"{path} cannot serve as this Dot's Dot for plans with {dash_steps} Dash steps; distil one from this Dot "
           "(python -m morse.distill --budgets B, B a budget whose plan has that many) or pass --method-options "
           "plan_dots=none")
    for key, default in (("solver", "ddim"), ("dots_per_dash", None), ("dot_ratio_planned", None)):
        mine, theirs = own.get(key, default), card.get(key, default)
        if mine != theirs:
            raise ValueError(f"{fix}: its {key} is {mine!r}, the Dot's {theirs!r}")
    interleave, ratio = Interleave(card["dots_per_dash"]), card["dot_ratio_planned"]
    budgets = own.get("distill", {}).get("budgets", [])
    if not budgets or any(interleave.counts(b, ratio)[0] != dash_steps for b in budgets):
        raise ValueError(f"{fix}: it was distilled on budgets {budgets}, not on such plans alone")
    shapes = lambda d: {k: v.shape for k, v in d.trainable_state_dict().items()}  # noqa: E731
    if shapes(dot) != shapes(dot_for(ctx, solver)[0]):
        raise ValueError(f"{fix}: its layers differ from the Dot's, so a Dot step would not cost 1/N")
    return dot, sha256(path)[:16]


def untrained_dot(task, base: nn.Module, path) -> tuple:
    """An untrained Dot over `base` with the layers of the Dot card at `path` (else the recipe's) and the task's
    schedule: it costs what a trained one costs."""
    card_path = path.with_suffix(".json")
    card = json.loads((card_path if card_path.exists() else RECIPE).read_text())
    config = DotConfig(**{**card["dot_config"], "schedule": dict(task.schedule_config)})
    return Dot(base, config).eval(), card, "untrained"


class MorseMethod:
    """Morse (or a variant of it) as a method: it calls the Dash and the Dot and accelerates the solver it
    wraps."""

    def __init__(self, morse: Morse, dot_checksum: str, plan_checksums: dict | None = None):
        self.morse, self.dot_checksum, self.plan_checksums = morse, dot_checksum, plan_checksums or {}
        self.name, self.wraps = morse.name, morse.wraps

    def networks(self, denoiser) -> dict[str, Network]:
        dot = self.morse.dot
        # Timed on the unconditional condition: a cross-attention Dot (and SDXL's added conditioning) needs one.
        return {**dash_networks(denoiser),
                "dot": Network(dot, lambda x, t: dot(x, x, x, t, t + 100, denoiser.condition(None, x)))}

    def config(self) -> dict:
        # The oracle and the formula never call the Dot: their samples (and cache keys) do not depend on its weights.
        weights = {"dot_sha256": self.dot_checksum} if self.morse.calls_dot else {}
        if self.morse.calls_dot and self.plan_checksums:
            weights["plan_dot_sha256"] = {str(k): v for k, v in sorted(self.plan_checksums.items())}
        return {**self.morse.config(), **weights}

    def __call__(self, denoiser, noise, budget, **kwargs):
        return self.morse(denoiser, noise, budget, **kwargs)


class MorseLCM(MorseMethod):
    """Morse around LCM: LCMScheduler's multistep sampling of the distilled model, with the Dot between its calls.
    As for lcm, the distilled model's calls are counted and timed as "lcm" and the Dash is declared uncalled.

    The residual lives in the distilled network's epsilon, the quantity LCMScheduler consumes and the one
    every other solver's Dot corrects. LCM's consistency output f = c_skip x + c_out (x - sigma eps) / alpha is
    affine in eps with coefficients known at each step, so an epsilon residual is an exact f (x0) residual
    scaled by -c_out sigma / alpha; predicting eps keeps one Dot interface and one loss for all solvers."""

    def __init__(self, morse: Morse, dot_checksum: str, plan_checksums: dict, net: nn.Module, lcm_checksum: str):
        super().__init__(morse, dot_checksum, plan_checksums)
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


def _morse(ctx: Context, solver: SchedulerMethod, variant: type, dot_solver: str) -> tuple[Morse, str, dict]:
    loaded, card, checksum = dot_for(ctx, dot_solver)
    # --method-options dot_scale=F: the learned part at F times its size; dot_blur=S: blurred (sigma S pixels)
    for option, attr in SAMPLING_OPTIONS.items():
        if option in ctx.options:
            try:
                setattr(loaded.config, attr, float(ctx.options[option]))
            except ValueError:
                raise ValueError(f"--method-options {option} must be a number, got {ctx.options[option]!r}") from None
    dots = ctx.dots_per_dash if ctx.dots_per_dash is not None else card["dots_per_dash"]
    plan_ratio = ctx.dot_ratio or card["dot_ratio_planned"]
    # --method-options (morse-extrap only) exact_groups=first|later: the Dash at those groups' Dot steps;
    # exact_mix=A: the formula moved the share A of the way to the Dash; exact_shape=S: that error's size in
    # another shape; exact_floor=F: an error of RMS F added to it (MorseExtrap checks the values)
    extra = {}
    for option, parse in MorseExtrap.OPTIONS.items():
        if option not in ctx.options:
            continue
        if variant is not MorseExtrap:
            raise ValueError(f"--method-options {option} applies to morse-extrap only")
        try:
            extra[option] = parse(ctx.options[option])
        except ValueError:
            raise ValueError(f"--method-options {option} must be a number, got {ctx.options[option]!r}") from None
    plan_checksums = {}
    # the oracle and the formula never call a Dot; the formula with a Dot-shaped error (exact_shape=dot*) does
    if variant.calls_dot or MorseExtrap.shape_calls_dot(extra.get("exact_shape")):
        extra["plan_dots"], plan_checksums = plan_dots_for(ctx, dot_solver, card)
        for plan_dot in extra["plan_dots"].values():
            for option, attr in SAMPLING_OPTIONS.items():  # the sampling-time ablations act on every Dot
                if option in ctx.options:
                    setattr(plan_dot.config, attr, getattr(loaded.config, attr))
    return variant(solver, loaded, plan_ratio, Interleave(dots), **extra), checksum, plan_checksums


def morse(solver_name: str, variant: type = Morse, dot_solver: str | None = None) -> Callable[[Context], Method]:
    """`dot_solver`: whose Dot to load when it is not `solver_name`'s (an oracle only prices the Dot's calls, and
    every solver's Dot has the same layers)."""
    return lambda ctx: MorseMethod(*_morse(ctx, get_baseline(solver_name), variant, dot_solver or solver_name))


def morse_lcm(variant: type = Morse) -> Callable[[Context], Method]:
    def build(ctx: Context) -> Method:
        net, card, lcm_checksum = distilled_model(ctx)
        return MorseLCM(*_morse(ctx, lcm_solver(card), variant, "lcm"), net, lcm_checksum)
    return build


MORSE_SOLVERS = [n for n, m in BASELINES.items() if m.evals_per_step == 1]

METHODS: dict[str, Callable[[Context], Method]] = {
    "morse": morse("ddim"),
    "morse-oracle": morse("ddim", MorseOracle),  # Morse's ceiling: its schedules with an exact Dot
    "morse-extrap": morse("ddim", MorseExtrap),  # Morse's schedules and prices, the extrapolation prior for the Dot
    **{f"morse-{name}": morse(name) for name in MORSE_SOLVERS if name not in ("ddim", "lcm")},
    "morse-lcm": morse_lcm(),  # its Dash is the distilled model, as for lcm
    "morse-lcm-oracle": morse_lcm(MorseOracle),
    # the ceilings of the paper's CIFAR-10 group A, which wraps DDPM, DDIM and DPM-Solver
    **{f"morse-{name}-oracle": morse(name, MorseOracle, dot_solver="ddim") for name in ("dpm", "ddpm")},
}
