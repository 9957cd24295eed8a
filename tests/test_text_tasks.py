"""The text-to-image tasks offline: tiny random sd14-coco-like and lcm-sdxl-like pipelines (UNet2DConditionModel,
AutoencoderKL, CLIP text encoders, a CLIPTokenizer over a vocabulary written here) saved in diffusers' layout,
loaded through the task classes as --weights folders and sampled by every registered method for two steps;
prompt files and their bad inputs; absent weights as one line and exit code 2."""

import copy
import dataclasses
import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from baselines.denoisers import Condition
from baselines.noise import initial_noise
from baselines.tasks import get_task
from baselines.tasks.base import CorruptWeightsError, MissingWeightsError
from baselines.tasks.prompts import MissingPromptsError, PromptsError, load_prompts, prompts_for
from evaluate.methods import METHODS, Context, resolve
from morse.dot import Dot, DotConfig

# CLIP's byte-pair vocabulary in miniature: unknown words fall back to <unk>, which is all a random encoder needs.
VOCAB = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "a", "c", "g", "lo", "l</w>", "w</w>", "r</w>", "t</w>",
         "a</w>", "s</w>", "g</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "cat</w>", "dog</w>",
         "<unk>", "<|startoftext|>", "<|endoftext|>"]
MERGES = ["#version: 0.2", "l o", "lo w</w>", "e r</w>"]
MAX_TOKENS = 12
PROMPTS = ["a cat", "a dog", "lowest tower", "newer wider"]


def save_tokenizer(folder):
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (folder / "merges.txt").write_text("\n".join(MERGES) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                  model_max_length=MAX_TOKENS).save_pretrained(folder)


def save_text_encoder(cls, folder, hidden=16):
    eos = VOCAB.index("<|endoftext|>")
    config = CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                            projection_dim=hidden, bos_token_id=VOCAB.index("<|startoftext|>"), eos_token_id=eos,
                            pad_token_id=eos)
    cls(config).save_pretrained(folder)


