"""Consistency distillation of an embedded Dash (the Latent Consistency Models recipe, in pixel space):
`fmnist` unconditional, `fmnist-text` text-conditional with the guidance scale distilled in.

    python -m baselines.tasks.train_lcm --steps 6000 --batch-size 64 --lr 1e-4 --loss huber \
        --export baselines/weights/fmnist_lcm.safetensors
    python -m baselines.tasks.train_lcm --task fmnist-text --export baselines/weights/fmnist_text_lcm.safetensors

* teacher: the frozen Dash with one DDIM step (diffusers' DDIMScheduler, eta 0) from t_{n+k} to t_n on the
  grid of 1000/k trailing timesteps (k = --skip, 20 as in LCM: a 50-step grid), the grid LCMScheduler samples
  from with `original_inference_steps` = 1000/k;
* student: f(x, t) = c_skip(t) x + c_out(t) x0(x, t), initialised from the Dash, with x0 read from its
  epsilon; c_skip and c_out are LCMScheduler's (`get_scalings_for_boundary_condition_discrete`, timestep
  scaling 10), so f(x, 0) = x holds by construction and sampling uses the same f; with --clip-sample every x0
  read from an epsilon (the teacher's DDIM step, f, and through the card LCMScheduler's) is clipped to the data
  range, as diffusers' DDIM does by default for pixel models (why: the flag's help);
* target: f of an EMA of the student (decay 0.95, diffusers' EMAModel) at (teacher's x_{t_n}, t_n);
* loss: pseudo-Huber (c = 0.001, as in diffusers' LCM script) or L2 between the two;
* fmnist-text, as LCM distils guidance: each row draws a training caption of its image and a guidance scale w
  uniform in [--w-min, --w-max]; the teacher's step uses classifier-free guidance at w (against the empty
  prompt), and student and target see the caption and w's embedding (`time_cond_proj_dim`, zero-initialised,
  so the student starts as the teacher's conditional branch). Sampling then costs one row per step at any w.

diffusers ships the schedulers and the EMA but no consistency-distillation loop outside its example scripts,
so the loop is here (`Distiller`). Data: Fashion-MNIST train images noised to t_{n+k}.

Writes `<out>/<name>.safetensors` (the EMA target's weights, or with --eval-ema-decay a slower EMA of the
student's, stored in float16: two distilled copies of the
Dashes in float32 would not fit the embedded weights' 20 MB) with its model card (`distilled: true`, the
teacher's checksum, the recipe command, loss curve, wall time), and the same at `--export` when given; the
`lcm` method reads the task's `lcm_path`. Resumable: `<out>/checkpoint.safetensors` (student, target, Adam
moments, RNG, losses) is rewritten atomically every --checkpoint-every steps; rerun the same command to resume,
or, while the run is unfinished, the same with another --steps to extend it or to end it at its last checkpoint
(the learning rate does not depend on --steps).
`--init` continues distilling from an earlier distilled model (student and target start from its weights, with
a fresh optimiser); the card keeps the earlier model's card as its lineage.
"""

import argparse
import copy
from pathlib import Path

import torch
from diffusers import LCMScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from baselines.checkpoint import sha256
from baselines.denoisers import guidance_embedding
from baselines.solvers import scheduler_class
from baselines.tasks import fmnist_clip
from baselines.tasks.fmnist import FashionMNIST
from baselines.tasks.fmnist_text import FashionMNISTText, build_text_lcm
from baselines.training.cards import finish, lineage, loss_curve, run_fields
from baselines.training.loop import begin, train_loop
from baselines.training.recipe import TrainingError, command_text, device_of, flags_of, one_line_errors, resume_key
from baselines.training.schedule import warmup_constant

LOSSES = ("huber", "l2")
TASKS = {"fmnist": FashionMNIST, "fmnist-text": FashionMNISTText}


