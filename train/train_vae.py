"""Trains the SourceVAE as in MSLDM's reference code: 15 x multi-scale mel + 2 x feature matching + 1 x
least-squares GAN + 10 x KL, against a multi-period + multi-resolution STFT discriminator, on 1-s single-stem clips.

    accelerate launch train/train_vae.py --config tiny --output_dir runs/vae-tiny
    accelerate launch train/train_vae.py --config tiny --output_dir runs/vae-tiny --resume_from_checkpoint latest

Writes ``OUTPUT/checkpoint-N`` (resumable) and, at the end, ``OUTPUT/vae`` (a SourceVAE folder with its
``training_state.json``) for ``train/train_msldm.py --set msldm.vae=OUTPUT/vae``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mslddm.data.datasets import (MixtureClipDataset, MultiSourceSegmentDataset, SourceClipDataset, is_silent,
                                  load_tracks, validation_segments)
from mslddm.data.latents import load_vae
from mslddm.factory import build_vae
from mslddm.kinds import DEFAULT_KIND, KINDS, MIXTURE_LATENTS
from mslddm.stems import DEFAULT_STEMS
from mslddm.training import losses
from mslddm.training.checkpointing import STATE_FILE, atomic_folder, list_checkpoints
from mslddm.training.discriminator import SourceDiscriminator
from mslddm.training.runner import (clip_grad, common_arguments, load_run_recipe, log_audio, logger,
                                    make_accelerator, resume_step, stop_if_not_finite, tensorboard,
                                    TimeBudget, check_storage, run_main, validate_and_checkpoint,
                                    write_data_report)
from mslddm.training.seeding import step_dataloader, step_generator


class VAEForTraining(nn.Module):
    """Encode -> posterior sample -> decode in one ``forward``, so that DDP sees (and syncs) the whole VAE."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, audio: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(audio).latent_dist
        recon = self.vae.decode(posterior.sample(generator)).sample
        return recon[..., : audio.shape[-1]], posterior.kl()


def split_halves(features):
    """Discriminator features of ``cat([a, b])`` -> features of ``a``, features of ``b``."""
    first = [[f.chunk(2)[0] for f in d] for d in features]
    second = [[f.chunk(2)[1] for f in d] for d in features]
    return first, second


@torch.no_grad()
def validate(vae, segments: torch.Tensor, stem_names, mel_loss, writer, step: int, sample_rate: int):
    """Per-stem reconstruction quality of fixed validation segments (posterior means): mel distance, SI-SDR."""
    vae.eval()
    n, k, t = segments.shape
    recon = vae(segments.reshape(n * k, 1, t).to(vae.device, vae.dtype)).sample.float().cpu()
    t = recon.shape[-1]  # hop * frames - 8 samples
    recon, segments = recon.reshape(n, k, t), segments[..., :t]
    metrics = {}
    for i, stem in enumerate(stem_names):
        # Only where the stem sounds: a distance to silence says nothing about the VAE (and a stem silent in
        # every segment gets no number at all).
        ref, est = segments[:, i], recon[:, i]
        sounding = torch.tensor([not is_silent(r) for r in ref.numpy()])
        if sounding.any():
            metrics[f"mel_distance/{stem}"] = float(mel_loss(est[sounding], ref[sounding], reduce=False).mean())
            metrics[f"si_sdr/{stem}"] = float(losses.si_sdr(est[sounding], ref[sounding]).mean())
    mels = [metrics[f"mel_distance/{s}"] for s in stem_names if f"mel_distance/{s}" in metrics]
    metrics["mel_distance/mean"] = sum(mels) / len(mels)
    sdrs = [v for key, v in metrics.items() if key.startswith("si_sdr/")]
    if sdrs:
        metrics["si_sdr/mean"] = sum(sdrs) / len(sdrs)
    if writer is not None:
        for i, stem in enumerate(stem_names):
            log_audio(writer, f"validation/{stem}/reconstruction", recon[0, i], step, sample_rate)
            if step == 0 or not getattr(validate, "_logged_reference", False):
                log_audio(writer, f"validation/{stem}/reference", segments[0, i], step, sample_rate)
        validate._logged_reference = True
        log_audio(writer, "validation/mixture/reconstruction", recon[0].sum(0), step, sample_rate)
    vae.train()
    return metrics


