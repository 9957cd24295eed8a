"""Dash training: a killed run resumes to the same weights; a warm start records its lineage."""

import json

import pytest
import torch
from safetensors.torch import load_file

from baselines.tasks import train_dash
from baselines.training import loop


def _args(tmp_path, name, *extra):
    return ["--steps", "4", "--batch-size", "4", "--checkpoint-every", "2", "--work-dir", str(tmp_path / name),
            "--out", str(tmp_path / name / "dash.safetensors"), *extra]


def test_killed_training_resumes_to_the_same_dash(tmp_path, monkeypatch):
    train_dash.main(_args(tmp_path, "straight"))

    real_save = loop.save_training_state  # the training loop all trainers share

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt  # as a kill right after the checkpoint at step 2

    monkeypatch.setattr(loop, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_dash.main(_args(tmp_path, "resumed"))
    monkeypatch.setattr(loop, "save_training_state", real_save)
    train_dash.main(_args(tmp_path, "resumed"))

    a, b = load_file(tmp_path / "straight" / "dash.safetensors"), load_file(tmp_path / "resumed" / "dash.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    curve = [json.loads((tmp_path / d / "dash.json").read_text())["loss_per_100_steps"]
             for d in ("straight", "resumed")]
    assert curve[0] == curve[1]
    assert not (tmp_path / "resumed" / "checkpoint.safetensors").exists()


def test_warm_start_records_the_init_weights(tmp_path, capsys):
    train_dash.main(_args(tmp_path, "first"))
    init = tmp_path / "first" / "dash.safetensors"
    train_dash.main(_args(tmp_path, "second", "--init", str(init), "--lr-schedule", "cosine"))
    card = json.loads((tmp_path / "second" / "dash.json").read_text())
    assert card["init"]["card"]["steps"] == 4 and len(card["init"]["sha256"]) == 64
    assert "--init" in card["command"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train_dash.main(_args(tmp_path, "third", "--init", str(tmp_path / "missing.safetensors")))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: --init") and "not found" in err[0]


def test_staged_card_lists_every_stage(tmp_path):
    from baselines.training.cards import render

    first = dict(command="train --steps 2", steps=2, loss_per_100_steps=[0.5])
    second = dict(command="train --steps 3 --init a", steps=3, init=dict(path="a", sha256="0" * 64, card=first),
                  loss_per_100_steps=[0.4])
    (tmp_path / "w.json").write_text(json.dumps(second))
    md = render(tmp_path / "w.json").read_text()
    assert md.index("1. `train --steps 2`") < md.index("2. `train --steps 3 --init a`")
    assert "## Stage 2 (these weights)" in md and "0.40000" in md and "0.50000" in md
