"""The gate on a Dot's learned part (issue 30, morse.gate): its cells, its closed-form fit, and the command that fits
one to a trained Dot and writes it with its card."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from baselines.registry import get_baseline
from baselines.tasks.fmnist import SCHEDULE_CONFIG
from morse import Dot, DotConfig, gate, train
from morse.prior import log_snr

SHAPE = (1, 8, 8)
AC = DDPMScheduler(**SCHEDULE_CONFIG).alphas_cumprod


def tiny_dot(prior="extrap"):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    dot = Dot(unet, DotConfig(width=8, prior=prior, schedule=SCHEDULE_CONFIG)).eval()
    with torch.no_grad():  # a learned part that is not zero
        torch.nn.init.normal_(dot.out.weight, std=0.05)
    return dot


def pairs_of(dot, n=96, factor=0.5):
    """Pairs whose target is the prior plus `factor` times the Dot's learned part, over a few steps and slopes."""
    g = torch.Generator().manual_seed(0)
    x_ti, x_ts, z_s, x_tp, z_p = torch.randn(5, n, *SHAPE, generator=g).unbind(0)
    t_i = torch.tensor([850.0, 400.0, 40.0]).repeat(n // 3)
    t_s = t_i + 50
    t_p = torch.where(torch.arange(n) % 2 == 0, t_s + 100, t_s)  # every other pair in a first group
    batch = dict(x_ti=x_ti, x_ts=x_ts, z_s=z_s, t_i=t_i, t_s=t_s, x_tp=x_tp, z_p=z_p, t_p=t_p)
    with torch.no_grad():
        prev = (x_tp, z_p, t_p)
        start = dot.prior_estimate(z_s, t_i, t_s, prev)
        learned = z_s + dot(x_ti, x_ts, z_s, t_i, t_s, prev=prev) - start
    return {**batch, "target": start + factor * learned}


def test_gate_cells_follow_noise_level_and_extrapolation_slope():
    dot = tiny_dot()
    dot.config.gate = gate.ungated()
    lam = lambda t: log_snr(AC, t).item()  # noqa: E731
    t_i = torch.tensor([950.0, 450.0, 450.0, 50.0])
    t_s = torch.tensor([999.0, 500.0, 500.0, 100.0])
    t_p = torch.tensor([999.0, 520.0, 700.0, 400.0])
    row, col = dot.gate_cell(t_i, t_s, (None, None, t_p), 4)
    assert row.tolist() == [9, 4, 4, 0]
    slopes = [(lam(i) - lam(s)) / (lam(s) - lam(p)) for i, s, p in zip(t_i[1:], t_s[1:], t_p[1:], strict=True)]
    assert slopes[0] > 0.75 and slopes[1] < 0.35 and 0.35 < slopes[2] < 0.75  # the columns this test means
    assert col.tolist() == [0, 3, 1, 2]  # column 0: no earlier anchor (t_s' = t_s)
    # Sampling passes scalar times and no earlier anchor in the first group.
    assert [v.tolist() for v in dot.gate_cell(950, 999, None, 2)] == [[9, 9], [0, 0]]


def test_a_zero_gate_returns_the_prior_and_a_gate_of_ones_the_dot():
    dot = tiny_dot()
    b = pairs_of(dot, n=6)
    prev = (b["x_tp"], b["z_p"], b["t_p"])
    args = (b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"])
    with torch.no_grad():
        plain = dot(*args, prev=prev)
        dot.config.gate = gate.ungated()
        assert torch.equal(dot(*args, prev=prev), plain)
        dot.config.gate["scale"] = [[0.0] * 4 for _ in range(10)]
        assert torch.allclose(b["z_s"] + dot(*args, prev=prev), dot.prior_estimate(b["z_s"], b["t_i"], b["t_s"], prev),
                              atol=1e-6)
    assert not torch.allclose(plain, dot(*args, prev=prev))


@pytest.mark.parametrize(("factor", "want"), [(0.5, 0.5), (0.0, 0.0), (2.0, 1.0)])
def test_the_fit_recovers_a_planted_factor(factor, want):
    dot = tiny_dot()
    fitted, counts = gate.fit_gate(dot, pairs_of(dot, factor=factor), min_pairs=8)
    scale = torch.tensor(fitted["scale"])
    counts = torch.tensor(counts)
    assert int(counts.sum()) == 96 and int((counts > 0).sum()) == 6  # three rows, first group or not
    used = counts.sum(0) > 0  # the columns these pairs fall in; sparse cells take their column's fit
    assert torch.allclose(scale[:, used], torch.full_like(scale[:, used], want), atol=2e-3)
    assert (scale[:, ~used] == 1).all() and (~used).any()  # a column with no pairs leaves the Dot as trained


def test_the_fit_never_raises_a_cells_error_and_sparse_cells_take_their_column():
    dot = tiny_dot("reuse")
    b = pairs_of(dot, factor=0.3)
    b["target"] = b["target"] + 0.05 * torch.randn(b["target"].shape, generator=torch.Generator().manual_seed(1))
    fitted, counts = gate.fit_gate(dot, b, min_pairs=17)  # each populated cell holds 16 pairs: all sparse
    scale = torch.tensor(fitted["scale"])
    assert (scale == scale[0]).all()  # every row takes its column's pooled factor
    fitted, counts = gate.fit_gate(dot, b, min_pairs=8)
    with torch.no_grad():
        prev = (b["x_tp"], b["z_p"], b["t_p"])
        cells = gate._cells(dot, b, prev)
        errors = {}
        for name, table in (("ungated", gate.ungated()), ("gated", fitted)):
            dot.config.gate = table
            err = (b["z_s"] + dot(b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"], prev=prev) - b["target"])
            errors[name] = torch.zeros(40).index_add_(0, cells, err.square().flatten(1).sum(1))
    assert (errors["gated"] <= errors["ungated"] + 1e-6).all() and (errors["gated"] < errors["ungated"]).any()


def test_the_command_gates_a_trained_dot_and_resumes_from_its_pairs(tmp_path, monkeypatch):
    train.main(["--trajectories", "4", "--heldout", "2", "--budgets", "3", "--iters", "10", "--rounds", "1",
                "--batch-size", "8", "--latency-batches", "1", "--prior", "extrap", "--out", str(tmp_path / "dot")])
    argv = ["--dot", str(tmp_path / "dot" / "dot.safetensors"), "--out", str(tmp_path / "gated"),
            "--trajectories", "4", "--min-pairs", "4"]
    gate.main(argv)
    card = json.loads((tmp_path / "gated" / "dot.json").read_text())
    trained = json.loads((tmp_path / "dot" / "dot.json").read_text())
    assert card["gate"]["heldout_error_before"] == trained["heldout_error"]
    assert card["gate"]["fit_pairs"] == 4 * 6 and card["command"] == trained["command"]
    assert card["gate"]["command"].startswith("python -m morse.gate --dot ")
    md = (tmp_path / "gated" / "dot.md").read_text()
    assert "## Gate (morse.gate)" in md and card["gate"]["command"] in md and md.count("| 900-999 |") == 1
    from baselines.tasks import get_task

    loaded = Dot.load(get_task("fmnist").dash(), tmp_path / "gated" / "dot.safetensors")
    assert loaded.config.gate == card["dot_config"]["gate"] and len(loaded.config.gate["scale"]) == 10

    made = []
    real = gate.sampling_pairs
    monkeypatch.setattr(gate, "sampling_pairs", lambda *a, **k: made.append(k["desc"]) or real(*a, **k))
    gate.main(argv)
    assert made == ["held-out pairs"]  # the fit's pairs came from the cache

    # --fit-path gated --learned nowhere: the fit's pairs come from the path the formula samples (new pairs, not the
    # cached ones of the trained Dot's path), and the factors act on it
    gate.main(argv + ["--learned", "nowhere", "--prior-factors", "ls", "--fit-path", "gated"])
    assert made == ["held-out pairs", "gate pairs", "held-out pairs"]
    own = load_file(tmp_path / "gated" / "gate-pairs.safetensors")
    extrap = loaded.prior_estimate(own["z_s"], own["t_i"], own["t_s"], (own["x_tp"], own["z_p"], own["t_p"]))
    sched = get_baseline("ddim").make_scheduler(SCHEDULE_CONFIG, 8)
    nxt = [sched.step(extrap[k:k + 1], int(own["t_i"][k]), own["x_ti"][k:k + 1]).prev_sample for k in range(2)]
    torch.testing.assert_close(torch.cat(nxt), own["x_ti"][4:6], atol=1e-5, rtol=1e-4)  # the formula's steps (4 seeds)
    card = json.loads((tmp_path / "gated" / "dot.json").read_text())
    assert "--fit-path gated" in card["gate"]["command"] and "prior_scale" in card["dot_config"]["gate"]


def test_missing_dot_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gate.main(["--dot", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "g")])
    assert "train one with python -m morse.train" in capsys.readouterr().err


def test_the_ablations_gate_rows_are_morse_gate_commands_on_a_trained_row():
    import shlex

    from morse import ablation

    rows = {r.name: r for r in ablation.ROWS if r.gates}
    assert {"extrap-gate", "extrap-first"} <= set(rows)
    for row in rows.values():
        args = gate.parser().parse_args(shlex.split(row.train_command())[3:])
        assert args.dot == ablation.RUNS / row.gates / "dot.safetensors" and args.out == ablation.RUNS / row.name
        assert row.dot == args.out / "dot.safetensors" and ablation.ROWS[[r.name for r in ablation.ROWS].index(
            row.gates)].flags is not None
    assert gate.parser().parse_args(shlex.split(rows["extrap-first"].train_command())[3:]).learned == "first-group"


def test_a_card_from_before_the_training_number_fields_gets_them_from_its_command():
    card = dict(command="python -m morse.train --task fmnist --trajectories 128 --iters 3000 --batch-size 32", x=1)
    assert gate.training_numbers(card) == {**card, "iters": 3000, "batch_size": 32, "trajectories": 128}
    full = {**card, "iters": 1, "batch_size": 2, "trajectories": 3}
    assert gate.training_numbers(full) == full


def test_a_blurred_learned_part_keeps_the_prior_and_loses_fine_detail():
    """dot_blur (DotConfig.learned_blur): the ablation of the learned part's fine detail blurs that part alone."""
    dot = tiny_dot()
    batch = pairs_of(dot)
    args = (batch["x_ti"], batch["x_ts"], batch["z_s"], batch["t_i"], batch["t_s"])
    prev = (batch["x_tp"], batch["z_p"], batch["t_p"])
    with torch.no_grad():
        start = dot.prior_estimate(batch["z_s"], batch["t_i"], batch["t_s"], prev) - batch["z_s"]
        sharp = dot(*args, prev=prev) - start
        dot.config.learned_blur = 1.0
        blurred = dot(*args, prev=prev) - start
    fine = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert fine(blurred) < 0.7 * fine(sharp)
    assert blurred.mean().item() == pytest.approx(sharp.mean().item(), abs=0.05 * sharp.abs().mean().item())
    with torch.no_grad():
        torch.nn.init.zeros_(dot.out.weight)
        torch.nn.init.zeros_(dot.out.bias)
        dot.linear_coeffs[-1].weight.zero_()
        dot.linear_coeffs[-1].bias.zero_()
        assert torch.equal(dot(*args, prev=prev), start)  # no learned part: the prior, blurred or not


def test_prior_factors_recover_a_planted_line_and_vp_keeps_the_targets_spread():
    """--prior-factors: with the target z_s + 0.6 (prior - z_s) plus noise unrelated to the line, least squares
    finds 0.6 and the spread-matching factor more (it counts the noise as spread the line must carry); a number
    is that factor everywhere; the Dot then steps k times the line from z_s."""
    dot = tiny_dot()
    b = pairs_of(dot, factor=0.0)
    prev = (b["x_tp"], b["z_p"], b["t_p"])
    line = b["target"] - b["z_s"]  # the prior's step from z_s (the learned part planted at factor 0)
    noise = 0.5 * line.std() * torch.randn(line.shape, generator=torch.Generator().manual_seed(2))
    b["target"] = b["z_s"] + 0.6 * line + noise
    first = torch.tensor(gate.fit_gate(dot, b, min_pairs=8)[1]).sum(0) > 0
    tables = {how: torch.tensor(gate.fit_gate(dot, b, min_pairs=8, prior_factors=how)[0]["prior_scale"])
              for how in ("ls", "vp", "1.5")}
    extrapolated = first.clone()
    extrapolated[0] = False  # the first group has no line: its factor stays 1
    assert torch.allclose(tables["ls"][:, extrapolated], torch.tensor(0.6), atol=0.1)
    assert (tables["vp"][:, extrapolated] > tables["ls"][:, extrapolated] + 0.03).all()
    assert (tables["1.5"] == 1.5).all() and (tables["ls"][:, 0] == 1).all()
    with torch.no_grad():
        dot.config.gate = {**gate.ungated(), "scale": [[0.0] * 4 for _ in range(10)],
                           "prior_scale": [[0.6] * 4 for _ in range(10)]}
        out = b["z_s"] + dot(b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"], prev=prev)
    torch.testing.assert_close(out, b["z_s"] + 0.6 * line, atol=1e-5, rtol=1e-5)


def test_gap_edges_split_the_columns_by_the_lines_length_with_a_rule_per_bin():
    """--gap-edges: a pair's column moves past the first group's and the slope columns by one block per bin of
    lambda_s - lambda_s'; --prior-factors ls,1 fits least squares on the short lines and leaves the long ones'
    step as the line draws it, and the Dot then steps each pair by its own bin's factor."""
    dot = tiny_dot()
    b = pairs_of(dot, factor=0.0)
    n = len(b["t_i"])
    # Of the pairs with an earlier anchor (the even ones) below t_s = 500, every other has a long line.
    long = (torch.arange(n) % 4 == 0) & (b["t_s"] < 500)
    b["t_p"] = torch.where(long, b["t_s"] + 400, b["t_p"])
    gap = log_snr(AC, b["t_s"]) - log_snr(AC, b["t_p"])
    later = b["t_p"] != b["t_s"]
    short_max, long_min = gap[later & ~long].max().item(), gap[long].min().item()
    assert short_max < long_min  # the bins this test means
    edge = (short_max + long_min) / 2
    prev = (b["x_tp"], b["z_p"], b["t_p"])
    with torch.no_grad():
        line = dot.prior_estimate(b["z_s"], b["t_i"], b["t_s"], prev) - b["z_s"]
    noise = 0.3 * line.std() * torch.randn(line.shape, generator=torch.Generator().manual_seed(3))
    b["target"] = b["z_s"] + 0.6 * line + noise
    fitted, counts = gate.fit_gate(dot, b, min_pairs=8, prior_factors=["ls", "1"], gap_edges=[edge])
    table, counts = torch.tensor(fitted["prior_scale"]), torch.tensor(counts)
    assert table.shape == counts.shape == (10, 7) and fitted["gap_edges"] == [edge]
    assert counts[:, 4:].sum() == long.sum() and counts[:, 1:4].sum() == (later & ~long).sum()
    assert torch.allclose(table[:, 1:4][counts[:, 1:4] > 0], torch.tensor(0.6, dtype=table.dtype), atol=0.1)
    assert (table[:, 4:] == 1).all()
    dot.config.gate = {**fitted, "scale": [[0.0] * 7 for _ in range(10)]}
    with torch.no_grad():
        out = b["z_s"] + dot(b["x_ti"], b["x_ts"], b["z_s"], b["t_i"], b["t_s"], prev=prev)
    row, col = dot.gate_cell(b["t_i"], b["t_s"], prev, n)
    expected = b["z_s"] + table[row, col].float().reshape(-1, 1, 1, 1) * line
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (col[long] >= 4).all() and (col[later & ~long] < 4).all()
    with pytest.raises(train.TrainingError, match="one per line-length bin"):
        gate._rules("vp,1,ls", "1.5")
    with pytest.raises(train.TrainingError, match="increasing"):
        gate._rules("vp", "2,1")


def test_learned_below_keeps_the_learned_part_only_under_its_row_edge(tmp_path, capsys):
    """--learned-below T zeroes the learned part's factors in the rows of t_i >= T, on top of what --learned drops
    (first-group: the later columns), and the gated Dot then returns its prior there; T must be a row edge."""
    scale = [[1.0] * 7 for _ in range(10)]
    kept = torch.tensor(gate._kept(scale, "first-group", 900.0))
    assert (kept[:9, 0] == 1).all() and (kept[9] == 0).all() and (kept[:, 1:] == 0).all()
    assert torch.tensor(gate._kept(scale, "everywhere", 300.0))[3:].sum() == 0
    assert gate._kept(scale, "everywhere") == scale
    dot = tiny_dot()
    dot.config.gate = {**gate.ungated(), "scale": gate._kept(scale, "everywhere", 900.0)}
    x, z = torch.randn(2, 1, *SHAPE[1:]), torch.randn(2, 1, *SHAPE[1:])
    with torch.no_grad():
        high, low = (dot(x, x, z, torch.tensor([t, t]), torch.tensor([999.0, 999.0])) for t in (950.0, 850.0))
    assert high.abs().max() == 0 and low.abs().max() > 0  # first group, prior reuse: the residual is the learned part
    with pytest.raises(SystemExit):
        gate.main(["--dot", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "g"), "--learned-below", "850"])
    assert "--learned-below: one of the gate's row edges" in capsys.readouterr().err


def test_a_reuse_dot_gated_on_the_line_keeps_its_first_group_and_takes_the_line_after_it(tmp_path, capsys,
                                                                                         monkeypatch):
    """--prior extrap on a reuse Dot (Morse-DPM-Solver++'s): its learned part stays where it was trained on what the
    line is there, reuse (the first group), and the scaled line replaces it after; learned everywhere on a prior it
    never saw is refused in one line. On the trained path (--fit-path trained) the fit's pairs are the trained Dot's,
    sampled with its own prior: the ones its plain gate made."""
    train.main(["--trajectories", "4", "--heldout", "2", "--budgets", "3", "--iters", "10", "--rounds", "1",
                "--batch-size", "8", "--latency-batches", "1", "--out", str(tmp_path / "dot")])
    argv = ["--dot", str(tmp_path / "dot" / "dot.safetensors"), "--out", str(tmp_path / "gated"), "--trajectories",
            "4", "--min-pairs", "4", "--prior", "extrap"]
    with pytest.raises(SystemExit):
        gate.main(argv)
    assert "add --learned first-group" in capsys.readouterr().err
    gate.main(argv[:-2])  # the plain gate, on the trained Dot's path
    made = []
    real = gate.sampling_pairs
    monkeypatch.setattr(gate, "sampling_pairs", lambda *a, **k: made.append(k["desc"]) or real(*a, **k))
    gate.main(argv + ["--learned", "first-group", "--prior-factors", "0.5"])
    assert made == ["held-out pairs"]  # the trained path's pairs, from the plain gate's cache
    gate.main(argv + ["--learned", "first-group", "--prior-factors", "0.5", "--fit-path", "gated"])
    assert made == ["held-out pairs", "gate pairs", "held-out pairs"]  # the gated path's own
    card = json.loads((tmp_path / "gated" / "dot.json").read_text())
    assert card["dot_config"]["prior"] == "extrap" and "--prior extrap" in card["gate"]["command"]
    from baselines.tasks import get_task

    dash = get_task("fmnist").dash()
    reuse, gated = (Dot.load(dash, tmp_path / f / "dot.safetensors") for f in ("dot", "gated"))
    with torch.no_grad():
        torch.nn.init.normal_(reuse.out.weight, std=0.05)  # a learned part that is not zero, in both
        gated.out.weight.copy_(reuse.out.weight)
        x, z, z_p = torch.randn(3, 2, 1, 32, 32).unbind(0)
        t_i, t_s = torch.tensor([650.0, 650.0]), torch.tensor([800.0, 800.0])  # row 6
        first = [d(x, x, z, t_i, t_s) for d in (reuse, gated)]
        prev = (x, z_p, torch.tensor([900.0, 900.0]))
        later = gated(x, x, z, t_i, t_s, prev=prev)
    assert first[0].abs().max() > 0
    torch.testing.assert_close(first[1], first[0] * gated.config.gate["scale"][6][0])
    torch.testing.assert_close(later, 0.5 * (gated.prior_estimate(z, t_i, t_s, prev) - z))
