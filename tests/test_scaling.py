"""morse.scaling: the power-law fit of a Dot's held-out error against training compute, and its card section."""

import json
import math

import pytest

from morse.scaling import fit_power_law, main, point


def _card(pairs, iters, ratio):
    return dict(train_pairs=pairs, iters=iters, heldout_error=dict(ratio=ratio), sha256="x",
                command=f"python -m morse.train --task fmnist --iters {iters} --seed 0")


def test_fit_recovers_a_known_power_law_and_where_it_reaches_0_4():
    compute = [1e6, 4e6, 1.6e7, 1.28e8]
    fit = fit_power_law(compute, [2.0 * c ** -0.1 for c in compute])
    assert fit["exponent"] == pytest.approx(-0.1) and fit["a"] == pytest.approx(2.0)
    assert fit["compute_at_ratio_0_4"] == pytest.approx(5.0 ** 10, rel=1e-6)  # 2 c^-0.1 = 0.4
    assert fit["rms_log_residual"] < 1e-9
    flat = fit_power_law(compute, [0.7, 0.72, 0.71, 0.73])
    assert flat["exponent"] > 0 and flat["compute_at_ratio_0_4"] is None  # more training does not help
    with pytest.raises(ValueError, match="two or more"):
        fit_power_law([1e6, 1e6], [0.8, 0.7])


def test_scaling_section_lands_in_the_card_and_survives_a_rerun(tmp_path):
    paths = []
    for pairs, iters in [(18_432, 1_500), (36_864, 3_000), (73_728, 6_000), (147_456, 24_000)]:
        paths.append(tmp_path / f"dot{iters}.json")
        paths[-1].write_text(json.dumps(_card(pairs, iters, 3.0 * (pairs * iters) ** -0.05)))
    assert point(json.loads(paths[0].read_text()))["compute"] == 18_432 * 1_500
    target = paths[2]
    for _ in range(2):  # a rerun replaces the section instead of adding a second one
        main([str(p) for p in paths] + ["--card", str(target)])
    card = json.loads(target.read_text())
    assert card["scaling"]["fit"]["exponent"] == pytest.approx(-0.05)
    assert math.log(max(q["compute"] for q in card["scaling"]["points"])
                    / min(q["compute"] for q in card["scaling"]["points"]), 2) == pytest.approx(7)
    md = target.with_suffix(".md").read_text()
    assert md.count("## Held-out error against training compute") == 1
    assert "compute^-0.0500" in md and "![" in md and (tmp_path / "dot6000_scaling.png").stat().st_size > 1000
    assert "| 147,456 | 24,000 | 8 |" in md


def test_a_card_without_its_training_numbers_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(dict(train_pairs=100, heldout_error=dict(ratio=0.9), command="morse.train --iters 5")))
    with pytest.raises(SystemExit) as exit_:
        main([str(path), str(path), "--card", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {path} is not a Dot card")