class Distiller:
    """The consistency-distillation loss of one batch: student at t_{n+k} against the EMA target at t_n, where
    the teacher's DDIM step took the noised sample."""

    def __init__(self, schedule_config: dict, skip: int = 20, timestep_scaling: float = 10.0, loss: str = "huber",
                 huber_c: float = 1e-3, clip_sample: bool = False):
        T = schedule_config["num_train_timesteps"]
        if skip < 1 or T % skip:
            raise ValueError(f"--skip must divide the {T} training timesteps (LCMScheduler's grid is k-1, 2k-1, ..., "
                             f"T-1), got {skip}")
        if loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.skip, self.loss_name, self.huber_c, self.clip_sample = skip, loss, huber_c, clip_sample
        cfg = {k: v for k, v in schedule_config.items() if k != "prediction_type"}
        self.lcm = LCMScheduler(**cfg, original_inference_steps=T // skip, timestep_scaling=timestep_scaling,
                                clip_sample=clip_sample, prediction_type="epsilon")
        # The project's DDIM (lands on the next grid entry); set_alpha_to_one=False makes the last step land on
        # alpha_bar(0), the noise level LCM's target sees at t = 0.
        self.ddim = scheduler_class("DDIMScheduler")(**cfg, timestep_spacing="trailing", set_alpha_to_one=False,
                                                     clip_sample=clip_sample, prediction_type="epsilon")
        self.ddim.set_timesteps(T // skip)
        self.grid = self.ddim.timesteps.flip(0)  # t_1 < ... < t_N, ascending
        lcm_grid = torch.arange(1, T // skip + 1) * skip - 1
        assert torch.equal(self.grid.cpu(), lcm_grid), "teacher grid differs from LCMScheduler's"
        self.alphas_cumprod = self.lcm.alphas_cumprod

    @property
    def grid_size(self) -> int:
        return len(self.grid)

    def consistency(self, net, x, t, **cond):
        """f(x, t) = c_skip(t) x + c_out(t) x0(x, t), the parameterisation LCMScheduler.step samples with."""
        ab = self.alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
        x0 = (x - (1 - ab).sqrt() * net(x, t, **cond).sample) / ab.sqrt()
        if self.clip_sample:  # as LCMScheduler.step(clip_sample=True) does, so f is the function sampled
            x0 = x0.clamp(-1.0, 1.0)
        c_skip, c_out = self.lcm.get_scalings_for_boundary_condition_discrete(t.view(-1, 1, 1, 1).float())
        return c_skip * x + c_out * x0

    @staticmethod
    def teacher_eps(teacher, x, t, text=None, uncond=None, w=None):
        """The teacher's epsilon; with `text`, classifier-free guidance u + w (c - u) at each row's own w (the
        Denoiser wrapper takes one scale per batch), both branches as one batch."""
        if text is None:
            return teacher(x, t).sample
        hidden = torch.cat([uncond.expand(len(x), *uncond.shape[1:]), text])
        eps_u, eps_c = teacher(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=hidden).sample.chunk(2)
        return eps_u + w.view(-1, 1, 1, 1) * (eps_c - eps_u)

    def teacher_step(self, teacher, x, t, **guidance):
        """One DDIM step of the teacher from each sample's t to the grid entry below it. diffusers' step takes
        one timestep per call: the batch goes through it grouped by timestep."""
        eps = self.teacher_eps(teacher, x, t, **guidance)
        out = torch.empty_like(x)
        for tv in t.unique().tolist():
            rows = t == tv
            out[rows] = self.ddim.step(eps[rows], tv, x[rows]).prev_sample
        return out

    def distance(self, pred, target):
        if self.loss_name == "l2":
            return torch.nn.functional.mse_loss(pred, target)
        return (((pred - target) ** 2 + self.huber_c ** 2).sqrt() - self.huber_c).mean()

    def loss(self, student, teacher, target_net, x0, noise, index, text=None, uncond=None, w=None):
        """Loss of the batch x0 (noise, grid index n+k per sample); gradients reach only the student. With `text`
        (per-row token features), `uncond` (the empty prompt's) and `w` (per-row guidance scales), the teacher is
        guided at w and student and target are conditioned on the text and w's embedding."""
        t_start = self.grid.to(x0.device)[index]
        t_end = (t_start - self.skip).clamp(min=0)  # below the grid's first entry: t = 0, where f(x, 0) = x
        x_start = self.lcm.add_noise(x0, noise, t_start)
        cond = {}
        if text is not None:
            emb = guidance_embedding(w.cpu(), len(w), student.config.time_cond_proj_dim)
            cond = dict(encoder_hidden_states=text, timestep_cond=emb.to(x0.device))
        pred = self.consistency(student, x_start, t_start, **cond)
        with torch.no_grad():
            x_prev = self.teacher_step(teacher, x_start, t_start, text=text, uncond=uncond, w=w)
            target = self.consistency(target_net, x_prev, t_end, **cond)
        return self.distance(pred, target)


def read_init(path: Path) -> dict:
    """The lineage of a continued distillation (`cards.lineage`), from a distilled model only."""
    if not Path(path).exists() or not Path(path).with_suffix(".json").exists():
        raise FileNotFoundError(f"--init {path}: no such distilled model with its card (.json beside it)")
    init = lineage(path)
    if init["card"].get("distilled") is not True:
        raise ValueError(f"--init {path}: its card lacks `distilled: true`; continue only from a distilled model")
    return init


def make_ema(student, decay: float) -> EMAModel:
    # min_decay = decay: the target (and the exported EMA) follow the student at a fixed rate, as in LCM, without
    # diffusers' EMA warm-up.
    return EMAModel(student.parameters(), decay=decay, min_decay=decay, use_ema_warmup=False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="fmnist")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50, help="linear learning-rate warm-up steps, then constant")
    p.add_argument("--loss", choices=LOSSES, default="huber")
    p.add_argument("--huber-c", type=float, default=1e-3)
    p.add_argument("--skip", type=int, default=20, help="teacher DDIM skip k on the 1000-step schedule")
    p.add_argument("--ema-decay", type=float, default=0.95, help="EMA rate of the target network")
    p.add_argument("--timestep-scaling", type=float, default=10.0)
    p.add_argument("--clip-sample", action="store_true", help="clip x0 to the data range [-1, 1] in the teacher's "
                   "DDIM step, in f, and (through the card) in LCMScheduler: near t = 999 the x0 read from epsilon "
                   "divides by sqrt(alpha_bar) = 0.006, so small epsilon errors leave the data range")
    p.add_argument("--eval-ema-decay", type=float, default=None, help="export a slower EMA of the student at this "
                   "decay, as consistency models are evaluated, instead of the target network (whose fast EMA "
                   "carries the student's step noise)")
    p.add_argument("--w-min", type=float, default=1.0, help="fmnist-text: least guidance scale drawn (1: none)")
    p.add_argument("--w-max", type=float, default=6.0, help="fmnist-text: largest guidance scale drawn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", help="e.g. cuda; data and RNG stay on the CPU, so a run "
                   "draws the same batches on any device")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/lcm-<task>)")
    p.add_argument("--init", type=Path, default=None, help="continue from this distilled model (a card with "
                   "`distilled: true`) instead of the Dash")
    p.add_argument("--export", type=Path, default=None, help="also write the distilled model here with its card; "
                   "the `lcm` method reads the task's lcm_path (baselines/weights/<name>.safetensors)")
    return p


