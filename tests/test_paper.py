"""evaluate.paper: every group of the paper end to end on tiny random versions of its tasks' networks (the fixtures
of test_tasks and test_text_tasks), each writing its figure and its table with the published column filled; absent
weights (one line each, exit 2, nothing written), the time estimate against --max-hours, the latency-only pricing,
the published-numbers file, and the plots' axes."""

import json

import matplotlib.pyplot as plt
import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file
from test_tasks import tiny_config
from test_text_run import TINY_CLIP, TINY_CLIP_CFG
from test_text_tasks import PROMPTS, save_pipeline
from torch import nn

import evaluate.metrics
import evaluate.paper
import evaluate.run
from baselines.tasks import TASKS
from baselines.tasks.cifar10 import CIFAR10
from evaluate.features import InceptionFeatures
from evaluate.methods import Context
from evaluate.paper import SECONDARY, groups, main, published
from evaluate.report import axis_label, quality_curves
from morse.dot import Dot, DotConfig

FEATURES = 3  # the stand-in FID extractor's: channel means


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A --weights folder as a group reads it: tiny checkpoints per task, FID statistics, COCO-style captions, and
    a tiny CLIP registered in open_clip with its weights in a file."""
    root = tmp_path_factory.mktemp("paper-weights")
    for name in ("cifar10", "celebahq256", "church256"):
        torch.manual_seed(0)
        UNet2DModel(**tiny_config(name)).save_pretrained(root / name)
    for name, sdxl in (("sd14-coco", False), ("lcm-sdxl", True)):
        save_pipeline(root / name, sdxl=sdxl)
    for name in ("cifar10", "celebahq256", "church256", "sd14-coco"):
        np.savez(root / f"{name}.npz", mu=np.zeros(FEATURES), sigma=np.eye(FEATURES) * 0.01)
    (root / "captions_val2014.json").write_text(json.dumps({"annotations": [{"caption": p} for p in PROMPTS]}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(open_clip.factory._MODEL_CONFIGS, TINY_CLIP, TINY_CLIP_CFG)
        torch.manual_seed(0)
        save_file(open_clip.create_model(TINY_CLIP).state_dict(), str(root / "clip.safetensors"))
        yield root


def tiny_dot_context(*args, **kwargs):
    """The harness's Context with an untrained narrow Dot over its own Dash (no task here has a trained one)."""
    ctx = Context(*args, **kwargs)
    if ctx.loaded_dot is None:
        torch.manual_seed(0)
        skip = 0 if ctx.task.name == "lcm-sdxl" else 1  # SDXL's two levels: keep both
        dot = Dot(ctx.dash, DotConfig(width=8, skip_levels=skip, schedule=dict(ctx.task.schedule_config))).eval()
        torch.nn.init.normal_(dot.out.weight, std=1e-3)
        ctx.loaded_dot = dot, dict(dots_per_dash=3, dot_ratio_planned=6.0), "untrained"
    return ctx


