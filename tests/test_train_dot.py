"""Dot training: pairs come from solver trajectories; a killed run resumes to the same Dot."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from morse import train
from morse.pretrained import dot_path

ARGS = ["--trajectories", "4", "--heldout", "2", "--budgets", "3", "--iters", "20", "--checkpoint-every", "10",
        "--batch-size", "8", "--latency-batches", "1"]


def test_pairs_are_what_morse_sampling_feeds_the_dot():
    from baselines.denoisers import Denoiser
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse import Interleave
    from morse.dot import Dot

    task = get_task("fmnist")
    den = Denoiser(task.dash(), task.schedule_config)
    dot = Dot(task.dash(), train.DotConfig(schedule=dict(task.schedule_config))).eval()
    with torch.no_grad():  # a non-zero residual, so that Dot outputs visibly steer the path
        torch.nn.init.normal_(dot.out.weight, std=0.05)
    ddim = get_baseline("ddim")
    pairs = train.sampling_pairs(den, dot, ddim, Interleave(3), 6.0, [3.0], [0, 1], task.image_shape)
    assert len(pairs["target"]) == 2 * 6  # plan D...D... for seeds 0 and 1, batched together
    assert (pairs["t_s"] > pairs["t_i"]).all()
    assert set(pairs["t_s"].tolist()) == {999.0, 499.0}
    with torch.inference_mode():
        # The target is the Dash at x_ti.
        torch.testing.assert_close(den(pairs["x_ti"][:2], pairs["t_i"][:2]), pairs["target"][:2])
        # The next x_ti is the solver's update with the Dot's estimate, not the Dash's (on the sampling path).
        x, x_s, z_s, t, t_s = (pairs[k][:2] for k in ("x_ti", "x_ts", "z_s", "t_i", "t_s"))
        sched = ddim.make_scheduler(den.schedule_config, 8)
        z = z_s + dot(x, x_s, z_s, t, t_s)
        nxt = sched.step(z, int(t[0]), x).prev_sample
        torch.testing.assert_close(nxt, pairs["x_ti"][2:4])
        assert (sched.step(pairs["target"][:2], int(t[0]), x).prev_sample - nxt).abs().max() > 1e-3


def test_killed_training_resumes_to_the_same_dot(tmp_path, monkeypatch):
    train.main(ARGS + ["--out", str(tmp_path / "straight")])

    calls = {"n": 0}
    real_loss = train.dot_loss

    def dying_loss(dot, batch, **kw):
        calls["n"] += 1
        if calls["n"] > 15:
            raise KeyboardInterrupt  # as a kill after the checkpoint at iteration 10
        return real_loss(dot, batch, **kw)

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


def _fails_with_one_line(capsys, needle, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_changed_arguments_refuse_a_foreign_checkpoint(tmp_path, capsys):
    train.main(ARGS + ["--out", str(tmp_path)])
    argv = ARGS[:-6] + ["--iters", "20", "--checkpoint-every", "10", "--batch-size", "8", "--lr", "0.5",
                        "--latency-batches", "1", "--out", str(tmp_path)]
    _fails_with_one_line(capsys, "other training arguments", argv)


def test_lcm_dot_trains_on_the_distilled_model(tmp_path, monkeypatch, capsys):
    """`--solver lcm`: Morse-LCM's Dash is the distilled model, so the pairs' targets are its epsilon, not the
    Dash's; without a distilled model the trainer refuses in one line."""
    import json

    from baselines.checkpoint import save_atomic, sha256
    from baselines.denoisers import Denoiser
    from baselines.tasks import get_task
    from baselines.tasks.fmnist import FashionMNIST
    from baselines.training.cards import write_card

    path = tmp_path / "fmnist_lcm.safetensors"
    monkeypatch.setattr(FashionMNIST, "lcm_path", path)
    _fails_with_one_line(capsys, "python -m baselines.tasks.train_lcm",
                         ARGS + ["--solver", "lcm", "--out", str(tmp_path / "none")])

    weights = {k: v * 0.9 for k, v in load_file(FashionMNIST.dash_path).items()}  # another net, the Dash's layers
    save_atomic(weights, path)
    write_card(path, {"distilled": True, "scheduler": {"original_inference_steps": 50, "timestep_scaling": 10.0}})
    train.main(ARGS + ["--solver", "lcm", "--out", str(tmp_path / "dot")])
    card = json.loads((tmp_path / "dot" / "dot.json").read_text())
    assert card["solver"] == "lcm" and card["lcm_sha256"] == sha256(path)[:16]
    assert card["dot_config"]["residual"] == "x0"  # LCM consumes x0: the residual lives there

    task = get_task("fmnist")
    lcm, dash = task.dash(), task.dash()
    lcm.load_state_dict(weights)
    pairs = load_file(tmp_path / "dot" / "pairs-round0.safetensors")
    x, t = pairs["x_ti"][:4], pairs["t_i"][:4]
    with torch.inference_mode():
        torch.testing.assert_close(Denoiser(lcm, task.schedule_config)(x, t), pairs["target"][:4])
        assert (Denoiser(dash, task.schedule_config)(x, t) - pairs["target"][:4]).abs().max() > 1e-2