def recipe(args, teacher_sha256: str, clip_sha256: str = "", init_sha256: str = "") -> tuple[str, str]:
    """The command the card records and the run's resume key, which also holds the checksums of the teacher, of the
    CLIP whose text features it was trained on (fmnist-text) and of the --init model.

    The learning rate is constant after warm-up, so a run's first S steps do not depend on --steps: the key leaves
    it out, and rerunning an unfinished run with a larger --steps extends it, with a smaller one ends it at its
    last checkpoint, as if it had been asked for that many steps."""
    text = args.task == "fmnist-text"
    flags = {"task": args.task if text else None,
             **flags_of(args, "steps", "batch_size", "lr", "warmup", "loss", "huber_c", "skip", "ema_decay",
                        "timestep_scaling", "clip_sample", "eval_ema_decay"),
             "w_min": args.w_min if text else None, "w_max": args.w_max if text else None,
             **flags_of(args, "seed", "init")}
    command = command_text("baselines.tasks.train_lcm", flags)
    recipe_text = command.replace(f" --steps {args.steps}", "")
    return command, resume_key(recipe_text, teacher_sha256, clip_sha256, init_sha256)


def checked(args) -> tuple[torch.device, Distiller, dict | None]:
    """The device, the distiller and the --init lineage; bad arguments raise TrainingError."""
    try:
        distiller = Distiller(FashionMNIST.schedule_config, args.skip, args.timestep_scaling, args.loss,
                              args.huber_c, args.clip_sample)
        if args.task == "fmnist-text" and not 1.0 <= args.w_min <= args.w_max:
            raise ValueError(f"need 1 <= --w-min <= --w-max, got {args.w_min} and {args.w_max}")
        init = read_init(args.init) if args.init is not None else None
    except (ValueError, FileNotFoundError) as e:
        raise TrainingError(str(e)) from None
    return device_of(args.device), distiller, init


def networks(args, task, init, device) -> tuple:
    """(teacher, student, target, EMAs by checkpoint prefix): the student starts from the Dash (fmnist-text: in
    the layout with guidance as an input) or from --init; "ema" is the target's EMA, "ema_eval" the exported one."""
    teacher = task.dash().to(device)
    student = build_text_lcm(teacher) if args.task == "fmnist-text" else copy.deepcopy(teacher)
    student = student.to(device).train().requires_grad_(True)
    if init is not None:
        student.load_state_dict(load_file(args.init))
    target = copy.deepcopy(student).eval().requires_grad_(False)
    emas = {"ema": make_ema(student, args.ema_decay)}
    if args.eval_ema_decay is not None:
        emas["ema_eval"] = make_ema(student, args.eval_ema_decay)
    return teacher, student, target, emas


