"""Trains the multi-source latent diffusion UNet (MSLDM) with the EDM loss of the reference code on the stems'
SourceVAE latents (pre-encoded with `mslddm encode-latents`, or encoded on the fly from audio segments).

    accelerate launch train/train_msldm.py --config tiny --output_dir runs/msldm-tiny --set msldm.vae=runs/vae-tiny/vae
    accelerate launch train/train_msldm.py ... --resume_from_checkpoint latest

The recipe's ``model`` picks what is trained (docs/baselines.md): ``msldm`` (default; one UNet over all stems),
``isldm`` (the paper's baseline of independent per-stem UNets, one IndependentSourceUNet1DModel), ``mixldm``
(the baseline of one UNet on the latent of the mix: a MixtureVAE and `encode-latents --mix` latents) or ``msdm``
(MSDM: the UNet on the stems' waveforms, no VAE; ``segment_frames`` are then samples; docs/msdm.md).

Writes ``OUTPUT/checkpoint-N`` (resumable; ``vae/``, ``unet/``, ``unet_ema/``, ``scheduler/`` inside) and, at the
end, the complete pipeline folder ``OUTPUT/pipeline`` (EMA weights) with a model card.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mslddm import (EDMScheduler, IndependentSourceUNet1DModel, MixtureLatentPipeline, MultiSourceLatentPipeline,
                    MultiSourceUNet1DModel)
from mslddm.data.datasets import (LatentSegmentDataset, MultiSourceSegmentDataset, load_tracks, measure_stem_levels,
                                   validation_segments)
from mslddm.data.latents import load_vae
from mslddm.models import load_unet_folder
from mslddm.models.unet_1d_multisource import stem_conditioning, stem_conditioning_channels
from mslddm.pipelines.pipeline_multisource_diffusion import MultiSourceDiffusionPipeline, WaveformCodec
from mslddm.presets import PRESETS
from mslddm.schedulers.scheduling_edm import sample_training_sigmas
from mslddm.stems import DEFAULT_STEMS
from mslddm.training import losses
from mslddm.training.checkpointing import STATE_FILE, export_pipeline, list_checkpoints, save_checkpoint
from mslddm.training.runner import (clip_grad, common_arguments, load_run_recipe, log_audio, logger, lr_multiplier,
                                    make_accelerator, resume_step, stop_if_not_finite, tensorboard,
                                    TimeBudget, check_storage, run_main, write_data_report)
from mslddm.training.seeding import step_dataloader, step_generator

MODELS = ("msldm", "isldm", "mixldm", "msdm")


def training_data(recipe: dict, cfg: dict, vae, split: str, random_offsets: bool, seed: int):
    """``(dataset, stem_names, info)``: latent segments ``(K, C, F)`` from an encode-latents folder, or audio
    segments ``(K, F * hop)`` to be encoded on the fly."""
    frames = int(cfg["segment_frames"]) if split == "train" else None
    if cfg.get("latents"):
        if frames is None:
            frames = int(round(float(cfg.get("validation_seconds", 12.0)) * vae.config.sampling_rate / vae.hop_length))
        ds = LatentSegmentDataset(cfg["latents"], split, frames, random_offsets=random_offsets, seed=seed)
        hours = float(ds.lengths.sum()) * vae.hop_length / vae.config.sampling_rate / 3600
        return ds, list(ds.stem_names), {"latents": str(cfg["latents"]), f"{split}_files": len(ds.files),
                                         f"{split}_hours": round(hours, 3)}
    data = recipe["data"]
    tracks, summary = load_tracks(data["root"], split, data.get("stems") or list(DEFAULT_STEMS), return_summary=True)
    if frames is None:
        frames = int(round(float(cfg.get("validation_seconds", 12.0)) * vae.config.sampling_rate / vae.hop_length))
    ds = MultiSourceSegmentDataset(tracks, frames * vae.hop_length, random_offsets=random_offsets, seed=seed)
    hours = sum(t.num_samples for t in tracks) / vae.config.sampling_rate / 3600
    return ds, list(ds.stem_names), {"root": str(data["root"]), f"{split}_tracks": len(tracks),
                                     f"{split}_hours": round(hours, 3), "report": summary.to_dict()}


@torch.no_grad()
def to_latents(batch: torch.Tensor, vae, frames: int) -> torch.Tensor:
    """``(B, K, C, F)`` latents -> ``(B, K C, F)``; ``(B, K, T)`` audio -> posterior means ``(B, K C, F)`` (a
    waveform model's audio is its own latent)."""
    if batch.ndim == 4:
        return batch.flatten(1, 2)
    if isinstance(vae, WaveformCodec):
        return batch[..., :frames].float()
    b, k, t = batch.shape
    means = vae.encode(batch.reshape(b * k, 1, t).to(vae.dtype)).latent_dist.mean.float()[..., :frames]
    return means.reshape(b, k * means.shape[1], frames)


def training_levels(recipe: dict, stem_names: list[str], sample_rate: int, init_from=None):
    """The stems' training levels (dBFS) the pipeline records (:mod:`mslddm.loudness`): measured on the training
    audio when it is here, else the ``--init_from`` pipeline's, else None (given stems are then encoded at their own
    level)."""
    root = (recipe.get("data") or {}).get("root")
    if root and stem_names != ["mix"] and Path(root).is_dir():
        try:
            return measure_stem_levels(root, "train", stem_names, sample_rate)
        except (ValueError, OSError) as error:
            logger.warning("The stems' training levels could not be measured on %s: %s", root, error)
    index = Path(init_from or ".") / "model_index.json"
    if init_from and index.is_file():
        return json.loads(index.read_text()).get("stem_levels_dbfs")
    return None


@torch.no_grad()
def measure_sigma_data(cfg: dict, train_set, vae, frames: int, items: int = 64) -> float:
    """The RMS of the training latents: recorded in ``latents.json`` by encode-latents, else measured on ``items``
    evenly spread training segments encoded now."""
    if cfg.get("latents"):
        from mslddm.data.latents import measured_sigma_data

        return round(measured_sigma_data(cfg["latents"]), 4)
    picks = torch.linspace(0, len(train_set) - 1, min(items, len(train_set))).long()
    squares = [to_latents(train_set[int(i)][None].to(vae.device), vae, frames).pow(2).mean() for i in picks]
    return round(float(torch.stack(squares).mean().sqrt()), 4)


def conditioned(unet) -> bool:
    """Whether the UNet was built for trained partial generation (it reads given stems as conditioning)."""
    return bool(getattr(unet.config, "conditioning_channels", 0))


def with_conditioning(unet, channels: int):
    """The same UNet with a (zero-initialised) conditioning input: it starts equal to ``unet``."""
    if unet.config.conditioning_channels == channels:
        return unet
    if unet.config.conditioning_channels:
        raise ValueError(f"The UNet's conditioning takes {unet.config.conditioning_channels} channels, not {channels}.")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}  # _use_default_values would win
    model = type(unet).from_config({**config, "conditioning_channels": channels})
    missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not key.startswith("to_cond.") for key in missing):
        raise RuntimeError(f"Adding conditioning changed more than to_cond: missing {missing}, unexpected {unexpected}.")
    return model.to(unet.device, unet.dtype)