def test_ablation_rows_parse_and_a_trained_rows_per_step_table(tmp_path, monkeypatch):
    """Every trainable row's command is one morse.train command whose options differ from the extrap row's in what
    the row names; a trained row (a tiny one here) gets its Dot / prior error per plan and Dot step."""
    import shlex

    from morse import ablation

    parsed = {}
    for row in ablation.ROWS:
        if row.flags is not None:
            argv = shlex.split(row.train_command())[3:]
            assert len([a for a in argv if a.startswith("--")]) == len({a for a in argv if a.startswith("--")}), row
            parsed[row.name] = vars(train.parser().parse_args(argv))
    changed = {k for k, v in parsed["extrap-relative"].items() if v != parsed["extrap"][k]}
    assert changed == {"loss", "lr", "out"}
    for row, want in (("extrap-midfeat", {"dash_features", "out"}), ("extrap-energy", {"loss", "out"})):
        assert {k for k, v in parsed[row].items() if v != parsed["extrap"][k]} == want

    monkeypatch.setattr(ablation, "RUNS", tmp_path)
    monkeypatch.setattr(ablation, "COMMITTED", tmp_path / "committed")  # no committed copy of the rows either
    train.main(ARGS + ["--prior", "extrap", "--rounds", "1", "--out", str(tmp_path / "tiny")])
    lines = ablation.per_step("tiny", sample=10)  # of its 4 runs x 6 Dot steps
    rows = [line.split("|")[1:-1] for line in lines[2:]]
    assert rows and all(float(r[0]) == 3 for r in rows)  # the one plan it trained on
    assert sum(int(r[2]) for r in rows) == 10 and all(float(r[4]) >= 0 for r in rows)
    # --error-parts remakes the card's held-out pairs, so its pooled error is the card's
    parts = ablation.error_parts(["tiny"], runs=2)[2].split("|")[1:-1]
    card = json.loads((tmp_path / "tiny" / "dot.json").read_text())
    ratio = f"{card['heldout_error']['prior_ratio']:.3f}"
    assert parts[1].strip() == "3" and parts[2].strip() == f"{ratio} ({ratio})"
    assert 0 <= float(parts[3]) <= 1 and abs(float(parts[3]) + float(parts[5]) - 1) < 2e-3
    shapes = ablation.error_shapes(["tiny"], runs=2)[2].split("|")[1:-1]  # the same pairs, so the same error
    assert shapes[1].strip() == ratio and all(0 <= float(x.split("(")[0]) <= 1 for x in shapes[2:5])
    # --against-committed: on the same pairs, the committed Dot's error is the row's plus the two Dots' difference
    row, committed, shift, cos = (float(x) for x in ablation.against_committed(["tiny"], runs=2)[2].split("|")[2:6])
    assert row == float(ratio) and shift > 0
    assert committed ** 2 == pytest.approx(row ** 2 + shift ** 2 + 2 * cos * row * shift, abs=3e-3)
    assert "not trained" in ablation.row_line(ablation.ROWS[3], tmp_path / "none.json")


