"""The harness on the tiny random text-to-image tasks of test_text_tasks: prompts and guidance through the sweep,
CLIP score from a tiny open_clip model saved to a file, speedup per guidance scale, the FID-versus-CLIP-score
trade-off plot, and bad input (one `error:` line, exit code 2, nothing written)."""

import functools
import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from test_text_tasks import PROMPTS, save_pipeline
from torch import nn

import evaluate.metrics
import evaluate.run
from baselines.checkpoint import sha256
from baselines.tasks import get_task
from evaluate.clip_score import ClipScorer
from evaluate.features import InceptionFeatures
from evaluate.methods import Context
from evaluate.metrics import ClipScore
from evaluate.options import options
from evaluate.run import main
from evaluate.sweep import ShardCache, shard_key
from morse.dot import Dot, DotConfig

TINY_CLIP = "tiny-run-clip"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    # vocab_size must match the BPE vocabulary that ships with open_clip's SimpleTokenizer.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
FEATURES = 3  # the stand-in FID extractor's: channel means, full-rank covariance from a handful of samples


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny pipelines, a prompt file, and a tiny CLIP registered in open_clip with its weights in a file."""
    root = tmp_path_factory.mktemp("text-run")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    np.savez(root / "stats.npz", mu=np.zeros(FEATURES), sigma=np.eye(FEATURES) * 0.01)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(open_clip.factory._MODEL_CONFIGS, TINY_CLIP, TINY_CLIP_CFG)
        torch.manual_seed(0)
        save_file(open_clip.create_model(TINY_CLIP).state_dict(), str(root / "clip.safetensors"))
        yield dict(prompts=prompts, clip=root / "clip.safetensors", stats=root / "stats.npz",
                   **{"sd14-coco": save_pipeline(root / "sd14", sdxl=False),
                      "lcm-sdxl": save_pipeline(root / "lcm", sdxl=True)})


@pytest.fixture
def offline_metrics(monkeypatch, files):
    """FID on a stand-in extractor (channel means) behind the same pipeline, and an untrained Dot for morse."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    monkeypatch.setattr(evaluate.metrics, "InceptionFeatures", lambda device: InceptionFeatures(device, model=model))
    task = get_task("sd14-coco", weights=files["sd14-coco"])
    torch.manual_seed(0)
    dot = Dot(task.dash(), DotConfig(width=8, skip_levels=1, schedule=dict(task.schedule_config))).eval()
    torch.nn.init.normal_(dot.out.weight, std=1e-3)
    card = dict(dots_per_dash=3, dot_ratio_planned=6.0)
    monkeypatch.setattr(evaluate.run, "Context", functools.partial(Context, loaded_dot=(dot, card, "untrained")))


def text_argv(files, out, task="sd14-coco", *extra):
    return ["--task", task, "--weights", str(files[task]), "--prompts", str(files["prompts"]), "--reference",
            str(files["stats"]), "--clip-model", TINY_CLIP, "--clip-weights", str(files["clip"]), "--out", str(out),
            *extra]


def test_guided_sweep_clip_score_speedup_and_tradeoff(files, offline_metrics, tmp_path, one_thread):
    out = tmp_path / "r"
    argv = text_argv(files, out, "sd14-coco", "--methods", "ddim,morse", "--budgets", "2,3", "--guidance", "1.5,3",
                     "--num-samples", "4", "--force", "--bootstrap", "3", "--batch-size", "4")
    with pytest.warns(UserWarning, match="samples per cell"):
        assert main(argv) == 0
    df = pd.read_csv(out / "results.csv")
    cells = df[df.metric == "lsd"][["method", "budget", "guidance"]]
    assert len(cells) == 8 and set(cells.guidance) == {1.5, 3.0}  # every (method, budget, guidance) is a cell
    clip = df[df.metric.str.startswith("clip_score")]
    assert len(clip) == 3 * 8 and (clip.clip_model == TINY_CLIP).all()
    assert (clip.clip_sha256 == sha256(files["clip"])).all()
    assert clip[clip.metric == "clip_score"].value.between(0, 100).all()
    assert {"fid", "fid_ci_low", "fid_ci_high"} <= set(df.metric)
    # Each scale's cells sit apart in the cache, the scale in their folder.
    assert len(list((out / "cache" / "ddim").glob("guidance-1.5/budget-2/shard-*"))) == 1
    assert len(list((out / "cache" / "ddim").glob("guidance-3/budget-3/shard-*"))) == 1

    speed = pd.read_csv(out / "speedup.csv")
    per = speed[speed.row == "budget"]
    assert set(per.guidance) == {1.5, 3.0} and (per.method == "morse").all() and (per.baseline == "ddim").all()
    assert len(per) == 8 and set(per.metric) == {"fid", "clip_score"}  # two budgets, two scales, each metric
    # At equal CLIP score the baseline's quality is its CLIP score (read as higher is better), not the gap.
    scores = df[(df.metric == "clip_score") & (df.method == "ddim")].set_index(["budget", "guidance"]).value
    at_clip = per[per.metric == "clip_score"]
    assert np.allclose(at_clip.baseline_quality, [scores[(b, g)] for b, g in zip(at_clip.budget, at_clip.guidance)])
    index = (out / "index.md").read_text()
    assert "![fid vs CLIP score](fid_vs_clip_score.png)" in index and (out / "fid_vs_clip_score.png").exists()
    assert "morse (guidance 1.5)" in index and "| guidance | 1.5, 3 |" in index
    assert "## Speedup at equal clip_score" in index and (out / "speedup_at_equal_clip_score.png").exists()
    assert (out / "grids" / "morse-budget3-guidance1.5.png").exists()

    # Unchanged inputs: every cell comes from the cache, with the same numbers.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.safetensors")}
    with pytest.warns(UserWarning, match="samples per cell"):
        assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.safetensors")} == before
    again = pd.read_csv(out / "results.csv")
    key = ["method", "budget", "guidance", "metric"]
    pd.testing.assert_series_equal(again[again.metric == "clip_score"].set_index(key).value,
                                   df[df.metric == "clip_score"].set_index(key).value)


