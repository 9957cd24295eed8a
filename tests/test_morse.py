"""Morse: weight sharing, exactness limits (zero Dot steps, untrained Dot), NFE per network."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

from baselines.checkpoint import sha256
from baselines.denoisers import Denoiser
from baselines.exact import OptimalDenoiser
from baselines.noise import initial_noise
from baselines.registry import BASELINES, get_baseline
from baselines.solvers import solve
from baselines.tasks.fmnist import SCHEDULE_CONFIG
from morse import Dot, DotConfig, Interleave, Morse, MorseOracle

SHAPE = (1, 8, 8)
SEEDS = list(range(16))


def tiny_unet(channels=(8, 16)):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=channels, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def exact8():
    g = torch.Generator().manual_seed(1)
    data = (torch.rand(16, *SHAPE, generator=g) * 2 - 1).clamp(-0.9, 0.9)
    return Denoiser(OptimalDenoiser(data, DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod), SCHEDULE_CONFIG)


@pytest.fixture(scope="module")
def dot():
    return Dot(tiny_unet(), DotConfig(width=8, m=2)).eval()


WRAPPABLE = [n for n, m in BASELINES.items() if m.evals_per_step == 1]


@pytest.mark.parametrize("skip_levels", [0, 1])
def test_shared_tensors_are_the_dashs_own(skip_levels):
    dash = tiny_unet((8, 8))  # skipping a level needs equal channels on both sides of it
    before = {k: v.clone() for k, v in dash.state_dict().items()}
    dot = Dot(dash, DotConfig(width=8, skip_levels=skip_levels))
    conv = dash.down_blocks[0].resnets[0].conv1
    assert type(conv) is torch.nn.Conv2d  # the Dash itself carries no adapters
    assert dot.body.down_blocks[0].resnets[0].conv1.base_layer is conv
    dash_ptrs = {p.data_ptr() for p in dash.parameters()}
    frozen = [p for p in dot.parameters() if not p.requires_grad]
    assert frozen and all(p.data_ptr() in dash_ptrs for p in frozen)
    assert all(p.data_ptr() not in dash_ptrs for p in dot.parameters() if p.requires_grad)
    # A few optimiser steps on the Dot leave the Dash unchanged.
    opt = torch.optim.SGD([p for p in dot.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(4, *SHAPE)
    t = torch.full((4,), 300)
    for _ in range(3):
        loss = (x + dot(x, x, x, t, t + 50)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert dot.out.weight.abs().sum() > 0
    for k, v in dash.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_skipping_levels_leaves_the_dash_whole():
    from baselines.tasks.fmnist import build_dash

    dash = build_dash().eval()
    x, t = torch.randn(2, 1, 32, 32), torch.full((2,), 500)
    with torch.inference_mode():
        before = dash(x, t).sample
        dot = Dot(dash, DotConfig(skip_levels=1)).eval()
        assert torch.equal(dot(x, x, x, t, t + 100), torch.zeros_like(x))  # untrained: reuse of z_s
        assert dash.down_blocks[1].downsamplers is not None and dash.mid_block is not None
        assert dot.body.down_blocks[-1].downsamplers is None and dot.body.mid_block is None
        assert torch.equal(dash(x, t).sample, before)
    with pytest.raises(ValueError, match="skip_levels"):
        Dot(dash, DotConfig(skip_levels=3))
    with pytest.raises(ValueError, match="skip fewer levels"):
        Dot(dash, DotConfig(skip_levels=2))  # would join the 32- and 64-channel levels


def test_trainable_fraction_of_embedded_dash():
    from baselines.tasks.fmnist import build_dash

    dash = build_dash()
    dot = Dot(dash)
    trainable = sum(p.numel() for p in dot.parameters() if p.requires_grad)
    assert trainable <= 0.15 * sum(p.numel() for p in dash.parameters())


def test_untrained_dot_returns_zero_residual(dot):
    x = torch.randn(3, *SHAPE)
    t = torch.full((3,), 400)
    assert torch.equal(dot(x, x, x, t, t + 100), torch.zeros_like(x))


@pytest.mark.parametrize("name", WRAPPABLE)
def test_zero_dot_steps_equals_wrapped_solver_bit_for_bit(name, exact8, dot):
    solver = get_baseline(name)
    noise = initial_noise(SEEDS, SHAPE)
    base, _ = solver(exact8, noise, 6, seeds=SEEDS)
    morse = Morse(solver, dot, dot_ratio=6.0, interleave=Interleave(dots_per_dash=0))
    out, trace = morse(exact8, noise, 6, seeds=SEEDS)
    assert torch.equal(out, base)
    assert trace.nfe == {"dash": 6.0, "dot": 0.0}


@pytest.mark.parametrize("name", WRAPPABLE)
def test_untrained_dot_is_reuse_of_last_dash_estimate(name, exact8, dot):
    solver = get_baseline(name)
    morse = Morse(solver, dot, dot_ratio=4.0, interleave=Interleave(dots_per_dash=2))
    noise = initial_noise(SEEDS, SHAPE)
    out, trace = morse(exact8, noise, 6, seeds=SEEDS)
    jump = morse.plan(6)
    n_dash, n_dot = sum(jump), len(jump) - sum(jump)
    assert trace.nfe == {"dash": n_dash, "dot": n_dot} and n_dot > 0
    assert trace.networks_per_step == ["dash" if j else "dot" for j in jump]
    assert jump[0]
    assert torch.isfinite(out).all()

    # The same solver, reusing the last Dash estimate by hand.
    from baselines.noise import step_generators
    sched = solver.make_scheduler(SCHEDULE_CONFIG, len(jump))
    last = {}

    def reuse(x, t, i):
        if jump[i]:
            last["z"] = exact8(x, t)
        return last["z"]

    with torch.inference_mode():
        ref = solve(sched, reuse, noise, step_generators(SEEDS), solver.step_kwargs)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", WRAPPABLE)
def test_oracle_is_the_wrapped_solver_on_morses_schedule_at_morses_cost(name, exact8, dot):
    """With the Dash at every step of Morse's schedule, the oracle is the wrapped solver with that many
    steps; its Dot steps are charged as Dot calls, so it costs exactly what Morse costs."""
    solver = get_baseline(name)
    kw = dict(dot_ratio=4.0, interleave=Interleave(dots_per_dash=2))
    oracle, morse = MorseOracle(solver, dot, **kw), Morse(solver, dot, **kw)
    noise = initial_noise(SEEDS, SHAPE)
    out, trace = oracle(exact8, noise, 6, seeds=SEEDS)
    jump = oracle.plan(6)
    assert jump == morse.plan(6) and not all(jump)
    base, _ = solver(exact8, noise, len(jump), seeds=SEEDS)
    assert torch.equal(out, base)
    assert trace.nfe == morse(exact8, noise, 6, seeds=SEEDS)[1].nfe == {"dash": sum(jump),
                                                                       "dot": len(jump) - sum(jump)}
    assert oracle.name == f"{morse.name}-oracle" and oracle.wraps == morse.wraps == name


def test_morse_rejects_two_evaluation_solvers(dot):
    with pytest.raises(ValueError, match="one estimate per step"):
        Morse(get_baseline("heun"), dot, 6.0)


@pytest.mark.parametrize("skip_levels", [0, 1])
def test_conditional_dash_passes_condition_through(skip_levels):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=(8, 8), norm_num_groups=4, cross_attention_dim=12,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=4).eval()
    dot = Dot(unet, DotConfig(width=8, skip_levels=skip_levels)).eval()
    torch.nn.init.normal_(dot.out.weight)
    x = torch.randn(2, *SHAPE)
    t = torch.full((2,), 300)
    cond_a, cond_b = torch.randn(2, 3, 12), torch.randn(2, 3, 12)
    with torch.no_grad():
        a = dot(x, x, x, t, t + 100, cond_a)
        b = dot(x, x, x, t, t + 100, cond_b)
    assert a.shape == x.shape and not torch.allclose(a, b)


def lsd(plan: list[bool], dot_ratio: float) -> float:
    """A plan's cost: 1 LSD per Dash step, 1/N per Dot step."""
    return sum(plan) + (len(plan) - sum(plan)) / dot_ratio


