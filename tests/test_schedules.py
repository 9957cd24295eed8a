"""Every solver step must hand the next step a sample at the noise level the next step assumes.

Step counts that do not divide the 1,000 training steps (7, 11, 13, 16, 41) are where diffusers'
DDIM stepped off its own trailing schedule (baselines/ddim.py); 10, 100 and 1,000 hide it.
"""

import inspect
import math

import diffusers
import pytest
import torch

from baselines import ddim
from baselines.registry import BASELINES, get_baseline
from baselines.schedule import alpha_bar
from baselines.solvers import solve
from baselines.tasks.fmnist import SCHEDULE_CONFIG

SPACINGS = ("leading", "trailing", "linspace")
STEPS = (7, 11, 13, 16, 41)
STOCHASTIC = {"ddpm", "ddim-eta1", "lcm"}


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_ddim_substeps_equal_one_merged_step(spacing, steps):
    """With a constant epsilon, eta = 0 DDIM is exact, so k steps equal one step from the first
    timestep straight to alpha_bar = 1; landing anywhere but the next entry breaks the identity."""
    sched = get_baseline("ddim").make_scheduler(SCHEDULE_CONFIG, steps, spacing=spacing)
    # diffusers keeps alphas in float32, whose rounding alone exceeds 1e-6 over 41 steps
    sched.alphas_cumprod, sched.final_alpha_cumprod = sched.alphas_cumprod.double(), sched.final_alpha_cumprod.double()
    g = torch.Generator().manual_seed(steps)
    x_first = torch.randn(4, 64, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 64, generator=g, dtype=torch.float64)
    x = solve(sched, lambda x, t, i: eps, x_first)
    a = sched.alphas_cumprod[sched.timesteps[0]].double()
    merged = (x_first - (1 - a).sqrt() * eps) / a.sqrt()
    torch.testing.assert_close(x, merged, rtol=0, atol=1e-6)


def solver_alpha_bar(sched):
    """alpha_bar at a timestep as the solver itself books it: sigma-based solvers interpolate their own
    sigma table at fractional timesteps (linearly, unlike baselines.schedule), the others index alphas."""
    ac = torch.as_tensor(sched.alphas_cumprod).double()
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is None:
        return lambda t: alpha_bar(ac, torch.as_tensor(float(t)))
    table = {float(t): float(s) for t, s in zip(sched.timesteps, sigmas, strict=False)}
    return lambda t: torch.tensor(1 / (1 + table[float(t)] ** 2), dtype=torch.float64)


class PointMass(torch.nn.Module):
    """The exact denoiser of data concentrated on one image x0: epsilon = (x - sqrt(a) x0) / sqrt(1 - a).
    Its probability-flow ODE keeps x in span(x0, eps0), so every deterministic solver here is exact on
    it, and the sample's own coefficients tell the noise level it is really at."""

    def __init__(self, x0, alpha_of_t):
        super().__init__()
        self.x0, self.alpha_of_t = x0, alpha_of_t

    def forward(self, x, t):
        a = self.alpha_of_t(t)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def final_log_snr(sched) -> float:
    """Where the solver's own bookkeeping says the last step lands (inf: alpha_bar = 1)."""
    if getattr(sched, "sigmas", None) is not None:
        sigma = float(sched.sigmas[-1])
    elif hasattr(sched, "final_alpha_cumprod"):
        a = float(sched.final_alpha_cumprod)
        sigma = math.sqrt((1 - a) / a)
    else:
        sigma = 0.0  # DDPM and LCM return the x0 estimate at the end
    return math.inf if sigma == 0 else -2 * math.log(sigma)


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_each_step_lands_where_the_next_assumes(name, spacing, steps):
    method = get_baseline(name)
    sched = method.make_scheduler(SCHEDULE_CONFIG, steps, spacing=spacing)
    alpha_of_t = solver_alpha_bar(sched)
    g = torch.Generator().manual_seed(0)
    # For a stochastic solver, an x0 far larger than the noise makes the x0 coefficient precise; the
    # deterministic ones (some step in float32) are measured through the noise coefficient instead.
    scale = 1e4 if name in STOCHASTIC else 1.0
    x0 = scale * torch.sign(torch.randn(2, 1, 64, 64, generator=g, dtype=torch.float64))
    eps0 = torch.randn(2, 1, 64, 64, generator=g, dtype=torch.float64)
    eps0 -= (eps0 * x0).sum((1, 2, 3), keepdim=True) / (x0 * x0).sum((1, 2, 3), keepdim=True) * x0
    eps0 /= eps0.square().mean((1, 2, 3), keepdim=True).sqrt()
    model = PointMass(x0, alpha_of_t)
    times = [float(t) for t in sched.timesteps]
    a_first = alpha_of_t(times[0])
    landed, residual = [], []

    def record(i, t, x, eps):
        c0 = ((x * x0).sum((1, 2, 3)) / (x0 * x0).sum((1, 2, 3))).mean().item()
        residual.append(((x - c0 * x0).square().mean().sqrt() / (abs(c0) * scale)).item())
        if name in STOCHASTIC:  # VP solvers: the x0 coefficient is sqrt(alpha_bar); fresh noise blurs the rest
            landed.append(math.log(c0**2 / (1 - c0**2)) if c0 < 1 else math.inf)
        else:
            ce = ((x * eps0).sum((1, 2, 3)) / (eps0 * eps0).sum((1, 2, 3))).mean().item()
            landed.append(math.log(c0**2 / ce**2) if ce != 0 else math.inf)

    x_start = a_first.sqrt() * x0 + (1 - a_first).sqrt() * eps0
    if sched.init_noise_sigma != 1:
        x_start = x_start / a_first.sqrt() / sched.init_noise_sigma
    solve(sched, lambda x, t, i: model(x, t), x_start,
          generators=[torch.Generator().manual_seed(s) for s in (101, 102)],  # not the stream of x0
          step_kwargs=method.step_kwargs, callback=record)

    expected = [float(torch.log(alpha_of_t(t) / (1 - alpha_of_t(t)))) for t in times[1:]]
    expected.append(final_log_snr(sched))
    assert len(landed) == len(expected)
    for i, (got, want) in enumerate(zip(landed, expected, strict=True)):
        if math.isinf(want):
            assert residual[i] < 1e-5, f"step {i}: the last sample is not clean (noise/signal {residual[i]:.2g})"
        else:
            # One timestep off moves the log SNR by >= 0.02. Near alpha_bar = 1 the x0 coefficient of a
            # stochastic sample pins the log SNR only to ~1e-6 / (1 - alpha_bar) (float32 alphas).
            tol = 2e-3 + (1e-6 * (1 + math.exp(want)) if name in STOCHASTIC else 0)
            assert got == pytest.approx(want, abs=tol), f"step {i} of {len(landed)}"


