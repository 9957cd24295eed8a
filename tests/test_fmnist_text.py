"""fmnist-text, the offline text-to-image default: its captions and tokenizer, the text Dash's warm start from the
unconditional Dash, the committed CLIP and text Dash, the trainers, and the task through the harness."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from baselines.tasks import fmnist_clip, get_task
from baselines.tasks.fmnist import build_dash
from baselines.tasks.fmnist_clip import (
    BPE_PATH,
    HELDOUT_TEMPLATES,
    NAMES,
    TRAIN_TEMPLATES,
    caption,
    captions,
    class_of,
    default_prompts,
    write_bpe,
)
from baselines.tasks.fmnist_text import build_text_dash, from_unconditional
from evaluate.clip_score import ClipScorer
from evaluate.defaults import DEFAULTS
from evaluate.run import main, validate


def test_default_prompts_are_held_out_and_cycle_through_the_classes():
    prompts = default_prompts()
    assert [class_of(p) for p in prompts] == [k % 10 for k in range(len(prompts))]
    assert not set(prompts) & {c for c, _ in captions()}
    assert not set(HELDOUT_TEMPLATES) & set(TRAIN_TEMPLATES)


def test_class_of_takes_the_longest_name_and_refuses_prompts_without_one():
    assert class_of("a photo of a button-up shirt") == 6
    assert class_of("a t-shirt") == 0 and class_of("a shirt") == 6
    assert class_of(caption("a photo of a {}", "overcoat")) == 4 == class_of("a coat")
    assert class_of("a photo of an ankle boot") == 9 == class_of("a boot")
    assert caption("a {}", "ankle boot") == "an ankle boot"
    with pytest.raises(ValueError, match="names no Fashion-MNIST class"):
        class_of("a photo of a cat")


def test_committed_merges_are_what_learn_bpe_writes_and_make_every_word_one_token(tmp_path):
    assert write_bpe(tmp_path / "bpe.txt.gz").read_bytes() == BPE_PATH.read_bytes()
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(bpe_path=str(BPE_PATH))
    for word in set(fmnist_clip.caption_words()):
        assert len(tok.encode(word)) == 1, word
    assert tok.vocab_size == fmnist_clip.vocab_size() < 1000


def test_warm_start_is_the_dash_whose_attention_is_the_identity():
    """With the unconditional Dash's self-attention outputs zeroed (so its attention blocks pass their input
    through), the warm-started text Dash computes exactly what it does, whatever the text: the convolutions,
    norms and time embedding are copied and every new transformer block starts as the identity."""
    torch.manual_seed(0)
    dash = build_dash().eval()
    state = dash.state_dict()
    for name in state:
        if ".attentions." in name and ".to_out." in name:
            state[name] = torch.zeros_like(state[name])
    dash.load_state_dict(state)
    text = build_text_dash().eval()
    left = from_unconditional(text, state)
    assert left and all(any(k in n for k in ("attn2", ".ff.", "norm1", "norm2", "norm3")) for n in left)
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([5, 400, 990])
    with torch.no_grad():
        want = dash(x, t).sample
        for _ in range(2):
            got = text(x, t, encoder_hidden_states=torch.randn(3, fmnist_clip.CONTEXT_LENGTH, 64)).sample
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_committed_clip_loads_by_name_and_knows_the_classes():
    task = get_task("fmnist-text")
    scorer = ClipScorer(task.clip_model, task.clip_weights)  # open_clip's registry, as evaluate.run loads it
    x, y = task.data("test")
    x, y = x[:300], y[:300]
    assert fmnist_clip.zero_shot_accuracy(*task.clip(), x, y) >= 0.8
    right = scorer.mean_score(x, [caption(HELDOUT_TEMPLATES[0], NAMES[c][0]) for c in y.tolist()])
    wrong = scorer.mean_score(x, [caption(HELDOUT_TEMPLATES[0], NAMES[(c + 1) % 10][0]) for c in y.tolist()])
    assert right > wrong + 5


def test_committed_text_dash_follows_its_prompt_under_guidance():
    """A few samples per class at 20 DDIM steps and guidance 3: the FD classifier sees the prompted class."""
    task = get_task("fmnist-text")
    from baselines.noise import initial_noise
    from baselines.registry import get_baseline

    seeds = list(range(20))
    denoiser = task.denoiser(task.dash(), 3.0)
    x, _ = get_baseline("ddim")(denoiser, initial_noise(seeds, task.image_shape), 20, cond=task.conditions(seeds),
                                seeds=seeds)
    hit = task.classifier()(x).argmax(1) == task.prompted_classes(seeds)
    assert hit.float().mean() >= 0.8


def test_task_defaults_fill_only_what_the_command_leaves_unset():
    text = validate({**DEFAULTS, "task": "fmnist-text"})
    cls = type(get_task("fmnist-text"))
    assert text.budget_values == tuple(float(b) for b in cls.default_budgets.split(","))
    assert text.num_samples == cls.default_num_samples
    plain = validate({**DEFAULTS})
    assert plain.budget_values == (2.0, 4.0, 8.0, 16.0) and plain.num_samples == 1000
    given = validate({**DEFAULTS, "task": "fmnist-text", "budgets": "3", "num_samples": 300})
    assert given.budget_values == (3.0,) and given.num_samples == 300


def test_fmnist_text_through_the_harness(tmp_path):
    """Two guidance scales, DDIM and Morse: FD-fmnist, CLIP score with the task's CLIP and the prompted-class
    fraction in every cell, a speedup table per metric and the trade-off plot."""
    out = tmp_path / "report"
    assert main(["--task", "fmnist-text", "--methods", "morse,ddim", "--budgets", "2,4", "--num-samples", "16",
                 "--force", "--guidance", "1.5,3", "--bootstrap", "0", "--batch-size", "16", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df.guidance) == {1.5, 3.0}
    for metric in ("fd_fmnist", "clip_score", "prompt_class_frac"):
        assert len(df[df.metric == metric]) == 2 * 2 * 2, metric
    clip = df[df.metric == "clip_score"]
    assert set(clip.clip_model) == {"fmnist-clip"} and clip.value.between(0, 100).all()
    speed = pd.read_csv(out / "speedup.csv")
    assert {"fd_fmnist", "clip_score"} <= set(speed.metric)
    assert any(p.suffix == ".png" and "clip" in p.name for p in out.iterdir())


@pytest.mark.parametrize("module", ["train_clip", "train_text_dash"])
def test_trainers_write_weights_with_a_card(tmp_path, module):
    import importlib

    out = tmp_path / "w.safetensors"
    importlib.import_module(f"baselines.tasks.{module}").main(
        ["--steps", "2", "--batch-size", "8", "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 2 and all(v == v for v in card["loss_per_100_steps"])
    weights = load_file(out)
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    assert not (tmp_path / "work" / "checkpoint.safetensors").exists()  # a finished run leaves no checkpoint


def test_prompts_naming_no_class_are_left_out_of_the_prompted_class_fraction(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a sneaker\na photo of a cat\n")
    task = get_task("fmnist-text", prompts=str(prompts))
    assert task.prompted_classes([0, 1, 2]).tolist() == [7, -1, 7]


def test_text_check_measures_what_the_cards_state(tmp_path):
    """evaluate.text_check on a few samples: the CLIP's zero-shot accuracy, the prompted-class fraction and FD
    through the harness's own metric, matched above shuffled CLIP score, and the FD ratio to the unconditional
    Dash."""
    from evaluate.text_check import main as text_check

    assert text_check(["--num-samples", "40", "--steps", "10", "--unconditional", "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "text_check.json").read_text())
    assert got["zero_shot_accuracy_heldout_templates"] >= 0.85
    assert 0.5 <= got["prompt_class_frac"] <= 1.0
    assert got["clip_score_matched"] > got["clip_score_shuffled"] + 20
    assert got["fd_ratio"] == pytest.approx(got["fd_fmnist"] / got["fd_fmnist_unconditional_100_steps"])
