"""The paper's pixel-space tasks offline: tiny random versions of their real architectures, saved in diffusers
format, loaded through each task's own loader, sampled by every registered method, scored with every metric
the task declares; and the bad inputs a checkpoint folder or a reference file can bring."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from baselines.denoisers import Denoiser
from baselines.noise import initial_noise
from baselines.tasks import TASKS, get_task
from baselines.tasks.base import CorruptWeightsError, MissingWeightsError
from evaluate.features import InceptionFeatures
from evaluate.frechet import feature_stats, frechet_distance
from evaluate.methods import METHODS, Context, resolve
from evaluate.reference import ReferenceMismatchError, task_reference
from evaluate.run import main
from morse.dot import Dot, DotConfig

PAPER_TASKS = ["cifar10", "celebahq256", "church256"]


def tiny_config(task_name: str) -> dict:
    """The task's shipped architecture (same block types, channels in and out), 8-16 channels wide, and the
    256x256 ones at 64x64 (six levels still halve down to 2x2): CPU seconds instead of minutes."""
    arch = get_task(task_name, random_weights=True).architecture()
    levels = len(arch["block_out_channels"])
    widths = [8] * (levels // 2) + [16] * (levels - levels // 2)
    return {k: v for k, v in arch.items() if not k.startswith("_")} | dict(
        block_out_channels=widths, norm_num_groups=4, sample_size=min(arch["sample_size"], 64))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny checkpoint folder per paper task, as `save_pretrained` writes it."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name in PAPER_TASKS:
        torch.manual_seed(0)
        UNet2DModel(**tiny_config(name)).save_pretrained(root / name)
        out[name] = root / name
    return out


class TinyExtractor(torch.nn.Module):
    """A fixed random conv net standing in for Inception behind the same clean-resize pipeline."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=8), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x)



@pytest.mark.parametrize("name", PAPER_TASKS)
def test_paper_task_loads_samples_and_scores(name, folders, tmp_path, one_thread):
    stand_in = InceptionFeatures(model=TinyExtractor().eval())
    ref = tmp_path / "ref.npz"
    rng = np.random.default_rng(0)
    np.savez(ref, mu=rng.normal(size=16), sigma=np.eye(16))
    task = get_task(name, weights=folders[name], reference=ref)
    dash = task.dash()
    saved = UNet2DModel.from_pretrained(folders[name])
    x, t = torch.randn(1, *task.image_shape), torch.tensor([500])
    assert torch.equal(dash(x, t).sample, saved(x, t).sample)  # the task's loader gives the saved network
    assert task.metrics == ("fid",) and task.primary_metric == "fid" and task.default_fid_samples == 50_000
    assert task.schedule_config["prediction_type"] == "epsilon" and task.conditions([0, 1]) is None

    assert task.image_shape == (3, *[tiny_config(name)["sample_size"]] * 2)  # the loaded network's
    denoiser = Denoiser(dash, task.schedule_config)
    # An untrained Dot built the way latency-only builds one, narrower to stay fast: same layer types.
    dot = Dot(dash, DotConfig(width=8, skip_levels=1, schedule=dict(task.schedule_config))).eval()
    ctx = Context(task, dash, loaded_dot=(dot, dict(dots_per_dash=3, dot_ratio_planned=6.0), "untrained"),
                  loaded_lcm=(copy.deepcopy(dash), {"distilled": True}, "undistilled"))  # the Dash's layers
    seeds = [0, 1]  # two samples: the fewest a covariance needs
    noise = initial_noise(seeds, task.image_shape)
    ref_stats, prov = task_reference(task, "fid", stand_in)
    assert prov["sha256"] and ref_stats.mu.shape == (16,)
    refused = []
    for method_name in METHODS:
        try:
            method = resolve(method_name, ctx)
        except ValueError as e:  # an accelerator this task cannot run (no transformer blocks, no schedule...)
            assert "\n" not in str(e), method_name
            refused.append(method_name)
            continue
        samples, trace = method(denoiser, noise, 2, seeds=seeds)
        assert samples.shape == (2, *task.image_shape) and torch.isfinite(samples).all(), method_name
        assert max(trace.nfe.values()) >= 1, method_name  # lcm calls its distilled model, not the Dash
        images = task.decode(samples)
        for metric in task.metrics:
            feats, _ = stand_in(images)
            assert np.isfinite(frechet_distance(feature_stats(feats), ref_stats)), (method_name, metric)
    # Only accelerators may refuse: every solver, Morse and the training-free caches run on a pixel DDPM.
    assert not {"ddim", "dpm", "morse", "morse-oracle", "deepcache", "pfdiff"} & set(refused), refused


def test_weights_checksum_covers_config_and_weights(folders, tmp_path):
    first = get_task("cifar10", weights=folders["cifar10"]).checksum()
    assert first == get_task("cifar10", weights=folders["cifar10"]).checksum() and len(first) == 16
    copy = tmp_path / "copy"
    shutil.copytree(folders["cifar10"], copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "norm_eps": 1e-5}))  # same tensors, other network
    assert get_task("cifar10", weights=copy).checksum() != first
    assert get_task("cifar10", random_weights=True).checksum().startswith("random-")


