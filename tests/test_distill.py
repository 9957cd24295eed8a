"""The first-group distiller (issue 30, morse.distill): its unrolled group is the sampler's, its exact group end the
oracle's, and its command trains the first group alone, resumably."""

import json

import pytest
import torch
from safetensors.torch import load_file

from baselines.denoisers import Denoiser
from baselines.noise import initial_noise
from baselines.registry import get_baseline
from baselines.tasks import get_task
from morse import Interleave, distill
from morse.pretrained import dot_path
from morse.sampler import Morse

DOT = dot_path("fmnist", "ddim")
ARGS = ["--dot", str(DOT), "--budgets", "2,3", "--runs", "16", "--iters", "6", "--batch-size", "4",
        "--checkpoint-every", "3", "--heldout", "2"]


@pytest.fixture(scope="module")
def parts():
    task = get_task("fmnist")
    den = Denoiser(task.dash(), task.schedule_config)
    from morse.dot import Dot

    dot = Dot.load(task.dash(), DOT)
    plans = distill.Plans(den, get_baseline("ddim"), Interleave(3), 6.0, [2.0, 3.0, 4.0], None, "cpu")
    return task, den, dot, plans


def test_the_exact_end_of_the_two_lsd_plan_is_the_four_step_ddim_sample(parts):
    task, den, _, plans = parts
    seeds = [3, 4]
    with torch.inference_mode():
        exact = plans.exact([(2.0, 0)], seeds, task.image_shape)
        sample, _ = get_baseline("ddim")(den, initial_noise(seeds, task.image_shape), 4, seeds=seeds)
    assert plans.groups(2.0) == [(0, 4)]  # D...: the whole plan is the first group
    torch.testing.assert_close(exact["end/2:0"], sample)


@pytest.mark.parametrize(("budget", "group"), [(3.0, 0), (4.0, 0), (3.0, 1), (4.0, 2)])
def test_each_unrolled_group_is_where_morse_sampling_stands_at_the_next_dash_step(parts, budget, group):
    """Fed the sampler's own state and anchors at the group's Dash step, the unrolled group lands where Morse does."""
    task, den, dot, plans = parts
    seeds = [5, 6]
    states, estimates = {}, {}

    def record(i, t, x_i, e):
        states[i], estimates[i] = x_i, e

    with torch.inference_mode():
        Morse(get_baseline("ddim"), dot, 6.0, Interleave(3))(den, initial_noise(seeds, task.image_shape), budget,
                                                             seeds=seeds, callback=record)
        states[-1] = initial_noise(seeds, task.image_shape)
        first, end = plans.groups(budget)[group]
        inputs = dict(x=states[first - 1], z=estimates[first])
        if group:
            earlier = plans.groups(budget)[group - 1][0]
            inputs.update(xp=states[earlier - 1], zp=estimates[earlier])
        got = plans.end(budget, group, inputs, seeds, dot)
    assert plans.groups(budget) == {3.0: [(0, 4), (4, 8)], 4.0: [(0, 3), (3, 6), (6, 9)]}[budget]
    torch.testing.assert_close(got, states[end - 1])


@pytest.fixture(scope="module")
def dpm_parts(parts):
    task, den, _, _ = parts
    from morse.dot import Dot

    dot = Dot.load(task.dash(), dot_path("fmnist", "dpm"))
    return dot, distill.Plans(den, get_baseline("dpm"), Interleave(3), 6.0, [2.0, 3.0], None, "cpu")


