"""The Dot's prior (issue 30): the extrapolation formula, an untrained Dot returning its prior exactly, morse-extrap
as Morse's schedules with the formula at the Dot steps, old Dots loading as reuse Dots, and the per-budget error."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from baselines.denoisers import Denoiser
from baselines.exact import OptimalDenoiser
from baselines.noise import initial_noise
from baselines.registry import get_baseline
from baselines.tasks.fmnist import SCHEDULE_CONFIG
from morse import Dot, DotConfig, Interleave, Morse
from morse.prior import log_snr, prior
from morse.sampler import MorseExtrap
from morse.train import residual_error, sampling_pairs

SHAPE = (1, 8, 8)
AC = DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def exact8():
    g = torch.Generator().manual_seed(1)
    data = (torch.rand(16, *SHAPE, generator=g) * 2 - 1).clamp(-0.9, 0.9)
    return Denoiser(OptimalDenoiser(data, AC), SCHEDULE_CONFIG)


def test_extrapolation_is_the_line_through_two_estimates_in_log_snr():
    z_p, z_s = torch.full((2, 1, 2, 2), 1.0), torch.full((2, 1, 2, 2), 3.0)
    lam = lambda t: 0.5 * math.log(AC[t].item() / (1 - AC[t].item()))  # noqa: E731
    want = 3.0 + 2.0 * (lam(499) - lam(749)) / (lam(749) - lam(999))
    got = prior("extrap", z_s, 499, 749, (None, z_p, 999), AC)
    assert torch.allclose(got, torch.full_like(got, want), rtol=1e-5)
    assert log_snr(AC, 0) > log_snr(AC, 999)
    # No earlier anchor, or the reuse prior: z_s itself.
    assert torch.equal(prior("extrap", z_s, 499, 749, None, AC), z_s)
    assert torch.equal(prior("reuse", z_s, 499, 749, (None, z_p, 999), AC), z_s)
    # Per-sample times, as in training batches; t_s' = t_s marks "no earlier anchor" and reuses z_s there.
    rows = prior("extrap", z_s, torch.tensor([499.0, 499.0]), torch.tensor([749.0, 749.0]),
                 (None, z_p, torch.tensor([999.0, 749.0])), AC)
    assert torch.allclose(rows[0], got[0]) and torch.equal(rows[1], z_s[1])
    with pytest.raises(ValueError, match="prior"):
        prior("quadratic", z_s, 499, 749, (None, z_p, 999), AC)


@pytest.mark.parametrize("history", [False, True])
def test_an_untrained_extrap_dot_returns_its_prior_exactly(history):
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=history, schedule=SCHEDULE_CONFIG)).eval()
    x, z_s, z_p = torch.randn(3, 4, *SHAPE).unbind(0)
    t_i, t_s, t_p = torch.full((4,), 400), torch.full((4,), 500), torch.full((4,), 700)
    with torch.no_grad():
        out = z_s + dot(x, x, z_s, t_i, t_s, prev=(x, z_p, t_p))
        first = z_s + dot(x, x, z_s, t_i, t_s)
    assert torch.allclose(out, prior("extrap", z_s, t_i, t_s, (x, z_p, t_p), AC), atol=1e-6)
    assert torch.equal(first, z_s)
    assert ("prev_embedding.weight" in dot.trainable_state_dict()) == history


def test_old_dots_load_as_reuse_dots(tmp_path):
    """A checkpoint whose config predates the prior (the committed Dots) loads with prior="reuse" and no history."""
    import json

    from safetensors.torch import save_file

    dash = tiny_unet()
    dot = Dot(dash, DotConfig(width=8))
    old = {k: v for k, v in json.loads(json.dumps(vars(dot.config))).items()
           if k not in ("prior", "history", "trajectory")}
    save_file(dot.trainable_state_dict(), tmp_path / "old.safetensors", {"dot_config": json.dumps(old)})
    back = Dot.load(dash, tmp_path / "old.safetensors")
    assert (back.config.prior, back.config.history, back.config.trajectory) == ("reuse", False, True)
    with pytest.raises(ValueError, match="prior"):
        Dot(dash, DotConfig(width=8, prior="extrap", residual="x0"))


def test_morse_extrap_is_morse_with_the_formula_at_dot_steps_charged_as_dots(exact8):
    seeds = list(range(8))
    noise = initial_noise(seeds, SHAPE)
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    ddim = get_baseline("ddim")
    extrap = MorseExtrap(ddim, dot, 6.0, Interleave(3))
    x, trace = extrap(exact8, noise, 8.0, seeds=seeds)
    # An untrained extrap Dot returns the same formula, so Morse with it samples exactly what morse-extrap samples.
    y, morse_trace = Morse(ddim, dot, 6.0, Interleave(3))(exact8, noise, 8.0, seeds=seeds)
    assert extrap.name == "morse-extrap"
    assert torch.allclose(x, y, atol=1e-5)
    assert trace.nfe == morse_trace.nfe == {"dash": 5.0, "dot": 15.0}
    # ...and not what reuse of z_s gives.
    z, _ = Morse(ddim, Dot(tiny_unet(), DotConfig(width=8)).eval(), 6.0, Interleave(3))(exact8, noise, 8.0, seeds=seeds)
    assert not torch.allclose(x, z, atol=1e-3)


def test_morse_extrap_exact_groups_put_the_dash_in_one_groups_dot_steps_at_the_dots_price(exact8):
    """exact_groups (where the formula's distance to its ceiling lies): on a plan of one group (a Dash step, three
    Dot steps), "first" is the oracle and "later" the formula; on a longer plan each differs from both; every
    variant is priced as morse-extrap."""
    from morse.sampler import MorseOracle

    seeds = list(range(4))
    noise = initial_noise(seeds, SHAPE)
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    ddim = get_baseline("ddim")
    run = lambda m, b: m(exact8, noise, b, seeds=seeds)  # noqa: E731
    variants = {g: MorseExtrap(ddim, dot, 6.0, Interleave(3), exact_groups=g) for g in (None, "first", "later")}
    assert variants["first"].name == "morse-extrap-exact-first"
    assert variants["later"].config()["exact_groups"] == "later" and "exact_groups" not in variants[None].config()
    oracle, _ = run(MorseOracle(ddim, dot, 6.0, Interleave(3)), 1.5)
    one = {g: run(m, 1.5) for g, m in variants.items()}
    assert torch.allclose(one["first"][0], oracle, atol=1e-5) and torch.equal(one["later"][0], one[None][0])
    eight = {g: run(m, 8.0) for g, m in variants.items()}
    assert not torch.allclose(eight["first"][0], eight[None][0], atol=1e-3)
    assert not torch.allclose(eight["later"][0], eight[None][0], atol=1e-3)
    for g in ("first", "later"):
        assert eight[g][1].nfe == eight[None][1].nfe == {"dash": 5.0, "dot": 15.0}
    with pytest.raises(ValueError, match="exact_groups"):
        MorseExtrap(ddim, dot, 6.0, Interleave(3), exact_groups="all")


def test_morse_extrap_exact_mix_moves_the_formula_a_share_of_the_way_to_the_dash_at_the_dots_price(exact8):
    """exact_mix=a: 0 is the formula and 1 the oracle; in between, each Dot step's estimate lies the share a of the
    way from the formula's to the Dash's, so its error is 1 - a of the prior's at every step."""
    from morse.sampler import MorseOracle

    seeds = list(range(4))
    noise = initial_noise(seeds, SHAPE)
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    ddim = get_baseline("ddim")
    run = lambda m: m(exact8, noise, 8.0, seeds=seeds)  # noqa: E731
    mixes = {a: MorseExtrap(ddim, dot, 6.0, Interleave(3), exact_mix=a) for a in (0.0, 0.3, 1.0)}
    assert mixes[0.3].name == "morse-extrap-mix0.3" and mixes[0.3].config()["exact_mix"] == 0.3
    formula, _ = run(MorseExtrap(ddim, dot, 6.0, Interleave(3)))
    oracle, _ = run(MorseOracle(ddim, dot, 6.0, Interleave(3)))
    out = {a: run(m) for a, m in mixes.items()}
    assert torch.allclose(out[0.0][0], formula, atol=1e-5) and torch.allclose(out[1.0][0], oracle, atol=1e-5)
    assert not torch.allclose(out[0.3][0], formula, atol=1e-3) and not torch.allclose(out[0.3][0], oracle, atol=1e-3)
    assert out[0.3][1].nfe == {"dash": 5.0, "dot": 15.0}
    # One Dot step, by hand: the error to the Dash is 0.7 of the line's.
    mix = mixes[0.3]
    mix._alphas_cumprod, mix._exact_steps = exact8.alphas_cumprod, 0
    x, t = noise, torch.tensor(500)
    anchor = dict(x_ts=noise, z_s=exact8(noise, torch.tensor(700), None), t_s=torch.tensor(700),
                  prev=(noise, exact8(noise, torch.tensor(900), None), torch.tensor(900)))
    line = prior("extrap", anchor["z_s"], t, anchor["t_s"], anchor["prev"], exact8.alphas_cumprod)
    dash = exact8(x, t, None)
    assert torch.allclose(mix.between(exact8, x, t, anchor, None, dot) - dash, 0.7 * (line - dash), atol=1e-6)
    for bad in (dict(exact_mix=1.5), dict(exact_mix=0.5, exact_groups="first")):
        with pytest.raises(ValueError, match="exact_mix"):
            MorseExtrap(ddim, dot, 6.0, Interleave(3), **bad)


