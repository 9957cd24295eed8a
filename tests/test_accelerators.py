"""The field's accelerators (baselines.accelerators) on tiny random models: each samples on every kind of task it
supports, refuses the others in one line, and leaves the Dash as it found it."""

import re

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from baselines.accelerators import METHODS
from baselines.accelerators.common import like
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
    ctx.options["tstitch_fraction"] = "0.4"
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
    ctx.options["tstitch_fraction"] = "0.6"  # --method-options: a sweep's knob, part of the cache key
    assert METHODS["tstitch"](ctx).config() == {**method.config(), "fraction": 0.6}
    ctx.options["tstitch_fraction"] = "1"
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        METHODS["tstitch"](ctx)


def test_tstitch_refuses_without_a_small_denoiser_or_on_another_schedule():
    with pytest.raises(ValueError, match="no small denoiser") as err:
        METHODS["tstitch"](tstitch_context())
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="another noise schedule"):
        METHODS["tstitch"](tstitch_context(tiny_unet((4, 8)), dict(SCHEDULE_CONFIG, beta_end=0.012)))


# DeepCache, TaylorSeer, Pyramid Attention Broadcast (cached steps on a patched copy of the Dash), PFDiff and Align Your
# Steps (the Dash every step): on both kinds of UNet, unguided and guided.
CACHES = {"deepcache": "dash-shallow", "deepcache-dpm": "dash-shallow", "taylorseer": "dash-taylorseer",
          "taylorseer-dpm": "dash-taylorseer", "pab": "dash-pab", "pab-dpm": "dash-pab"}


def kind_setup(kind: str):
    """(Dash, denoiser, conditions of seeds): the unconditional UNet2DModel, or the text UNet with guidance."""
    if kind == "unet":
        dash = tiny_unet()
        return dash, Denoiser(dash, SCHEDULE_CONFIG), lambda seeds: None
    dash = tiny_text_unet()
    return dash, guided(dash), text_conditions


def dash_output(dash, cond) -> torch.Tensor:
    x, t = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0)), torch.full((2,), 400)
    with torch.no_grad():
        return Denoiser(dash, SCHEDULE_CONFIG)(x, t, cond([0, 1]))


@pytest.mark.parametrize("kind", ["unet", "text"])
@pytest.mark.parametrize("name", [*CACHES, "pfdiff"])
def test_caches_and_pfdiff_count_each_call_and_leave_the_dash_unchanged(name, kind, one_thread):
    dash, denoiser, cond = kind_setup(kind)
    weights, before = {k: v.clone() for k, v in dash.state_dict().items()}, dash_output(dash, cond)
    method = METHODS[name](Context(TinyTask(), dash))
    seeds = [3, 4, 5, 6]
    ref, trace = method(denoiser, initial_noise(seeds, SHAPE), 6, cond=cond(seeds), seeds=seeds)
    by_one = torch.cat([method(denoiser, initial_noise([s], SHAPE), 6, cond=cond([s]), seeds=[s])[0] for s in seeds])
    torch.testing.assert_close(by_one, ref, rtol=1e-3, atol=1e-4)  # float32 kernels depend on the batch

    rows = 2 if kind == "text" else 1  # guided calls run [uncond, cond] as one batch
    labels = trace.networks_per_step
    cheap = CACHES.get(name)
    assert trace.nfe == {"dash": rows * labels.count("dash"), **({cheap: rows * labels.count(cheap)} if cheap else {})}
    if cheap:
        assert labels[0] == "dash" and labels.count(cheap) > 0
        share = method.plan_prices[cheap]
        assert 0 < share < 1 and labels.count("dash") + share * labels.count(cheap) <= 6 + 1e-9
    else:
        assert len(labels) == 6  # PFDiff: NFE equals the budget
    networks = method.networks(denoiser)
    assert set(networks) == {"dash", *([cheap] if cheap else [])} and networks["dash"].module is dash
    for n in networks.values():  # the latency probe's forwards, at two batch sizes
        for b in (3, 1):
            assert n.forward(torch.randn(b, *SHAPE), torch.full((b,), 500)).shape[0] == b  # unguided
    assert all(torch.equal(weights[k], v) for k, v in dash.state_dict().items())
    assert torch.equal(before, dash_output(dash, cond))