def test_dpm_solvers_exact_plans_hand_their_history_on_and_end_in_the_dpm_solver_sample(parts, dpm_parts):
    """DPM-Solver++(2M) keeps the last estimate: the exact 3-LSD plan (two groups, the second continuing the first's
    history) ends where 8 DPM-Solver++ steps do, and the 2-LSD plan where 4 do."""
    task, den, _, _ = parts
    _, plans = dpm_parts
    seeds = [8, 9]
    with torch.inference_mode():
        exact = plans.exact([(2.0, 0), (3.0, 0), (3.0, 1)], seeds, task.image_shape)
        for unit, steps in (("2:0", 4), ("3:1", 8)):
            sample, _ = get_baseline("dpm")(den, initial_noise(seeds, task.image_shape), steps, seeds=seeds)
            torch.testing.assert_close(exact[f"end/{unit}"], sample)
    # the first group hands on its state and its history; the plans' last groups only their state
    assert torch.equal(exact["hend/3:0"], exact["hp/3:1"]) and torch.equal(exact["end/3:0"], exact["x/3:1"])
    assert {k for k in exact if k.startswith(("hp/", "hend/"))} == {"hp/3:1", "hend/3:0"}


def test_an_unrolled_dpm_group_is_where_morse_dpm_sampling_stands(parts, dpm_parts):
    task, den, _, _ = parts
    dot, plans = dpm_parts
    seeds, budget, group = [5, 6], 3.0, 1
    states, estimates = {-1: initial_noise(seeds, task.image_shape)}, {}

    def record(i, t, x_i, e):
        states[i], estimates[i] = x_i, e

    with torch.inference_mode():
        Morse(get_baseline("dpm"), dot, 6.0, Interleave(3))(den, states[-1], budget, seeds=seeds, callback=record)
        (earlier, _), (first, end) = plans.groups(budget)
        # the solver's history: the Dot's estimate at the step before, converted as the solver keeps it
        before = distill.at_step(plans.schedulers[budget], first - 1)
        history = before.convert_model_output(estimates[first - 1], sample=states[first - 2])
        inputs = dict(x=states[first - 1], z=estimates[first], xp=states[earlier - 1], zp=estimates[earlier],
                      hp=history)
        got = plans.end(budget, group, inputs, seeds, dot)
        other = plans.end(budget, group, {**inputs, "hp": torch.zeros_like(history)}, seeds, dot)
    torch.testing.assert_close(got, states[end - 1])
    assert not torch.allclose(other, states[end - 1])  # the history matters


def test_the_group_end_is_differentiable_in_the_dot_where_its_gate_lets_the_learned_part_act(parts):
    task, _, dot, plans = parts
    seeds = [7]
    exact = {k: v.clone() for k, v in plans.exact([(3.0, 0), (3.0, 1)], seeds, task.image_shape).items()}
    weight = next(p for p in dot.parameters() if p.requires_grad)
    committed = dot.config.gate
    grads = {}
    for groups in distill.GROUPS:  # learned in the first group only, or on the 3-LSD plan's long line too
        dot.config.gate = distill.open_gate({**committed, "scale": [[0.0] * len(r) for r in committed["scale"]]},
                                            900.0, groups)
        for group in (0, 1):
            inputs = {k.split("/")[0]: v for k, v in exact.items() if k.endswith(f"3:{group}")}
            plans.end(3.0, group, inputs, seeds, dot).square().sum().backward()
            grads[groups, group] = weight.grad.abs().sum().item()
            dot.zero_grad()
    dot.config.gate = committed
    assert grads["first", 0] > 0 and grads["first", 1] == 0 and grads["long-lines", 1] > 0


def test_long_lines_open_the_gate_on_the_long_lines_of_the_low_budgets_only(parts):
    _, _, dot, plans = parts
    from morse.dot import Dot

    gate = json.loads(DOT.with_suffix(".json").read_text())["dot_config"]["gate"]
    trial = Dot.load(get_task("fmnist").dash(), DOT)
    trial.config.gate = distill.open_gate(gate, 900.0, "long-lines")
    assert distill.units_of(plans, trial, [2.0, 3.0, 4.0], "long-lines") == [(2.0, 0), (3.0, 0), (3.0, 1), (4.0, 0),
                                                                           (4.0, 1), (4.0, 2)]
    many = distill.Plans(plans.denoiser, plans.solver, Interleave(3), 6.0, [8.0, 12.0, 16.0], None, "cpu")
    # 8 LSD: its first group, and its second, on the line from 999 to 799 (1.82 in lambda); none at 12 and 16 LSD.
    assert distill.units_of(many, trial, [8.0, 12.0, 16.0], "long-lines") == [(8.0, 0), (8.0, 1)]
    assert distill.units_of(plans, trial, [3.0], "first") == [(3.0, 0)]


