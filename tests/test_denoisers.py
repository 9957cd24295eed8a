"""The Denoiser against known answers: v- and x0-prediction converted to epsilon on a network whose output is
chosen, classifier-free guidance u + w (c - u) in one call of 2B rows, and the structured conditions of SDXL
(added conditioning) and LCM (guidance embedding) handed to the network intact."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, LatentConsistencyModelPipeline

from baselines.denoisers import Condition, Denoiser
from baselines.trace import Trace, count_nfe

SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
T = 300


class Fixed(torch.nn.Module):
    """Returns what the test chose, whatever it is given; records its calls."""

    def __init__(self, out=None, fn=None, **config):
        super().__init__()
        self.out, self.fn, self.calls = out, fn, []
        self.config = SimpleNamespace(cross_attention_dim=config.get("cross_attention_dim"),
                                      time_cond_proj_dim=config.get("time_cond_proj_dim"))

    def forward(self, x, t, **kwargs):
        self.calls.append((x.shape[0], kwargs))
        return self.fn(x, t, **kwargs) if self.fn is not None else self.out


def noisy():
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps at t = T, with its x0 and eps."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    ab = DDPMScheduler(**SCHEDULE).alphas_cumprod[T].double()
    x0, eps = x0.double(), eps.double()
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x0, eps, ab


def test_v_prediction_gives_the_noise():
    x, x0, eps, ab = noisy()
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0  # the v a perfect network predicts
    den = Denoiser(Fixed(v), {**SCHEDULE, "prediction_type": "v_prediction"}).double()
    torch.testing.assert_close(den(x, torch.full((3,), T)), eps, rtol=0, atol=1e-10)


def test_x0_prediction_gives_the_noise():
    x, x0, eps, _ = noisy()
    den = Denoiser(Fixed(x0), {**SCHEDULE, "prediction_type": "sample"}).double()
    torch.testing.assert_close(den(x, T), eps, rtol=0, atol=1e-10)


def _by_text(x, t, encoder_hidden_states):
    """An output that depends on the text: x plus the sum of each row's embedding."""
    return x + encoder_hidden_states.sum((1, 2)).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("as_condition", [False, True])
def test_classifier_free_guidance_is_exact_and_one_call_of_2b_rows(as_condition):
    torch.manual_seed(0)
    cond, uncond = torch.randn(3, 5, 4), torch.randn(1, 5, 4)
    if as_condition:
        cond, uncond = Condition(cond), Condition(uncond)
    net = Fixed(fn=_by_text, cross_attention_dim=4)
    w = 7.5
    den = Denoiser(net, SCHEDULE, guidance_scale=w, uncond=uncond)
    x = torch.randn(3, 4, 2, 2)
    trace = Trace()
    with count_nfe(trace, 3, dash=net):
        out = den(x, T, cond)
    c = x + torch.as_tensor(getattr(cond, "encoder_hidden_states", cond)).sum((1, 2)).reshape(-1, 1, 1, 1)
    u = x + torch.as_tensor(getattr(uncond, "encoder_hidden_states", uncond)).sum()
    torch.testing.assert_close(out, u + w * (c - u))
    assert [rows for rows, _ in net.calls] == [6] and trace.nfe["dash"] == 2.0


def test_guidance_scale_one_is_one_call_of_b_rows_and_below_one_is_refused():
    net = Fixed(fn=_by_text, cross_attention_dim=4)
    cond = torch.randn(3, 5, 4)
    Denoiser(net, SCHEDULE, guidance_scale=1.0, uncond=torch.zeros(1, 5, 4))(torch.randn(3, 4, 2, 2), T, cond)
    assert [rows for rows, _ in net.calls] == [3]
    with pytest.raises(ValueError, match="at least 1"):
        Denoiser(net, SCHEDULE, guidance_scale=0.5, uncond=torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match="uncond"):
        Denoiser(net, SCHEDULE, guidance_scale=3.0)


def test_sdxl_added_conditioning_and_lcm_guidance_embedding_reach_the_network():
    net = Fixed(out=torch.zeros(2, 4, 2, 2), cross_attention_dim=4, time_cond_proj_dim=8)
    cond = Condition(torch.randn(2, 5, 4), text_embeds=torch.randn(2, 6), time_ids=torch.tensor([[16.0] * 6] * 2))
    w = 8.0
    den = Denoiser(net, SCHEDULE, guidance_scale=w, uncond=Condition(torch.zeros(1, 5, 4)))
    den(torch.randn(2, 4, 2, 2), T, cond)
    (rows, kw), = net.calls  # embedded guidance: one pass of B rows, no unconditional branch
    assert rows == 2 and kw["encoder_hidden_states"] is not None
    assert torch.equal(kw["added_cond_kwargs"]["text_embeds"], cond.text_embeds)
    assert torch.equal(kw["added_cond_kwargs"]["time_ids"], cond.time_ids)
    want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.full((2,), w - 1), 8)
    torch.testing.assert_close(kw["timestep_cond"], want)
    assert den.condition(den.condition(cond)).timestep_cond is not None  # idempotent: Morse hands it back


def test_condition_rows_expand_concatenate_and_index():
    c = Condition(torch.randn(1, 5, 4), text_embeds=torch.randn(1, 6), time_ids=torch.ones(1, 6))
    both = Condition.cat([c.expand(3), c.expand(3)])
    assert len(both) == 6 and both.text_embeds.shape == (6, 6) and both.timestep_cond is None
    assert torch.equal(both[4:5].encoder_hidden_states, c.encoder_hidden_states)
    assert both.to(dtype=torch.float16).time_ids.dtype == torch.float16