def _a_later_dot_step(exact8):
    """(x, t, anchor, the extrapolation prior's estimate, the Dash's) at a Dot step of a later group (t = 500, anchors
    at 700 and 900), four samples."""
    noise = initial_noise(list(range(4)), SHAPE)
    x, t = noise, torch.tensor(500)
    anchor = dict(x_ts=noise, z_s=exact8(noise, torch.tensor(700), None), t_s=torch.tensor(700),
                  prev=(noise, exact8(noise, torch.tensor(900), None), torch.tensor(900)))
    line = prior("extrap", anchor["z_s"], t, anchor["t_s"], anchor["prev"], exact8.alphas_cumprod)
    return x, t, anchor, line, exact8(x, t, None)


def test_morse_extrap_exact_shape_keeps_the_mix_s_error_size_per_sample_in_another_shape(exact8):
    """exact_shape=S beside exact_mix=a: each Dot step's error to the Dash is 1 - a of the prior's in size, sample by
    sample, shaped as S says: "past" is the pull's error reversed, "across" the prior's error transposed, "fine" and
    "coarse" the two parts of its blur."""
    from morse.dot import blur

    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    ddim = get_baseline("ddim")
    x, t, anchor, line, dash = _a_later_dot_step(exact8)
    e = line - dash
    norm = lambda v: v.flatten(1).norm(dim=1)  # noqa: E731
    cos = lambda a, b: (a * b).flatten(1).sum(1) / (norm(a) * norm(b))  # noqa: E731
    errors = {}
    for shape in ("past", "across", "fine", "coarse"):
        m = MorseExtrap(ddim, dot, 6.0, Interleave(3), exact_mix=0.3, exact_shape=shape)
        assert m.name == f"morse-extrap-mix0.3-{shape}" and m.config()["exact_shape"] == shape
        m._alphas_cumprod, m._exact_steps = exact8.alphas_cumprod, 0
        errors[shape] = m.between(exact8, x, t, anchor, None, dot) - dash
        assert torch.allclose(norm(errors[shape]), 0.7 * norm(e), rtol=1e-4), shape
    assert torch.allclose(errors["past"], -0.7 * e, atol=1e-6)
    assert torch.allclose(cos(errors["across"], e.transpose(-1, -2)), torch.ones(4), atol=1e-5)
    assert (cos(errors["across"], e) < 0.99).all()
    assert torch.allclose(cos(errors["coarse"], blur(e, 1.5)), torch.ones(4), atol=1e-5)
    assert torch.allclose(cos(errors["fine"], e - blur(e, 1.5)), torch.ones(4), atol=1e-5)
    assert (norm(blur(errors["fine"], 1.5)) < norm(blur(errors["coarse"], 1.5))).all()
    m = MorseExtrap(ddim, dot, 6.0, Interleave(3), exact_mix=0.3, exact_shape="noise")
    m._alphas_cumprod, m._exact_steps = exact8.alphas_cumprod, 0
    noisy = m.between(exact8, x, t, anchor, None, dot) - dash  # white: nearly orthogonal to the prior's error
    assert torch.allclose(norm(noisy), 0.7 * norm(e), rtol=1e-4) and (cos(noisy, e).abs() < 0.5).all()
    for bad in (dict(exact_shape="fine"), dict(exact_mix=0.3, exact_shape="wavy")):
        with pytest.raises(ValueError, match="exact_shape"):
            MorseExtrap(ddim, dot, 6.0, Interleave(3), **bad)
    # "blurry": the x0 estimate moved towards its own blur, at the same size
    m = MorseExtrap(ddim, dot, 6.0, Interleave(3), exact_mix=0.3, exact_shape="blurry")
    m._alphas_cumprod, m._exact_steps = exact8.alphas_cumprod, 0
    blurred = m.between(exact8, x, t, anchor, None, dot) - dash
    a = exact8.alphas_cumprod[500]
    x0 = (x - (1 - a).sqrt() * dash) / a.sqrt()
    assert torch.allclose(cos(blurred, x0 - blur(x0, 1.5)), torch.ones(4), atol=1e-5)
    assert torch.allclose(norm(blurred), 0.7 * norm(e), rtol=1e-4)
    x0_after = (x - (1 - a).sqrt() * (dash + blurred)) / a.sqrt()  # nearer its blur than the Dash's x0 is to its own
    assert (norm(x0_after - blur(x0_after, 1.5)) < norm(x0 - blur(x0, 1.5))).all()
    # exact_floor f: an error of RMS f per value added in quadrature, along the pull; the sums see every step.
    m = MorseExtrap(ddim, dot, 6.0, Interleave(3), exact_mix=0.3, exact_floor=0.05)
    assert m.name == "morse-extrap-mix0.3-floor0.05" and m.config()["exact_floor"] == 0.05
    m._alphas_cumprod, m._exact_steps, m._budget = exact8.alphas_cumprod, 0, 8.0
    floored = m.between(exact8, x, t, anchor, None, dot) - dash
    assert torch.allclose(norm(floored) ** 2, 0.49 * norm(e) ** 2 + 0.05 ** 2 * e[0].numel(), rtol=1e-4)
    assert torch.allclose(cos(floored, e), torch.ones(4), atol=1e-5)
    assert m.error_sums[8.0][0] == pytest.approx(norm(floored).square().sum().item(), rel=1e-4)
    assert m.error_sums[8.0][1] == pytest.approx(norm(e).square().sum().item(), rel=1e-4)
    for bad in (dict(exact_floor=0.01), dict(exact_mix=0.3, exact_floor=-1.0)):
        with pytest.raises(ValueError, match="exact_floor"):
            MorseExtrap(ddim, dot, 6.0, Interleave(3), **bad)