def test_all_opens_every_column_below_the_threshold_and_takes_every_group_with_a_dot_step_there(parts):
    from morse.dot import Dot

    gate = json.loads(DOT.with_suffix(".json").read_text())["dot_config"]["gate"]
    opened = distill.open_gate(gate, 900.0, "all")
    low_edges = [0.0, *distill.T_EDGES]
    assert all(v == 1.0 for low, row in zip(low_edges, opened["scale"]) if low < 900.0 for v in row)
    assert [row for low, row in zip(low_edges, opened["scale"]) if low >= 900.0] == \
        [row for low, row in zip(low_edges, gate["scale"]) if low >= 900.0]
    trial = Dot.load(get_task("fmnist").dash(), DOT)
    trial.config.gate = opened
    many = distill.Plans(parts[3].denoiser, parts[3].solver, Interleave(3), 6.0, [8.0, 12.0], None, "cpu")
    # 12 LSD's first group steps from 999 to 874 with its Dot steps at t >= 900, where the learned part stays off.
    assert distill.units_of(many, trial, [8.0, 12.0], "all") == [(8.0, g) for g in range(5)] + \
        [(12.0, g) for g in range(1, 8)]


def test_the_command_trains_the_first_group_alone_and_a_killed_run_resumes_to_the_same_dot(tmp_path, monkeypatch):
    distill.main(ARGS + ["--out", str(tmp_path / "straight")])
    card = json.loads((tmp_path / "straight" / "dot.json").read_text())
    start = json.loads(DOT.with_suffix(".json").read_text())["dot_config"]["gate"]["scale"]
    scale = card["dot_config"]["gate"]["scale"]
    assert [row[1:] for row in scale] == [row[1:] for row in start]  # the later groups as gated
    assert [row[0] for row in scale] == [1.0] * 9 + [0.0]  # the first group learned below 900 only
    assert set(card["distill"]["group_end_rmse"]) == {"2:0", "3:0"}
    assert card["distill"]["command"].startswith("python -m morse.distill")
    assert not (tmp_path / "straight" / "checkpoint.safetensors").exists()
    changed = load_file(tmp_path / "straight" / "dot.safetensors")
    before = load_file(DOT)
    assert any(not torch.equal(changed[k], before[k]) for k in before)

    calls = {"n": 0}
    real = distill._batch

    def dying(*a, **k):  # the norm reads one batch per group first; then one per training step
        calls["n"] += 1
        if calls["n"] > 2 + 5:  # two groups, then past the checkpoint at step 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(distill, "_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        distill.main(ARGS + ["--out", str(tmp_path / "resumed")])
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    monkeypatch.setattr(distill, "_batch", real)
    distill.main(ARGS + ["--out", str(tmp_path / "resumed")])
    resumed = load_file(tmp_path / "resumed" / "dot.safetensors")
    assert all(torch.equal(changed[k], resumed[k]) for k in changed)


def test_a_missing_dot_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        distill.main(ARGS[:1] + [str(tmp_path / "none.safetensors")] + ARGS[2:] + ["--out", str(tmp_path / "o")])
    assert "need a Dot and its card" in capsys.readouterr().err


