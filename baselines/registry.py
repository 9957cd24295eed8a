"""Baseline methods by name."""

from baselines.solvers import SchedulerMethod

_DPM = "DPMSolverMultistepScheduler"
_CLASSIC = {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}
BASELINES = {m.name: m for m in [
    SchedulerMethod("ddim", "DDIMScheduler", description="DDIM, eta = 0 (deterministic ODE)"),
    SchedulerMethod("ddim-eta1", "DDIMScheduler", step_kwargs={"eta": 1.0},
                    description="DDIM, eta = 1 (stochastic)"),
    SchedulerMethod("ddpm", "DDPMScheduler", description="DDPM ancestral sampling"),
    SchedulerMethod("dpm", _DPM, {"algorithm_type": "dpmsolver++", "solver_order": 2},
                    description="DPM-Solver++(2M), multistep"),
    SchedulerMethod("dpmpp-3m", _DPM, {"algorithm_type": "dpmsolver++", "solver_order": 3},
                    description="DPM-Solver++(3M), multistep"),
    SchedulerMethod("dpm-2m", _DPM, {**_CLASSIC, "solver_order": 2},
                    description="DPM-Solver-2 (classic, noise prediction), multistep"),
    SchedulerMethod("dpm-3m", _DPM, {**_CLASSIC, "solver_order": 3},
                    description="DPM-Solver-3 (classic), multistep"),
    SchedulerMethod("dpm-single", "DPMSolverSinglestepScheduler",
                    {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
                    description="DPM-Solver++(2S), singlestep"),
    SchedulerMethod("unipc", "UniPCMultistepScheduler", description="UniPC (bh2, order 2)"),
    SchedulerMethod("euler", "EulerDiscreteScheduler", description="Euler (Karras sigmas off)"),
    SchedulerMethod("heun", "HeunDiscreteScheduler", evals_per_step=2,
                    description="Heun 2nd order, 2 NFE per step but the first"),
    # The scheduler alone; the `lcm` method (evaluate.methods) runs it on the task's consistency-distilled model.
    SchedulerMethod("lcm", "LCMScheduler", max_steps=50,
                    description="LCM multistep consistency sampling (for consistency-distilled models)"),
]}


def get_baseline(name: str) -> SchedulerMethod:
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(BASELINES)}") from None