def test_morse_extrap_exact_shape_dot_gives_the_dot_s_own_error_at_the_mix_s_size(exact8):
    """exact_shape=dot: the error the Dot in use makes at that step (its estimate minus the Dash's), rescaled per
    sample to 1 - a of the prior's; the samples then depend on the Dot, so its config enters the cache key."""
    torch.manual_seed(0)
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    with torch.no_grad():  # trained-like: a Dot whose estimate is not its prior's
        for p in dot.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, anchor, line, dash = _a_later_dot_step(exact8)
    own = Morse.between(MorseExtrap(get_baseline("ddim"), dot, 6.0, Interleave(3)), exact8, x, t, anchor, None,
                        dot) - dash
    norm = lambda v: v.flatten(1).norm(dim=1)  # noqa: E731
    assert (norm(own - (line - dash)) > 1e-3 * norm(own)).all()  # the Dot's error is not the prior's
    m = MorseExtrap(get_baseline("ddim"), dot, 6.0, Interleave(3), exact_mix=0.3, exact_shape="dot")
    m._alphas_cumprod, m._exact_steps = exact8.alphas_cumprod, 0
    shaped = m.between(exact8, x, t, anchor, None, dot) - dash
    assert torch.allclose(norm(shaped), 0.7 * norm(line - dash), rtol=1e-4)
    assert torch.allclose((shaped * own).flatten(1).sum(1) / (norm(shaped) * norm(own)), torch.ones(4), atol=1e-5)
    assert m.calls_dot and "dot" in m.config()
    from morse.dot import blur, detail

    a = exact8.alphas_cumprod[500]
    d = detail((x - (1 - a).sqrt() * dash) / a.sqrt())  # the blurring direction of the Dash's x0 estimate
    cos = lambda u, v: (u * v).flatten(1).sum(1) / (norm(u) * norm(v))  # noqa: E731
    for shape, direction in (("dot-across", own.transpose(-1, -2)), ("dot-fine", own - blur(own, 1.5)),
                             ("dot-coarse", blur(own, 1.5))):
        m = MorseExtrap(get_baseline("ddim"), dot, 6.0, Interleave(3), exact_mix=0.3, exact_shape=shape)
        m._alphas_cumprod, m._exact_steps = exact8.alphas_cumprod, 0
        part = m.between(exact8, x, t, anchor, None, dot) - dash
        assert torch.allclose(norm(part), 0.7 * norm(line - dash), rtol=1e-4), shape
        assert torch.allclose(cos(part, direction), torch.ones(4), atol=1e-5), shape
    m = MorseExtrap(get_baseline("ddim"), dot, 6.0, Interleave(3), exact_mix=0.3, exact_shape="dot-unblurred")
    m._alphas_cumprod, m._exact_steps = exact8.alphas_cumprod, 0
    unblurred = m.between(exact8, x, t, anchor, None, dot) - dash
    assert cos(unblurred, d).abs().max() < 1e-4 and (cos(own, d).abs() > 1e-3).all()
    assert (cos(unblurred, own) > 0.5).all()  # the Dot's error less one direction of many
    assert "dot" not in MorseExtrap(get_baseline("ddim"), dot, 6.0, Interleave(3), exact_mix=0.3,
                                    exact_shape="past").config()


