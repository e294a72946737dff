"""Distils a pipeline's UNet into a few-step student by consistency distillation (Song et al., 2023) in the EDM
parameterisation, on the latents its VAE encoded (`mslddm encode-latents`); docs/distillation.md.

    accelerate launch train/distill.py --config distill-small-cpu --teacher pipelines/mslddm-synth-small \
        --latents runs/latents --output_dir runs/distill
    accelerate launch train/distill.py ... --resume_from_checkpoint latest

The student starts as the teacher's UNet (or ``--init_from`` a pipeline's, e.g. an earlier student). Each step
draws a pair of adjacent noise levels of an N-step Karras discretisation per item, moves ``x0 + sigma_i n`` one
teacher ODE step (Heun or Euler) to ``sigma_{i+1}``, and pulls the student's estimate at the first point towards
its own, without gradient, at the second (pseudo-Huber or L2 in latent space). A conditioned teacher (trained
given stems) gets the same given stems as the student. Writes ``OUTPUT/checkpoint-N`` (``vae/``, ``unet/``,
``unet_ema/``, ``scheduler/`` saying ``sampler: consistency``) and, at the end, ``OUTPUT/pipeline``: the
teacher's pipeline with the student's EMA weights as its UNet. The teacher's folder is only read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mslddm import EDMScheduler, MultiSourceLatentPipeline
from mslddm.data.datasets import LatentSegmentDataset, validation_segments
from mslddm.data.latents import read_dataset_header, vae_fingerprint
from mslddm.kinds import kind_of
from mslddm.models import load_unet_folder
from mslddm.training import consistency, losses
from mslddm.training.runner import (TimeBudget, check_storage, clip_grad, common_arguments, export_run,
                                    load_run_recipe, logger, lr_multiplier, make_accelerator, resume_step, run_main,
                                    stop_if_not_finite, tensorboard, validate_and_checkpoint)
from mslddm.training.seeding import step_dataloader, step_generator


def parse_args(argv=None):
    p = common_arguments(__doc__.splitlines()[0])
    p.add_argument("--teacher", default=None, help="the teacher's pipeline folder (default: the recipe's "
                   "distill.teacher)")
    p.add_argument("--latents", default=None, help="the `mslddm encode-latents` folder of the teacher's VAE "
                   "(default: the recipe's distill.latents)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# 1. Setup: the teacher, its latents, the student (the teacher's UNet), its optimizer and EMA
# ----------------------------------------------------------------------------------------------------------------
def load_teacher(path):
    """The teacher pipeline, frozen; a folder that is not a latent pipeline is named in one sentence."""
    if not path:
        raise ValueError("No teacher: pass --teacher PATH (a pipeline folder, e.g. pipelines/mslddm-synth-small).")
    if not (Path(path) / "model_index.json").is_file():
        raise ValueError(f"--teacher {str(path)!r} is not a pipeline folder (it has no model_index.json): pass the "
                         "folder of a saved pipeline, e.g. pipelines/mslddm-synth-small.")
    teacher = MultiSourceLatentPipeline.from_pretrained(path)
    if not kind_of(teacher).uses_vae:
        raise ValueError(f"--teacher {str(path)!r} is a {kind_of(teacher).name} pipeline, without a VAE: "
                         "train/distill.py distils latent pipelines (msldm, isldm, mixldm).")
    for module in teacher.modules_with_weights.values():
        module.eval().requires_grad_(False)
    return teacher


def check_latents(latents, teacher, teacher_path) -> dict:
    """The latents' header, when they are the teacher VAE's latents of its stems; else one sentence saying why not
    and how to make the right ones."""
    if not latents:
        raise ValueError("No latents: pass --latents DIR (`mslddm encode-latents DATA --vae TEACHER DIR`).")
    header = read_dataset_header(latents)
    remedy = f"encode them with the teacher's VAE: mslddm encode-latents DATA --vae {teacher_path} NEW_DIR"
    if header.get("stems") != teacher.stem_names:
        raise ValueError(f"The latents in {latents} hold the stems {header.get('stems')}, but the teacher "
                         f"generates {teacher.stem_names}: {remedy}.")
    if header.get("latent_channels") != teacher.latent_channels:
        raise ValueError(f"The latents in {latents} have {header.get('latent_channels')} channels per stem, but the "
                         f"teacher's VAE has {teacher.latent_channels}: {remedy}.")
    found = header.get("vae_fingerprint")
    ours = vae_fingerprint(teacher.vae, teacher.device, teacher.vae.dtype)
    if found is not None and not torch.allclose(torch.tensor(found), torch.tensor(ours), rtol=1e-3, atol=1e-4):
        raise ValueError(f"The latents in {latents} were encoded by another VAE than the teacher's (their VAE's "
                         f"fingerprint differs): {remedy}.")
    return header


def student_unet(args, teacher, cfg: dict):
    """A trainable copy of the teacher's UNet, or ``--init_from`` a pipeline's UNet of the same shape."""
    student = load_unet_folder(args.init_from or args.teacher, subfolder="unet")
    different = sorted(k for k in student.config if not k.startswith("_")
                       and student.config.get(k) != teacher.unet.config.get(k))
    if different:
        raise ValueError(f"--init_from {args.init_from}: its UNet differs from the teacher's in {different}.")
    segment = int(cfg["segment_frames"])
    if segment % student.length_multiple:
        raise ValueError(f"distill.segment_frames={segment} must be a multiple of the UNet's "
                         f"{student.length_multiple}.")
    if cfg.get("gradient_checkpointing"):
        student.enable_gradient_checkpointing()
    return student.train()


def build_optimization(accelerator, cfg: dict, student):
    """``(student, ema, optimizer, lr_schedule)``, prepared by the accelerator (EMA registered for checkpoints)."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel(student.parameters(), decay=float(cfg.get("ema_decay", 0.999)), model_cls=type(student),
                   model_config=student.config)
    accelerator.register_for_checkpointing(ema)
    optimizer = torch.optim.Adam(student.parameters(), lr=float(cfg["learning_rate"]),
                                 betas=tuple(cfg.get("betas", (0.9, 0.99))))
    warmup = int(cfg.get("lr_warmup_steps", 0))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, warmup_steps=warmup))
    student, optimizer, lr_schedule = accelerator.prepare(student, optimizer, lr_schedule)
    ema.to(accelerator.device)
    return student, ema, optimizer, lr_schedule


