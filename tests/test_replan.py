"""morse.replan: the same weights with another exchange ratio, recorded on the card, and sampled so by the harness."""

import json

import pytest

from baselines.checkpoint import sha256
from baselines.tasks import get_task
from evaluate.methods import Context, resolve
from morse import replan
from morse.pretrained import dot_path

DPM = dot_path("fmnist", "dpm")


def test_a_replanned_dot_is_the_same_weights_with_the_new_ratio_on_its_card(tmp_path):
    out, was = tmp_path / "replanned", json.loads(DPM.with_suffix(".json").read_text())["dots_per_dash"]
    new = was + 1
    replan.main(["--dot", str(DPM), "--dots-per-dash", str(new), "--out", str(out)])
    card, before = (json.loads(p.with_suffix(".json").read_text()) for p in (out / "dot.safetensors", DPM))
    assert (out / "dot.safetensors").read_bytes() == DPM.read_bytes() and card["sha256"] == sha256(DPM)
    assert card["dots_per_dash"] == new and card["replan"]["dots_per_dash_before"] == was
    assert f"--dots-per-dash {new}" in card["replan"]["command"] and card["dot_config"] == before["dot_config"]
    assert "morse.replan" in (out / "dot.md").read_text()
    task = get_task("fmnist")
    dash = task.dash()
    plans = {k: resolve("morse-dpm", Context(task, dash, options=o)).morse.interleave.dots_per_dash
             for k, o in (("new", {"dot": str(out / "dot.safetensors")}), ("old", {}))}
    assert plans == {"new": new, "old": was}


def test_a_ratio_below_one_and_a_missing_dot_are_refused_in_one_line(tmp_path, capsys):
    for args in (["--dot", str(DPM), "--dots-per-dash", "0"],
                 ["--dot", str(tmp_path / "none.safetensors"), "--dots-per-dash", "2"]):
        with pytest.raises(SystemExit) as e:
            replan.main(args + ["--out", str(tmp_path / "x")])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: morse.replan")
    assert not (tmp_path / "x").exists()
