"""Dot training: pairs come from solver trajectories; a killed run resumes to the same Dot."""

import pytest
import torch
from safetensors.torch import load_file

from morse import train

ARGS = ["--trajectories", "4", "--heldout", "2", "--budgets", "3", "--iters", "20", "--checkpoint-every", "10",
        "--batch-size", "8", "--latency-batches", "1"]


def test_pairs_follow_the_plan():
    from baselines.denoisers import Denoiser
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse import Interleave

    task = get_task("fmnist")
    den = Denoiser(task.dash(), task.schedule_config)
    plan = Interleave(3).plan(3, 6.0)  # D...D...
    pairs = train.trajectory_pairs(den, get_baseline("ddim"), [plan], [0, 1], task.image_shape)
    assert len(pairs["target"]) == 2 * 6
    # Each Dot step's anchor is the latest Dash step, strictly earlier (larger t).
    assert (pairs["t_s"] > pairs["t_i"]).all()
    assert set(pairs["t_s"].tolist()) == {999.0, 499.0}
    # The target is the Dash at x_ti: recompute one.
    with torch.inference_mode():
        z = den(pairs["x_ti"][:1], pairs["t_i"][:1])
    torch.testing.assert_close(z, pairs["target"][:1])


def test_killed_training_resumes_to_the_same_dot(tmp_path, monkeypatch):
    train.main(ARGS + ["--out", str(tmp_path / "straight")])

    calls = {"n": 0}
    real_loss = train.dot_loss

    def dying_loss(dot, batch):
        calls["n"] += 1
        if calls["n"] > 15:
            raise KeyboardInterrupt  # as a kill after the checkpoint at iteration 10
        return real_loss(dot, batch)

    monkeypatch.setattr(train, "dot_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train.main(ARGS + ["--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(train, "dot_loss", real_loss)
    train.main(ARGS + ["--out", str(tmp_path / "resumed")])

    a = load_file(tmp_path / "straight" / "dot.safetensors")
    b = load_file(tmp_path / "resumed" / "dot.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(v.abs().sum() > 0 for k, v in a.items() if k.startswith("out."))


def test_changed_arguments_refuse_a_foreign_checkpoint(tmp_path):
    train.main(ARGS + ["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="other training arguments"):
        train.main(ARGS[:-6] + ["--iters", "20", "--checkpoint-every", "10", "--batch-size", "8", "--lr", "0.5",
                                "--latency-batches", "1", "--out", str(tmp_path)])
