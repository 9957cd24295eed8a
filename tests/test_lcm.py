"""LCM: the consistency parameterisation and the distillation loss, a killed distillation resuming bit-identically,
and `lcm` refusing a model that was never distilled."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from baselines.checkpoint import save_atomic
from baselines.denoisers import Condition, Denoiser, guidance_embedding
from baselines.methods import LCM
from baselines.noise import initial_noise
from baselines.tasks import get_task
from baselines.tasks.fmnist import SCHEDULE_CONFIG, FashionMNIST
from baselines.tasks.fmnist_text import GUIDANCE_EMBEDDING_DIM, FashionMNISTText, build_text_lcm
from baselines.tasks.train_lcm import Distiller
from baselines.training.cards import write_card
from evaluate.run import main

ROOT = Path(__file__).resolve().parent.parent
ALPHAS = DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod.double()


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


class Linear(torch.nn.Module):
    """eps(x, t) = a x: every quantity of the loss is a closed-form multiple of x."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, t):
        return SimpleNamespace(sample=self.a * x)


def scalings(t):
    """LCM's boundary scalings by hand: sigma_data 0.5, timestep scaling 10."""
    s = 10.0 * t
    return 0.25 / (s * s + 0.25), s / math.sqrt(s * s + 0.25)


def f_by_hand(a, t):
    """f(x, t) / x for eps = a x: c_skip + c_out x0 / x."""
    ab = float(ALPHAS[t])
    c_skip, c_out = scalings(t)
    return c_skip + c_out * (1 - a * math.sqrt(1 - ab)) / math.sqrt(ab)


def test_boundary_condition_and_the_sampler_uses_the_trained_f():
    d = Distiller(SCHEDULE_CONFIG)
    net = tiny_unet().eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(d.consistency(net, x, torch.zeros(3, dtype=torch.long)), x)  # f(x, 0) = x exactly
        torch.testing.assert_close(d.consistency(net, x, torch.ones(3, dtype=torch.long)), x, rtol=0, atol=0.05)
        assert (d.consistency(net, x, torch.full((3,), 499)) - x).abs().max() > 0.5  # away from 0: the network's
        # One LCMScheduler step from noise returns f(x_T, T): the function distilled is the function sampled.
        seeds = [0, 1, 2]
        noise = initial_noise(seeds, (1, 8, 8))
        lcm = LCM(net, {"distilled": True}, "tiny")
        out, trace = lcm(Denoiser(tiny_unet(1).eval(), SCHEDULE_CONFIG), noise, 1, seeds=seeds)
        torch.testing.assert_close(out, d.consistency(net, noise, torch.full((3,), 999)), rtol=1e-5, atol=1e-5)
    assert trace.nfe == {"lcm": 1.0} and trace.timesteps == [999.0]


def test_clip_sample_clips_x0_alike_in_the_distilled_f_and_in_the_sampler():
    """Near t = 999 the epsilon-read x0 divides by sqrt(alpha_bar) = 0.006 and leaves [-1, 1]; with clip_sample
    training's f clips it, and the card's `clip_sample` makes LCMScheduler sample that same f."""
    net = tiny_unet().eval()
    seeds = [0, 1, 2]
    noise = initial_noise(seeds, (1, 8, 8))
    t = torch.full((3,), 999)
    with torch.no_grad():
        raw = Distiller(SCHEDULE_CONFIG).consistency(net, noise, t)
        clipped = Distiller(SCHEDULE_CONFIG, clip_sample=True).consistency(net, noise, t)
        assert raw.abs().max() > 2 and clipped.abs().max() <= 1
        card = {"distilled": True, "scheduler": {"clip_sample": True}}
        out, _ = LCM(net, card, "tiny")(Denoiser(tiny_unet(1).eval(), SCHEDULE_CONFIG), noise, 1, seeds=seeds)
    torch.testing.assert_close(out, clipped, rtol=1e-5, atol=1e-5)

    # The teacher's DDIM step reads x0 the same way: clipped before it is re-noised to t_n.
    a, ab, ab_prev = 0.5, float(ALPHAS[999]), float(ALPHAS[979])
    x = noise.double()
    x0 = (x * (1 - a * math.sqrt(1 - ab)) / math.sqrt(ab)).clamp(-1, 1)
    want = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * a * x
    got = Distiller(SCHEDULE_CONFIG, clip_sample=True).teacher_step(Linear(a), noise, t)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["l2", "huber"])
