"""ClipScorer on a tiny random CLIP registered under a test name: offline, CPU, a few seconds."""

import copy
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from evaluate.clip_score import ClipScorer

TINY = "tiny-test-clip"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    # vocab_size must match the BPE vocabulary that ships with open_clip's SimpleTokenizer.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TAG_MEAN, TAG_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
PROMPTS = ["a cat", "a dog on grass", "a red car", "two birds", "a bowl of fruit",
           "a city at night", "a mountain lake", "a wooden chair", "a plate of pasta", "an old clock"]


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer) with TINY and a fake tag "fake" (hf_hub test-org/tiny-clip) registered in open_clip."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(open_clip.factory._MODEL_CONFIGS, TINY, TINY_CFG)
        tag = open_clip.pretrained._pcfg(hf_hub="test-org/tiny-clip/", mean=TAG_MEAN, std=TAG_STD, quick_gelu=True)
        mp.setitem(open_clip.pretrained._PRETRAINED, TINY, {"fake": tag})
        torch.manual_seed(0)
        yield open_clip.create_model(TINY), open_clip.get_tokenizer(TINY)


@pytest.fixture(scope="module")
def scorer(tiny):
    model, tokenizer = tiny
    return ClipScorer.from_model(model, None, tokenizer)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(len(PROMPTS), 3, 48, 48, generator=g) * 2 - 1


def test_scores_shape_range_and_not_trivial(scorer, images):
    s = scorer.score(images, PROMPTS)
    assert s.shape == (len(PROMPTS),) and s.dtype == np.float64
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 100).all()
    # With random weights cosines straddle 0: both the clamp and the positive branch must be exercised.
    assert (s > 0).sum() >= 3 and (s == 0).sum() >= 1
    assert scorer.mean_score(images, PROMPTS) == pytest.approx(s.mean())


def test_batch_size_independent(tiny, images):
    # In float64, so that float32 GEMM noise (~4e-6 here, depends on the BLAS) cannot mask or fake a batching bug.
    model, tokenizer = tiny
    scorer = ClipScorer.from_model(copy.deepcopy(model).double(), None, tokenizer)
    ref = scorer.score(images, PROMPTS, batch_size=64)
    assert (ref > 0).sum() >= 3
    for bs in (1, 7):
        np.testing.assert_allclose(scorer.score(images, PROMPTS, batch_size=bs), ref, rtol=0, atol=1e-5)


def test_matches_manual_clip_score(tiny, scorer, images):
    model, tokenizer = tiny
    with torch.no_grad():
        img = model.encode_image(scorer.preprocess(images)).double()
        txt = model.encode_text(tokenizer(PROMPTS)).double()
    cos = (img / img.norm(dim=-1, keepdim=True) * (txt / txt.norm(dim=-1, keepdim=True))).sum(-1)
    np.testing.assert_allclose(scorer.score(images, PROMPTS), 100 * cos.clamp(min=0).numpy(), rtol=0, atol=1e-6)


def test_preprocess_matches_open_clip_pil_transform(scorer):
    g = torch.Generator().manual_seed(2)
    u8 = torch.randint(0, 256, (3, 40, 64), generator=g, dtype=torch.uint8)  # non-square: resize + centre crop
    transform = open_clip.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    expected = transform(Image.fromarray(u8.permute(1, 2, 0).numpy()))
    got = scorer.preprocess(u8[None].float() / 127.5 - 1)[0]
    assert got.shape == expected.shape == (3, 32, 32)
    # PIL rounds to uint8 and its bicubic kernel differs slightly at the image edges. On this noise, bicubic
    # without antialias or bilinear with it are off by > 0.1 on average and > 0.4 at worst.
    diff = (got - expected).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.15


def test_grey_equals_repeated_rgb(scorer):
    grey = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    np.testing.assert_allclose(scorer.score(grey, PROMPTS[:4]), scorer.score(grey.repeat(1, 3, 1, 1), PROMPTS[:4]),
                               rtol=0, atol=1e-12)


def test_count_or_shape_mismatch_raises(scorer, images):
    with pytest.raises(ValueError, match="prompts"):
        scorer.score(images[:3], PROMPTS[:2])
    with pytest.raises(ValueError, match="1 or 3"):
        scorer.score(images[:3, :2], PROMPTS[:3])


@pytest.mark.parametrize("model_name, pretrained, names", [
    (TINY, "missing.safetensors", ["missing.safetensors", "pretrained tag"]),
    (TINY, "fake", ["hf download test-org/tiny-clip open_clip_pytorch_model.bin", "pretrained=PATH"]),
    ("ViT-B-32", "openai", ["timm/vit_base_patch32_clip_224.openai"]),
])
def test_missing_weights_fail_fast_with_one_line(tiny, tmp_path, model_name, pretrained, names):
    if pretrained.endswith(".safetensors"):
        pretrained = str(tmp_path / pretrained)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        ClipScorer(model_name, pretrained, cache_dir=str(tmp_path))  # empty HF cache
    assert time.perf_counter() - start < 0.5
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in names)


def test_loads_local_file(tiny, scorer, images, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny[0].state_dict(), str(path))
    loaded = ClipScorer(TINY, str(path))
    np.testing.assert_allclose(loaded.score(images, PROMPTS), scorer.score(images, PROMPTS), rtol=0, atol=1e-6)


def test_loads_tag_from_hf_cache_with_tag_settings(tiny, tmp_path):
    snapshot = tmp_path / "models--test-org--tiny-clip" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--test-org--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--test-org--tiny-clip" / "refs" / "main").write_text("0123abcd")
    save_file(tiny[0].state_dict(), str(snapshot / "open_clip_model.safetensors"))
    loaded = ClipScorer(TINY, "fake", cache_dir=str(tmp_path))
    # What the tag (not the architecture config) sets must survive loading it by file path.
    assert torch.allclose(loaded.mean.flatten(), torch.tensor(TAG_MEAN))
    assert torch.allclose(loaded.std.flatten(), torch.tensor(TAG_STD))
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in loaded.model.modules())
    assert torch.equal(loaded.model.visual.conv1.weight, tiny[0].visual.conv1.weight)