def test_heldout_error_is_given_per_budget_against_reuse_and_the_prior(exact8):
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    pairs = sampling_pairs(exact8, dot, get_baseline("ddim"), Interleave(3), 6.0, [4.0, 8.0], list(range(4)), SHAPE)
    assert {"x_tp", "z_p", "t_p", "budget"} <= set(pairs)
    err = residual_error(dot, pairs)
    assert set(err["per_budget"]) == {"4", "8"}
    assert err["prior_ratio"] == pytest.approx(1.0)  # untrained: the Dot is its prior
    assert err["ratio"] != pytest.approx(1.0)  # ...which is not reuse of z_s


def test_first_group_pairs_are_the_full_runs_pairs_before_the_second_dash_step(exact8):
    """`--pairs-from first-group`: the pairs with no earlier anchor (t_p = t_s marks them), exactly as the full runs
    make them, and no others. At N 6, 4 LSD plans 3 Dash steps with 2 Dots after each, 8 LSD 5 with 3."""
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    args = (exact8, dot, get_baseline("ddim"), Interleave(3), 6.0, [4.0, 8.0], list(range(3)), SHAPE)
    full, first = sampling_pairs(*args), sampling_pairs(*args, first_group_only=True)
    keep = full["t_p"] == full["t_s"]
    assert 0 < int(keep.sum()) < len(keep)
    assert len(first["target"]) == int(keep.sum()) == 3 * (2 + 3)  # runs x the first groups' Dots
    for name, value in first.items():
        torch.testing.assert_close(value, full[name][keep])