def parameter_groups(unet, cfg: dict) -> list[dict]:
    """The optimizer's parameter groups: one, or with ``msldm.conditioning.learning_rate`` the (new, zero-initialised)
    conditioning input apart at its own rate, so that it learns while the rest continues gently."""
    rate = (cfg.get("conditioning") or {}).get("learning_rate")
    if rate is None:
        return [{"params": list(unet.parameters())}]
    named = dict(unet.named_parameters())
    cond = [p for n, p in named.items() if n.startswith("to_cond.")]
    return [{"params": [p for n, p in named.items() if not n.startswith("to_cond.")]},
            {"params": cond, "lr": float(rate)}]


def training_conditioning(x0: torch.Tensor, options: dict, num_stems: int, sigma_data: float, generator):
    """Random given stems (and continuation prefixes) for one batch: the UNet's conditioning input and the loss
    weight (1 on the generated stems' channels and frames)."""
    given = losses.draw_given_stems(x0.shape[0], num_stems, float(options.get("given_probability", 0.5)),
                                    float(options.get("total_probability", 0.25)), generator)
    frames = losses.draw_given_frames(given, x0.shape[-1], float(options.get("continuation_probability", 0.1)),
                                      generator).to(x0.device)
    weight = (~frames).repeat_interleave(x0.shape[1] // num_stems, dim=1)
    return stem_conditioning(x0, frames, sigma_data), weight


@torch.no_grad()
def validation_loss(unet, latents: torch.Tensor, sigma_data: float, seed: int, sigmas=(0.05, 0.2, 0.5, 1.0, 2.0),
                    clip=None, given: int | None = None, num_stems: int = 1):
    """EDM loss of fixed latents at fixed sigmas with fixed noise: comparable across steps and runs. With ``given``
    (a stem index), that stem is given (as conditioning to a conditioned UNet; to any UNet its noisy channels,
    as imputation gives them) and the loss is taken on the other stems."""
    gen = step_generator(seed, 0, 0, "validation")
    total, weight, conditioning = 0.0, None, None
    if given is not None:
        mask = torch.zeros(latents.shape[0], num_stems, latents.shape[-1], dtype=torch.bool)
        mask[:, given] = True
        weight = (~mask).repeat_interleave(latents.shape[1] // num_stems, dim=1).to(unet.device)
        if conditioned(unet):
            conditioning = stem_conditioning(latents, mask, sigma_data).to(unet.device)
    for s in sigmas:
        sigma = torch.full((latents.shape[0],), float(s))
        noise = torch.randn(latents.shape, generator=gen)
        denoised = losses.edm_denoise(unet, (latents + s * noise).to(unet.device, unet.dtype),
                                      sigma.to(unet.device), sigma_data, clip=clip, conditioning=conditioning)
        total += float(losses.edm_training_loss(denoised, latents.to(denoised.device), sigma.to(unet.device),
                                                sigma_data, weight=weight))
    return total / len(sigmas)


@torch.no_grad()
def validate(pipe: MultiSourceLatentPipeline, latents: torch.Tensor, cfg: dict, seed: int, writer, step: int):
    """Validation loss, and a total and a partial generation (first stem given) logged as audio."""
    pipe.unet.eval()
    sigma_data, clip = pipe.scheduler.config.sigma_data, pipe.scheduler.config.clip_denoised
    metrics = {"loss": validation_loss(pipe.unet, latents, sigma_data, seed, clip=clip)}
    if pipe.generates_stems and len(pipe.stem_names) > 1:
        # Accompaniment at the loss level: each stem given in turn, the loss on the others (comparable between a
        # conditioned UNet and one that only sees the given stems' noisy channels).
        metrics["loss_given_one"] = sum(
            validation_loss(pipe.unet, latents, sigma_data, seed, clip=clip, given=i, num_stems=len(pipe.stem_names))
            for i in range(len(pipe.stem_names))) / len(pipe.stem_names)
    names, sr, seconds = pipe.stem_names, pipe.sample_rate, float(cfg.get("validation_seconds", 12.0))
    steps = cfg.get("validation_steps")  # None: the sampler's default (the scheduler's table)
    kwargs = dict(audio_length_in_s=seconds, num_inference_steps=None if steps is None else int(steps),
                  sampler=cfg.get("validation_sampler", "dpmpp_2m"))
    total = pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
    metrics["total_rms"] = float((total.mixture ** 2).mean() ** 0.5)
    if not pipe.generates_stems:  # MixLDM: a mixture, nothing to give
        if writer is not None:
            log_audio(writer, "generation/total/mixture", torch.from_numpy(total.mixture[0]), step, sr)
        pipe.unet.train()
        return metrics
    given = pipe.decode_latents(latents[:1])[0, 0].float().cpu().numpy()
    partial = pipe(stems={names[0]: given}, generator=torch.Generator().manual_seed(seed + 1), **kwargs)
    if writer is not None:
        log_audio(writer, "generation/total/mixture", torch.from_numpy(total.mixture[0]), step, sr)
        for i, name in enumerate(names):
            log_audio(writer, f"generation/total/{name}", torch.from_numpy(total.stems[0, i]), step, sr)
        log_audio(writer, f"generation/partial_given_{names[0]}/mixture", torch.from_numpy(partial.mixture[0]),
                  step, sr)
    pipe.unet.train()
    return metrics


def main(argv=None):
    args = common_arguments(__doc__.splitlines()[0]).parse_args(argv)
    recipe, cfg = load_run_recipe(args, "msldm")
    kind = recipe.get("model", "msldm")
    if kind not in MODELS:
        raise ValueError(f"The recipe's model must be one of {MODELS}, got {kind!r}.")
    accelerator = make_accelerator(args, cfg)
    seed, max_steps, batch_size = int(recipe.get("seed", 0)), int(cfg["max_steps"]), int(cfg["batch_size"])
    logger.info("%d process(es) (%s), batch %d per process", accelerator.num_processes,
                accelerator.distributed_type, batch_size)
    if not cfg.get("vae") and args.init_from and kind != "msdm":
        cfg["vae"] = args.init_from  # continuing a pipeline: its own VAE, unless another one is named
    if not cfg.get("vae") and kind != "msdm":
        raise ValueError("The recipe's msldm.vae is not set: pass --set msldm.vae=PATH (a VAE folder such as "
                         "train_vae.py's OUTPUT/vae, or a pipeline folder).")
    if kind == "msdm" and (cfg.get("vae") or cfg.get("latents")):
        raise ValueError("model msdm learns the stems' waveforms: it takes no msldm.vae and no msldm.latents.")

    # 1. Frozen VAE (a waveform model: the identity), data (stem names and count come from the data), UNet, EMA,
    #    optimizer
    if kind == "msdm":
        vae = WaveformCodec(int(recipe["data"].get("sample_rate", 22050)))
    else:
        vae = load_vae(str(cfg["vae"])).to(accelerator.device).eval().requires_grad_(False)
    train_set, stem_names, data_info = training_data(recipe, cfg, vae, "train", True, seed)
    val_set, val_stems, val_info = training_data(recipe, cfg, vae, recipe["data"].get("validation_split", "validation"),
                                                 False, seed)
    if val_stems != stem_names:
        raise ValueError(f"Training stems {stem_names} differ from validation stems {val_stems}.")
    mixture_of = None
    if kind == "mixldm":
        # The mix as one source: latents from `encode-latents --mix` (stems ["mix"]), or audio summed on the fly.
        if cfg.get("latents"):
            if stem_names != ["mix"]:
                raise ValueError(f"model mixldm needs mixture latents (`mslddm encode-latents --mix`), but "
                                 f"{cfg['latents']} holds the stems {stem_names}.")
            import json

            mixture_of = json.loads((Path(cfg["latents"]) / "latents.json").read_text()).get("mixture_of")
        else:
            mixture_of = stem_names
        mixture_of, stem_names = list(mixture_of or DEFAULT_STEMS), ["mix"]
    elif stem_names == ["mix"]:
        raise ValueError(f"{cfg.get('latents')} holds mixture latents; train them with a mixldm recipe "
                         "(model: mixldm), or encode the stems without --mix.")
    frames = int(cfg["segment_frames"])
    torch.manual_seed(seed)
    in_channels = len(stem_names) * vae.config.latent_channels
    unet_cls = IndependentSourceUNet1DModel if kind == "isldm" else MultiSourceUNet1DModel
    if args.init_from:
        # Continue from a pipeline's UNet (fresh optimizer and EMA): later sessions build on the bundled weights.
        unet = load_unet_folder(args.init_from, subfolder="unet")
        if not isinstance(unet, unet_cls):
            raise ValueError(f"--init_from {args.init_from}: its UNet is a {type(unet).__name__}, but the recipe "
                             f"trains {kind} ({unet_cls.__name__}).")
        if unet.config.in_channels != in_channels:
            raise ValueError(f"--init_from {args.init_from}: its UNet takes {unet.config.in_channels} channels, but "
                             f"{len(stem_names)} stems x {vae.config.latent_channels} latent channels = {in_channels}.")
        logger.info("Initialised the UNet from %s", args.init_from)
    else:
        architecture = PRESETS[recipe["preset"]]["waveform_unet" if kind == "msdm" else "unet"]
        unet_kwargs = {**architecture, **cfg.get("model", {}), "in_channels": in_channels}
        if kind == "isldm":
            unet_kwargs["num_sources"] = len(stem_names)
        if "window_frames" not in unet_kwargs:
            # The pipeline's generation window: the longest length the recipe trains or validates at (validation
            # samples clips of validation_seconds, so the model is seen working at that length), rounded up to
            # the UNet's multiple so that such a clip is one window (rounded down, a 12-s clip took two windows:
            # twice the model evaluations and a seam). Passed to the constructor, so that the config (and every
            # copy from_config makes) records it.
            with torch.device("meta"):
                multiple = unet_cls(**unet_kwargs).length_multiple
            val_frames = math.ceil(float(cfg.get("validation_seconds", 12.0)) * vae.config.sampling_rate
                                   / vae.hop_length)
            unet_kwargs["window_frames"] = max(frames, math.ceil(val_frames / multiple) * multiple)
        unet = unet_cls(**unet_kwargs)
    conditioning = cfg.get("conditioning")
    if conditioning:
        if kind != "msldm":
            raise ValueError(f"msldm.conditioning (trained partial generation) is for model msldm, not {kind}.")
        unet = with_conditioning(unet, stem_conditioning_channels(len(stem_names), vae.config.latent_channels))
        logger.info("Trained conditioning: %s", conditioning)
    length_multiple = unet.length_multiple
    if frames % length_multiple:
        raise ValueError(f"msldm.segment_frames={frames} must be a multiple of the UNet's {length_multiple}.")
    if cfg.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    scheduler_cfg = dict(cfg.get("scheduler") or {})
    if scheduler_cfg.get("sigma_data") is None:
        scheduler_cfg["sigma_data"] = measure_sigma_data(cfg, train_set, vae, frames)
        logger.info("sigma_data = %.4f (the RMS of the training latents)", scheduler_cfg["sigma_data"])
    scheduler = EDMScheduler(**scheduler_cfg)
    sigma_data = float(scheduler.config.sigma_data)
    ema = None
    if cfg.get("use_ema", True):
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=float(cfg.get("ema_decay", 0.999)),
                       model_cls=unet_cls, model_config=unet.config)
        accelerator.register_for_checkpointing(ema)
    optimizer = torch.optim.Adam(parameter_groups(unet, cfg), lr=float(cfg["learning_rate"]),
                                 betas=tuple(cfg.get("betas", (0.9, 0.99))))
    schedule = dict(warmup_steps=int(cfg.get("lr_warmup_steps", 0)), decay_start=cfg.get("lr_decay_start"),
                    decay_steps=int(cfg.get("lr_decay_steps", 0)), final_ratio=float(cfg.get("lr_final_ratio", 0.1)))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, **schedule))
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)
    if ema is not None:
        ema.to(accelerator.device)

    # 2. Storage, resume, loaders, fixed validation latents
    check_storage(accelerator, args.output_dir, [unet], copies=6)  # weights, Adam's 2, EMA, unet/, unet_ema/
    start_step, _, resumed = resume_step(accelerator, args)
    loader = step_dataloader(train_set, batch_size, start_step, max_steps, accelerator, int(cfg.get("num_workers", 0)))
    val_frames = val_set.segment if cfg.get("latents") else val_set.segment // vae.hop_length
    val_frames -= val_frames % length_multiple
    segments, val_report = validation_segments(val_set, int(cfg.get("validation_segments", 4)))
    if kind == "mixldm" and segments.ndim == 3:
        segments = segments.sum(1, keepdim=True)
    val_latents = torch.cat([to_latents(segment[None].to(accelerator.device), vae, val_frames)
                             for segment in segments])[..., :val_frames].cpu()
    write_data_report(accelerator, args.output_dir, train=data_info.pop("report", {"latents": cfg.get("latents")}),
                      validation=val_info.pop("report", {"latents": cfg.get("latents")}),
                      validation_segments=val_report)
    writer = None
    if accelerator.is_main_process:
        accelerator.init_trackers("train_msldm")
        writer = tensorboard(accelerator)
    vae_state = {}
    vae_state_file = Path(cfg.get("vae") or ".") / STATE_FILE
    if not vae_state_file.is_file():
        vae_state_file = Path(cfg.get("vae") or ".") / "vae" / STATE_FILE
    if cfg.get("vae") and vae_state_file.is_file():
        import json

        vae_state = json.loads(vae_state_file.read_text())
        vae_state = {k: vae_state.get(k) for k in ("step", "recipe", "validation", "data")}

    levels = training_levels(recipe, stem_names, vae.config.sampling_rate, args.init_from) \
        if kind in ("msldm", "isldm") else None
    logger.info("The stems' training levels (dBFS): %s", levels)

    def ema_unet():
        """A UNet holding the EMA weights (a clean config: EMAModel.save_pretrained adds its own keys)."""
        model = unet_cls.from_config(accelerator.unwrap_model(unet).config)
        ema.copy_to(model.parameters())
        return model.to(accelerator.device)

    def pipeline(use_ema: bool) -> MultiSourceLatentPipeline:
        model = ema_unet() if use_ema and ema is not None else accelerator.unwrap_model(unet)
        scheduler_copy = EDMScheduler.from_config(scheduler.config)
        if kind == "msdm":
            pipe = MultiSourceDiffusionPipeline(unet=model, scheduler=scheduler_copy, stem_names=stem_names,
                                                sample_rate=vae.config.sampling_rate)
        elif kind == "mixldm":
            pipe = MixtureLatentPipeline(vae=vae, unet=model, scheduler=scheduler_copy, mixture_of=mixture_of)
        else:
            pipe = MultiSourceLatentPipeline(vae=vae, unet=model, scheduler=scheduler_copy, stem_names=stem_names,
                                             stem_levels_dbfs=levels)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def state(validation):
        return {"kind": kind, "recipe": recipe, "stem_names": stem_names, "mixture_of": mixture_of,
                "stem_levels_dbfs": levels,
                "validation": validation,
                "data": {**data_info, **val_info}, "vae_training": vae_state, "timing": budget.timing(step)}

    def save_models(folder: Path):
        if kind != "msdm":
            vae.save_pretrained(folder / "vae")
        accelerator.unwrap_model(unet).save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
        if ema is not None:
            ema_unet().save_pretrained(folder / "unet_ema")

    # 3. Loop: x0 -> sigma ~ U[0, 3) -> D(x0 + sigma n) -> lambda(sigma)-weighted MSE
    validation, step = {}, start_step
    unet.train()
    budget = TimeBudget(accelerator, args.time_budget_minutes, start_step, resumed)
    for batch in loader:
        if kind == "mixldm" and batch.ndim == 3:  # audio segments: the mix is the one source
            batch = batch.sum(1, keepdim=True)
        x0 = to_latents(batch.to(accelerator.device), vae, frames)
        rank = accelerator.process_index
        sigma = sample_training_sigmas(
            x0.shape[0], scheduler.config.training_sigma_distribution,
            sigma_min=scheduler.config.training_sigma_min, sigma_max=scheduler.config.training_sigma_max,
            log_normal_mean=scheduler.config.training_log_normal_mean,
            log_normal_std=scheduler.config.training_log_normal_std,
            generator=step_generator(seed, step, rank, "sigma"), device=accelerator.device)
        noise = torch.randn(x0.shape, generator=step_generator(seed, step, rank, "noise")).to(accelerator.device)
        cond, weight = None, None
        if conditioning:
            cond, weight = training_conditioning(x0, conditioning, len(stem_names), sigma_data,
                                                 step_generator(seed, step, rank, "stems"))
        with accelerator.autocast():
            denoised = losses.edm_denoise(unet, x0 + sigma[:, None, None] * noise, sigma, sigma_data,
                                          clip=scheduler.config.clip_denoised, conditioning=cond)
            loss = losses.edm_training_loss(denoised, x0, sigma, sigma_data, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = clip_grad(accelerator, unet.parameters(), cfg.get("grad_clip"))
        stop_if_not_finite(accelerator, step, args.output_dir, loss=loss.detach(),
                           grad_norm=0.0 if math.isnan(grad_norm) and not cfg.get("grad_clip") else grad_norm)
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            ema.step(unet.parameters())
        step += 1
        last = step == max_steps or budget.expired()

        if step % int(cfg.get("log_every", 10)) == 0 or last:
            logs = {"train/loss": accelerator.gather(loss.detach()[None]).mean().item(), "train/grad_norm": grad_norm,
                    "train/lr": lr_schedule.get_last_lr()[0]}
            accelerator.log(logs, step=step)
            logger.info("step %d: %s", step, " ".join(f"{k[6:]}={v:.4g}" for k, v in logs.items()))
        if step % int(cfg.get("validate_every", 500)) == 0 or last:
            if accelerator.is_main_process:
                validation = validate(pipeline(use_ema=True), val_latents, cfg, seed, writer, step)
                if ema is not None:
                    validation["loss_raw_weights"] = validation_loss(accelerator.unwrap_model(unet), val_latents,
                                                                     sigma_data, seed,
                                                                     clip=scheduler.config.clip_denoised)
                accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=step)
                logger.info("validation at step %d: %s", step, validation)
            accelerator.wait_for_everyone()
        if step % int(cfg.get("checkpointing_steps", 500)) == 0 or last:
            save_checkpoint(accelerator, args.output_dir, step, state(validation), save_models,
                            cfg.get("checkpoints_total_limit"))
        if last:
            break

    # 4. Export the complete pipeline (EMA weights) with its model card
    if accelerator.is_main_process:
        checkpoints = list_checkpoints(args.output_dir)
        if checkpoints:
            out = Path(args.output_dir) / "pipeline"
            repo = args.hub_model_id if args.push_to_hub else None
            if args.push_to_hub and not repo:
                raise ValueError("--push_to_hub needs --hub_model_id owner/name.")
            export_pipeline(checkpoints[-1], out, ema=True, push_to_hub=repo)
            logger.info("Exported the pipeline to %s", out)
    accelerator.end_training()


if __name__ == "__main__":
    run_main(main)
