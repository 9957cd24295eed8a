"""The common method interface and the solver loop; step maths from diffusers schedulers.

A method is called as `method(denoiser, noise, budget, cond=None, seeds=None)` and returns
`(samples, trace)`. The loop is ours (so Morse can choose, step by step, which network
supplies the estimate); each update is the diffusers scheduler's `step`.
"""

import inspect
import time
import warnings
from dataclasses import dataclass, field

import diffusers
import torch

from baselines import ddim
from baselines.noise import step_generators
from baselines.trace import Trace, count_nfe

DEFAULT_SPACING = "trailing"  # starts at t = T-1, which matters at small budgets
# Our fixes of diffusers schedulers, used in place of the class of the same name (see each module).
FIXED_SCHEDULERS = {"DDIMScheduler": ddim.DDIMScheduler}


def scheduler_class(name: str) -> type:
    return FIXED_SCHEDULERS.get(name) or getattr(diffusers, name)


def solve(scheduler, model_fn, x, generators=None, step_kwargs=None, callback=None):
    """Run `scheduler` from noise `x`; `model_fn(x, t, i)` returns epsilon for step i."""
    accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
    kwargs = dict(step_kwargs or {})
    if accepts_generator and generators is not None:
        kwargs["generator"] = generators
    x = x * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        eps = model_fn(scheduler.scale_model_input(x, t), t, i)
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
        if callback is not None:
            callback(i, t, x, eps)
    return x


def traced_solve(scheduler, estimate, noise, networks: dict, seeds=None, step_kwargs=None, callback=None,
                 labels=None) -> tuple[torch.Tensor, Trace]:
    """`solve` with the bookkeeping every method needs: NFE counted on the declared `networks` (name -> module),
    the loop timed, the solver times and the network each step called recorded in the trace, and per-seed step
    generators handed to stochastic schedulers so samples never depend on batch size.

    `estimate(x, t, i)` returns epsilon for step i. `labels`: one network name per step (a list, or a callable
    i -> name); by default the first declared network's name for every step.
    """
    trace = Trace()
    generators = step_generators(seeds) if seeds is not None else None
    with count_nfe(trace, noise.shape[0], **networks), torch.inference_mode():
        start = time.perf_counter()
        x = solve(scheduler, estimate, noise, generators, step_kwargs, callback)
        trace.wall_time_s = time.perf_counter() - start
    trace.timesteps = solver_timesteps(scheduler)
    steps = len(trace.timesteps)
    if labels is None:
        labels = [next(iter(networks))] * steps
    elif callable(labels):
        labels = [labels(i) for i in range(steps)]
    trace.networks_per_step = list(labels)
    return x, trace


def solver_timesteps(scheduler) -> list[float]:
    """Distinct solver times in visiting order (Heun evaluates each interior time twice)."""
    out = []
    for t in scheduler.timesteps.tolist():
        if not out or t != out[-1]:
            out.append(float(t))
    return out


@dataclass(frozen=True)
class SchedulerMethod:
    """A baseline: a diffusers scheduler class, config overrides and step arguments."""

    name: str
    scheduler: str
    overrides: dict = field(default_factory=dict)
    step_kwargs: dict = field(default_factory=dict)
    evals_per_step: int = 1  # Heun-type solvers evaluate twice per step, but not on the first
    max_steps: int | None = None
    description: str = ""

    def config(self) -> dict:
        cls = scheduler_class(self.scheduler)
        return dict(name=self.name, scheduler=f"{cls.__module__}.{cls.__qualname__}", overrides=self.overrides,
                    step_kwargs=self.step_kwargs, diffusers=diffusers.__version__)

    def steps_for_budget(self, budget: float) -> int:
        if not budget >= 1:
            raise ValueError(f"{self.name}: budget must be at least 1 NFE, got {budget}")
        steps = int((budget + self.evals_per_step - 1) // self.evals_per_step)
        if self.max_steps is not None and steps > self.max_steps:
            raise ValueError(f"{self.name}: budget {budget} needs {steps} steps, more than the "
                             f"{self.max_steps} this solver supports; use a budget <= {self.max_steps}")
        return steps

    def make_scheduler(self, schedule_config: dict, steps: int, device="cpu", spacing=DEFAULT_SPACING,
                       timesteps: list[int] | None = None):
        """`timesteps`: a custom descending list of `steps` timesteps (Align Your Steps) in place of `spacing`."""
        cls = scheduler_class(self.scheduler)
        if timesteps is not None and "timesteps" not in inspect.signature(cls.set_timesteps).parameters:
            raise ValueError(f"{self.name}: diffusers' {cls.__name__} takes no timestep list; use ddim or dpm")
        accepted = inspect.signature(cls.__init__).parameters
        cfg = {k: v for k, v in schedule_config.items() if k in accepted}
        cfg["prediction_type"] = "epsilon"  # the Denoiser wrapper has already converted
        if "clip_sample" in accepted:
            cfg["clip_sample"] = False
        if spacing is not None and "timestep_spacing" in accepted:
            cfg["timestep_spacing"] = spacing
        cfg.update(self.overrides)
        with warnings.catch_warnings():
            # diffusers deprecates classic DPM-Solver; it stays here as the paper's baseline.
            warnings.filterwarnings("ignore", category=FutureWarning)
            sched = cls(**cfg)
        if timesteps is None:
            sched.set_timesteps(steps, device=device)
        elif len(timesteps) != steps:
            raise ValueError(f"{self.name}: {len(timesteps)} timesteps given for {steps} steps")
        else:
            sched.set_timesteps(timesteps=list(timesteps), device=device)
        return sched

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, callback=None,
                 spacing=DEFAULT_SPACING, network="dash"):
        """`network`: the name the trace counts the denoiser's calls under; a caller sampling another model than
        the Dash (lcm, a distilled copy of it) names it, so the cost model times the network really called."""
        scheduler = self.make_scheduler(denoiser.schedule_config, self.steps_for_budget(budget), noise.device, spacing)
        return traced_solve(scheduler, lambda x, t, i: denoiser(x, t, cond), noise, {network: denoiser.net}, seeds,
                            self.step_kwargs, callback)