@dataclass
class Distillation:
    """Everything the loop, validation, checkpoints and export share, built once by :func:`set_up`."""

    args: Any
    recipe: dict
    cfg: dict
    accelerator: Any
    teacher: Any  # the teacher pipeline (frozen); its VAE, stems and levels are the student's
    student: Any
    ema: Any
    optimizer: Any
    lr_schedule: Any
    scheduler: EDMScheduler  # the student's: the teacher's with sampler consistency
    sigmas: torch.Tensor  # the N-step discretisation the pairs are drawn from
    train_set: Any
    val_latents: torch.Tensor | None = None
    data_info: dict = field(default_factory=dict)
    writer: Any = None
    start_step: int = 0
    resumed: dict = field(default_factory=dict)
    loader: Any = None

    @property
    def seed(self) -> int:
        return int(self.recipe.get("seed", 0))

    @property
    def sigma_data(self) -> float:
        return float(self.teacher.scheduler.config.sigma_data)

    def ema_unet(self):
        model = type(self.teacher.unet).from_config(self.accelerator.unwrap_model(self.student).config)
        self.ema.copy_to(model.parameters())
        return model.to(self.accelerator.device)

    def record(self) -> dict:
        """How the student is made, for the model card."""
        c = self.cfg
        teacher_sampler = self.teacher.scheduler.sampling_settings().to_dict()
        return {"teacher": str(self.args.teacher), "teacher_sampler": teacher_sampler,
                "method": "consistency distillation (Song et al. 2023), stop-gradient target",
                "num_scales": int(c["num_scales"]), "teacher_solver": c.get("teacher_solver", "heun"),
                "distance": c.get("distance", "pseudo_huber"), "weighting": c.get("weighting", "uniform"),
                "student_sampler": self.scheduler.sampling_settings().to_dict()}

    def state(self, validation: dict, timing: dict) -> dict:
        return {"kind": kind_of(self.teacher).name, "recipe": self.recipe, "stem_names": self.teacher.stem_names,
                "mixture_of": self.teacher.config.get("mixture_of"),
                "stem_levels_dbfs": self.teacher.stem_levels_dbfs,
                "validation": validation, "data": self.data_info, "timing": timing, "distillation": self.record()}

    def save_models(self, folder: Path):
        self.teacher.vae.save_pretrained(folder / "vae")
        self.accelerator.unwrap_model(self.student).save_pretrained(folder / "unet")
        self.ema_unet().save_pretrained(folder / "unet_ema")
        self.scheduler.save_pretrained(folder / "scheduler")