def batch_loss(args, task, distiller, nets, gen, device):
    """`loss_at(step)`: the step's batch (images, noise, grid indices; fmnist-text: a training caption of each
    image's class and a guidance scale per row) through the distiller, the target first set to the EMA."""
    images, labels = task.data("train")
    teacher, student, target, emas = nets
    text = args.task == "fmnist-text"
    if text:  # row k: training caption k; each image draws one of its class's captions
        table = fmnist_clip.captions()
        feats = task.encode([c for c, _ in table]).to(device)
        uncond = task.unconditional().encoder_hidden_states.to(device)
        per_class = len(table) // len(fmnist_clip.NAMES)

    def loss_at(step):
        emas["ema"].copy_to(target.parameters())  # the target is the EMA of the student's steps so far
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        noise = torch.randn((args.batch_size, *images.shape[1:]), generator=gen)
        index = torch.randint(distiller.grid_size, (args.batch_size,), generator=gen)
        guided = {}
        if text:
            row = labels[idx] * per_class + torch.randint(per_class, (args.batch_size,), generator=gen)
            w = args.w_min + (args.w_max - args.w_min) * torch.rand(args.batch_size, generator=gen)
            guided = dict(text=feats[row.to(device)], uncond=uncond, w=w.to(device))
        return distiller.loss(student, teacher, target, images[idx].to(device), noise.to(device), index.to(device),
                              **guided)

    return loss_at


def main(argv=None):
    args = parser().parse_args(argv)
    with one_line_errors():
        distil(args)


def distil(args) -> None:
    device, distiller, init = checked(args)
    gen = begin(args.seed)
    task = TASKS[args.task](args.data_dir)
    nets = networks(args, task, init, device)
    student, target, emas = nets[1], nets[2], nets[3]
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    loss_at = batch_loss(args, task, distiller, nets, gen, device)
    shas = dict(teacher_sha256=sha256(task.dash_path),
                # the text features the teacher was trained on
                clip_sha256=sha256(fmnist_clip.CLIP_PATH) if args.task == "fmnist-text" else "",
                init_sha256=init["sha256"] if init else "")
    command, key = recipe(args, **shas)
    out = args.out or Path(f"runs/lcm-{args.task}")
    ckpt = out / "checkpoint.safetensors"
    losses, wall = train_loop(student, emas, opt, gen, loss_at, steps=args.steps, lr=args.lr,
                              lr_factor=warmup_constant(args.warmup), ckpt=ckpt, key=key,
                              checkpoint_every=args.checkpoint_every, desc=f"distil lcm ({args.task})",
                              hint="delete it or use another --out")
    emas.get("ema_eval", emas["ema"]).copy_to(target.parameters())  # the network exported; training is over
    card = card_of(args, task, distiller, student, init, command, shas, wall, device, losses)
    weights = {k: v.half() for k, v in target.state_dict().items()}
    finish([out / task.lcm_path.name] + ([args.export] if args.export else []), weights, card, ckpt, wall,
           f"final loss {loss_curve(losses)[-1]:.5f}")


def card_of(args, task, distiller, student, init, command: str, shas: dict, wall: float, device, losses) -> dict:
    text = args.task == "fmnist-text"
    model = (f"diffusers.UNet2DConditionModel (the text Dash's architecture with time_cond_proj_dim "
             f"{student.config.time_cond_proj_dim}: guidance is an input), consistency-distilled" if text else
             "diffusers.UNet2DModel (the Dash's architecture), consistency-distilled")
    kind = (f"EMA of the student at decay {args.eval_ema_decay}" if args.eval_ema_decay is not None else
            f"EMA target network (decay {args.ema_decay})")
    return dict(model=model, distilled=True, weights=f"{kind}, stored in float16",
                teacher=dict(path=str(task.dash_path.name), sha256=shas["teacher_sha256"], **(
                    dict(clip=fmnist_clip.CLIP_PATH.name, clip_sha256=shas["clip_sha256"]) if text else {})),
                scheduler=dict(name="LCMScheduler", original_inference_steps=distiller.grid_size,
                               timestep_scaling=args.timestep_scaling, clip_sample=args.clip_sample),
                schedule=task.schedule_config, data="Fashion-MNIST train (60k), padded to 32x32, [-1, 1]"
                + ("; one training caption per image and step, encoded by the small CLIP" if text else ""),
                command=command, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                loss=args.loss, huber_c=args.huber_c if args.loss == "huber" else None, skip=args.skip,
                teacher_solver="DDIM (eta 0), one step of k on the trailing grid"
                + (", x0 clipped to [-1, 1]" if args.clip_sample else "")
                + (", classifier-free guidance at each row's w" if text else ""),
                guidance=dict(w_min=args.w_min, w_max=args.w_max, embedding="LCM's, of w - 1",
                              time_cond_proj_dim=student.config.time_cond_proj_dim) if text else None,
                ema_decay=args.ema_decay, eval_ema_decay=args.eval_ema_decay, seed=args.seed, init=init,
                total_wall_time_s=round(wall + (init["card"].get("total_wall_time_s") or init["card"]["wall_time_s"]
                                                if init else 0.0), 1),
                **run_fields(wall, device, losses, digits=6))


if __name__ == "__main__":
    main()