def test_the_epsilon_splits_refuse_an_x0_residual_dot_in_one_line(tmp_path, monkeypatch):
    """--error-parts, --error-shapes and --against-committed split the Dot's error against the Dash's epsilon; a
    Morse-LCM Dot corrects x0, so its row is refused before anything is sampled."""
    from morse import ablation

    monkeypatch.setattr(ablation, "RUNS", tmp_path)
    (tmp_path / "lcm").mkdir()
    (tmp_path / "lcm" / "dot.json").write_text(dot_path("fmnist", "lcm").with_suffix(".json").read_text())
    for measure in (ablation.error_parts, ablation.error_shapes, ablation.against_committed):
        with pytest.raises(SystemExit, match="row lcm's Dot corrects x0"):
            measure(["lcm"], runs=2)


def test_error_parts_split_an_error_into_the_prior_s_own_shrunk_and_the_rest():
    """A guess between the target and the prior errs wholly along the prior's error; one past the target too, and
    counted as past it; noise across the prior's error is not along it."""
    from morse.ablation import error_parts_of

    g = torch.Generator().manual_seed(0)
    target, prior = torch.randn(2, 3, 1, 8, 8, generator=g).unbind(0)
    shrunk = error_parts_of(target + 0.7 * (prior - target), prior, target)
    assert shrunk["along"] == pytest.approx(shrunk["error"]) and shrunk["beyond"] == 0
    assert (shrunk["error"] / shrunk["prior"]) ** 0.5 == pytest.approx(0.7)
    past = error_parts_of(target - 0.5 * (prior - target), prior, target)
    assert past["beyond"] == pytest.approx(past["along"]) == pytest.approx(past["error"])
    r = (prior - target).flatten(1)
    noise = torch.randn(r.shape, generator=g)
    across = noise - (noise * r).sum(1, keepdim=True) / r.square().sum(1, keepdim=True) * r
    mixed = error_parts_of(target + 0.3 * (prior - target) + across.view_as(target), prior, target)
    assert mixed["along"] == pytest.approx(0.09 * mixed["prior"]) and mixed["error"] > 2 * mixed["along"]


def test_error_shapes_tell_a_blurring_error_and_fine_detail_apart():
    """An error along x0 - blur(x0) is all "blurry" and all blurring (it moves the x0 estimate towards its blur, for
    an epsilon error: x0 = (x - sigma eps) / alpha); reversed it sharpens; a smooth error has little fine detail."""
    from morse.ablation import error_shapes_of
    from morse.dot import blur

    g = torch.Generator().manual_seed(0)
    target, prior, x0 = torch.randn(3, 3, 1, 16, 16, generator=g).unbind(0)
    d = x0 - blur(x0, 1.5)
    blurring = error_shapes_of(target + 0.1 * d, prior, target, x0)
    assert blurring["blurry"] == pytest.approx(blurring["error"]) == pytest.approx(blurring["blurring"])
    sharpening = error_shapes_of(target - 0.1 * d, prior, target, x0)
    assert sharpening["blurry"] == pytest.approx(sharpening["error"]) and sharpening["blurring"] == 0
    smooth = error_shapes_of(target + blur(blur(prior, 3.0), 3.0), prior, target, x0)
    assert smooth["fine"] < 0.05 * smooth["error"] and smooth["prior_fine"] > 0.3 * smooth["prior"]


def test_step_gains_are_the_ddim_steps_factor_on_an_epsilon_error():
    """--loss amplified weights each pair by the square of the factor a DDIM step carries its error by: checked
    against diffusers' own step, with the next timestep of a plan whose step count does not divide 1000."""
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse import Interleave

    task, ddim = get_task("fmnist"), get_baseline("ddim")
    sched = ddim.make_scheduler(task.schedule_config, len(Interleave(3).plan(3.0, 6.0)))
    gains = train.step_gains(ddim, task.schedule_config, Interleave(3), 6.0, [3.0], sched.alphas_cumprod)
    assert sorted(gains) == sorted((3.0, float(t)) for t in sched.timesteps.tolist())
    x, eps = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)).unbind(0)
    for t in sched.timesteps.tolist():
        s = ddim.make_scheduler(task.schedule_config, len(sched.timesteps))
        moved = s.step(eps + 1e-2, t, x).prev_sample - s.step(eps, t, x).prev_sample
        torch.testing.assert_close(moved / 1e-2, torch.full_like(x, gains[(3.0, float(t))]), rtol=1e-3, atol=1e-4)
    assert abs(gains[(3.0, float(sched.timesteps[0]))]) > 3 * abs(gains[(3.0, float(sched.timesteps[-1]))])