def test_task_default_guidance_when_none_given(files, tmp_path, one_thread):
    """lcm-sdxl: CLIP score is its only metric (no trade-off plot) and its own guidance scale is the one cell."""
    out = tmp_path / "r"
    argv = text_argv(files, out, "lcm-sdxl", "--methods", "ddim", "--budgets", "2", "--num-samples", "3",
                     "--force", "--bootstrap", "0", "--batch-size", "3")
    with pytest.warns(UserWarning, match="samples per cell"):
        assert main(argv) == 0
    df = pd.read_csv(out / "results.csv")
    task = get_task("lcm-sdxl", weights=files["lcm-sdxl"])
    assert set(df.guidance) == {task.default_guidance}
    assert set(df[df.metric.str.startswith("clip")].metric) == {"clip_score", "clip_score_ci_low",
                                                                "clip_score_ci_high"}
    assert not list(out.glob("*_vs_clip_score.png"))
    assert "clip_score (higher is better" in (out / "index.md").read_text()


def test_clip_score_compares_each_sample_with_its_own_prompt(files):
    """The metric hands the scorer each seed's prompt (task.prompts_for), and bootstraps the mean."""
    task = get_task("lcm-sdxl", weights=files["lcm-sdxl"], prompts=files["prompts"])
    opts = options(clip_model=TINY_CLIP, clip_weights=str(files["clip"]))
    metric = ClipScore("clip_score", task, opts, "cpu")
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seeds, boot = [3, 4, 5, 6, 7], [np.array([0, 0, 1, 2, 3]), np.arange(5)]
    got = metric(images, boot, seeds)
    expected = ClipScorer(TINY_CLIP, str(files["clip"])).score(images, [PROMPTS[s % 4] for s in seeds])
    assert got.rows[0][:2] == ("clip_score", pytest.approx(expected.mean()))
    np.testing.assert_allclose(got.resamples, [expected[ix].mean() for ix in boot])
    assert got.rows[0][2]["clip_model"] == TINY_CLIP and got.rows[0][2]["clip_sha256"] == sha256(files["clip"])


def test_unguided_cache_keys_unchanged(files):
    """Guidance enters a shard's key (and folder) only for a guided task: the caches of unguided runs stay valid."""
    method = type("M", (), {"name": "ddim", "config": lambda self: {"solver": "ddim"}})()
    seeds = list(range(10))
    (shard,) = ShardCache(files["clip"].parent, "fp").shards(method, 4, seeds)
    path, key = shard.path, shard.key
    assert key == shard_key({"solver": "ddim", "spacing": "trailing"}, 4, seeds, "fp")  # the key before guidance
    assert path.parent.name == "budget-4" and path.parent.parent.name == "ddim"
    (guided,) = ShardCache(files["clip"].parent, "fp").shards(method, 4, seeds, guidance=3.0)
    assert guided.key != key and guided.path.parent.parent.name == "guidance-3"


def _one_error_line(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


@pytest.mark.parametrize("content,name,needle", [
    (None, "prompts.txt", "does not exist"),
    ("\n \n", "prompts.txt", "at least one prompt"),
    (json.dumps({"images": [{"id": 1}], "annotations": [{"id": 2, "image_id": 1}]}), "captions.json",
     "no annotations[*].caption"),
])
def test_bad_prompt_file_one_line_exit_2(files, tmp_path, capsys, content, name, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    out = tmp_path / "r"
    argv = text_argv(files, out, "lcm-sdxl", "--methods", "ddim")
    argv[argv.index("--prompts") + 1] = str(path)
    assert main(argv) == 2
    _one_error_line(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("guidance,needle", [("0.5", ">= 1"), ("3,0", ">= 1"), ("three", "comma-separated")])
def test_bad_guidance_one_line_exit_2(files, tmp_path, capsys, guidance, needle):
    out = tmp_path / "r"
    assert main(text_argv(files, out, "lcm-sdxl", "--methods", "ddim", "--guidance", guidance)) == 2
    _one_error_line(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("argv,needle", [
    (["--guidance", "3"], "no classifier-free guidance"),  # an unconditional task has no guidance axis
    (["--prompts", "prompts.txt"], "does not take --prompts"),
])
def test_text_options_on_an_unconditional_task_one_line_exit_2(tmp_path, capsys, argv, needle):
    out = tmp_path / "r"
    assert main(["--methods", "ddim", "--out", str(out)] + argv) == 2
    _one_error_line(capsys, needle)
    assert not out.exists()


def test_prompt_task_without_clip_model_one_line_exit_2(files, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    out = tmp_path / "r"
    argv = text_argv(files, out, "lcm-sdxl", "--methods", "ddim")
    no_clip = [a for k, a in enumerate(argv) if not {a, argv[k - 1]} & {"--clip-model", "--clip-weights"}]
    assert main(no_clip) == 2  # the default ViT-B-32/openai, absent from the (empty) Hugging Face cache
    _one_error_line(capsys, "--clip-weights")
    argv[argv.index("--clip-weights") + 1] = str(tmp_path / "missing.safetensors")
    assert main(argv) == 2
    _one_error_line(capsys, "missing.safetensors")
    argv[argv.index("--clip-model") + 1] = "no-such-clip"
    argv[argv.index("--clip-weights") + 1] = str(files["clip"])
    assert main(argv) == 2
    _one_error_line(capsys, "no-such-clip")
    assert not out.exists()