def vae_source(recipe: dict, cfg: dict) -> str:
    """What the VAE learns: single stems (the SourceVAE, shared by MSLDM and ISLDM) or mixtures (the MixLDM
    baseline's MixtureVAE: the same class with num_stems x C latent channels, trained on sums of stems); by default
    mixtures when the recipe's model kind models the mix."""
    kind = KINDS.get(recipe.get("model") or DEFAULT_KIND)
    source = cfg.get("source", "mix" if kind is not None and kind.source == MIXTURE_LATENTS else "stems")
    if source not in ("stems", "mix"):
        raise ValueError(f"vae.source must be 'stems' or 'mix', got {source!r}.")
    return source


def model_arguments(args, recipe: dict, cfg: dict, source: str, stem_names: list[str]) -> dict:
    """The recipe's ``vae.model`` arguments; a new MixtureVAE gets the preset's latent channels per stem."""
    model_args = dict(cfg.get("model", {}))
    if source == "mix" and "latent_channels" not in model_args and not args.init_from:
        from mslddm.presets import PRESETS

        per_stem = PRESETS[recipe["preset"]]["vae"].get("latent_channels", 80)
        model_args["latent_channels"] = len(stem_names) * per_stem
        logger.info("MixtureVAE: %d latent channels (%d stems x %d)", model_args["latent_channels"],
                    len(stem_names), per_stem)
    return model_args


def build_models(args, recipe: dict, cfg: dict, model_args: dict):
    """``(vae, discriminator)``: a new VAE of the preset, or trained weights to continue from (a pipeline folder,
    a VAE folder or a Hub id, with fresh optimizers: a later session goes on from the bundled pipeline)."""
    torch.manual_seed(int(recipe.get("seed", 0)))
    if args.init_from:
        vae = load_vae(args.init_from)
        logger.info("Initialised the VAE from %s (%s)", args.init_from, type(vae).__name__)
    else:
        vae = build_vae(recipe["preset"], **model_args)
        if cfg.get("posterior_logvar_init") is not None:
            vae.set_posterior_logvar_bias(cfg["posterior_logvar_init"])
    return vae, SourceDiscriminator(**cfg.get("discriminator", {}))


def build_optimization(accelerator, cfg: dict, vae, discriminator):
    """The reference's optimizers (AdamW / Adam, betas (0.8, 0.99)) and ExponentialLR schedules, prepared:
    ``(model, discriminator, opt_g, opt_d, sched_g, sched_d)``."""
    betas = tuple(cfg.get("betas", (0.8, 0.99)))
    opt_g = torch.optim.AdamW(vae.parameters(), lr=float(cfg["learning_rate"]), betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=float(cfg.get("discriminator_learning_rate",
                                                                            cfg["learning_rate"])), betas=betas)
    gamma = float(cfg.get("lr_gamma", 0.999996))
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma)
    return accelerator.prepare(VAEForTraining(vae), discriminator, opt_g, opt_d, sched_g, sched_d)


@dataclass
class VAETraining:
    """Everything the loop, validation, checkpoints and export share, built once by :func:`set_up`."""

    args: Any
    recipe: dict
    cfg: dict
    source: str
    stem_names: list
    accelerator: Any
    vae: Any
    model: Any
    discriminator: Any
    opt_g: Any
    opt_d: Any
    sched_g: Any
    sched_d: Any
    mel_loss: Any
    weights: dict
    start_step: int = 0
    resumed: dict = field(default_factory=dict)
    loader: Any = None
    val_segments: Any = None
    val_names: list = field(default_factory=list)
    data_info: dict = field(default_factory=dict)
    writer: Any = None

    @property
    def seed(self) -> int:
        return int(self.recipe.get("seed", 0))

    def state(self, validation: dict, timing: dict) -> dict:
        return {"kind": "vae", "source": self.source, "recipe": self.recipe, "stem_names": self.stem_names,
                "validation": validation, "data": self.data_info, "timing": timing,
                "model_class": type(self.vae).__name__}

    def save_models(self, folder: Path):
        self.accelerator.unwrap_model(self.model).vae.save_pretrained(folder / "vae")


def set_up(args) -> VAETraining:
    """Models, optimizers and LR schedules, the losses' weights, then storage, resume and data."""
    recipe, cfg = load_run_recipe(args, "vae")
    accelerator = make_accelerator(args, cfg)
    logger.info("%d process(es) (%s), batch %d per process", accelerator.num_processes,
                accelerator.distributed_type, int(cfg["batch_size"]))
    source = vae_source(recipe, cfg)
    stem_names = recipe["data"].get("stems") or list(DEFAULT_STEMS)
    vae, discriminator = build_models(args, recipe, cfg, model_arguments(args, recipe, cfg, source, stem_names))
    prepared = build_optimization(accelerator, cfg, vae, discriminator)
    mel_loss = losses.MultiScaleMelLoss(vae.config.sampling_rate, **cfg.get("mel", {})).to(accelerator.device)
    weights = {"mel": 15.0, "feature": 2.0, "adversarial": 1.0, "kl": 10.0, **cfg.get("loss_weights", {})}
    training = VAETraining(args, recipe, cfg, source, stem_names, accelerator, vae, *prepared, mel_loss, weights)
    prepare_data(training)
    return training