@pytest.mark.parametrize("budget,ratio,d", [(1, 6, 3), (4, 6, 3), (16, 6, 3), (7.5, 2.5, 1), (10, 20, 8)])
def test_interleave_fits_budget(budget, ratio, d):
    il = Interleave(d)
    plan = il.plan(budget, ratio)
    assert plan[0]
    assert lsd(plan, ratio) <= budget + 1e-9
    n_dash = sum(plan)
    assert len(plan) - n_dash <= d * n_dash
    # No schedule with more steps fits the budget.
    for k in range(1, int(budget) + 1):
        longer = k + min(d * k, int(ratio * (budget - k) + 1e-9))
        assert longer <= len(plan)


def test_interleave_rejects_impossible_budget():
    with pytest.raises(ValueError, match="at least 1 LSD"):
        Interleave().plan(0.5, 6.0)


def test_deviation_is_zero_after_a_plain_ddim_step(dot):
    """The Dot's deviation feature measures x_ti against diffusers' own DDIM update with z_s."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SCHEDULE_CONFIG, clip_sample=False, timestep_spacing="trailing")
    sched.set_timesteps(10)
    t_s, t_i = sched.timesteps[2], sched.timesteps[3]
    g = torch.Generator().manual_seed(0)
    x_ts, z_s = torch.randn(3, *SHAPE, generator=g), torch.randn(3, *SHAPE, generator=g)
    x_ti = sched.step(z_s, t_s, x_ts).prev_sample
    deviation, x0 = dot.anchor_features(x_ti, x_ts, z_s, t_i, t_s)
    assert deviation.abs().max() < 1e-5
    # A different estimate at the same step moves x_ti off that line.
    other = sched.step(z_s + 0.1, t_s, x_ts).prev_sample
    assert dot.anchor_features(other, x_ts, z_s, t_i, t_s)[0].abs().max() > 1e-3
    assert x0.abs().max() <= 1


def test_dot_save_load_round_trip(tmp_path):
    dash = tiny_unet(channels=(8, 8))
    dot = Dot(dash, DotConfig(width=8, m=2, skip_levels=1)).eval()
    with torch.no_grad():
        for p in dot.trainable_state_dict():
            dict(dot.named_parameters())[p].normal_(0, 0.1)
    path = str(tmp_path / "dot.safetensors")  # a plain string path, as users pass it
    dot.save(path, {"card": "{}"})
    back = Dot.load(dash, path)
    assert back.config == dot.config
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(back(x, x, x, 500, 600), dot(x, x, x, 500, 600))
        assert dot(x, x, x, 500, 600).abs().max() > 0
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="not a Dot checkpoint for this Dash"):
        Dot.load(tiny_unet(channels=(16, 16)), path)  # same layer names, other shapes


def test_dots_are_stored_by_solver_and_a_missing_one_is_refused_in_one_line():
    from morse.pretrained import dot_path, load_dot

    assert dot_path("fmnist").name == "fmnist_dot.safetensors"  # DDIM's Dot keeps its name
    assert dot_path("fmnist", "ddim") == dot_path("fmnist")
    assert dot_path("fmnist", "dpm").name == "fmnist_dot_dpm.safetensors"
    with pytest.raises(FileNotFoundError, match="--solver nosuch") as e:
        load_dot("fmnist", None, "nosuch")
    assert "\n" not in str(e.value)


def test_each_morse_variant_loads_the_dot_of_the_solver_it_wraps(tmp_path, monkeypatch):
    import json
    import shutil
    from types import SimpleNamespace

    import morse.pretrained
    from evaluate.methods import Context, resolve
    from morse.methods import dot_for
    from morse.pretrained import WEIGHTS

    dash = tiny_unet(channels=(8, 8))
    dot = Dot(dash, DotConfig(width=8, m=2, skip_levels=1)).eval()
    monkeypatch.setattr(morse.pretrained, "WEIGHTS", tmp_path)
    for solver in ("ddim", "dpm"):
        path = morse.pretrained.dot_path("tiny", solver)
        dot.save(path, {"card": "{}"})
        card = json.loads((WEIGHTS / "fmnist_dot.json").read_text()) | dict(solver=solver, sha256=sha256(path))
        path.with_suffix(".json").write_text(json.dumps(card))
    ctx = Context(SimpleNamespace(name="tiny", schedule_config=SCHEDULE_CONFIG), dash)
    assert resolve("morse-dpm", ctx).morse.dot is dot_for(ctx, "dpm")[0] is not dot_for(ctx, "ddim")[0]
    assert resolve("morse", ctx).morse.dot is dot_for(ctx, "ddim")[0]
    with pytest.raises(FileNotFoundError, match="--solver unipc"):
        resolve("morse-unipc", ctx)  # no fallback to another solver's Dot
    shutil.copy(morse.pretrained.dot_path("tiny", "ddim").with_suffix(".json"),
                morse.pretrained.dot_path("tiny", "ddpm").with_suffix(".json"))
    shutil.copy(morse.pretrained.dot_path("tiny", "ddim"), morse.pretrained.dot_path("tiny", "ddpm"))
    with pytest.raises(ValueError, match="trained on 'ddim' trajectories"):
        dot_for(Context(ctx.task, dash), "ddpm")  # a Dot filed under the wrong solver


def test_morse_lcm_refuses_a_dot_trained_on_another_distilled_model(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    import morse.pretrained
    from baselines.methods import Context
    from morse.methods import dot_for
    from morse.pretrained import WEIGHTS

    dash = tiny_unet(channels=(8, 8))
    monkeypatch.setattr(morse.pretrained, "WEIGHTS", tmp_path)
    path = morse.pretrained.dot_path("tiny", "lcm")
    Dot(dash, DotConfig(width=8, m=2, skip_levels=1, residual="x0")).eval().save(path, {"card": "{}"})
    card = json.loads((WEIGHTS / "fmnist_dot_lcm.json").read_text()) | dict(sha256=sha256(path),
                                                                           lcm_sha256="0123456789abcdef")
    path.with_suffix(".json").write_text(json.dumps(card))
    task = SimpleNamespace(name="tiny", schedule_config=SCHEDULE_CONFIG)
    assert dot_for(Context(task, dash, loaded_lcm=(dash, {}, "0123456789abcdef")), "lcm")[1]["solver"] == "lcm"
    with pytest.raises(ValueError, match="trained on the distilled model 0123456789abcdef, not on fedcba"):
        dot_for(Context(task, dash, loaded_lcm=(dash, {}, "fedcba9876543210")), "lcm")


def _x0_dot_case(seed, t_s, t_i, **config):
    """An untrained x0-residual Dot, x0 read from epsilon by hand (float64), and its inputs at (t_s, t_i)."""
    dot = Dot(tiny_unet(), DotConfig(width=8, m=2, residual="x0", schedule=SCHEDULE_CONFIG, **config)).eval()
    ac = DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod.double()
    g = torch.Generator().manual_seed(seed)
    x_ts, z_s, x_ti = (torch.randn(3, *SHAPE, generator=g) for _ in range(3))

    def x0(x, eps, t):
        a = ac[t[0]]
        return (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()

    return dot, x0, (x_ts, z_s, x_ti, torch.full((3,), t_s), torch.full((3,), t_i))


def test_x0_residual_dot_reuses_the_anchors_x0_and_weighs_errors_in_x0():
    """residual="x0" (Morse-LCM): an untrained Dot gives the epsilon at (x_ti, t_i) whose x0 is the anchor's,
    a trained output moves that x0 by exactly its value, and errors are measured between x0s."""
    dot, x0, (x_ts, z_s, x_ti, t_s, t_i) = _x0_dot_case(seed=3, t_s=879, t_i=759)

    with torch.inference_mode():
        eps = z_s + dot(x_ti, x_ts, z_s, t_i, t_s)
        torch.testing.assert_close(x0(x_ti, eps, t_i), x0(x_ts, z_s, t_s), rtol=0, atol=1e-4)
        dot.out.bias[:4] = 0.1  # eta = 0.1 everywhere: pixel_shuffle makes output channel 0 of input channels 0-3
        moved = z_s + dot(x_ti, x_ts, z_s, t_i, t_s)
        torch.testing.assert_close(x0(x_ti, moved, t_i) - x0(x_ts, z_s, t_s), torch.full_like(x_ti, 0.1).double(),
                                   rtol=0, atol=1e-4)
        err = dot.in_residual_space(moved, x_ti, t_i) - dot.in_residual_space(eps, x_ti, t_i)
    # errors are measured in x0: an epsilon error e is an x0 error of -sigma/alpha e
    ab = DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod.double()[759]
    torch.testing.assert_close(err.double(), -((1 - ab) / ab).sqrt() * (moved - eps).double(), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(ValueError, match="residual"):
        Dot(tiny_unet(), DotConfig(width=8, m=2, residual="v"))


def test_x0_dot_of_a_clipping_solver_corrects_and_compares_clipped_x0s():
    """clip_x0 (Morse-LCM on a model sampled with clip_sample): reuse hands on the clipped anchor x0, an output
    moves that clipped x0, and errors compare clipped x0s, so out-of-range noise the solver discards costs nothing."""
    dot, x0, (x_ts, z_s, x_ti, t_s, t_i) = _x0_dot_case(seed=4, t_s=999, t_i=879, clip_x0=True)

    anchor = x0(x_ts, z_s, t_s)
    assert anchor.abs().max() > 10  # near t = 999 the unclipped x0 is far out of the data range
    with torch.inference_mode():
        eps = z_s + dot(x_ti, x_ts, z_s, t_i, t_s)
        torch.testing.assert_close(x0(x_ti, eps, t_i), anchor.clamp(-1, 1), rtol=0, atol=1e-4)
        wild = 50 * eps  # an epsilon whose x0 leaves the data range: measured as the solver will use it, clipped
        space = dot.in_residual_space(wild, x_ti, t_i)
    assert x0(x_ti, wild, t_i).abs().max() > 10 and space.abs().max() <= 1
    torch.testing.assert_close(space.double(), x0(x_ti, wild, t_i).clamp(-1, 1), rtol=0, atol=1e-4)


def _perturbed(dot, seed):
    """A copy of `dot` whose output layer is random: its residual is not zero, so which Dot sampled shows."""
    import copy
    other = copy.deepcopy(dot)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        other.out.weight.copy_(torch.randn(other.out.weight.shape, generator=g) * 0.05)
    return other


def test_each_plan_takes_the_dot_of_its_number_of_dash_steps_and_the_others_the_shared_one(exact8, dot):
    ddim, noise = get_baseline("ddim"), initial_noise(SEEDS, SHAPE)
    shared, one, three = _perturbed(dot, 1), _perturbed(dot, 2), _perturbed(dot, 3)
    both = Morse(ddim, shared, 6.0, Interleave(3), plan_dots={1: one, 3: three})
    assert [sum(both.plan(b)) for b in (2, 4, 8)] == [1, 3, 5]
    for budget, expected in ((2, one), (4, three), (8, shared)):
        out, trace = both(exact8, noise, budget, seeds=SEEDS)
        alone, alone_trace = Morse(ddim, expected, 6.0, Interleave(3))(exact8, noise, budget, seeds=SEEDS)
        assert torch.equal(out, alone) and trace.nfe == alone_trace.nfe and trace.nfe["dot"] > 0
    # the Dots do sample differently, so the equalities above say which one ran
    assert not torch.equal(Morse(ddim, shared, 6.0, Interleave(3))(exact8, noise, 2, seeds=SEEDS)[0],
                           both(exact8, noise, 2, seeds=SEEDS)[0])
    assert list(both.config()["dot"]) == list(both.config()["plan_dots"]["1"])
    assert "plan_dots" not in Morse(ddim, shared, 6.0, Interleave(3)).config()


def _dot_files(tmp_path, dash, monkeypatch, plan_card: dict | None = None, plan_width: int = 8):
    """A committed-style Dot for task "tiny" and, with `plan_card`, a Dot for its one-Dash-step plans beside it (card
    fields over the main card's)."""
    import json

    import morse.pretrained
    from morse.pretrained import WEIGHTS, plan_dot_path

    monkeypatch.setattr(morse.pretrained, "WEIGHTS", tmp_path)
    dot = Dot(dash, DotConfig(width=8, m=2, skip_levels=1)).eval()
    main = morse.pretrained.dot_path("tiny")
    card = json.loads((WEIGHTS / "fmnist_dot.json").read_text())
    plan = _perturbed(dot, 3) if plan_width == 8 else Dot(dash, DotConfig(width=plan_width, m=2, skip_levels=1))
    for path, extra, net in ((main, {}, dot), (plan_dot_path(main, 1), plan_card, plan.eval())):
        if extra is None:
            continue
        net.save(path, {"card": "{}"})
        path.with_suffix(".json").write_text(json.dumps(card | extra | dict(sha256=sha256(path))))
    return main


def test_the_plan_dots_beside_a_dot_are_loaded_where_the_dot_is_called_and_enter_its_cache_key(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from evaluate.methods import Context, resolve
    from morse.pretrained import plan_dot_path, plan_dot_paths

    dash = tiny_unet(channels=(8, 8))
    main = _dot_files(tmp_path, dash, monkeypatch, dict(distill=dict(budgets=[2.0])))
    assert plan_dot_paths(main) == {1: plan_dot_path(main, 1)}
    task = SimpleNamespace(name="tiny", schedule_config=SCHEDULE_CONFIG)
    method = resolve("morse", Context(task, dash))
    assert set(method.morse.plan_dots) == {1}
    assert method.config()["plan_dot_sha256"] == {"1": sha256(plan_dot_path(main, 1))[:16]}
    assert resolve("morse-oracle", Context(task, dash)).morse.plan_dots == {}  # the oracle never calls a Dot
    assert resolve("morse-extrap", Context(task, dash)).morse.plan_dots == {}  # nor does the formula...
    shaped = resolve("morse-extrap", Context(task, dash, options={"exact_mix": "0.3", "exact_shape": "dot"}))
    assert set(shaped.morse.plan_dots) == {1}  # ...but with a Dot-shaped error it calls the Dot each plan samples
    assert shaped.config()["plan_dot_sha256"] == method.config()["plan_dot_sha256"]
    off = resolve("morse", Context(task, dash, options={"plan_dots": "none"}))
    assert off.morse.plan_dots == {} and "plan_dot_sha256" not in off.config()
    with pytest.raises(FileNotFoundError, match="plan_dot3="):
        resolve("morse", Context(task, dash, options={"plan_dot3": str(tmp_path / "missing.safetensors")}))
    with pytest.raises(ValueError, match="3 Dash steps.*budgets \\[2.0\\]"):  # a 1-step plan's Dot offered for 3
        resolve("morse", Context(task, dash, options={"plan_dot3": str(plan_dot_path(main, 1))}))


@pytest.mark.parametrize("fields, message", [(dict(distill=dict(budgets=[2.0, 4.0])), "not on such plans alone"),
                                             ({}, "not on such plans alone"),
                                             (dict(distill=dict(budgets=[2.0]), dots_per_dash=2), "dots_per_dash"),
                                             (dict(distill=dict(budgets=[2.0]), solver="dpm"), "solver")])
def test_a_plan_dot_that_plans_otherwise_is_refused_in_one_line(tmp_path, monkeypatch, fields, message):
    from types import SimpleNamespace

    from evaluate.methods import Context, resolve

    dash = tiny_unet(channels=(8, 8))
    _dot_files(tmp_path, dash, monkeypatch, fields)
    with pytest.raises(ValueError, match=message) as e:
        resolve("morse", Context(SimpleNamespace(name="tiny", schedule_config=SCHEDULE_CONFIG), dash))
    assert "\n" not in str(e.value) and "plan_dots=none" in str(e.value)


def test_the_committed_plan_dots_load_beside_their_dots_and_plan_alike():
    from baselines.tasks import get_task
    from evaluate.methods import Context, resolve
    from morse.pretrained import dot_path, plan_dot_paths

    task = get_task("fmnist")
    dash = task.dash().eval()
    assert {1, 2, 3} <= set(plan_dot_paths(dot_path("fmnist")))  # the 2-, 3- and 4-LSD plans' Dots (issue 30)
    # DPM-Solver++'s 2-LSD plan, which diverged without one, and its 8-LSD plan (six Dash steps)
    assert {1, 6} <= set(plan_dot_paths(dot_path("fmnist", "dpm")))
    for name, solver in (("morse", "ddim"), ("morse-dpm", "dpm")):
        method = resolve(name, Context(task, dash))  # checks each one's checksum and plans
        assert set(method.morse.plan_dots) == set(plan_dot_paths(dot_path("fmnist", solver)))
        assert all(sum(method.morse.plan(b)) != k or method.morse.dot_for(method.morse.plan(b)) is d
                   for k, d in method.morse.plan_dots.items() for b in (2, 3, 4, 8))


def test_a_plan_dot_with_other_layers_is_refused_in_one_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from evaluate.methods import Context, resolve

    dash = tiny_unet(channels=(8, 8))
    _dot_files(tmp_path, dash, monkeypatch, dict(distill=dict(budgets=[2.0])), plan_width=16)  # same keys, wider
    with pytest.raises(ValueError, match="layers differ") as e:
        resolve("morse", Context(SimpleNamespace(name="tiny", schedule_config=SCHEDULE_CONFIG), dash))
    assert "\n" not in str(e.value)