def set_up(args) -> Distillation:
    """Teacher, latents, student, optimizer and EMA, resume, the loader and fixed validation latents."""
    recipe, cfg = load_run_recipe(args, "distill")
    cfg["teacher"] = args.teacher = args.teacher or cfg.get("teacher")  # the flags win over the recipe
    cfg["latents"] = args.latents or cfg.get("latents")
    teacher = load_teacher(args.teacher)  # both checked before the run folder is taken
    header = check_latents(cfg["latents"], teacher, args.teacher)
    student_sigma_min, sigma_max = cfg.get("student_sigma_min"), float(teacher.scheduler.config.sigma_max)
    if student_sigma_min is not None and not student_sigma_min < sigma_max:
        raise ValueError(f"distill.student_sigma_min ({student_sigma_min:g}) must be below the teacher's sigma_max "
                         f"({sigma_max:g}): the student's plan runs from sigma_max down to it.")
    accelerator = make_accelerator(args, cfg)
    teacher.to(accelerator.device)
    seed, segment = int(recipe.get("seed", 0)), int(cfg["segment_frames"])
    train_set = LatentSegmentDataset(cfg["latents"], "train", segment, random_offsets=True, seed=seed)
    torch.manual_seed(seed)
    student, ema, optimizer, lr_schedule = build_optimization(accelerator, cfg, student_unet(args, teacher, cfg))
    c = teacher.scheduler.config
    scheduler = EDMScheduler.from_config(c, sampler="consistency", s_churn=None,
                                         num_inference_steps=int(cfg.get("student_steps", 4)),
                                         sigma_min=float(student_sigma_min or c.sigma_min))
    sigmas = consistency.distillation_sigmas(int(cfg["num_scales"]), c.sigma_min, c.sigma_max, c.rho)
    t = Distillation(args, recipe, cfg, accelerator, teacher, student, ema, optimizer, lr_schedule, scheduler,
                     sigmas.to(accelerator.device), train_set)
    t.data_info = {"latents": str(cfg["latents"]), "train_files": len(train_set.files), "vae": header.get("vae")}
    check_storage(accelerator, args.output_dir, [student, teacher.vae], copies=6)  # weights, Adam's 2, EMA, 2 folders
    t.start_step, _, t.resumed = resume_step(accelerator, args)
    t.loader = step_dataloader(train_set, int(cfg["batch_size"]), t.start_step, int(cfg["max_steps"]), accelerator,
                               int(cfg.get("num_workers", 0)))
    split = "validation" if (Path(cfg["latents"]) / "validation").is_dir() else "train"
    val_set = LatentSegmentDataset(cfg["latents"], split, segment, random_offsets=False, seed=seed)
    t.val_latents = validation_segments(val_set, int(cfg.get("validation_segments", 4)))[0].flatten(1, 2)
    if accelerator.is_main_process:
        accelerator.init_trackers("distill")
        t.writer = tensorboard(accelerator)
    logger.info("Distilling %s: %s", args.teacher, t.record())
    return t


# ----------------------------------------------------------------------------------------------------------------
# 2. Loop: x0 -> pair (sigma_i, sigma_i+1) -> teacher ODE step -> distance(student at i, student at i+1, no grad)
# ----------------------------------------------------------------------------------------------------------------
def denoisers(t: Distillation, conditioning=None, wrapped: bool = True):
    """``(student, target, teacher)`` denoisers (the teacher's preconditioning): the student being trained (through
    its DDP wrapper when ``wrapped``), the same weights without gradient (the stop-gradient target), the frozen
    teacher; all reading ``conditioning`` (given stems) when there is one."""
    def of(model):
        denoiser = t.teacher.scheduler.denoiser(model)
        return lambda x, sigma: denoiser(x, sigma, conditioning=conditioning)

    raw = t.accelerator.unwrap_model(t.student)
    return of(t.student if wrapped else raw), of(raw), of(t.teacher.unet)