def test_relative_loss_weighs_each_pair_by_its_prior_error_with_a_median_floor(exact8):
    """An untrained Dot scores sum(p / (p + median p)) / n (p: the prior's error per pair), which no weighting of
    the plain MSE gives; a Dot whose residual moves away from the prior scores higher."""
    from morse.train import dot_loss

    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    pairs = sampling_pairs(exact8, dot, get_baseline("ddim"), Interleave(3), 6.0, [8.0], list(range(4)), SHAPE)
    with torch.no_grad():
        start = dot.prior_estimate(pairs["z_s"], pairs["t_i"], pairs["t_s"], (pairs["x_tp"], pairs["z_p"],
                                                                                pairs["t_p"]))
        p = (start - pairs["target"]).square().flatten(1).mean(1)
        want = (p / (p + p.median())).mean()
        assert dot_loss(dot, pairs, relative=True) == pytest.approx(want.item(), rel=1e-5)
        assert dot_loss(dot, pairs) == pytest.approx(p.mean().item(), rel=1e-5)
        dot.out.bias.fill_(0.1)
        assert dot_loss(dot, pairs, relative=True) > want


def test_across_loss_counts_the_error_along_the_prior_s_once_and_the_rest_w_times(exact8):
    """An untrained Dot errs wholly along its prior's error, so every weight scores it as the MSE does; a Dot that
    moves off the prior errs partly across it, which weight 4 counts four times: the loss is 4 MSE - 3 (along)."""
    from morse.ablation import error_parts_of
    from morse.train import dot_loss

    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    pairs = sampling_pairs(exact8, dot, get_baseline("ddim"), Interleave(3), 6.0, [8.0], list(range(4)), SHAPE)
    prev = (pairs["x_tp"], pairs["z_p"], pairs["t_p"])
    with torch.no_grad():
        mse = dot_loss(dot, pairs)
        assert dot_loss(dot, pairs, across=4.0) == pytest.approx(mse.item(), rel=1e-5)
        dot.out.bias.fill_(0.1)
        mse = dot_loss(dot, pairs)
        guess = pairs["z_s"] + dot(pairs["x_ti"], pairs["x_ts"], pairs["z_s"], pairs["t_i"], pairs["t_s"], prev=prev)
        start = dot.prior_estimate(pairs["z_s"], pairs["t_i"], pairs["t_s"], prev)
        parts = error_parts_of(guess, start, pairs["target"])
        along = parts["along"] / pairs["target"].numel()
        assert dot_loss(dot, pairs, across=1.0) == pytest.approx(mse.item(), rel=1e-5)
        assert dot_loss(dot, pairs, across=4.0) == pytest.approx(4 * mse.item() - 3 * along, rel=1e-4)
        assert along < 0.9 * mse.item()