@pytest.mark.parametrize("body", ["copy", "fresh"])
def test_unshared_bodies_train_their_own_layers_and_leave_the_dash_alone(tmp_path, body):
    """--body copy / fresh (the ablation of weight sharing): the Dot's body is its own, trained, saved and loaded;
    the Dash is untouched; copy starts from the Dash's tensors and fresh does not."""
    from baselines.tasks import get_task
    from morse.dot import Dot

    dash = get_task("fmnist").dash()
    before = {k: v.clone() for k, v in dash.state_dict().items()}
    train.main(ARGS + ["--prior", "extrap", "--rounds", "1", "--loss", "amplified", "--body", body,
                       "--out", str(tmp_path)])
    saved = load_file(tmp_path / "dot.safetensors")
    conv = "body.down_blocks.0.resnets.0.conv1.weight"
    assert conv in saved and not any("lora" in k for k in saved)
    dot = Dot.load(dash, tmp_path / "dot.safetensors")
    torch.testing.assert_close(dot.body.down_blocks[0].resnets[0].conv1.weight, saved[conv])
    for k, v in dash.state_dict().items():
        assert torch.equal(v, before[k]), k
    start = Dot(dash, train.DotConfig(body=body, schedule=dict(get_task("fmnist").schedule_config)))
    conv1 = start.body.down_blocks[0].resnets[0].conv1.weight
    assert torch.equal(conv1, before["down_blocks.0.resnets.0.conv1.weight"]) == (body == "copy")


def test_final_error_rows_measure_the_distance_to_the_exact_dots_samples(tmp_path, monkeypatch):
    """--final-error: the formula's row and each named row's, one distance per budget, zero for none of them (their
    Dots are not exact), and the FD column empty where the row has no sweep."""
    from morse import ablation

    monkeypatch.setattr(ablation, "RUNS", tmp_path)
    monkeypatch.setattr(ablation, "COMMITTED", tmp_path / "committed")  # no committed sweep of these rows either
    train.main(ARGS + ["--prior", "extrap", "--rounds", "1", "--out", str(tmp_path / "extrap")])
    lines = ablation.final_error(["extrap"], samples=2)
    cells = [line.split("|")[1:-1] for line in lines[2:]]
    assert [c[0].strip() for c in cells] == ["formula", "extrap"]
    distances = [float(c) for row in cells for c in row[1::3]]
    assert len(distances) == 2 * len(ablation.BUDGETS) and all(d > 0 for d in distances)
    assert all(0.2 < float(c) < 5 for row in cells for c in row[2::3])  # spreads: a ratio of two samples' spreads
    assert all(c.strip() == "–" for row in cells for c in row[3::3])


def test_final_error_gives_a_rows_plan_dot_its_plans_alone(tmp_path, monkeypatch):
    """A row that samples with a plan Dot (plan_dot<k>=FILE, as plan-4lsd) is measured with it: the samples of the
    plans with k Dash steps move, every other budget's stay as the row's shared Dot alone gives them."""
    from baselines.tasks import get_task
    from morse import Interleave, ablation
    from morse.dot import Dot

    monkeypatch.setattr(ablation, "RUNS", tmp_path)
    monkeypatch.setattr(ablation, "COMMITTED", tmp_path / "committed")
    train.main(ARGS + ["--prior", "extrap", "--rounds", "1", "--out", str(tmp_path / "extrap")])
    dot = Dot.load(get_task("fmnist").dash(), tmp_path / "extrap" / "dot.safetensors")
    with torch.no_grad():
        for p in dot.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    dot.save(tmp_path / "plan.safetensors")
    card = json.loads((tmp_path / "extrap" / "dot.json").read_text())
    dash_steps = Interleave(card["dots_per_dash"]).counts(ablation.BUDGETS[0], card["dot_ratio_planned"])[0]
    rows = [*ablation.ROWS, ablation.Row("with-plan", "test", None, dot_of="extrap",
                                         options=f"plan_dot{dash_steps}={tmp_path / 'plan.safetensors'}")]
    monkeypatch.setattr(ablation, "ROWS", rows)
    lines = ablation.final_error(["extrap", "with-plan"], samples=2)
    plain, planned = ([float(c) for c in line.split("|")[2:-1][0::3]] for line in lines[3:5])
    assert planned[0] != plain[0] and planned[1:] == plain[1:]