@pytest.fixture
def offline(monkeypatch):
    """FID on channel means behind the same pipeline, and untrained Dots for every Morse method."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    monkeypatch.setattr(evaluate.metrics, "InceptionFeatures", lambda device: InceptionFeatures(device, model=model))
    monkeypatch.setattr(evaluate.run, "Context", tiny_dot_context)
    monkeypatch.setattr(evaluate.paper, "Context", tiny_dot_context)


def quick(root, out, *extra):
    return ["--weights", str(root), "--out", str(out), "--num-samples", "4", "--force", "--budgets", "2,3",
            "--bootstrap", "0", "--batch-size", "4", "--clip-model", TINY_CLIP, "--clip-weights",
            str(root / "clip.safetensors"), *extra]


@pytest.mark.parametrize("group", sorted(groups()))
def test_group_runs_end_to_end(group, root, offline, tmp_path, one_thread, capsys):
    out = tmp_path / group
    assert main(["--group", group, *quick(root, out)]) == 0
    assert "estimated sampling time" in capsys.readouterr().out
    page = (out / "paper.md").read_text()
    assert "Fewer samples than the paper: 4 per cell" in page and "Budgets changed from the paper's" in page
    for run in groups()[group].runs:
        assert (out / run.task / "index.md").exists()  # the ordinary harness's report of each task
        metric = TASKS[run.task].primary_metric
        assert (out / f"{run.task}_{metric}_vs_lsd.png").exists() and (out / f"{run.task}_{metric}_vs_lsd.pdf").exists()
    speed = pd.read_csv(out / "speedups.csv", keep_default_na=False)
    assert {"2", "3", "mean (ours)", "published"} <= set(speed.columns) and len(speed)
    morse = speed[speed.method.str.startswith("morse")]
    assert len(morse) and morse.published.str.contains("1.78-3.31x").all()  # the abstract's range, every Morse row
    if group == "A":
        assert set(speed.baseline) == {"ddpm", "ddim", "dpm"}
        assert speed.published.str.contains(f"2.01-2.94x{SECONDARY}").all()
        quality = pd.read_csv(out / "quality.csv", dtype=str, keep_default_na=False)
        ddim = quality[(quality.method == "ddim") & (quality["budget (LSD)"] == "10")]
        assert ddim.published.iloc[0].startswith("13.36") and "not run" in ddim["fid (ours)"].iloc[0]
    assert SECONDARY in page and "## Sources" in page


def test_absent_weights_one_line_each_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    out = tmp_path / "out"
    assert main(["--group", "B", "--weights", str(tmp_path / "empty"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("missing: ") for line in err)
    for task, repo in (("cifar10", "google/ddpm-cifar10-32"), ("church256", "google/ddpm-ema-church-256")):
        dash = [line for line in err if line.startswith(f"missing: {task}: no Dash weights")]
        assert len(dash) == 1 and f"hf download {repo} --local-dir {tmp_path / 'empty'}/{task}" in dash[0]
        assert sum(f"{task}: no FID reference" in line for line in err) == 1
        assert sum(f"morse.train --task {task} --solver ddim" in line for line in err) == 1
    assert len(err) == 9 and not out.exists()


def test_missing_dot_is_named_before_anything_runs(root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--group", "A", *quick(root, out)]) == 2  # the tiny cifar10 has no trained Dots
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("missing: cifar10: ") and "Dot" in line for line in err)
    assert not out.exists()


def test_estimate_is_checked_against_max_hours(root, offline, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--group", "A", *quick(root, out), "--max-hours", "0"]) == 2
    captured = capsys.readouterr()
    assert "cifar10: 4 samples x 30 LSD (6 methods, budgets 2, 3)" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "above --max-hours 0" in err[0] and not out.exists()


class TinyCifar(CIFAR10):
    """cifar10's architecture, 8-16 channels wide: the latency half in seconds."""

    def architecture(self):
        return {**super().architecture(), "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4}


def test_latency_only_random_weights_prices_the_group(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setitem(TASKS, "cifar10", TinyCifar)
    out = tmp_path / "lat"
    assert main(["--group", "A", "--latency-only", "--random-weights", "--latency-batches", "1,2", "--batch-size",
                 "2", "--out", str(out)]) == 0
    assert "estimated sampling time" in capsys.readouterr().out
    nets = pd.read_csv(out / "latency.csv", keep_default_na=False)
    assert set(nets.network) == {"dash", "dot"} and set(nets.batch) == {1, 2}
    assert nets[nets.network == "dot"]["published N"].str.contains(f"5-10{SECONDARY}").all()
    price = pd.read_csv(out / "price.csv")
    assert list(price["budget"]) == [3, 5, 10, 20, 50, 100] and (price["measured at batch"] == 2).all()
    hours = price["hours, 50,000 samples x 6 cells"]
    assert np.allclose(hours / price["budget"], hours.iloc[0] / 3, rtol=0.02)  # linear in the budget
    assert "Weights: random" in (out / "paper.md").read_text()


def test_list_names_commands_weights_and_times(capsys):
    assert main(["--list"]) == 0
    text = capsys.readouterr().out
    for name in "ABCDEF":
        assert f"python -m evaluate.paper --group {name} --weights DIR" in text
    assert "hf download google/ddpm-cifar10-32 --local-dir DIR/cifar10" in text
    assert "reports/latency/cpu/cifar10.csv" in text and "time: no committed latency report" in text


def test_published_numbers_carry_sources_and_the_secondary_mark():
    pub = published()
    assert (pub.source != "").all() and set(pub.secondary) == {"yes", "no"}
    ddim = pub[(pub.task == "cifar10") & (pub.method == "ddim") & (pub.quantity == "fid")]
    assert dict(zip(ddim.budget, ddim.value)) == {"10": "13.36", "20": "6.84", "50": "4.67", "100": "4.16",
                                                  "1000": "4.04"}
    sd = pub[(pub.task == "sd14-coco") & (pub.quantity == "speedup_mean")]
    assert sd.value.tolist() == ["2.29"] and sd.secondary.tolist() == ["yes"]
    sources = evaluate.paper.Sources()
    assert evaluate.paper.published_text(sd, sources).startswith(f"2.29x{SECONDARY} [1]")


def test_plots_have_plain_budget_ticks_and_readable_axis_names():
    df = pd.DataFrame([dict(method=m, budget=b, metric=k, value=v) for m, f in (("ddim", 1.0), ("morse", 0.9))
                       for b in (2, 4, 8, 16) for k, v in (("lsd", b * f), ("fd_fmnist", 40 / b))])
    fig, ax = plt.subplots()
    quality_curves(ax, df, "lsd", "fd_fmnist", "fmnist")
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "8", "16"]
    assert all(t.get_text().replace(".", "").isdigit() for t in ax.get_yticklabels())  # "5", "10", "20": no 10^x
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True) + ax.get_yticklabels(minor=True))
    assert ax.get_xlabel() == "latency (LSD)" and ax.get_ylabel() == "FD (Fashion-MNIST classifier features)"
    plt.close(fig)
    assert axis_label("fid") == "FID" and axis_label("clip_score", "sd14-coco") == "CLIP score"


def test_fewer_samples_mark_our_fid_as_not_comparable():
    df = pd.DataFrame([dict(method="ddim", budget=10.0, guidance=float("nan"), metric="fid", value=14.2)])
    sources = evaluate.paper.Sources()
    table = evaluate.paper.quality_table("cifar10", df, "fid", published(), sources, {"ddim"}, reduced=True)
    row = table[table["budget (LSD)"] == "10"].iloc[0]
    assert row["fid (ours)"] == "14.20 (fewer samples: not comparable)" and row.published == "13.36 [1]"
    full = evaluate.paper.quality_table("cifar10", df, "fid", published(), sources, {"ddim"}, reduced=False)
    assert full[full["budget (LSD)"] == "10"]["fid (ours)"].iloc[0] == "14.20"