@pytest.mark.parametrize("name,params", [("cifar10", 35.7e6), ("church256", 113.7e6), ("celebahq256", 113.7e6)])
def test_random_weights_build_the_paper_architecture(name, params):
    dash = get_task(name, random_weights=True).dash()
    assert abs(sum(p.numel() for p in dash.parameters()) - params) < 0.05e6
    assert torch.equal(next(dash.parameters()), next(get_task(name, random_weights=True).dash().parameters()))


def test_folder_reference_is_computed_and_cached(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    task = get_task("cifar10", random_weights=True, reference=folder)
    stand_in = InceptionFeatures(model=TinyExtractor().eval())
    stats, prov = task_reference(task, "fid", stand_in)
    assert prov["count"] == 12 and stats.mu.shape == (16,)
    again, prov2 = task_reference(task, "fid", stand_in)
    assert prov2["sha256"] == prov["sha256"] and np.array_equal(again.sigma, stats.sigma)
    (folder / "012.png").write_bytes((folder / "000.png").read_bytes())  # another image set: recomputed
    assert task_reference(task, "fid", stand_in)[1]["count"] == 13


def test_reference_of_another_dimension_is_refused(tmp_path):
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    task = get_task("cifar10", random_weights=True, reference=ref)
    with pytest.raises(ReferenceMismatchError, match="2048-d"):
        task_reference(task, "fid", InceptionFeatures(model=TinyExtractor().eval()))


def test_fmnist_keeps_its_weights_checksum_and_metric(tmp_path):
    from baselines.checkpoint import sha256

    task = get_task("fmnist", data_dir=None, weights=None, random_weights=False, reference=None)
    assert task.checksum() == sha256(task.dash_path)[:16]  # the cache keys of earlier runs stay valid
    assert task.primary_metric == "fd_fmnist" and task.reference("fd_fmnist").split == "train"
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with_ref = get_task("fmnist", reference=tmp_path / "ref.npz")
    assert with_ref.reference("fid").kind == "npz" and with_ref.reference("fd_fmnist").kind == "split"


class OldStyleTask:
    """A user task as the README described them before the Task base existed."""

    name, image_shape = "old", (1, 32, 32)

    def __init__(self, data_dir=None):
        from baselines.tasks.fmnist import FashionMNIST

        self._inner = FashionMNIST(data_dir)
        self.schedule_config, self.dash_path = self._inner.schedule_config, self._inner.dash_path

    def dash(self):
        return self._inner.dash()

    def classifier(self):
        return self._inner.classifier()


def test_user_task_written_before_the_base_still_loads():
    task = get_task(f"{__name__}:OldStyleTask", data_dir=None, weights=None, random_weights=False, reference=None)
    assert task.metrics == ("fd_old",) and task.primary_metric == "fd_old" and task.conditions([0]) is None
    assert len(task.checksum()) == 16 and task.reference("fd_old").split == "train"
    with pytest.raises(ValueError, match="does not take --weights"):
        get_task(f"{__name__}:OldStyleTask", weights="somewhere")


def test_loader_errors_are_one_line(folders, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(folders["cifar10"], truncated)
    weights = truncated / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(CorruptWeightsError, match="does not load"):
        get_task("cifar10", weights=truncated).dash()
    with pytest.raises(CorruptWeightsError, match="another network"):
        get_task("church256", weights=folders["cifar10"]).dash()
    with pytest.raises(MissingWeightsError, match="hf download google/ddpm-ema-church-256"):
        get_task("church256", weights=tmp_path / "absent").dash()


# Bad input through the CLI: one `error:` line, exit code 2, and no --out folder.

def _fails_cleanly(argv, out, capsys, needle):
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not out.exists()


def test_no_weights_names_the_download_command(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    _fails_cleanly(["--task", "cifar10", "--methods", "ddim", "--budgets", "4"], tmp_path / "r", capsys,
                   "hf download google/ddpm-cifar10-32 --local-dir DIR")


def test_corrupt_checkpoint_folder(folders, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(folders["cifar10"], bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "block_out_channels": [16, 16, 32, 32]}))
    _fails_cleanly(["--task", "cifar10", "--methods", "ddim", "--weights", str(bad)], tmp_path / "r", capsys,
                   "does not load")


def test_checkpoint_folder_of_another_architecture(folders, tmp_path, capsys):
    _fails_cleanly(["--task", "church256", "--methods", "ddim", "--weights", str(folders["cifar10"])],
                   tmp_path / "r", capsys, "another network")


def test_reference_npz_of_another_feature_dimension(folders, tmp_path, capsys):
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))  # not Inception's 2048
    _fails_cleanly(["--task", "cifar10", "--methods", "ddim", "--weights", str(folders["cifar10"]), "--reference",
                    str(ref)], tmp_path / "r", capsys, "64-d features")


def test_random_weights_need_latency_only(tmp_path, capsys):
    _fails_cleanly(["--task", "cifar10", "--methods", "ddim", "--random-weights"], tmp_path / "r", capsys,
                   "--latency-only")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_declares_its_primary_metric(name):
    task = get_task(name, random_weights=True)
    assert task.primary_metric in task.metrics and len(task.image_shape) == 3
