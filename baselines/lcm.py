"""The consistency-distilled model of a task, and LCMScheduler set up as it was distilled.

Shared by the `lcm` method (evaluate.methods) and by Morse-LCM's Dot training (morse.train), whose
Dash is this model.
"""

import copy
import json
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from baselines.checkpoint import sha256, verify_weights
from baselines.registry import get_baseline
from baselines.solvers import SchedulerMethod


def load_lcm(task, dash: nn.Module) -> tuple[nn.Module, dict, str]:
    """(network, card, checksum): the distilled model at the task's `lcm_path`, in a copy of the Dash (same
    architecture, same device). LCMScheduler's steps assume a model distilled for them: on any other they measure
    nothing about LCM, so a missing model, or one whose card does not say `distilled: true`, is refused."""
    # A distilled model of another layout than the Dash (guidance as an input) comes from the task.
    layout = (lambda: task.lcm_network(dash)) if hasattr(task, "lcm_network") else lambda: copy.deepcopy(dash)
    if getattr(task, "random_weights", False):  # latency only: the Dash's layers cost what the distilled ones do
        return layout(), {}, "random"
    path = getattr(task, "lcm_path", None)
    fix = (f"distil one with `python -m baselines.tasks.train_lcm --task {task.name} --export {path}`"
           if path is not None else
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
    net = layout()
    net.load_state_dict(load_file(path))  # stored in float16, loaded into the Dash's dtype
    return net, card, sha256(path)[:16]


def lcm_solver(card: dict) -> SchedulerMethod:
    """LCMScheduler with the grid and boundary scalings the model was distilled with (its card's `scheduler`)."""
    base = get_baseline("lcm")
    trained = {k: v for k, v in card.get("scheduler", {}).items()
               if k in ("original_inference_steps", "timestep_scaling", "clip_sample")}
    return replace(base, overrides={**base.overrides, **trained},
                   max_steps=trained.get("original_inference_steps", base.max_steps))