@pytest.mark.parametrize("kind", ["unet", "text"])
def test_deepcache_shallow_call_reuses_the_deep_features_of_the_last_full_call(kind, one_thread):
    """On the input of the last full call, the shallow call recomputes the same shallow layers on the same cached
    deep features, so it gives the full call's output; on another input it does not."""
    dash, denoiser, cond = kind_setup(kind)
    method = METHODS["deepcache"](Context(TinyTask(), dash))
    _, twin, _, cheap, _ = method._patch(denoiser)
    x, t, c = torch.randn(2, *SHAPE), torch.full((2,), 300), cond([0, 1])
    with torch.no_grad():
        full = like(denoiser, twin)(x, t, c)
        torch.testing.assert_close(like(denoiser, cheap)(x, t, c), full, rtol=0, atol=1e-6)
        assert not torch.allclose(like(denoiser, cheap)(x + 0.5, t, c), like(denoiser, twin)(x + 0.5, t, c))


def test_deepcache_branch_ids_follow_the_unet_layout():
    """DeepCache numbers branches as if every block had 3 layers (SD's); a 1-layer-per-block UNet has 2 per level
    (a resnet and the downsampler going down, 2 resnets coming up)."""
    from baselines.accelerators.deepcache import check_branch
    from baselines.tasks import get_task

    embedded = get_task("fmnist", random_weights=True).dash()  # 3 blocks at 32², 16², 8²
    for net, valid in ((embedded, [0, 1, 3, 4, 6, 7]), (tiny_unet(), [0, 1, 3, 4])):
        for branch in range(10):
            if branch in valid:
                check_branch(net, branch)
            else:
                with pytest.raises(ValueError, match=re.escape(f"valid: {valid}")) as err:
                    check_branch(net, branch)
                assert "\n" not in str(err.value)