def test_the_ablations_distill_rows_are_morse_distill_commands_on_the_committed_dots_row():
    import shlex

    from morse import ablation

    rows = [r for r in ablation.ROWS if r.distills]
    assert {r.name for r in rows} >= {"distill-first", "distill-first-long"}
    for row in rows:
        args = distill.parser().parse_args(shlex.split(row.train_command())[3:])
        assert args.dot == ablation.RUNS / row.distills / "dot.safetensors"
        assert row.distills in {r.name for r in ablation.ROWS}
        assert args.out == ablation.RUNS / row.name
        if "plan_dot" in row.options:  # a plan Dot: sampled beside the Dot it was distilled from, for its plans only
            source = next(r for r in ablation.ROWS if r.name == row.distills)
            shared = source.dot if "plan_dot" in source.options else args.dot  # a plan Dot distilled again
            assert row.dot == shared and f"={args.out / 'dot.safetensors'}" in row.options
        else:
            assert row.dot == args.out / "dot.safetensors"
    long = distill.parser().parse_args(shlex.split(next(r for r in rows if r.name == "distill-first-long")
                                                   .train_command())[3:])
    assert (long.iters, long.lr) == (6000, 3e-4)


def test_a_dpm_dot_is_distilled_on_the_state_and_the_history_its_groups_hand_on(tmp_path):
    dot = dot_path("fmnist", "dpm")
    distill.main(["--dot", str(dot), "--budgets", "3", "--runs", "8", "--iters", "2", "--batch-size", "4",
                  "--heldout", "2", "--out", str(tmp_path)])
    card = json.loads((tmp_path / "dot.json").read_text())
    ends = card["distill"]["group_end_rmse"]
    assert set(ends) == {"3:0", "3:0 history"}  # --groups first: the first group, which a second one follows
    assert all(0 < e["distilled"] < e["reuse"] * 10 for e in ends.values())
    assert card["solver"] == "dpm" and "--history-weight" not in card["distill"]["command"]


def test_the_dots_own_trajectory_is_where_morse_sampling_stands_at_each_group(parts):
    """--inputs own: each group starts where Morse with the starting Dot stands, and the last group ends in its
    sample; the exact trajectory starts there only in the first group."""
    task, den, dot, plans = parts
    seeds, budget = [5, 6], 4.0
    states, estimates = {-1: initial_noise(seeds, task.image_shape)}, {}

    def record(i, t, x_i, e):
        states[i], estimates[i] = x_i, e

    units = [(budget, g) for g in range(len(plans.groups(budget)))]
    with torch.inference_mode():
        sample, _ = Morse(get_baseline("ddim"), dot, 6.0, Interleave(3))(den, states[-1], budget, seeds=seeds,
                                                                         callback=record)
        own = plans.exact(units, seeds, task.image_shape, dot=dot)
        exact = plans.exact(units, seeds, task.image_shape)
    for group, (first, _) in enumerate(plans.groups(budget)):
        torch.testing.assert_close(own[f"x/4:{group}"], states[first - 1])
        torch.testing.assert_close(own[f"z/4:{group}"], estimates[first])
        assert torch.equal(own[f"x/4:{group}"], exact[f"x/4:{group}"]) == (group == 0)
    torch.testing.assert_close(own[f"end/4:{len(units) - 1}"], sample)


def test_own_inputs_train_the_later_groups_from_the_dots_trajectory_towards_the_exact_end(tmp_path):
    out = tmp_path / "own"
    distill.main(ARGS[:3] + ["3,4", "--groups", "long-lines", "--inputs", "own"] + ARGS[4:] + ["--out", str(out)])
    card = json.loads((out / "dot.json").read_text())["distill"]
    targets, inputs = load_file(out / "targets.safetensors"), load_file(out / "inputs.safetensors")
    later = [u for u in card["group_end_rmse"] if not u.endswith(":0")]
    assert later and set(card["group_end_rmse_own"]) == set(card["group_end_rmse"])
    assert card["inputs"] == "own" and "--inputs own" in card["command"]
    for unit in card["group_end_rmse"]:
        assert torch.equal(inputs[f"x/{unit}"], targets[f"x/{unit}"]) == unit.endswith(":0")
    # the starting Dot's own inputs are farther from the exact end than the exact ones
    assert all(card["group_end_rmse_own"][u]["start"] > card["group_end_rmse"][u]["start"] for u in later)