def test_loss_matches_a_hand_computation(loss):
    """Student, teacher and target with eps = a x: the teacher's DDIM step from t_{n+k} to t_n, the target's f at
    t_n (t = 0 below the grid's first entry) and the student's f at t_{n+k}, written out by hand."""
    d = Distiller(SCHEDULE_CONFIG, skip=20, loss=loss)
    a_student, a_teacher, a_target = 0.3, 0.5, 0.2
    index = torch.tensor([0, 1, 24, 49])  # t_{n+k} = 19, 39, 499, 999
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, 1, 4, 4, generator=g)
    got = d.loss(Linear(a_student), Linear(a_teacher), Linear(a_target), x0, noise, index)

    diffs = []
    for i, n in enumerate(index.tolist()):
        t = 20 * (n + 1) - 1
        t_prev = t - 20
        ab, ab_prev = float(ALPHAS[t]), float(ALPHAS[max(t_prev, 0)])
        x = math.sqrt(ab) * x0[i].double() + math.sqrt(1 - ab) * noise[i].double()
        teacher_x0 = x * (1 - a_teacher * math.sqrt(1 - ab)) / math.sqrt(ab)
        x_prev = math.sqrt(ab_prev) * teacher_x0 + math.sqrt(1 - ab_prev) * a_teacher * x  # DDIM, eta 0
        diffs.append(f_by_hand(a_student, t) * x - f_by_hand(a_target, max(t_prev, 0)) * x_prev)
    diff = torch.stack(diffs)
    want = diff.square().mean() if loss == "l2" else ((diff.square() + 1e-6).sqrt() - 1e-3).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-4)


def test_distillation_steps_reduce_the_loss_on_a_fixed_batch():
    d = Distiller(SCHEDULE_CONFIG, loss="l2")
    teacher, target = tiny_unet().eval().requires_grad_(False), tiny_unet().eval().requires_grad_(False)
    student = tiny_unet().train()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, torch.randn(16, 1, 8, 8, generator=g)
    index = torch.randint(d.grid_size, (16,), generator=g)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    losses = []
    for _ in range(5):
        loss = d.loss(student, teacher, target, x0, noise, index)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_distiller_refuses_a_skip_off_the_lcm_grid():
    with pytest.raises(ValueError, match="must divide"):
        Distiller(SCHEDULE_CONFIG, skip=30)