def save_pipeline(root, sdxl: bool):
    """A folder in diffusers' pipeline layout: sd14-like (cross-attention UNet, one CLIP encoder) or lcm-sdxl-like
    (SDXL's text_time added conditioning, LCM's guidance embedding, two encoders whose states are concatenated)."""
    torch.manual_seed(0)
    unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=4)
    if sdxl:
        unet |= dict(block_out_channels=(8, 16), cross_attention_dim=32, attention_head_dim=(2, 4),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=4,
                     projection_class_embeddings_input_dim=6 * 4 + 16, time_cond_proj_dim=8)
    else:
        unet |= dict(block_out_channels=(8, 16, 16), cross_attention_dim=16, attention_head_dim=2,
                     down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    UNet2DConditionModel(**unet).save_pretrained(root / "unet")
    AutoencoderKL(latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=16, scaling_factor=0.5).save_pretrained(root / "vae")
    save_text_encoder(CLIPTextModel, root / "text_encoder")
    save_tokenizer(root / "tokenizer")
    if sdxl:
        save_text_encoder(CLIPTextModelWithProjection, root / "text_encoder_2")
        save_tokenizer(root / "tokenizer_2")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n\n" + "\n".join(PROMPTS[2:]) + "\n")
    return dict(prompts=prompts, **{"sd14-coco": save_pipeline(root / "sd14", sdxl=False),
                                    "lcm-sdxl": save_pipeline(root / "lcm", sdxl=True)})



@pytest.mark.parametrize("name", ["sd14-coco", "lcm-sdxl"])
def test_text_task_loads_and_every_method_samples(name, folders, one_thread):
    task = get_task(name, weights=folders[name], prompts=folders["prompts"])
    dash = task.dash()
    saved = UNet2DConditionModel.from_pretrained(folders[name] / "unet")
    assert torch.equal(next(dash.parameters()), next(saved.parameters()))
    assert task.image_shape == (4, 8, 8) and len(task.checksum()) == 16
    assert task.metrics == (("clip_score",) if name == "lcm-sdxl" else ("fid", "clip_score"))

    seeds = [0, 1, 5]
    cond = task.conditions(seeds)
    assert isinstance(cond, Condition) and len(cond) == 3
    assert task.prompts_for(seeds) == ["a cat", "a dog", "a dog"]  # seed mod the number of prompts
    # A seed's condition does not depend on the batch it is in.
    torch.testing.assert_close(task.conditions([5]).encoder_hidden_states, cond[1:2].encoder_hidden_states)
    if name == "lcm-sdxl":
        assert cond.text_embeds.shape == (3, 16) and cond.time_ids[0].tolist() == [16, 16, 0, 0, 16, 16]
        assert torch.count_nonzero(task.unconditional().encoder_hidden_states) == 0  # SDXL: zeros for ""
        assert task.lcm_dash() is dash  # the Dash is the consistency-distilled model

    denoiser = task.denoiser(dash)
    guided_rows = 1 if name == "lcm-sdxl" else 2  # LCM embeds w; SD runs [uncond, cond] as one batch
    skip = 1 if name == "sd14-coco" else 0
    dot = Dot(dash, DotConfig(width=8, skip_levels=skip, schedule=dict(task.schedule_config))).eval()
    torch.nn.init.normal_(dot.out.weight, std=1e-3)  # a Dot that reads its inputs, condition included
    extra = {}
    if name == "sd14-coco" and "loaded_lcm" in {f.name for f in dataclasses.fields(Context)}:
        # SD v1.4 has no distilled model of its own: a copy of the Dash stands in (lcm-sdxl's Dash is one).
        extra["loaded_lcm"] = (copy.deepcopy(dash), {"distilled": True}, "test")
    ctx = Context(task, dash, loaded_dot=(dot, dict(dots_per_dash=3, dot_ratio_planned=6.0), "untrained"), **extra)
    noise = initial_noise(seeds, task.image_shape)
    refused = []
    for method_name in METHODS:
        try:
            method = resolve(method_name, ctx)
        except ValueError as refusal:  # a method for other tasks (T-Stitch: no small denoiser here), in one line
            assert "\n" not in str(refusal), method_name
            refused.append(method_name)
            continue
        samples, trace = method(denoiser, noise, 2, cond=cond, seeds=seeds)
        assert samples.shape == (3, *task.image_shape) and torch.isfinite(samples).all(), method_name
        dash_steps = trace.networks_per_step.count("dash") if "oracle" not in method_name else \
            len(trace.networks_per_step) - trace.networks_per_step.count("dot")
        if "dot" in trace.nfe and trace.networks_per_step.count("dot"):
            assert trace.nfe["dot"] == trace.networks_per_step.count("dot"), method_name  # one per step, guided
        if method_name in ("ddim", "morse"):
            assert trace.nfe["dash"] == guided_rows * dash_steps, method_name
    images = task.decode(samples)
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1
    assert not [n for n in refused if n.startswith(("tome", "tgate"))]  # the text tasks' accelerators ran
    assert all(torch.equal(p, q) for p, q in zip(dash.parameters(), saved.parameters()))  # no run changed the Dash


def test_dot_reads_sdxl_added_conditioning_and_guidance(folders, one_thread):
    task = get_task("lcm-sdxl", weights=folders["lcm-sdxl"], prompts=folders["prompts"])
    dash = task.dash()
    dot = Dot(dash, DotConfig(width=8, skip_levels=0)).eval()
    torch.nn.init.normal_(dot.out.weight)
    den = task.denoiser(dash)
    cond = den.condition(task.conditions([0, 1]))
    x, t = torch.randn(2, *task.image_shape), torch.full((2,), 300)
    with torch.no_grad():
        base = dot(x, x, x, t, t + 100, cond)
        for change in (dict(text_embeds=cond.text_embeds + 1), dict(time_ids=cond.time_ids * 2),
                       dict(timestep_cond=cond.timestep_cond + 1)):
            assert not torch.allclose(base, dot(x, x, x, t, t + 100, Condition(**{**vars(cond), **change})))


def test_other_network_is_refused(folders, tmp_path):
    with pytest.raises(CorruptWeightsError, match="another network"):
        get_task("sd14-coco", weights=folders["lcm-sdxl"]).dash()  # SDXL's added conditioning: not SD v1.4
    with pytest.raises(MissingWeightsError, match="holds no text_encoder_2"):
        get_task("lcm-sdxl", weights=folders["sd14-coco"]).dash()


@pytest.mark.parametrize("name,repos", [("sd14-coco", ["CompVis/stable-diffusion-v1-4"]),
                                        ("lcm-sdxl", ["latent-consistency/lcm-sdxl",
                                                      "stabilityai/stable-diffusion-xl-base-1.0"])])
def test_absent_weights_exit_2_with_one_line_and_write_nothing(name, repos, tmp_path, monkeypatch, capsys):
    from evaluate.run import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "out"
    assert main(["--task", name, "--methods", "ddim", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and all(f"hf download {r}" in err[0] for r in repos)
    assert not out.exists()


@pytest.mark.parametrize("name,params", [("sd14-coco", 859.52e6), ("lcm-sdxl", 2567.55e6)])
def test_shipped_configs_are_the_paper_architectures(name, params):
    task = get_task(name, random_weights=True)
    with torch.device("meta"):  # counts parameters without allocating 10 GB
        unet = UNet2DConditionModel.from_config(task.architecture())
    assert abs(sum(p.numel() for p in unet.parameters()) - params) < 0.01e6
    zero = task.unconditional()
    assert zero.encoder_hidden_states.shape[-1] == task.architecture()["cross_attention_dim"]
    assert task.checksum().startswith("random-") and len(task.checksum()) == 16


def test_prompt_files(tmp_path, folders):
    assert load_prompts(folders["prompts"]) == PROMPTS  # blank lines dropped
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "id": 9, "caption": " A cat\n on a mat "},
                                                               {"image_id": 2, "id": 3, "caption": "A dog."}]}))
    assert load_prompts(coco) == ["A cat on a mat", "A dog."]
    assert prompts_for(["a", "b", "c"], [0, 4, 2, 3]) == ["a", "b", "c", "a"]
    # A different prompt list is a different task fingerprint (cached samples must not be reused).
    assert get_task("sd14-coco", random_weights=True, prompts=coco).checksum() != \
        get_task("sd14-coco", random_weights=True).checksum()