def test_learnt_gate_factors_start_where_the_starting_dot_samples_and_move_in_the_opened_cells_alone(parts):
    task, den, dot, _ = parts
    from morse.dot import Dot

    gate = dot.config.gate
    cells = distill.opened_cells(gate, 900.0, "all")
    trial = Dot.load(task.dash(), DOT)
    distill.learn_gate(trial, gate, cells)
    plans = distill.Plans(den, get_baseline("ddim"), Interleave(3), 6.0, [8.0], None, "cpu")
    seeds = [3, 4]
    exact = plans.exact([(8.0, 3)], seeds, task.image_shape)
    inputs = {k.split("/")[0]: v.clone() for k, v in exact.items()}
    with torch.no_grad():  # a short line, where the committed gate gives the line alone
        torch.testing.assert_close(plans.end(8.0, 3, inputs, seeds, trial), plans.end(8.0, 3, inputs, seeds, dot))
    plans.end(8.0, 3, inputs, seeds, trial).square().sum().backward()
    grad = trial.gate_tables["scale"].grad
    mask = torch.tensor(cells)
    assert grad[mask].abs().sum() > 0 and grad[~mask].abs().sum() == 0
    distill.fix_gate(trial)
    assert trial.config.gate["scale"] == gate["scale"] and trial.trainable_state_dict().keys() == \
        dot.trainable_state_dict().keys()


def test_the_command_learns_the_gates_factors_in_the_opened_cells_and_keeps_the_rest(tmp_path):
    out = tmp_path / "learn"
    distill.main(ARGS + ["--groups", "all", "--gate-factors", "learn", "--out", str(out)])
    card = json.loads((out / "dot.json").read_text())
    start = json.loads(DOT.with_suffix(".json").read_text())["dot_config"]["gate"]
    cells = distill.opened_cells(start, 900.0, "all")
    moved = [[a != b for a, b in zip(r, s, strict=True)] for r, s in zip(card["dot_config"]["gate"]["scale"],
                                                                         start["scale"], strict=True)]
    assert any(m and c for mr, cr in zip(moved, cells) for m, c in zip(mr, cr))
    assert not any(m and not c for mr, cr in zip(moved, cells) for m, c in zip(mr, cr))
    assert "--gate-factors learn" in card["distill"]["command"] and card["distill"]["gate_factors"] == "learn"


def test_an_export_named_as_a_plan_dot_must_be_distilled_on_those_plans_alone():
    from pathlib import Path

    from baselines.training.recipe import TrainingError
    from morse.distill import _check_plan_export

    plans = dict(interleave=Interleave(3), ratio=6.0)  # 2 LSD: one Dash step; 4 LSD: three
    _check_plan_export(Path("w/fmnist_dot_dash1.safetensors"), [2.0], **plans)
    _check_plan_export(Path("w/fmnist_dot_dash3.safetensors"), [4.0], **plans)
    _check_plan_export(Path("w/fmnist_dot.safetensors"), [2.0, 4.0], **plans)  # the shared Dot takes every plan
    _check_plan_export(None, [2.0, 4.0], **plans)
    with pytest.raises(TrainingError, match="plans with 1 Dash steps.*4.0: 3"):
        _check_plan_export(Path("w/fmnist_dot_dash1.safetensors"), [2.0, 4.0], **plans)


@pytest.mark.parametrize(("steps", "k"), [(4, 1), (9, 3), (41, 3), (30, 7)])
def test_the_fine_grid_holds_every_plan_step_and_cuts_each_step_in_k(steps, k):
    """Plans whose step count does not divide 1000 (41 steps at 16 LSD) included."""
    coarse = get_baseline("ddim").make_scheduler(get_task("fmnist").schedule_config, steps).timesteps.tolist()
    fine, at = distill.fine_grid(coarse, k)
    assert [fine[i] for i in at] == coarse and at[0] == 0
    assert all(a > b for a, b in zip(fine, fine[1:])) and fine[-1] >= 0
    assert len(fine) == steps * k  # 1000 / steps >= k: no cut collapses
    assert all(at[j + 1] - at[j] == k for j in range(steps - 1))