def _distil(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "baselines.tasks.train_lcm", "--steps", "6", "--batch-size", "2",
                             "--checkpoint-every", "2", "--warmup", "2", "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_distillation_resumes_bit_identically(tmp_path):
    straight, killed = _distil(tmp_path / "straight"), _distil(tmp_path / "killed")
    ckpt = tmp_path / "killed" / "checkpoint.safetensors"
    deadline = time.monotonic() + 600  # a loaded machine can take minutes to start a run
    while not ckpt.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)  # mid-run: the first checkpoint is written, 4 more steps to go
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and ckpt.exists(), killed.stdout.read()
    assert not (tmp_path / "killed" / "fmnist_lcm.safetensors").exists()
    resumed = _distil(tmp_path / "killed")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resuming from" in log, log
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    a, b = (load_file(tmp_path / d / "fmnist_lcm.safetensors") for d in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cards = [json.loads((tmp_path / d / "fmnist_lcm.json").read_text()) for d in ("straight", "killed")]
    assert cards[0]["loss_per_100_steps"] == cards[1]["loss_per_100_steps"]
    assert cards[0]["distilled"] is True and len(cards[0]["teacher"]["sha256"]) == 64
    assert not ckpt.exists()


def _fails_with_one_line(argv, capsys, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_lcm_refuses_a_model_never_distilled(tmp_path, capsys, monkeypatch):
    path = tmp_path / "fmnist_lcm.safetensors"
    monkeypatch.setattr(FashionMNIST, "lcm_path", path)
    argv = ["--methods", "lcm", "--budgets", "2", "--num-samples", "8", "--force", "--out", str(tmp_path / "r")]
    _fails_with_one_line(argv, capsys, "python -m baselines.tasks.train_lcm")  # none at all

    save_atomic(load_file(FashionMNIST.dash_path), path)  # the Dash itself, filed as if it were an LCM
    write_card(path, {"command": "cp fmnist_dash.safetensors fmnist_lcm.safetensors"})
    _fails_with_one_line(argv, capsys, "never consistency-distilled")
    assert not (tmp_path / "r").exists()


def test_text_lcm_starts_as_the_teachers_conditional_branch_at_any_guidance_scale():
    dash = get_task("fmnist-text", random_weights=True).dash()
    lcm = build_text_lcm(dash)
    assert lcm.config.time_cond_proj_dim == GUIDANCE_EMBEDDING_DIM
    g = torch.Generator().manual_seed(0)
    x, t, text = torch.randn(2, 1, 32, 32, generator=g), torch.tensor([999, 300]), torch.randn(2, 16, 64, generator=g)
    with torch.no_grad():
        want = dash(x, t, encoder_hidden_states=text).sample
        for w in (1.0, 5.0):
            got = lcm(x, t, encoder_hidden_states=text, timestep_cond=guidance_embedding(w, 2, GUIDANCE_EMBEDDING_DIM))
            torch.testing.assert_close(got.sample, want)
        lcm.time_embedding.cond_proj.weight.normal_()  # once trained, w is an input
        outs = [lcm(x, t, encoder_hidden_states=text, timestep_cond=guidance_embedding(w, 2, GUIDANCE_EMBEDDING_DIM))
                .sample for w in (1.0, 5.0)]
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_guided_teacher_matches_the_denoiser_at_each_rows_own_scale():
    """The distillation's teacher guides each row at its own w; the harness's Denoiser guides a batch at one w.
    Row by row they must agree (w = 1: the conditional branch alone)."""
    dash = get_task("fmnist-text", random_weights=True).dash()
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(3, 1, 32, 32, generator=g), torch.randn(3, 16, 64, generator=g)
    uncond, t, w = torch.randn(1, 16, 64, generator=g), torch.tensor([999, 500, 19]), torch.tensor([1.0, 2.5, 4.0])
    with torch.no_grad():
        got = Distiller.teacher_eps(dash, x, t, text=text, uncond=uncond, w=w)
        for i in range(3):
            den = Denoiser(dash, SCHEDULE_CONFIG, guidance_scale=float(w[i]), uncond=Condition(uncond))
            want = den(x[i:i + 1], t[i:i + 1], Condition(text[i:i + 1]))
            torch.testing.assert_close(got[i:i + 1], want, rtol=1e-4, atol=1e-5)


def test_text_distillation_writes_a_guidance_distilled_model_that_lcm_samples(tmp_path, monkeypatch):
    """`--task fmnist-text`: the distilled model embeds w (one row per step at any guidance scale), is stored in
    float16 with a card naming its guidance range, and `lcm` samples the task with it through the harness."""
    from baselines.tasks.train_lcm import main as distil

    distil(["--task", "fmnist-text", "--steps", "2", "--batch-size", "4", "--checkpoint-every", "1",
            "--out", str(tmp_path / "work")])
    path = tmp_path / "work" / "fmnist_text_lcm.safetensors"
    weights = load_file(path)
    assert {v.dtype for v in weights.values()} == {torch.float16} and "time_embedding.cond_proj.weight" in weights
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["distilled"] is True and card["guidance"]["w_min"] == 1.0 and card["guidance"]["w_max"] == 6.0
    assert card["command"].startswith("python -m baselines.tasks.train_lcm --task fmnist-text")
    assert not (tmp_path / "work" / "checkpoint.safetensors").exists()

    monkeypatch.setattr(FashionMNISTText, "lcm_path", path)
    out = tmp_path / "report"
    assert main(["--task", "fmnist-text", "--methods", "lcm", "--budgets", "2", "--num-samples", "8", "--force",
                 "--guidance", "1.5,5", "--bootstrap", "0", "--batch-size", "8", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    nfe = df[df.metric == "nfe_lcm"]
    assert len(nfe) == 2 and (nfe.value == 2).all()  # guidance embedded: one pass per step, no unconditional rows
    assert len(df[df.metric == "clip_score"]) == 2


def test_an_unfinished_distillation_ends_at_its_checkpoint_as_a_shorter_run(tmp_path, monkeypatch, capsys):
    """The learning rate does not depend on --steps, so a 6-step run killed after its step-2 checkpoint and rerun
    with --steps 2 gives the 2-step run's model; asking for fewer steps than the checkpoint holds is refused."""
    from baselines.tasks.train_lcm import main as distil
    from baselines.training import loop

    def argv(name, steps):
        return ["--steps", str(steps), "--batch-size", "2", "--checkpoint-every", "2", "--warmup", "2",
                "--eval-ema-decay", "0.9", "--clip-sample", "--out", str(tmp_path / name)]

    distil(argv("straight", 2))
    real_save = loop.save_training_state

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt  # as a kill right after the checkpoint at step 2

    monkeypatch.setattr(loop, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distil(argv("cut", 6))
    monkeypatch.setattr(loop, "save_training_state", real_save)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        distil(argv("cut", 1))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "holds step 2, past the 1 steps" in err[0]
    distil(argv("cut", 2))
    a, b = (load_file(tmp_path / d / "fmnist_lcm.safetensors") for d in ("straight", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "cut" / "fmnist_lcm.json").read_text())
    assert card["steps"] == 2 and "--eval-ema-decay 0.9" in card["command"] and "decay 0.9" in card["weights"]
    assert "--clip-sample" in card["command"] and card["scheduler"]["clip_sample"] is True
