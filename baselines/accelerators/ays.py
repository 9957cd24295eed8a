"""Align Your Steps (Sabour, Fidler and Kreis, ICML 2024): the solver on an optimised timestep schedule.

Where the schedule comes from, per task:
* SD tasks: diffusers' `AysSchedules`, the paper's published 10-step schedules (`sd14-coco` takes SD v1.5's, which
  SD v1.4 shares: same noise schedule and training data; `lcm-sdxl` takes SDXL's);
* tasks with no published schedule: one optimised per budget on held-out seeds and stored with the task as data
  (baselines/tasks/schedules/<task>_ays.json, with the command that made it), by `python -m
  baselines.accelerators.ays` below;
* any other budget: the paper's log-linear interpolation (log sigma, linear in the step index) of the longest
  schedule the task has, labelled "interpolated" in the method's config.
A task with neither is refused in one line.

The search here is simpler than the paper's (which minimises a KL upper bound of the discretisation error by
stochastic gradient over the timesteps): it minimises the mean squared distance of the final samples to a
100-step DPM-Solver++(2M) solution from the same noise, over 32 held-out seeds (100000 onwards, never the report's
0-999), first over the Karras family sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
sigma_max^(1/rho)))^rho (rho and the last timestep on a grid), with the solver's own trailing schedule as one
more candidate, then (up to 8 steps) by coordinate descent on each timestep.
Schedules are optimised for DPM-Solver++(2M) (`ays`); `ays-ddim` runs DDIM on the same ones.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.schedulers import AysSchedules

from baselines.denoisers import Denoiser
from baselines.methods import Context, Network, dash_networks
from baselines.registry import get_baseline
from baselines.solvers import DEFAULT_SPACING, SchedulerMethod, traced_solve

SCHEDULES = Path(__file__).resolve().parent.parent / "tasks" / "schedules"
PUBLISHED = {"sd14-coco": "StableDiffusionTimesteps", "lcm-sdxl": "StableDiffusionXLTimesteps"}
HELD_OUT_SEED = 100000
SCHEDULES_KEY = "ays-schedules"  # the Context.once key of ({steps: timesteps}, source): a test hands in its own


def schedules_for(task_name: str) -> tuple[dict[int, list[int]], str]:
    """{steps: descending timesteps} for a task, and where they come from."""
    if task_name in PUBLISHED:
        steps = AysSchedules[PUBLISHED[task_name]]
        return {len(steps): list(steps)}, f"diffusers AysSchedules[{PUBLISHED[task_name]!r}]"
    path = SCHEDULES / f"{task_name}_ays.json"
    if not path.exists():
        raise ValueError(f"ays: task {task_name!r} has no published schedule and no optimised one at {path}; make "
                         f"one with `python -m baselines.accelerators.ays --task {task_name}`")
    data = json.loads(path.read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return {int(k): v for k, v in data["schedules"].items()}, f"{path.name} (sha256 {digest})"


def log_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    ac = alphas_cumprod.double().numpy()
    return 0.5 * np.log((1 - ac) / ac)


def nearest_timesteps(target: np.ndarray, table: np.ndarray) -> list[int]:
    """The integer timesteps whose log sigma is nearest each target, made strictly descending."""
    out = []
    for ls in target:
        t = int(np.abs(table - ls).argmin())
        out.append(t if not out else min(t, out[-1] - 1))
    if out[-1] < 0:
        raise ValueError(f"ays: {len(out)} distinct timesteps do not fit this schedule")
    return out


def interpolate(timesteps: list[int], steps: int, alphas_cumprod: torch.Tensor) -> list[int]:
    """AYS's log-linear interpolation of a schedule to another step count."""
    table = log_sigmas(alphas_cumprod)
    ys = table[np.asarray(timesteps)]
    target = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(timesteps)), ys)
    return nearest_timesteps(target, table)


class AYS:
    wraps: str

    def __init__(self, solver: SchedulerMethod, schedules: dict[int, list[int]], source: str):
        self.solver, self.wraps, self.schedules, self.source = solver, solver.name, schedules, source
        self.name = "ays" if solver.name == "dpm" else f"ays-{solver.name}"

    def config(self) -> dict:
        return dict(name=self.name, solver=self.solver.config(), schedules=self.source,
                    interpolated_from=max(self.schedules))

    def networks(self, denoiser) -> dict[str, Network]:
        return dash_networks(denoiser)

    def timesteps(self, steps: int, alphas_cumprod: torch.Tensor) -> tuple[list[int], bool]:
        """The schedule for `steps`, and whether it is interpolated."""
        if steps in self.schedules:
            return list(self.schedules[steps]), False
        return interpolate(self.schedules[max(self.schedules)], steps, alphas_cumprod), True

    def __call__(self, denoiser, noise, budget, cond=None, seeds=None, callback=None, spacing=DEFAULT_SPACING):
        steps = self.solver.steps_for_budget(budget)
        timesteps, _ = self.timesteps(steps, denoiser.alphas_cumprod.cpu())
        scheduler = self.solver.make_scheduler(denoiser.schedule_config, steps, noise.device, spacing, timesteps)
        return traced_solve(scheduler, lambda x, t, i: denoiser(x, t, cond), noise, {"dash": denoiser.net}, seeds,
                            self.solver.step_kwargs, callback)


