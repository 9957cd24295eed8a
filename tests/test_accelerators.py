"""The field's accelerators (baselines.accelerators) on tiny random models: each samples on every kind of task it
supports, refuses the others in one line, and leaves the Dash as it found it."""

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from baselines.accelerators import METHODS
from baselines.accelerators.tstitch import SMALL
from baselines.denoisers import Denoiser
from baselines.methods import Context
from baselines.noise import initial_noise
from baselines.registry import get_baseline
from baselines.tasks.fmnist import SCHEDULE_CONFIG

SHAPE = (1, 8, 8)
TOKENS, WIDTH = 4, 8


class TinyTask:
    name, image_shape, schedule_config = "tiny", SHAPE, SCHEDULE_CONFIG


def tiny_unet(widths=(8, 16)) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=widths,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval().requires_grad_(False)


def tiny_text_unet() -> UNet2DConditionModel:
    """fmnist-text's kind of Dash in miniature: cross-attention at the finest level and in the mid block."""
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=WIDTH,
                                attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval().requires_grad_(False)


def text_conditions(seeds) -> torch.Tensor:
    return torch.stack([torch.randn(TOKENS, WIDTH, generator=torch.Generator().manual_seed(s)) for s in seeds])


def guided(dash) -> Denoiser:
    return Denoiser(dash, SCHEDULE_CONFIG, guidance_scale=3.0, uncond=torch.zeros(1, TOKENS, WIDTH))


def snapshot(net) -> tuple:
    """Everything a patch could leave behind: the weights, each module's attributes, and an output."""
    x, t = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0)), torch.full((2,), 400)
    with torch.no_grad():
        out = net(x, t, encoder_hidden_states=text_conditions([0, 1])).sample
    return ({k: v.clone() for k, v in net.state_dict().items()},
            [(type(m), sorted(vars(m))) for m in net.modules()], out)


def run(method, denoiser, seeds, budget, batch_size):
    outs, traces = [], []
    for k in range(0, len(seeds), batch_size):
        chunk = seeds[k:k + batch_size]
        x, trace = method(denoiser, initial_noise(chunk, SHAPE), budget, cond=text_conditions(chunk), seeds=chunk)
        outs.append(x)
        traces.append(trace)
    return torch.cat(outs), traces


@pytest.mark.parametrize("name", ["tome", "tome-dpm", "tgate", "tgate-dpm"])
def test_text_accelerators_leave_the_dash_unchanged_and_do_not_depend_on_the_batch(name, one_thread):
    dash = tiny_text_unet()
    before = snapshot(dash)
    method = METHODS[name](Context(TinyTask(), dash))
    denoiser = guided(dash)
    seeds = [3, 4, 5, 6, 7]
    ref, (trace,) = run(method, denoiser, seeds, 6, batch_size=5)
    by_one, _ = run(method, denoiser, seeds, 6, batch_size=1)
    by_three, _ = run(method, denoiser, seeds, 6, batch_size=3)
    torch.testing.assert_close(by_one, ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(by_three, ref, rtol=1e-3, atol=1e-4)
    method.networks(denoiser)  # the latency probe's setup too
    after = snapshot(dash)
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items()) and before[1] == after[1]
    assert torch.equal(before[2], after[2])

    steps = len(trace.timesteps)
    plain, _ = get_baseline(method.wraps)(denoiser, initial_noise(seeds, SHAPE), steps, cond=text_conditions(seeds),
                                         seeds=seeds)
    assert not torch.allclose(plain, ref, atol=1e-4), "the accelerator changed nothing"
    if name.startswith("tome"):
        assert set(trace.nfe) == {"dash-tome-0.5"} and trace.nfe["dash-tome-0.5"] == 2 * steps  # guided rows
    else:
        gate = method.gate(steps)
        assert trace.networks_per_step == ["dash"] * gate + ["dash-gated"] * (steps - gate)
        assert trace.nfe == {"dash": 2 * gate, "dash-gated": steps - gate}  # guidance dropped after the gate


@pytest.mark.parametrize("name", ["tome", "tgate"])
def test_text_accelerators_refuse_a_dash_without_transformer_blocks(name):
    with pytest.raises(ValueError, match="text tasks") as err:
        METHODS[name](Context(TinyTask(), tiny_unet()))
    assert "\n" not in str(err.value)


def test_tome_merges_at_the_finest_attention_level_and_unguided_calls_stay_deterministic(one_thread):
    dash = tiny_text_unet()
    method = METHODS["tome"](Context(TinyTask(), dash))
    assert method.max_downsample == 1
    plain = Denoiser(dash, SCHEDULE_CONFIG)  # no guidance: odd row counts, so no random partition
    seeds = [0, 1, 2]
    a, _ = method(plain, initial_noise(seeds, SHAPE), 3, cond=text_conditions(seeds), seeds=seeds)
    b, _ = method(plain, initial_noise(seeds[1:], SHAPE), 3, cond=text_conditions(seeds[1:]), seeds=seeds[1:])
    torch.testing.assert_close(a[1:], b, rtol=1e-3, atol=1e-4)


def tstitch_context(small=None, schedule=SCHEDULE_CONFIG) -> Context:
    ctx = Context(TinyTask(), tiny_unet())
    if small is not None:
        ctx.once(SMALL, lambda: (small, schedule, "tiny"))
    return ctx


def test_tstitch_hands_the_first_steps_to_the_small_denoiser(one_thread):
    ctx = tstitch_context(tiny_unet((4, 8)))
    method = METHODS["tstitch"](ctx)
    denoiser = Denoiser(ctx.dash, SCHEDULE_CONFIG)
    seeds = [0, 1, 2]
    x, trace = method(denoiser, initial_noise(seeds, SHAPE), 6, seeds=seeds)
    steps = len(trace.timesteps)
    switch = method.switch(steps)
    assert steps > 6 and switch == round(0.4 * steps)  # small steps are cheap: more steps fit the budget
    assert trace.networks_per_step == ["dash-small"] * switch + ["dash"] * (steps - switch)
    assert trace.nfe == {"dash": steps - switch, "dash-small": switch}
    plain, _ = get_baseline("ddim")(denoiser, initial_noise(seeds, SHAPE), steps, seeds=seeds)
    assert not torch.allclose(plain, x, atol=1e-4)
    assert set(method.networks(denoiser)) == {"dash", "dash-small"}
    assert method.config()["small_sha256"] == "tiny"


def test_tstitch_refuses_without_a_small_denoiser_or_on_another_schedule():
    with pytest.raises(ValueError, match="no small denoiser") as err:
        METHODS["tstitch"](tstitch_context())
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="another noise schedule"):
        METHODS["tstitch"](tstitch_context(tiny_unet((4, 8)), dict(SCHEDULE_CONFIG, beta_end=0.012)))