def prepare_data(t: VAETraining) -> None:
    """Storage check, resume, the training clips' loader, fixed validation segments, data report and trackers."""
    accelerator, cfg, data_cfg = t.accelerator, t.cfg, t.recipe["data"]
    check_storage(accelerator, t.args.output_dir, [t.vae, t.discriminator], copies=4)  # weights, Adam's 2, vae/
    t.start_step, _, t.resumed = resume_step(accelerator, t.args)
    sr = t.vae.config.sampling_rate
    tracks, train_summary = load_tracks(data_cfg["root"], "train", t.stem_names, return_summary=True)

    def hop_multiple(seconds):  # whole latent frames, so that the reconstruction has the input's length
        return max(1, round(float(seconds) * sr / t.vae.hop_length)) * t.vae.hop_length

    clip_class = MixtureClipDataset if t.source == "mix" else SourceClipDataset
    clips = clip_class(tracks, clip_length=hop_multiple(cfg.get("clip_seconds", 1.0)),
                       clips_per_epoch=cfg.get("clips_per_epoch", 10_000), seed=t.seed)
    t.loader = step_dataloader(clips, int(cfg["batch_size"]), t.start_step, int(cfg["max_steps"]), accelerator,
                               int(cfg.get("num_workers", 0)))
    val_tracks, val_summary = load_tracks(data_cfg["root"], data_cfg.get("validation_split", "validation"),
                                          t.stem_names, return_summary=True)
    val_set = MultiSourceSegmentDataset(val_tracks, hop_multiple(cfg.get("validation_seconds", 2.0)),
                                        random_offsets=False)
    # Evenly spread fixed segments of the validation tracks, each readable and with sound.
    t.val_segments, val_report = validation_segments(val_set, int(cfg.get("validation_segments", 8)))
    t.val_names = t.stem_names
    if t.source == "mix":  # validate on the mixtures of the same segments
        t.val_segments, t.val_names = t.val_segments.sum(1, keepdim=True), ["mix"]
    write_data_report(accelerator, t.args.output_dir, train=train_summary.to_dict(),
                      validation=val_summary.to_dict(), validation_segments=val_report)
    t.data_info = {"root": str(data_cfg["root"]), "train_tracks": len(tracks),
                   "train_hours": round(sum(tr.num_samples for tr in tracks) / sr / 3600, 3),
                   "validation_tracks": len(val_tracks)}
    t.writer = tensorboard(accelerator)
    if accelerator.is_main_process:
        accelerator.init_trackers("train_vae")
        t.writer = tensorboard(accelerator)


def discriminator_step(t: VAETraining, recon: torch.Tensor, audio: torch.Tensor, step: int):
    """One discriminator step on detached reconstructions: ``(loss_d, grad norm)``."""
    accelerator, clip = t.accelerator, t.cfg.get("discriminator_grad_clip", 10.0)
    with accelerator.autocast():
        # Real and fake share one forward (one DDP call).
        fake_f, real_f = split_halves(t.discriminator(torch.cat([recon.detach(), audio])))
        loss_d = losses.discriminator_loss(fake_f, real_f)
    t.opt_d.zero_grad(set_to_none=True)
    accelerator.backward(loss_d)
    grad_d = clip_grad(accelerator, t.discriminator.parameters(), clip)
    stop_if_not_finite(accelerator, step, t.args.output_dir, loss_d=loss_d.detach(), grad_norm_d=grad_d)
    t.opt_d.step()
    t.sched_d.step()
    return loss_d, grad_d