def test_fixed_ddim_keeps_diffusers_step_signature():
    """The solver loop hands per-sample generators only to a step whose signature names them; a
    fixed scheduler that hid them behind **kwargs made eta = 1 draw from the global RNG."""
    ours = inspect.signature(ddim.DDIMScheduler.step).parameters
    assert list(ours) == list(inspect.signature(diffusers.DDIMScheduler.step).parameters)


def _ddim_pair(steps=16, **config):
    cfg = dict(SCHEDULE_CONFIG, timestep_spacing="trailing", clip_sample=False, **config)
    ours, theirs = ddim.DDIMScheduler(**cfg), diffusers.DDIMScheduler(**cfg)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    return ours, theirs


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_fixed_ddim_steps_off_its_schedule_as_diffusers_does(eta):
    """At a timestep the schedule does not hold, there is no next entry: the step is diffusers' t - T // n."""
    ours, theirs = _ddim_pair()
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    for t in (998, 500, 37, 3):
        assert t not in ours.timesteps
        a = ours.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(t)).prev_sample
        b = theirs.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fixed_ddim_lands_on_the_next_entry_of_its_schedule():
    ours, _ = _ddim_pair()
    assert [ours.previous_timestep(t) for t in ours.timesteps] == [*ours.timesteps[1:].tolist(), -1]


def test_fixed_ddim_takes_a_custom_timestep_list():
    """Align Your Steps' schedules: any descending list, each step landing on the next entry, exactly (with a constant
    epsilon, eta = 0 DDIM's substeps equal one step straight to alpha_bar = 1)."""
    sched = ddim.DDIMScheduler(**dict(SCHEDULE_CONFIG, clip_sample=False))
    custom = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    sched.set_timesteps(timesteps=custom)
    assert sched.timesteps.tolist() == custom and sched.num_inference_steps == 10
    assert [sched.previous_timestep(t) for t in custom] == [*custom[1:], -1]
    sched.alphas_cumprod, sched.final_alpha_cumprod = sched.alphas_cumprod.double(), sched.final_alpha_cumprod.double()
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(3, 16, generator=g, dtype=torch.float64), torch.randn(3, 16, generator=g, dtype=torch.float64)
    a = sched.alphas_cumprod[999]
    torch.testing.assert_close(solve(sched, lambda x, t, i: eps, x), (x - (1 - a).sqrt() * eps) / a.sqrt(),
                               rtol=0, atol=1e-6)
    for bad in ([10, 20], [1000, 5], [5, -1], []):
        with pytest.raises(ValueError, match="descending"):
            sched.set_timesteps(timesteps=bad)
    with pytest.raises(ValueError, match="either"):
        sched.set_timesteps(4, timesteps=custom)


def test_fixed_ddim_step_before_set_timesteps_raises_diffusers_error():
    sched = ddim.DDIMScheduler(**SCHEDULE_CONFIG)
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(torch.zeros(1, 4), 999, torch.zeros(1, 4))


def test_fixed_ddim_saved_config_loads_back_the_fixed_class_or_says_so(tmp_path):
    import logging

    ours, _ = _ddim_pair()
    ours.save_config(tmp_path)
    loaded = ddim.DDIMScheduler.from_pretrained(tmp_path)
    assert type(loaded) is ddim.DDIMScheduler
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == \
        {k: v for k, v in ours.config.items() if not k.startswith("_")}
    # The harness resolves a config's class name to the fixed class.
    from baselines.solvers import scheduler_class
    assert scheduler_class(loaded.config._class_name) is ddim.DDIMScheduler
    # diffusers' own class gives back the unfixed step, and says so.
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers.configuration_utils")
    logger.addHandler(handler)
    try:
        diffusers.DDIMScheduler.from_pretrained(tmp_path)
    finally:
        logger.removeHandler(handler)
    assert any("next_entry" in r.getMessage() for r in records)
    with pytest.raises(ValueError, match="always steps to the next"):
        ddim.DDIMScheduler(next_entry=False)


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler"])
def test_make_scheduler_takes_a_timestep_list(name):
    custom = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
    sched = get_baseline(name).make_scheduler(SCHEDULE_CONFIG, 10, timesteps=custom)
    assert [round(float(t)) for t in sched.timesteps] == custom


def test_make_scheduler_refuses_a_timestep_list_where_diffusers_takes_none():
    with pytest.raises(ValueError, match="takes no timestep list"):
        get_baseline("unipc").make_scheduler(SCHEDULE_CONFIG, 3, timesteps=[999, 500, 10])
    with pytest.raises(ValueError, match="3 timesteps given for 4"):
        get_baseline("ddim").make_scheduler(SCHEDULE_CONFIG, 4, timesteps=[999, 500, 10])
