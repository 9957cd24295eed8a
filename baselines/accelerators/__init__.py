"""The field's accelerators as methods (one file each): registered under the entry-point group
`morse_bench.methods` as `baselines.accelerators:METHODS` (pyproject.toml)."""

from baselines.accelerators.ays import ays
from baselines.accelerators.deepcache import deepcache
from baselines.accelerators.pab import pab
from baselines.accelerators.pfdiff import pfdiff
from baselines.accelerators.taylorseer import taylorseer
from baselines.accelerators.tgate import tgate
from baselines.accelerators.tome import tome
from baselines.accelerators.tstitch import tstitch

METHODS = {
    "deepcache": deepcache("ddim"),  # DeepCache (PyPI DeepCache 0.1.1's block wrapping) on DDIM
    "deepcache-dpm": deepcache("dpm"),  # the same on DPM-Solver++(2M)
    "pfdiff": pfdiff(),  # PFDiff on DDIM: past score as springboard, future score for the update
    "ays": ays("dpm"),  # Align Your Steps: DPM-Solver++(2M) on the task's optimised or published schedule
    "ays-ddim": ays("ddim"),  # DDIM on the same schedules
    "taylorseer": taylorseer("ddim"),  # TaylorSeer (diffusers' hook) on the mid block and up_blocks.0, on DDIM
    "taylorseer-dpm": taylorseer("dpm"),  # the same on DPM-Solver++(2M)
    "pab": pab("ddim"),  # Pyramid Attention Broadcast (diffusers' hook) on the self-attention layers, on DDIM
    "pab-dpm": pab("dpm"),  # the same on DPM-Solver++(2M)
    "tome": tome("ddim"),  # ToMe (PyPI tomesd 0.1.3), ratio 0.5, on DDIM; text tasks
    "tome-dpm": tome("dpm"),  # the same on DPM-Solver++(2M)
    "tgate": tgate("ddim"),  # T-GATE (PyPI tgate 1.0.0): cross-attention cached and CFG dropped after 40% of the steps
    "tgate-dpm": tgate("dpm"),  # the same on DPM-Solver++(2M)
    "tstitch": tstitch("ddim"),  # T-Stitch: the task's small denoiser takes the first 10% of the steps, then the Dash
    "tstitch-dpm": tstitch("dpm"),  # the same on DPM-Solver++(2M)
}