def generator_step(t: VAETraining, recon: torch.Tensor, audio: torch.Tensor, kl, adversarial: bool, step: int):
    """One VAE step on mel + KL (+ feature matching and adversarial terms): ``(terms, loss_g, grad norm)``."""
    accelerator = t.accelerator
    with accelerator.autocast():
        terms = {"mel": t.mel_loss(recon, audio), "kl": kl.mean()}
        if adversarial:
            # The generator step needs no discriminator gradients: run the bare module (outside DDP, whose
            # reducer would wait for them) with its weights frozen for this forward.
            plain = accelerator.unwrap_model(t.discriminator).requires_grad_(False)
            fake_f, real_f = split_halves(plain(torch.cat([recon, audio])))
            plain.requires_grad_(True)
            terms.update(feature=losses.feature_matching_loss(fake_f, real_f),
                         adversarial=losses.generator_adversarial_loss(fake_f))
        loss_g = sum(t.weights[k] * v for k, v in terms.items())
    t.opt_g.zero_grad(set_to_none=True)
    accelerator.backward(loss_g)
    clip = t.cfg.get("grad_clip", 1000.0)
    grad_g = clip_grad(accelerator, t.model.parameters(), clip)
    stop_if_not_finite(accelerator, step, t.args.output_dir, loss_g=loss_g.detach(), grad_norm_g=grad_g)
    t.opt_g.step()
    t.sched_g.step()
    return terms, loss_g, grad_g


def training_step(t: VAETraining, batch: torch.Tensor, step: int) -> dict:
    """One step: the discriminator's (from ``discriminator_start_step``), then the VAE's; the losses (tensors, read
    only when logged: reading one waits for the device) and gradient norms."""
    audio = batch.to(t.accelerator.device)
    gen = step_generator(t.seed, step, t.accelerator.process_index, "posterior")
    # Before `discriminator_start_step` (default 0, the reference: adversarial from the start) the discriminator
    # is not run at all and the VAE learns from mel + KL alone: an adversarial warm-up for short schedules, where
    # a GAN that starts on noise costs more steps than it gives back.
    adversarial = step >= int(t.cfg.get("discriminator_start_step", 0))
    with t.accelerator.autocast():
        recon, kl = t.model(audio, generator=gen)
        audio = audio[..., : recon.shape[-1]]  # the decoder returns hop * frames - 8 samples
    loss_d, grad_d = torch.zeros(()), float("nan")
    if adversarial:
        loss_d, grad_d = discriminator_step(t, recon, audio, step)
    terms, loss_g, grad_g = generator_step(t, recon, audio, kl, adversarial, step)
    return {**{f"train/{k}": v for k, v in terms.items()}, "train/loss_g": loss_g, "train/loss_d": loss_d,
            "train/grad_norm_g": grad_g, "train/grad_norm_d": grad_d}


def train_loop(t: VAETraining) -> None:
    """Steps from the resumed one to ``max_steps`` (or the time budget), logging, validating and checkpointing."""
    accelerator, cfg, max_steps = t.accelerator, t.cfg, int(t.cfg["max_steps"])
    validation, step = {}, t.start_step
    t.model.train()
    t.discriminator.train()
    budget = TimeBudget(accelerator, t.args.time_budget_minutes, t.start_step, t.resumed)
    for batch in t.loader:
        numbers = training_step(t, batch, step)
        step += 1
        last = step == max_steps or budget.expired()
        if step % int(cfg.get("log_every", 10)) == 0 or last:
            logs = {**{k: float(v) for k, v in numbers.items()}, "train/lr": t.sched_g.get_last_lr()[0]}
            accelerator.log(logs, step=step)
            logger.info("step %d: %s", step, " ".join(f"{k[6:]}={v:.4g}" for k, v in logs.items()))
        validation = validate_and_checkpoint(t, step, last, budget, validation, run_validation)
        if last:
            break


def run_validation(t, step: int) -> dict:
    """The mel distance of the VAE's reconstruction on the validation segments, logged."""
    validation = validate(t.accelerator.unwrap_model(t.model).vae, t.val_segments, t.val_names, t.mel_loss, t.writer,
                          step, t.vae.config.sampling_rate)
    t.accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=step)
    logger.info("validation at step %d: %s", step, validation)
    return validation


def export(args, accelerator) -> None:
    """The trained VAE with how it was made (train_msldm.py records it in the pipeline's model card)."""
    if not accelerator.is_main_process:
        return
    last = list_checkpoints(args.output_dir)[-1]
    out = Path(args.output_dir) / "vae"
    with atomic_folder(out) as tmp:  # a kill during export leaves the previous export, never half of one
        shutil.copytree(last / "vae", tmp, dirs_exist_ok=True)
        shutil.copy(last / STATE_FILE, tmp / STATE_FILE)
    logger.info("Exported the SourceVAE to %s", out)
    if args.push_to_hub:
        if not args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id owner/name.")
        load_vae(str(out)).push_to_hub(args.hub_model_id)


def main(argv=None):
    args = common_arguments(__doc__.splitlines()[0]).parse_args(argv)
    training = set_up(args)
    train_loop(training)
    export(args, training.accelerator)
    training.accelerator.end_training()


if __name__ == "__main__":
    run_main(main)