def test_dash_features_are_the_anchors_mid_block_output_and_train(tmp_path):
    """--dash-features on (Clockwork-style): each pair records the Dash's mid-block output at its anchor, the sampler
    hands the Dot the same, and the untrained Dot still returns its prior exactly."""
    from baselines.denoisers import Denoiser
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse import Interleave
    from morse.dot import Dot

    task = get_task("fmnist")
    dash = task.dash().eval()
    den = Denoiser(dash, task.schedule_config)
    dot = Dot(dash, train.DotConfig(schedule=dict(task.schedule_config), prior="extrap", history=True,
                                    skip_levels=1, dash_features=True)).eval()
    pairs = train.sampling_pairs(den, dot, get_baseline("ddim"), Interleave(3), 6.0, [3.0], [0, 1], task.image_shape)
    seen = []
    hook = dash.mid_block.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.inference_mode():
        den(pairs["x_ts"][:2], pairs["t_s"][:2])
    hook.remove()
    assert pairs["features"].shape == (len(pairs["target"]), 64, 8, 8)
    torch.testing.assert_close(pairs["features"][:2], seen[0])
    with torch.inference_mode():
        out = dot(pairs["x_ti"], pairs["x_ts"], pairs["z_s"], pairs["t_i"], pairs["t_s"],
                  features=pairs["features"])
    assert torch.equal(out, torch.zeros_like(out))  # prior "extrap" in the first group is reuse: zero residual
    train.main(ARGS + ["--prior", "extrap", "--rounds", "1", "--dash-features", "on", "--out", str(tmp_path)])
    saved = load_file(tmp_path / "dot.safetensors")
    assert saved["feature_proj.weight"].abs().sum() > 0  # it trained
    assert Dot.load(dash, tmp_path / "dot.safetensors").config.dash_features