def test_fine_targets_are_dpm_solver_on_the_plans_grid_and_come_nearer_the_ode_solution(parts):
    """--fine 1 is DPM-Solver++(2M) on the plan's own grid (so the inputs and ends are that solver's states); a finer
    cut comes nearer a much finer one than the exact Dot's DDIM end does."""
    task, den, _, _ = parts
    seeds, units = [3, 4], [(3.0, 0), (3.0, 1)]
    noise = initial_noise(seeds, task.image_shape)
    states = {}

    def plans(k):
        return distill.Plans(den, get_baseline("ddim"), Interleave(3), 6.0, [3.0], None, "cpu", fine=k)

    with torch.inference_mode():
        one = plans(1).exact(units, seeds, task.image_shape)
        sample, _ = get_baseline("dpm")(den, noise, 8, seeds=seeds, callback=lambda i, t, x, e: states.update({i: x}))
        ends = {k: plans(k).exact(units, seeds, task.image_shape)["end/3:1"] for k in (3, 12)}
        exact = plans(0).exact(units, seeds, task.image_shape)
    torch.testing.assert_close(one["end/3:1"], sample)
    torch.testing.assert_close(one["x/3:1"], states[3])  # the second Dash step is the plan's fifth
    assert torch.equal(one["x/3:0"], noise) and torch.equal(one["xp/3:1"], noise)
    assert (ends[3] - ends[12]).norm() < 0.5 * (exact["end/3:1"] - ends[12]).norm()


def test_fine_targets_of_a_dpm_dot_hold_the_history_and_with_one_cut_are_the_exact_dots(parts):
    """For DPM-Solver++(2M) the exact Dot (the Dash at every step of the plan) is that solver on the plan's grid, so
    --fine 1 must give its inputs, ends and handed-on histories (x0 at each group's last step) too."""
    task, den, _, _ = parts
    seeds, units = [5, 6], [(4.0, 0), (4.0, 1), (4.0, 2)]

    def plans(k):
        return distill.Plans(den, get_baseline("dpm"), Interleave(3), 6.0, [4.0], None, "cpu", fine=k)

    with torch.inference_mode():
        one, exact = (plans(k).exact(units, seeds, task.image_shape) for k in (1, 0))
        two = plans(2).exact(units, seeds, task.image_shape)
    assert sorted(one) == sorted(exact) and {"hp/4:1", "hend/4:1", "hend/4:0", "hp/4:2"} <= set(one)
    for key in exact:
        torch.testing.assert_close(one[key], exact[key], atol=1e-4, rtol=1e-4, msg=key)
    assert (two["hend/4:1"] - exact["hend/4:1"]).abs().max() > 1e-3  # a finer cut moves the history target


