"""Trains the SourceVAE as in MSLDM's reference code: 15 x multi-scale mel + 2 x feature matching + 1 x
least-squares GAN + 10 x KL, against a multi-period + multi-resolution STFT discriminator, on 1-s single-stem clips.

    accelerate launch train/train_vae.py --config tiny --output_dir runs/vae-tiny
    accelerate launch train/train_vae.py --config tiny --output_dir runs/vae-tiny --resume_from_checkpoint latest

Writes ``OUTPUT/checkpoint-N`` (resumable) and, at the end, ``OUTPUT/vae`` (a SourceVAE folder with its
``training_state.json``) for ``train/train_msldm.py --set msldm.vae=OUTPUT/vae``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from torch import nn

from mslddm.data.datasets import (MixtureClipDataset, MultiSourceSegmentDataset, SourceClipDataset, is_silent,
                                  load_tracks, validation_segments)
from mslddm.data.latents import load_vae
from mslddm.factory import build_vae
from mslddm.stems import DEFAULT_STEMS
from mslddm.training import losses
from mslddm.training.checkpointing import STATE_FILE, atomic_folder, list_checkpoints, save_checkpoint
from mslddm.training.discriminator import SourceDiscriminator
from mslddm.training.runner import (clip_grad, common_arguments, load_run_recipe, log_audio, logger,
                                    make_accelerator, resume_step, stop_if_not_finite, tensorboard,
                                    TimeBudget, check_storage, run_main, write_data_report)
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


def main(argv=None):
    args = common_arguments(__doc__.splitlines()[0]).parse_args(argv)
    recipe, cfg = load_run_recipe(args, "vae")
    accelerator = make_accelerator(args, cfg)
    seed, max_steps, batch_size = int(recipe.get("seed", 0)), int(cfg["max_steps"]), int(cfg["batch_size"])
    data_cfg = recipe["data"]
    logger.info("%d process(es) (%s), batch %d per process", accelerator.num_processes,
                accelerator.distributed_type, batch_size)

    # What the VAE learns: single stems (the SourceVAE, shared by MSLDM and ISLDM) or mixtures (the MixLDM
    # baseline's MixtureVAE: the same class with num_stems x C latent channels, trained on sums of stems).
    source = cfg.get("source", "mix" if recipe.get("model") == "mixldm" else "stems")
    if source not in ("stems", "mix"):
        raise ValueError(f"vae.source must be 'stems' or 'mix', got {source!r}.")
    stem_names = data_cfg.get("stems") or list(DEFAULT_STEMS)
    model_args = dict(cfg.get("model", {}))
    if source == "mix" and "latent_channels" not in model_args and not args.init_from:
        from mslddm.presets import PRESETS

        per_stem = PRESETS[recipe["preset"]]["vae"].get("latent_channels", 80)
        model_args["latent_channels"] = len(stem_names) * per_stem
        logger.info("MixtureVAE: %d latent channels (%d stems x %d)", model_args["latent_channels"],
                    len(stem_names), per_stem)

    # 1. Models, optimizers, LR schedules (the reference's: AdamW / Adam, betas (0.8, 0.99), ExponentialLR)
    torch.manual_seed(seed)
    if args.init_from:
        # Continue from trained weights (a pipeline folder, a VAE folder or a Hub id) with fresh optimizers:
        # a later session goes on from the bundled pipeline instead of starting over.
        vae = load_vae(args.init_from)
        logger.info("Initialised the VAE from %s (%s)", args.init_from, type(vae).__name__)
    else:
        vae = build_vae(recipe["preset"], **model_args)
        if cfg.get("posterior_logvar_init") is not None:
            vae.set_posterior_logvar_bias(cfg["posterior_logvar_init"])
    discriminator = SourceDiscriminator(**cfg.get("discriminator", {}))
    betas = tuple(cfg.get("betas", (0.8, 0.99)))
    opt_g = torch.optim.AdamW(vae.parameters(), lr=float(cfg["learning_rate"]), betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=float(cfg.get("discriminator_learning_rate",
                                                                            cfg["learning_rate"])), betas=betas)
    gamma = float(cfg.get("lr_gamma", 0.999996))
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma)
    model, discriminator, opt_g, opt_d, sched_g, sched_d = accelerator.prepare(
        VAEForTraining(vae), discriminator, opt_g, opt_d, sched_g, sched_d)
    mel_loss = losses.MultiScaleMelLoss(vae.config.sampling_rate, **cfg.get("mel", {})).to(accelerator.device)
    weights = {"mel": 15.0, "feature": 2.0, "adversarial": 1.0, "kl": 10.0, **cfg.get("loss_weights", {})}

    # 2. Storage, resume, data
    check_storage(accelerator, args.output_dir, [vae, discriminator], copies=4)  # weights, Adam's 2, vae/
    start_step, _, resumed = resume_step(accelerator, args)
    sr = vae.config.sampling_rate
    tracks, train_summary = load_tracks(data_cfg["root"], "train", stem_names, return_summary=True)
    def hop_multiple(seconds):  # whole latent frames, so that the reconstruction has the input's length
        return max(1, round(float(seconds) * sr / vae.hop_length)) * vae.hop_length

    clip_class = MixtureClipDataset if source == "mix" else SourceClipDataset
    clips = clip_class(tracks, clip_length=hop_multiple(cfg.get("clip_seconds", 1.0)),
                       clips_per_epoch=cfg.get("clips_per_epoch", 10_000), seed=seed)
    loader = step_dataloader(clips, batch_size, start_step, max_steps, accelerator, int(cfg.get("num_workers", 0)))
    val_tracks, val_summary = load_tracks(data_cfg["root"], data_cfg.get("validation_split", "validation"),
                                          stem_names, return_summary=True)
    val_set = MultiSourceSegmentDataset(val_tracks, hop_multiple(cfg.get("validation_seconds", 2.0)),
                                        random_offsets=False)
    # Evenly spread fixed segments of the validation tracks, each readable and with sound.
    val_segments, val_report = validation_segments(val_set, int(cfg.get("validation_segments", 8)))
    val_names = stem_names
    if source == "mix":  # validate on the mixtures of the same segments
        val_segments, val_names = val_segments.sum(1, keepdim=True), ["mix"]
    write_data_report(accelerator, args.output_dir, train=train_summary.to_dict(),
                      validation=val_summary.to_dict(), validation_segments=val_report)
    writer = tensorboard(accelerator)
    if accelerator.is_main_process:
        accelerator.init_trackers("train_vae")
        writer = tensorboard(accelerator)

    def state(step, validation):
        return {"kind": "vae", "source": source, "recipe": recipe, "stem_names": stem_names, "validation": validation,
                "data": {"root": str(data_cfg["root"]), "train_tracks": len(tracks),
                         "train_hours": round(sum(t.num_samples for t in tracks) / sr / 3600, 3),
                         "validation_tracks": len(val_tracks)}, "timing": budget.timing(step),
                "model_class": type(vae).__name__}

    def save_models(folder: Path):
        accelerator.unwrap_model(model).vae.save_pretrained(folder / "vae")

    # 3. Loop. Before `discriminator_start_step` (default 0, the reference: adversarial from the start) the
    # discriminator is not run at all and the VAE learns from mel + KL alone: an adversarial warm-up for short
    # schedules, where a GAN that starts on noise costs more steps than it gives back.
    disc_start = int(cfg.get("discriminator_start_step", 0))
    validation, step = {}, start_step
    model.train()
    discriminator.train()
    budget = TimeBudget(accelerator, args.time_budget_minutes, start_step, resumed)
    for batch in loader:
        audio = batch.to(accelerator.device)
        gen = step_generator(seed, step, accelerator.process_index, "posterior")
        adversarial = step >= disc_start
        with accelerator.autocast():
            recon, kl = model(audio, generator=gen)
            audio = audio[..., : recon.shape[-1]]  # the decoder returns hop * frames - 8 samples
        loss_d, grad_d = torch.zeros(()), float("nan")
        if adversarial:
            with accelerator.autocast():
                # Discriminator step on detached reconstructions; real and fake share one forward (one DDP call).
                fake_f, real_f = split_halves(discriminator(torch.cat([recon.detach(), audio])))
                loss_d = losses.discriminator_loss(fake_f, real_f)
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(loss_d)
            grad_d = clip_grad(accelerator, discriminator.parameters(), cfg.get("discriminator_grad_clip", 10.0))
            unclipped = math.isnan(grad_d) and not cfg.get("discriminator_grad_clip", 10.0)  # no norm measured
            stop_if_not_finite(accelerator, step, args.output_dir, loss_d=loss_d.detach(),
                               grad_norm_d=0.0 if unclipped else grad_d)
            opt_d.step()
            sched_d.step()

        with accelerator.autocast():
            terms = {"mel": mel_loss(recon, audio), "kl": kl.mean()}
            if adversarial:
                # The generator step needs no discriminator gradients: run the bare module (outside DDP, whose
                # reducer would wait for them) with its weights frozen for this forward.
                plain = accelerator.unwrap_model(discriminator).requires_grad_(False)
                fake_f, real_f = split_halves(plain(torch.cat([recon, audio])))
                plain.requires_grad_(True)
                terms.update(feature=losses.feature_matching_loss(fake_f, real_f),
                             adversarial=losses.generator_adversarial_loss(fake_f))
            loss_g = sum(weights[k] * v for k, v in terms.items())
        opt_g.zero_grad(set_to_none=True)
        accelerator.backward(loss_g)
        grad_g = clip_grad(accelerator, model.parameters(), cfg.get("grad_clip", 1000.0))
        stop_if_not_finite(accelerator, step, args.output_dir, loss_g=loss_g.detach(),
                           grad_norm_g=0.0 if math.isnan(grad_g) and not cfg.get("grad_clip", 1000.0) else grad_g)
        opt_g.step()
        sched_g.step()
        step += 1
        last = step == max_steps or budget.expired()

        if step % int(cfg.get("log_every", 10)) == 0 or last:
            logs = {f"train/{k}": v.item() for k, v in terms.items()}
            logs.update({"train/loss_g": loss_g.item(), "train/loss_d": loss_d.item(), "train/grad_norm_g": grad_g,
                         "train/grad_norm_d": grad_d, "train/lr": sched_g.get_last_lr()[0]})
            accelerator.log(logs, step=step)
            logger.info("step %d: %s", step, " ".join(f"{k[6:]}={v:.4g}" for k, v in logs.items()))
        if step % int(cfg.get("validate_every", 500)) == 0 or last:
            if accelerator.is_main_process:
                validation = validate(accelerator.unwrap_model(model).vae, val_segments, val_names, mel_loss,
                                      writer, step, sr)
                accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=step)
                logger.info("validation at step %d: %s", step, validation)
            accelerator.wait_for_everyone()
        if step % int(cfg.get("checkpointing_steps", 500)) == 0 or last:
            save_checkpoint(accelerator, args.output_dir, step, state(step, validation), save_models,
                            cfg.get("checkpoints_total_limit"))
        if last:
            break

    # 4. Export the trained VAE with how it was made (train_msldm.py records it in the pipeline's model card)
    if accelerator.is_main_process:
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
    accelerator.end_training()


if __name__ == "__main__":
    run_main(main)