def test_blurring_loss_counts_the_error_along_the_blurring_direction_w_times(exact8):
    """--loss blurring: the MSE plus (w - 1) times the error's part along x0 - blur(x0) of the target's x0 estimate,
    the part `morse.ablation --error-shapes` reports as "blurry"; weight 1 is the MSE."""
    from morse.ablation import error_shapes_of
    from morse.train import dot_loss

    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, schedule=SCHEDULE_CONFIG)).eval()
    pairs = sampling_pairs(exact8, dot, get_baseline("ddim"), Interleave(3), 6.0, [8.0], list(range(4)), SHAPE)
    prev = (pairs["x_tp"], pairs["z_p"], pairs["t_p"])
    with torch.no_grad():
        dot.out.bias.fill_(0.1)
        mse = dot_loss(dot, pairs).item()
        guess = pairs["z_s"] + dot(pairs["x_ti"], pairs["x_ts"], pairs["z_s"], pairs["t_i"], pairs["t_s"], prev=prev)
        start = dot.prior_estimate(pairs["z_s"], pairs["t_i"], pairs["t_s"], prev)
        a = exact8.alphas_cumprod[pairs["t_i"].long()].reshape(-1, 1, 1, 1)
        x0 = (pairs["x_ti"] - (1 - a).sqrt() * pairs["target"]) / a.sqrt()
        blurry = error_shapes_of(guess, start, pairs["target"], x0)["blurry"] / pairs["target"].numel()
        assert dot_loss(dot, pairs, blurring=1.0) == pytest.approx(mse, rel=1e-5)
        assert dot_loss(dot, pairs, blurring=16.0) == pytest.approx(mse + 15 * blurry, rel=1e-4)
        assert 0 < blurry < mse
    from morse import train

    with pytest.raises(SystemExit):  # a weight without its loss is refused in one line
        train.main(["--loss", "mse", "--blurring-weight", "4"])


def test_method_options_dot_loads_that_dot_instead_of_the_committed_one(tmp_path):
    """`--method-options dot=FILE`: an ablation row's Dot, with its own card's plans, replaces the committed one."""
    import json

    from baselines.checkpoint import sha256
    from baselines.methods import Context
    from baselines.tasks import get_task
    from evaluate.methods import resolve
    from evaluate.options import parse_method_options
    from evaluate.provenance import BadInput

    task = get_task("fmnist")
    dash = task.dash()
    dot = Dot(dash, DotConfig(width=8, skip_levels=1, prior="extrap", history=True, schedule=SCHEDULE_CONFIG))
    dot.save(tmp_path / "dot.safetensors")
    card = dict(solver="ddim", dots_per_dash=2, dot_ratio_planned=5.0, sha256=sha256(tmp_path / "dot.safetensors"))
    (tmp_path / "dot.json").write_text(json.dumps(card))
    options = parse_method_options(f"dot={tmp_path / 'dot.safetensors'}, other=1")
    method = resolve("morse", Context(task, dash, options=options))
    assert method.morse.dot.config.prior == "extrap" and method.morse.interleave.dots_per_dash == 2
    assert method.morse.dot_ratio == 5.0
    assert resolve("morse", Context(task, dash)).morse.dot.config.prior == "extrap"  # the committed Dot
    # Another Dot with the same card: a new cache key for Morse, the same for the variants that never call it.
    torch.nn.init.ones_(dot.out.weight)
    dot.save(tmp_path / "other.safetensors")
    (tmp_path / "other.json").write_text(json.dumps({**card, "sha256": sha256(tmp_path / "other.safetensors")}))
    other = parse_method_options(f"dot={tmp_path / 'other.safetensors'}")
    # ... and one whose config differs (a gate, morse.gate): the same again for the variants.
    from morse.gate import ungated

    dot.config.gate = ungated()
    dot.save(tmp_path / "gated.safetensors")
    (tmp_path / "gated.json").write_text(json.dumps({**card, "sha256": sha256(tmp_path / "gated.safetensors")}))
    gated = parse_method_options(f"dot={tmp_path / 'gated.safetensors'}")
    for name, same in (("morse", False), ("morse-extrap", True), ("morse-oracle", True)):
        for changed in (other, gated):
            configs = [resolve(name, Context(task, dash, options=o)).config() for o in (options, changed)]
            assert (configs[0] == configs[1]) == same, name
    with pytest.raises(BadInput, match="KEY=VALUE"):
        parse_method_options("dot")