def batch_loss(t: Distillation, x0: torch.Tensor, generators: dict, wrapped: bool = True) -> torch.Tensor:
    """The distillation loss of latents ``x0`` ``(B, stems * C, frames)`` with the step's (or validation's) draws:
    pairs, noise, and for a conditioned teacher the given stems (``wrapped``: through the DDP wrapper)."""
    index = consistency.draw_pairs(x0.shape[0], len(t.sigmas), generators["sigma"]).to(x0.device)
    noise = torch.randn(x0.shape, generator=generators["noise"]).to(x0.device)
    conditioning, given = None, None
    if t.teacher.conditioned:
        options = t.cfg.get("conditioning") or {}
        conditioning, weight = losses.training_conditioning(x0, options, len(t.teacher.stem_names), t.sigma_data,
                                                            generators["stems"])
        given = ~weight.bool()
    student, target, teacher = denoisers(t, conditioning, wrapped)
    c = t.cfg
    return consistency.distillation_loss(
        student, teacher, x0, noise, index, t.sigmas, solver=c.get("teacher_solver", "heun"),
        distance=c.get("distance", "pseudo_huber"), huber_c=float(c.get("huber_c", 0.00054)),
        weighting=c.get("weighting", "uniform"), given=given, target=target)


def training_step(t: Distillation, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
    """One optimizer step, its draws seeded by (seed, step, rank): ``(loss, grad norm)``."""
    accelerator, rank = t.accelerator, t.accelerator.process_index
    generators = {name: step_generator(t.seed, step, rank, name) for name in ("sigma", "noise", "stems")}
    with accelerator.autocast():
        loss = batch_loss(t, batch.flatten(1, 2).to(accelerator.device), generators)
    t.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    grad_norm = clip_grad(accelerator, t.student.parameters(), t.cfg.get("grad_clip"))
    stop_if_not_finite(accelerator, step, t.args.output_dir, loss=loss.detach(), grad_norm=grad_norm)
    t.optimizer.step()
    t.lr_schedule.step()
    t.ema.step(t.student.parameters())
    return loss, grad_norm


@torch.no_grad()
def run_validation(t: Distillation, step: int) -> dict:
    """The loss on fixed validation latents with fixed draws, of the raw and the EMA weights; main process only."""
    raw = t.accelerator.unwrap_model(t.student)
    validation = {}
    for name, weights in (("loss_raw_weights", None), ("loss", t.ema)):
        if weights is not None:
            weights.store(raw.parameters())
            weights.copy_to(raw.parameters())
        generators = {n: step_generator(t.seed, i, 0, "validation") for i, n in enumerate(("sigma", "noise", "stems"))}
        # the unwrapped student: only this process validates (a DDP forward would wait for the others)
        validation[name] = float(batch_loss(t, t.val_latents.to(t.accelerator.device), generators, wrapped=False))
        if weights is not None:
            weights.restore(raw.parameters())
    t.accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=step)
    logger.info("validation at step %d: %s", step, validation)
    return validation


def train_loop(t: Distillation) -> None:
    """Steps from the resumed one to ``max_steps`` (or the time budget), logging, validating and checkpointing."""
    accelerator, cfg, max_steps = t.accelerator, t.cfg, int(t.cfg["max_steps"])
    validation, step = {}, t.start_step
    budget = TimeBudget(accelerator, t.args.time_budget_minutes, t.start_step, t.resumed)
    for batch in t.loader:
        loss, grad_norm = training_step(t, batch, step)
        step += 1
        last = step == max_steps or budget.expired()
        if step % int(cfg.get("log_every", 10)) == 0 or last:
            logs = {"train/loss": accelerator.gather(loss.detach()[None]).mean().item(), "train/grad_norm": grad_norm,
                    "train/lr": t.lr_schedule.get_last_lr()[0]}
            accelerator.log(logs, step=step)
            logger.info("%s: %s", budget.progress(step, max_steps),
                        " ".join(f"{k[6:]}={v:.4g}" for k, v in logs.items()))
        validation = validate_and_checkpoint(t, step, last, budget, validation, run_validation)
        if last:
            break


def main(argv=None):
    args = parse_args(argv)
    t = set_up(args)
    train_loop(t)
    steps = t.scheduler.config.num_inference_steps
    export_run(args, t.accelerator, description=(
        f"A few-step student of the teacher pipeline `{args.teacher}`, made by consistency distillation "
        f"(train/distill.py, docs/distillation.md): sample it with `sampler=\"consistency\"` ({steps} steps by "
        "default, its scheduler config's). Its VAE, stems and levels are the teacher's; see the teacher's model card "
        "for how the teacher was trained."))
    t.accelerator.end_training()


if __name__ == "__main__":
    run_main(main)