def test_deepcache_full_step_schedules():
    from baselines.accelerators.common import quadratic_full_steps, uniform_full_steps

    assert uniform_full_steps(10, 3) == {0, 3, 6, 9}
    for steps, interval in ((50, 5), (20, 3), (9, 2)):
        full = quadratic_full_steps(steps, interval, 0.3, 1.4)
        assert 0 in full and len(full) == -(-steps // interval) and max(full) < steps
    gaps = sorted(quadratic_full_steps(50, 5, 0.3, 1.4))
    gaps = [b - a for a, b in zip(gaps, gaps[1:])]
    assert min(gaps[1:4]) < max(gaps)  # denser around the centre (step 15) than at the end


class PointMass(torch.nn.Module):
    """The exact denoiser of data on one image: DDIM's path keeps epsilon constant, so a springboard from the past
    score lands on the path and PFDiff is exact."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.alphas = x0, get_baseline("ddim").make_scheduler(SCHEDULE_CONFIG, 10).alphas_cumprod

    def forward(self, x, t):
        a = self.alphas[t.long()].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 7])
def test_pfdiff_spends_its_budget_and_is_exact_on_a_point_mass(budget):
    x0 = torch.rand(1, *SHAPE) * 2 - 1
    denoiser = Denoiser(PointMass(x0), SCHEDULE_CONFIG)
    method = METHODS["pfdiff"](Context(TinyTask(), tiny_unet()))
    x, trace = method(denoiser, initial_noise([0, 1], SHAPE), budget, seeds=[0, 1])
    assert trace.nfe == {"dash": budget} and len(trace.timesteps) == budget
    torch.testing.assert_close(x, x0.expand(2, *SHAPE), rtol=0, atol=2e-4)


def test_ays_takes_sd_s_published_schedule_and_interpolates_other_budgets(one_thread):
    from diffusers.schedulers import AysSchedules

    class SD:
        name, image_shape = "sd14-coco", SHAPE
        schedule_config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                               beta_schedule="scaled_linear", prediction_type="epsilon")

    dash = tiny_unet()
    denoiser = Denoiser(dash, SD.schedule_config)
    method = METHODS["ays"](Context(SD(), dash))
    _, trace = method(denoiser, initial_noise([0], SHAPE), 10, seeds=[0])
    assert trace.timesteps == AysSchedules["StableDiffusionTimesteps"]
    _, trace = method(denoiser, initial_noise([0], SHAPE), 5, seeds=[0])
    assert trace.timesteps[0] == 999 and trace.timesteps[-1] == 24 and len(trace.timesteps) == 5
    assert all(a > b for a, b in zip(trace.timesteps, trace.timesteps[1:]))
    assert "AysSchedules" in method.config()["schedules"]


def test_ays_reads_the_task_s_stored_schedules_or_refuses_in_one_line():
    import json

    from baselines.accelerators.ays import SCHEDULES

    stored = json.loads((SCHEDULES / "fmnist_ays.json").read_text())
    assert sorted(map(int, stored["schedules"])) == [4, 8, 16] and stored["seeds"][0] >= 100000
    for steps, ts in stored["schedules"].items():
        assert len(ts) == int(steps) and ts[0] == 999 and all(a > b >= 0 for a, b in zip(ts, ts[1:]))
    with pytest.raises(ValueError, match="no published schedule") as err:
        METHODS["ays"](Context(TinyTask(), tiny_unet()))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["deepcache", "taylorseer", "pab"])
def test_caches_refuse_a_dash_they_cannot_attach_to(name):
    torch.manual_seed(0)
    plain = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False)
    dash = plain if name == "pab" else torch.nn.Conv2d(1, 1, 3)  # no self-attention / no UNet blocks
    with pytest.raises(ValueError) as err:
        METHODS[name](Context(TinyTask(), dash))
    assert "\n" not in str(err.value) and "tiny" in str(err.value)


def test_method_options_set_the_knobs_and_the_config():
    ctx = Context(TinyTask(), tiny_unet(), options=dict(deepcache_cache_interval="5", deepcache_uniform="0",
                                                        pfdiff_k="2", taylorseer_disable_cache_before_step="3",
                                                        pab_skip_range="3"))
    assert {k: METHODS["deepcache"](ctx).config()[k] for k in ("cache_interval", "uniform")} == \
        dict(cache_interval=5, uniform=False)
    assert METHODS["pfdiff"](ctx).config()["k"] == 2
    assert METHODS["taylorseer"](ctx).config()["disable_cache_before_step"] == 3
    assert METHODS["pab"](ctx).config()["skip_range"] == 3
    ctx.options["deepcache_cache_branch_id"] = "2"  # a layer the tiny UNet does not have
    with pytest.raises(ValueError, match="not a branch"):
        METHODS["deepcache"](ctx)
    ctx.options["pfdiff_h"] = "x"
    with pytest.raises(ValueError, match="pfdiff_h takes a int"):
        METHODS["pfdiff"](ctx)


@pytest.mark.parametrize("task_name", ["sd14-coco", "lcm-sdxl"])
def test_caches_pfdiff_and_ays_run_on_the_tiny_sd_pipelines(task_name, tmp_path, one_thread):
    """The SD tasks' own loaders on tiny random pipelines (tests/test_text_tasks.py's): SD's cross-attention UNet with
    classifier-free guidance, SDXL's added conditioning with LCM's guidance embedding."""
    from test_text_tasks import PROMPTS, save_pipeline

    from baselines.tasks import get_task

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    task = get_task(task_name, weights=save_pipeline(tmp_path / "p", sdxl=task_name == "lcm-sdxl"), prompts=prompts)
    dash = task.dash()
    denoiser, seeds = task.denoiser(dash), [0, 1]
    before = torch.cat([p.flatten() for p in dash.parameters()]).clone()
    for name in ("deepcache", "pfdiff", "ays", "taylorseer", "pab"):
        method = METHODS[name](Context(task, dash))
        x, trace = method(denoiser, initial_noise(seeds, task.image_shape), 2, cond=task.conditions(seeds),
                          seeds=seeds)
        assert torch.isfinite(x).all() and trace.nfe["dash"] > 0, name
    assert "AysSchedules" in METHODS["ays"](Context(task, dash)).config()["schedules"]
    assert torch.equal(before, torch.cat([p.flatten() for p in dash.parameters()]))