@pytest.mark.parametrize("trajectory", [True, False])
def test_the_first_group_looks_the_same_in_training_and_in_sampling(trajectory):
    """Sampling calls the Dot with no earlier anchor in the first group; a training batch marks it with the anchor
    itself as s' (morse.train). Both must give the same output, or the Dot learns inputs it never sees when sampling
    (the notraj row once did: x_ts' and z_s' hidden in sampling, shown in training)."""
    dot = Dot(tiny_unet(), DotConfig(width=8, prior="extrap", history=True, trajectory=trajectory,
                                     schedule=SCHEDULE_CONFIG)).eval()
    with torch.no_grad():
        for p in dot.parameters():  # a Dot whose every input matters
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        x_ti, x_ts, z_s = torch.randn(3, 2, *SHAPE).unbind(0)
        t_i, t_s = torch.full((2,), 700.0), torch.full((2,), 800.0)
        sampled = dot(x_ti, x_ts, z_s, t_i, t_s)
        trained = dot(x_ti, x_ts, z_s, t_i, t_s, prev=(x_ts, z_s, t_s))
        later = dot(x_ti, x_ts, z_s, t_i, t_s, prev=(x_ts + 1, z_s + 1, torch.full((2,), 999.0)))
    torch.testing.assert_close(sampled, trained)
    assert not torch.allclose(sampled, later)  # the earlier anchor does reach the Dot (through the prior at least)


def test_the_ablation_ranks_each_rows_epsilon_error_against_its_samples_quality(tmp_path, monkeypatch):
    """The section that weighs issue 30's two demands on one Dot (beat the formula; an error at most 0.7 of the
    prior's) reads the rows' cards and sweeps; a first-group specialist, whose error is measured on other pairs, is
    left out."""
    import json

    import pandas as pd

    from morse import ablation

    def row(name, method, fds, error=None, flags=None):
        (tmp_path / name).mkdir()
        pd.DataFrame([dict(method=method, metric="fd_fmnist", budget=b, value=v, N=6.0)
                      for b, v in zip(ablation.BUDGETS, fds, strict=True)]).to_csv(tmp_path / name / "results.csv")
        if error is not None:
            (tmp_path / name / "dot.json").write_text(json.dumps({"heldout_error": {"prior_ratio": error}}))
        return ablation.Row(name, name, flags)

    rows = [row("formula", "morse-extrap", (20, 3, 2.4)), row("a", "morse", (30, 6, 4), 0.6, ""),
            row("b", "morse", (10, 2.5, 2.0), 0.9, ""), row("c", "morse", (15, 4, 3), 0.8, ""),
            row("spec", "morse", (9, 2, 1.5), 0.3, "--pairs-from first-group")]
    monkeypatch.setattr(ablation, "RUNS", tmp_path)
    monkeypatch.setattr(ablation, "ROWS", rows)
    line = ablation.error_and_quality(tmp_path / "formula.json")[2]
    assert line == "| 3 | -1.00 / -1.00 / -1.00 | 1 | 0.900 (b) | 0.600 (a: FD 30.00 / 6.00 / 4.00) |"