@pytest.mark.parametrize("content,suffix,error,match", [
    (None, ".txt", MissingPromptsError, "does not exist"),
    ("\n  \n", ".txt", PromptsError, "at least one prompt"),
    (json.dumps({"images": [{"id": 1}]}), ".json", PromptsError, "no annotations"),
    ("{not json", ".json", PromptsError, "not valid JSON"),
])
def test_bad_prompt_files_are_refused_in_one_line(tmp_path, content, suffix, error, match):
    path = tmp_path / f"prompts{suffix}"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match) as info:
        load_prompts(path)
    assert str(info.value).startswith("pass --prompts") and "\n" not in str(info.value)
    with pytest.raises(error):
        get_task("sd14-coco", random_weights=True, prompts=path)


def test_morse_train_runs_on_a_guided_text_task(folders, tmp_path, one_thread):
    """The Dot trainer on the tiny sd14-like task: pairs on the guided sampling path, with the condition the Dot
    saw stored beside them, a couple of iterations, a Dot and its card written."""
    from safetensors.torch import load_file

    from morse.train import main

    out = tmp_path / "dot"
    main(["--task", "sd14-coco", "--weights", str(folders["sd14-coco"]), "--prompts", str(folders["prompts"]),
          "--iters", "2", "--rounds", "1", "--trajectories", "2", "--heldout", "2", "--budgets", "2",
          "--batch-size", "4", "--latency-batches", "1", "--width", "8", "--out", str(out)])
    pairs = load_file(out / "pairs-round0.safetensors")
    assert pairs["cond.encoder_hidden_states"].shape[0] == pairs["target"].shape[0] > 0
    card = json.loads((out / "dot.json").read_text())
    assert card["task"] == "sd14-coco" and card["heldout_error"]["ratio"] > 0
    assert Dot.load(UNet2DConditionModel.from_pretrained(folders["sd14-coco"] / "unet"), out / "dot.safetensors")