def test_fine_targets_name_themselves_in_the_card_and_the_cache(tmp_path, capsys):
    out = tmp_path / "fine"
    distill.main(ARGS[:3] + ["2", "--fine", "2"] + ARGS[4:] + ["--out", str(out)])
    card = json.loads((out / "dot.json").read_text())
    assert card["distill"]["fine"] == 2 and "--fine 2" in card["distill"]["command"]
    assert "ODE solution" in " ".join(card["sections"][-1]["lines"])
    with pytest.raises(SystemExit):
        distill.main(["--dot", str(dot_path("fmnist", "dpm")), "--fine", "-1", "--out", str(tmp_path / "dpm")])
    assert "--fine -1" in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_eps_recorder_keeps_the_group_and_records_each_dot_steps_error_against_the_dash(parts):
    """--eps-weight's part of the loss: one (Dot, reuse, prior) error triple per Dot step, measured against the Dash
    at the state the unrolled group stands in, while the group itself runs as without it. The committed Dot's prior
    is the line through the last two Dash estimates: reuse in the first group, which has no earlier one."""
    task, den, dot, plans = parts
    seeds, budget = [8, 9], 4.0
    exact = plans.exact([(budget, 0), (budget, 1)], seeds, task.image_shape)
    for group in (0, 1):
        inputs = {k.split("/")[0]: v for k, v in exact.items() if k.endswith(f"{budget:g}:{group}")}
        seen, steps = [], []
        hook = dot.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(args[0]))
        with torch.inference_mode():
            plain = plans.end(budget, group, inputs, seeds, dot)
            seen.clear()
            recorded = plans.end(budget, group, inputs, seeds, distill.eps_recorder(dot, plans, seeds, steps))
            first, end = plans.groups(budget)[group]
            dash = [den(x, t) for x, t in zip(seen, plans.times(budget, group)[1:], strict=True)]
        hook.remove()
        torch.testing.assert_close(recorded, plain)
        assert len(steps) == end - first - 1 == len(seen)
        for (dot_err, reuse_err, prior_err), target in zip(steps, dash, strict=True):
            torch.testing.assert_close(reuse_err, (inputs["z"] - target).square().sum())
            assert dot_err > 0 and not torch.equal(dot_err, reuse_err)
            assert torch.equal(prior_err, reuse_err) == (group == 0)


def test_the_pooled_bound_waits_for_every_unit_and_then_hinges_on_the_pooled_ratio():
    """--eps-bound: one unit's ratio (here 0.9 alone) says nothing of the pooled one; the term is zero until every
    unit is seen and while the pooled ratio is below the bound, and above it is the weight times the batch's error in
    the pooled ratio's units (so its gradient is the pooled squared ratio's)."""
    bound = distill.PooledBound(0.7, 10.0, units=2, decay=0.5)
    err = torch.tensor(0.81, requires_grad=True)
    first = bound.term("a", [(err, torch.tensor(9.0), torch.tensor(1.0))])
    assert first.item() == 0 and not first.requires_grad and bound.ratio() == pytest.approx(0.9)
    below = bound.term("b", [(torch.tensor(0.19), torch.tensor(9.0), torch.tensor(9.0))])
    assert bound.ratio() == pytest.approx(0.1 ** 0.5) and below.item() == 0  # (0.81 + 0.19) / 10
    above = bound.term("b", [(err * 10, torch.tensor(9.0), torch.tensor(9.0))])
    assert bound.ratio() == pytest.approx(((0.81 + (0.19 + 8.1) / 2) / 10) ** 0.5)  # its running mean: decay 0.5
    above.backward()
    assert above.item() == pytest.approx(10.0 * 8.1 / 10) and err.grad.item() == pytest.approx(10.0 * 10 / 10)
    assert bound.record() == {"eps_ratio": round(bound.ratio(), 5)}


def test_an_ungated_dot_is_distilled_on_every_group_under_a_pooled_epsilon_bound(parts, tmp_path, capsys):
    """An ungated Dot (morse.train's) learns at every step: --groups all distils it as it is, a narrower --groups has
    no gate to keep the other groups with and is refused, as is a bound without its weight. The card keeps the bound
    and the loss log the pooled ratio the hinge read."""
    task = parts[0]
    from morse.dot import Dot

    dot = Dot.load(task.dash(), DOT)
    dot.config.gate = None
    dot.save(tmp_path / "ungated.safetensors")
    (tmp_path / "ungated.json").write_text(DOT.with_suffix(".json").read_text())
    start = ["--dot", str(tmp_path / "ungated.safetensors"), *ARGS[2:]]
    for flags, says in ((["--groups", "first"], "--groups first"), (["--groups", "all", "--eps-bound", "0.7"],
                                                                     "--eps-bound 0.7")):
        with pytest.raises(SystemExit):
            distill.main(start + flags + ["--out", str(tmp_path / "refused")])
        assert says in capsys.readouterr().err.strip().splitlines()[-1]
    out = tmp_path / "bounded"
    distill.main(start + ["--groups", "all", "--eps-weight", "10", "--eps-bound", "0.5", "--out", str(out)])
    card = json.loads((out / "dot.json").read_text())
    assert card["distill"]["eps_bound"] == 0.5 and "--eps-bound 0.5" in card["distill"]["command"]
    assert card["dot_config"]["gate"] is None and set(card["distill"]["group_end_rmse"]) == {"2:0", "3:0", "3:1"}
    logged = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(logged) == 6 and all(0 < entry["eps_ratio"] for entry in logged)
    assert all(entry["loss"] == pytest.approx(entry["end"] + entry["eps"], rel=1e-4) for entry in logged)
    assert logged[0]["eps"] == 0 and any(entry["eps"] > 0 for entry in logged[3:])  # the hinge once all are seen