def test_stochastic_dot_draws_per_seed_noise_and_trains_by_the_energy_score(tmp_path):
    """--loss energy: the Dot takes noise planes; an untrained one still returns its prior; sampling draws each
    sample's noise from its own seed (a sample does not depend on its batch); the score of one repeated draw is
    its distance to the target."""
    from baselines.denoisers import Denoiser
    from baselines.noise import initial_noise
    from baselines.registry import get_baseline
    from baselines.tasks import get_task
    from morse import Interleave
    from morse.dot import Dot
    from morse.sampler import Morse

    task = get_task("fmnist")
    dash = task.dash().eval()
    den = Denoiser(dash, task.schedule_config)
    dot = Dot(dash, train.DotConfig(schedule=dict(task.schedule_config), stochastic=True)).eval()
    x, z = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(dot(x, x, z, 500, 600), torch.zeros_like(x))
        torch.nn.init.normal_(dot.out.weight, std=0.05)
        assert (dot(x, x, z, 500, 600) - dot(x, x, z, 500, 600)).abs().max() > 1e-4  # the noise reaches the output
        morse = Morse(get_baseline("ddim"), dot, 6.0, Interleave(3))
        both = morse(den, initial_noise([3, 4], task.image_shape), 3.0, seeds=[3, 4])[0]
        alone = morse(den, initial_noise([4], task.image_shape), 3.0, seeds=[4])[0]
        torch.testing.assert_close(both[1:], alone, atol=1e-3, rtol=0)  # batched convolutions round differently
        assert (both[0] - alone[0]).abs().max() > 0.1
        again = morse(den, initial_noise([3, 4], task.image_shape), 3.0, seeds=[3, 4])[0]
        assert torch.equal(both, again)

    with torch.no_grad():  # a Dot whose draws do not depend on the noise scores its distance to the target
        fixed = Dot(dash, train.DotConfig(schedule=dict(task.schedule_config), stochastic=True))
        fixed.noise_in.weight.zero_()
        torch.nn.init.normal_(fixed.out.weight, std=0.05)
        batch = {k: v[:3] for k, v in train.sampling_pairs(den, fixed, get_baseline("ddim"), Interleave(3), 6.0, [3.0],
                                                           [0], task.image_shape).items()}
        pred = batch["z_s"] + fixed(batch["x_ti"], batch["x_ts"], batch["z_s"], batch["t_i"], batch["t_s"])
        score = train._energy(fixed, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(score, (pred - batch["target"]).flatten(1).norm(dim=1).mean(), atol=1e-5, rtol=1e-4)

    train.main(ARGS + ["--prior", "extrap", "--rounds", "1", "--loss", "energy", "--out", str(tmp_path)])
    trained = Dot.load(dash, tmp_path / "dot.safetensors")
    assert trained.config.stochastic and trained.noise_in is not None


def test_the_ceiling_table_reads_each_variants_own_method_and_prints_its_command(tmp_path, monkeypatch):
    """The ablation's "where the formula's distance lies" table: each line the FD its own run wrote for its own
    method (a run without a baseline has no speedup.csv), and the command that makes it."""
    import pandas as pd

    from morse import ablation

    monkeypatch.setattr(ablation, "RUNS", tmp_path)
    for _, _, folder, method, *_ in ablation.CEILING:
        (tmp_path / folder).mkdir()
        rows = [dict(method=m, budget=float(b), metric=metric, value=v + b / 100, N=None)
                for m, v in ((method, 1.0), ("ddim", 50.0)) for b in ablation.BUDGETS
                for metric in ("fd_fmnist", "nfe_dash")]
        pd.DataFrame(rows).to_csv(tmp_path / folder / "results.csv", index=False)
    lines = ablation.ceiling()
    assert len(lines) == 2 + len(ablation.CEILING)
    assert all("1.04 / 1.08 / 1.16" in line for line in lines[2:])
    assert "--method-options exact_groups=later" in lines[4] and f"--out {tmp_path / 'exact-later'}" in lines[4]
    shaped = next(line for line in lines if line.startswith("| mix-0-dot-across-eps-copy:"))  # a trained Dot's error
    assert "--budgets 8 " in shaped and "eps-copy/dot.safetensors,exact_mix=0,exact_shape=dot-across" in shaped
    assert any(line.startswith("| mix-0.3-dot-committed:") and "--budgets 4,8,16 " in line for line in lines)
    for folder in dict.fromkeys(f for f, *_ in ablation.NOISE_RUNS):  # the 5,000-seed table: each sampler's FD at 8
        # LSD with its interval
        (tmp_path / folder).mkdir()
        cells = [dict(method=m, budget=8.0, metric=k, value=v)
                 for m in dict.fromkeys(m for _, m, *_ in ablation.NOISE_RUNS)
                 for k, v in (("fd_fmnist", 3.0), ("fd_fmnist_ci_low", 2.5), ("fd_fmnist_ci_high", 3.5))]
        pd.DataFrame(cells).to_csv(tmp_path / folder / "results.csv")
    noise = ablation.noise()
    assert len(noise) == 2 + len(ablation.NOISE_RUNS) and all("3.00 [2.50, 3.50]" in line for line in noise[2:])


def test_stand_in_error_measures_each_stand_in_s_error_to_the_prior_on_its_own_path():
    """--stand-in-error: a pull by a fixed share has that share at every budget; a floor adds to it; a row that is
    not a stand-in is refused with the names that are."""
    from morse import ablation

    lines = ablation.stand_in_error(["mix-0.3", "mix-0.3-floor0.007"], seeds=2)
    cells = [line.split("|")[2].strip() for line in lines[2:]]
    assert cells[0] == "0.700 (0.700 / 0.700 / 0.700)"
    assert all(float(x) > 0.7 for x in re.findall(r"\d\.\d+", cells[1]))  # pooled and each budget
    with pytest.raises(SystemExit, match="mix-0.3-past"):
        ablation.stand_in_error(["oracle"], seeds=2)


def test_the_low_budget_table_reads_each_rows_own_run_and_the_shared_cells_once(tmp_path, monkeypatch):
    """The ablation's low-budget table: Morse's FD at 2 / 3 / 4 LSD from each row's own copied run, then the
    formula's, the exact Dot's and DDIM's from the first one (they share one sweep folder); rows not run are left
    out."""
    import pandas as pd

    from morse import ablation

    monkeypatch.setattr(ablation, "RUNS", tmp_path)
    monkeypatch.setattr(ablation, "COMMITTED", tmp_path / "committed")
    assert ablation.low_budgets()[2:] == []
    for k, row in enumerate(ablation.LOW_ROWS[:2]):
        (tmp_path / f"low-{row}").mkdir()
        cells = [dict(method=m, budget=float(b), metric="fd_fmnist", value=v + k + b / 100, N=None)
                 for m, v in (("morse", 10.0), ("morse-extrap", 20.0), ("morse-oracle", 1.0), ("ddim", 30.0))
                 for b in ablation.LOW_BUDGETS]
        pd.DataFrame(cells).to_csv(tmp_path / f"low-{row}" / "results.csv", index=False)
    lines = ablation.low_budgets()
    assert len(lines) == 2 + 2 + 3
    assert ablation.LOW_ROWS[0] in lines[2] and "10.02 / 10.03 / 10.04" in lines[2]
    assert ablation.LOW_ROWS[1] in lines[3] and "11.02 / 11.03 / 11.04" in lines[3]
    assert "20.02 / 20.03 / 20.04" in lines[4] and "1.02 / 1.03 / 1.04" in lines[5] and "30.02" in lines[6]


def test_the_ablation_report_regenerates_from_its_committed_rows_and_keeps_a_new_runs_tables(tmp_path, monkeypatch):
    """`morse.ablation --table` on a machine without runs/ablation: every row, the ceiling, low-budget and 5,000-seed
    tables are read from the report's own rows/ and low/, and the sections made from a row's Dot and pairs are kept,
    so the committed report comes back unchanged; a run made here is copied into rows/ and its row read from it."""
    import shutil
    from pathlib import Path

    import pandas as pd

    from morse import ablation

    committed = Path(ablation.__file__).parents[1] / "reports" / "fmnist" / "ablation"
    folder = tmp_path / "ablation"
    shutil.copytree(committed, folder)
    monkeypatch.chdir(tmp_path)  # runs/ablation is relative: none here, and the commands print as committed
    monkeypatch.setattr(ablation, "COMMITTED", ablation.COMMITTED)  # --table points it at its folder; restored after
    ablation.main(["--table", str(folder)])
    assert (folder / "index.md").read_text() == (committed / "index.md").read_text()

    row = next(r for r in ablation.ROWS if r.name == "extrap-skip0")
    run = tmp_path / ablation.RUNS / row.name
    run.mkdir(parents=True)
    json_card = (committed / "rows" / "extrap" / "dot.json").read_text()
    (run / "dot.json").write_text(json_card.replace('"skip_levels": 1', '"skip_levels": 0'))
    results = pd.read_csv(committed / "rows" / "extrap" / "results.csv")
    results.loc[results.method == "morse", "value"] += 100.0
    results.to_csv(run / "results.csv", index=False)
    shutil.copyfile(committed / "rows" / "extrap" / "speedup.csv", run / "speedup.csv")
    ablation.main(["--table", str(folder)])
    for name in ("dot.json", "results.csv", "speedup.csv"):  # the run's, copied over the committed ones
        assert (folder / "rows" / row.name / name).read_text() == (run / name).read_text()
    line = next(x for x in (folder / "index.md").read_text().splitlines() if x.startswith(f"| {row.name} |"))
    assert "not trained" not in line and "115.06 / 105.95 / 103.22" in line