def ays(solver: str):
    def build(ctx: Context) -> AYS:
        return AYS(get_baseline(solver), *ctx.once(SCHEDULES_KEY, lambda: schedules_for(ctx.task.name)))
    return build


def karras(n: int, rho: float, t_last: int, table: np.ndarray) -> list[int]:
    hi, lo = np.exp(table[-1]), np.exp(table[t_last])
    ramp = np.linspace(0, 1, n)
    sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return nearest_timesteps(np.log(sigmas), table)


def coordinate_descent(ts: list[int], loss, best: float, deltas=(16, 4)) -> tuple[list[int], float]:
    """Move each timestep but the first (T - 1) by +-delta while the loss drops and the order stays strict."""
    for delta in deltas:
        for i in range(1, len(ts)):
            for move in (delta, -delta):
                trial = ts[:i] + [ts[i] + move] + ts[i + 1:]
                upper = trial[i - 1] if i else 10 ** 9
                lower = trial[i + 1] if i + 1 < len(trial) else -1
                if not lower < trial[i] < upper:
                    continue
                value = loss(trial)
                if value < best:
                    ts, best = trial, value
                    break
    return ts, best


def optimise(denoiser, noise, cond, budgets, polish_up_to: int) -> tuple[dict, dict]:
    """A schedule per budget for DPM-Solver++(2M), minimising the distance to its 100-step solution."""
    from baselines.solvers import solve

    dpm = get_baseline("dpm")
    table = log_sigmas(denoiser.alphas_cumprod.cpu())

    def run(sched):
        with torch.inference_mode():
            return solve(sched, lambda x, t, i: denoiser(x, t, cond), noise)

    ref = run(dpm.make_scheduler(denoiser.schedule_config, 100))

    def loss(ts):
        return float((run(dpm.make_scheduler(denoiser.schedule_config, len(ts), timesteps=ts)) - ref).pow(2).mean())

    schedules, losses = {}, {}
    for n in budgets:
        trailing = dpm.make_scheduler(denoiser.schedule_config, n).timesteps.tolist()
        start = round(1000 / n) - 1
        candidates = {tuple(karras(n, rho, t_last, table)) for rho in (1.5, 2.5, 3.5, 5.0, 7.0)
                      for t_last in sorted({5, 20, start})} | {tuple(trailing)}
        scored = sorted((loss(list(c)), list(c)) for c in candidates)
        best, ts = scored[0]
        if n <= polish_up_to:
            ts, best = coordinate_descent(ts, loss, best)
        schedules[n], losses[n] = ts, dict(trailing=loss(trailing), ays=best)
        print(f"{n} steps: {ts} mse {best:.5f} (trailing {losses[n]['trailing']:.5f})", flush=True)
    return schedules, losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m baselines.accelerators.ays", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="fmnist")
    p.add_argument("--budgets", default="4,8,16")
    p.add_argument("--seeds", type=int, default=32, help=f"held-out seeds from {HELD_OUT_SEED}")
    p.add_argument("--guidance", type=float, default=None, help="guided tasks: the scale to optimise at")
    p.add_argument("--polish-up-to", type=int, default=8, help="coordinate descent for budgets up to this")
    args = p.parse_args(argv)
    from baselines.noise import initial_noise
    from baselines.tasks import get_task

    task = get_task(args.task)
    dash = task.dash()
    denoiser = task.denoiser(dash, args.guidance) if hasattr(task, "denoiser") else \
        Denoiser(dash, task.schedule_config)
    seeds = list(range(HELD_OUT_SEED, HELD_OUT_SEED + args.seeds))
    start = time.time()
    schedules, losses = optimise(denoiser, initial_noise(seeds, task.image_shape), task.conditions(seeds),
                                 [int(b) for b in args.budgets.split(",")], args.polish_up_to)
    out = SCHEDULES / f"{args.task}_ays.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(
        task=args.task, solver="dpm", guidance=args.guidance, seeds=[seeds[0], seeds[-1]],
        objective="mean squared distance of final samples to the 100-step DPM-Solver++(2M) solution, same noise",
        command="python -m baselines.accelerators.ays " + " ".join(argv if argv is not None else sys.argv[1:]),
        minutes=round((time.time() - start) / 60, 1), mse=losses,
        schedules={str(n): ts for n, ts in schedules.items()}), indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