def test_a_killed_bounded_run_resumes_with_the_running_means_it_had(parts, tmp_path, monkeypatch):
    """The pooled bound's running means travel in the checkpoint: resumed at step 3 of 6 with three units, a run
    that forgot them would leave the hinge off for two steps (until every unit is seen again) and end elsewhere."""
    from morse.dot import Dot

    dot = Dot.load(parts[0].dash(), DOT)
    dot.config.gate = None
    dot.save(tmp_path / "ungated.safetensors")
    (tmp_path / "ungated.json").write_text(DOT.with_suffix(".json").read_text())
    args = ["--dot", str(tmp_path / "ungated.safetensors"), *ARGS[2:], "--groups", "all", "--eps-weight", "10",
            "--eps-bound", "0.05"]
    distill.main(args + ["--out", str(tmp_path / "straight")])
    calls, real = {"n": 0}, distill._batch

    def dying(*a, **k):  # the norm reads one batch per group first (three); then one per training step
        calls["n"] += 1
        if calls["n"] > 3 + 4:  # past the checkpoint at step 3
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(distill, "_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        distill.main(args + ["--out", str(tmp_path / "resumed")])
    assert any(k.startswith("bound/") for k in load_file(tmp_path / "resumed" / "checkpoint.safetensors"))
    monkeypatch.setattr(distill, "_batch", real)
    distill.main(args + ["--out", str(tmp_path / "resumed")])
    straight, resumed = (load_file(tmp_path / name / "dot.safetensors") for name in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    logs = [[json.loads(line) for line in (tmp_path / name / "loss.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")]
    assert logs[0] == logs[1]


def test_the_group_end_table_sets_the_committed_dots_beside_the_formula_in_their_own_measure(parts, monkeypatch):
    """--group-ends: the formula against itself is 1 in every cell; the committed Dots (the 4-LSD plan Dot, the
    shared Dot at 8 LSD; 16 LSD left out for time) differ from it, and each cell's ratio is its two RMSEs'."""
    from morse import ablation

    monkeypatch.setattr(ablation, "BUDGETS", (4, 8))
    shared = parts[2]
    formula = lambda x_ti, x_ts, z_s, t_i, t_s, cond=None, prev=None: shared.prior_estimate(z_s, t_i, t_s, prev) - z_s  # noqa: E731
    same = ablation.group_ends(runs=2, dots=dict.fromkeys(ablation.BUDGETS, formula))
    assert [line.split("|")[1].strip() for line in same[2:]] == ["the ODE solution", "the exact Dot's ends"]
    assert all(cell.strip().endswith("(1.000)") for line in same[2:] for cell in line.split("|")[2:-2])
    assert all(line.split("|")[-2].strip() == "1.000" for line in same[2:])
    committed = ablation.group_ends(runs=2)
    for line in committed[2:]:
        for cell in line.split("|")[2:-2]:
            formula_rmse, rest = cell.split(" / ")
            ours, ratio = rest.split(" (")
            assert float(ratio.strip().rstrip(")")) == pytest.approx(float(ours) / float(formula_rmse), abs=2e-3)
        assert float(line.split("|")[-2]) != 1.0
