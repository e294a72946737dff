"""Trains the multi-source latent diffusion UNet (MSLDM) with the EDM loss of the reference code on the stems'
SourceVAE latents (pre-encoded with `mslddm encode-latents`, or encoded on the fly from audio segments).

    accelerate launch train/train_msldm.py --config tiny --output_dir runs/msldm-tiny --set msldm.vae=runs/vae-tiny/vae
    accelerate launch train/train_msldm.py ... --resume_from_checkpoint latest

The recipe's ``model`` picks what is trained (docs/baselines.md): ``msldm`` (default; one UNet over all stems),
``isldm`` (the paper's baseline of independent per-stem UNets, one IndependentSourceUNet1DModel), ``mixldm``
(the baseline of one UNet on the latent of the mix: a MixtureVAE and `encode-latents --mix` latents) or ``msdm``
(MSDM: the UNet on the stems' waveforms, no VAE; ``segment_frames`` are then samples; docs/msdm.md). With
``msldm.lora`` (and ``--init_from``) only a LoRA adapter on the continued pipeline's frozen UNet trains, as in
diffusers' LoRA scripts (docs/finetune.md; ``mslddm finetune`` runs this script so).

Writes ``OUTPUT/checkpoint-N`` (resumable; ``vae/``, ``unet/``, ``unet_ema/``, ``scheduler/`` inside; a LoRA run:
``lora/`` instead of the UNets) and, at the end, the complete pipeline folder ``OUTPUT/pipeline`` (EMA weights)
with a model card, or a LoRA run's adapter folder ``OUTPUT/lora``.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mslddm import EDMScheduler, MultiSourceLatentPipeline
from mslddm.audio import rms_db
from mslddm.data.datasets import (LatentSegmentDataset, MultiSourceSegmentDataset, load_tracks, measure_stem_levels,
                                   validation_segments)
from mslddm.data.latents import load_vae
from mslddm.kinds import DEFAULT_KIND, KINDS, MIXTURE_LATENTS, ModelKind, get_kind, kind_names
from mslddm.models import load_unet_folder, unet_class
from mslddm.models.unet_1d_multisource import stem_conditioning, stem_conditioning_channels
from mslddm.factory import unet_arguments
from mslddm.pipelines.pipeline_multisource_diffusion import WaveformCodec
from mslddm.schedulers.scheduling_edm import sample_training_sigmas
from mslddm.stems import DEFAULT_STEMS, SILENCE_DBFS
from mslddm.training import losses
from mslddm.training.recipes import load_recipe
from mslddm.hub import public_name
from mslddm.training.checkpointing import STATE_FILE
from mslddm.training.posthoc_ema import SNAPSHOT_FOLDER, PowerEMA, remove_later_snapshots, sigma_rel_to_gamma
from mslddm.training.runner import (clip_grad, common_arguments, export_run, load_run_recipe, log_audio, logger,
                                    lr_multiplier, make_accelerator, resume_step, stop_if_not_finite, tensorboard,
                                    TimeBudget, check_storage, run_main, validate_and_checkpoint, write_data_report)
from mslddm.training.seeding import step_dataloader, step_generator

MODELS = kind_names()  # what a recipe's ``model`` may name (mslddm/kinds.py)


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


def grown(unet, key: str, value: int, prefix: str):
    """The same UNet with config ``key`` set to ``value``, whose new modules (named ``prefix``...) start at zero
    output: the result computes what ``unet`` computes. A UNet that already has a different ``value`` is refused."""
    current = getattr(unet.config, key, 0)
    if current == value:
        return unet
    if current:
        raise ValueError(f"The UNet's {key} is {current}, not {value}: a model's {key} is fixed once it has one.")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}  # _use_default_values would win
    model = type(unet).from_config({**config, key: value})
    missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not name.startswith(prefix) for name in missing):
        raise RuntimeError(f"Setting {key} changed more than {prefix}: missing {missing}, unexpected {unexpected}.")
    return model.to(unet.device, unet.dtype)


def with_conditioning(unet, channels: int):
    """The same UNet with a (zero-initialised) conditioning input: it starts equal to ``unet``."""
    return grown(unet, "conditioning_channels", channels, "to_cond.")


def with_full_rate_path(unet, channels: int):
    """The same UNet with a frame-rate refinement (``FullRatePath``, zero-initialised output): it starts equal to
    ``unet`` and can then learn the frame-level detail its unpatcher cannot output."""
    return grown(unet, "full_rate_channels", channels, "full_rate.")


def parameter_groups(unet, cfg: dict) -> list[dict]:
    """The optimizer's parameter groups: one, or with ``msldm.conditioning.learning_rate`` the (new, zero-initialised)
    conditioning input apart at its own rate, so that it learns while the rest continues gently."""
    rate = (cfg.get("conditioning") or {}).get("learning_rate")
    named = {n: p for n, p in unet.named_parameters() if p.requires_grad}  # a LoRA run: the adapter's only
    if rate is None:
        return [{"params": list(named.values())}]
    cond = [p for n, p in named.items() if n.startswith("to_cond.")]
    return [{"params": [p for n, p in named.items() if not n.startswith("to_cond.")]},
            {"params": cond, "lr": float(rate)}]


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
    # Partial generation around the first validation item's loudest stem (a silent one cannot be given)
    decoded = pipe.decode_latents(latents[:1])[0].float().cpu().numpy()
    k = int(np.argmax([rms_db(a) for a in decoded]))
    partial = None
    if rms_db(decoded[k]) >= SILENCE_DBFS:
        partial = pipe(stems={names[k]: decoded[k]}, generator=torch.Generator().manual_seed(seed + 1), **kwargs)
    if writer is not None:
        log_audio(writer, "generation/total/mixture", torch.from_numpy(total.mixture[0]), step, sr)
        for i, name in enumerate(names):
            log_audio(writer, f"generation/total/{name}", torch.from_numpy(total.stems[0, i]), step, sr)
        if partial is not None:
            log_audio(writer, f"generation/partial_given_{names[k]}/mixture", torch.from_numpy(partial.mixture[0]),
                      step, sr)
    pipe.unet.train()
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# 1. Setup: the kind, the frozen VAE, the data, the UNet, its optimizer and EMA
# ----------------------------------------------------------------------------------------------------------------
def recipe_kind(args) -> ModelKind:
    """The kind of model the recipe's ``model`` names (``msldm`` when unset)."""
    name = load_recipe(args.config, args.set).get("model", DEFAULT_KIND)
    if name not in KINDS:
        raise ValueError(f"The recipe's model must be one of {kind_names()}, got {name!r}.")
    return get_kind(name)


def check_vae_setting(args, cfg: dict, kind: ModelKind) -> None:
    """A latent model needs a VAE (by default the ``--init_from`` pipeline's own); a waveform model takes none."""
    if not cfg.get("vae") and args.init_from and kind.uses_vae:
        cfg["vae"] = args.init_from  # continuing a pipeline: its own VAE, unless another one is named
    if not cfg.get("vae") and kind.uses_vae:
        raise ValueError("The recipe's msldm.vae is not set: pass --set msldm.vae=PATH (a VAE folder such as "
                         "train_vae.py's OUTPUT/vae, or a pipeline folder).")
    if not kind.uses_vae and (cfg.get("vae") or cfg.get("latents")):
        raise ValueError(f"model {kind.name} learns the stems' waveforms: it takes no msldm.vae and no "
                         "msldm.latents.")


def frozen_vae(recipe: dict, cfg: dict, kind: ModelKind, device):
    """The VAE whose latents the UNet learns (a waveform model: the identity codec)."""
    if not kind.uses_vae:
        return WaveformCodec(int(recipe["data"].get("sample_rate", 22050)))
    return load_vae(str(cfg["vae"])).to(device).eval().requires_grad_(False)


def diffusion_sources(cfg: dict, kind: ModelKind, stem_names: list[str]) -> tuple[list[str], list[str] | None]:
    """``(sources, mixture_of)``: the names of what the UNet models, and for a mixture model the stems its mixes
    are made of (from `encode-latents --mix` latents, or the stems summed on the fly)."""
    if kind.source != MIXTURE_LATENTS:
        if stem_names == ["mix"]:
            raise ValueError(f"{cfg.get('latents')} holds mixture latents; train them with a mixldm recipe "
                             "(model: mixldm), or encode the stems without --mix.")
        return stem_names, None
    mixture_of = stem_names
    if cfg.get("latents"):
        if stem_names != ["mix"]:
            raise ValueError(f"model {kind.name} needs mixture latents (`mslddm encode-latents --mix`), but "
                             f"{cfg['latents']} holds the stems {stem_names}.")
        mixture_of = json.loads((Path(cfg["latents"]) / "latents.json").read_text()).get("mixture_of")
    return ["mix"], list(mixture_of or DEFAULT_STEMS)


def denoiser_class(cfg: dict, kind: ModelKind):
    """The network the recipe trains: the kind's UNet, or the joint model's other shape that ``msldm.unet_class``
    names (``MultiSourceTransformer1DModel``)."""
    name = cfg.get("unet_class")
    if not name:
        return kind.unet_class()
    if kind.name != "msldm":
        raise ValueError(f"msldm.unet_class chooses the network of model msldm, not of {kind.name}.")
    return unet_class(name)


def initial_unet(args, cfg: dict, kind: ModelKind, in_channels: int, num_stems: int, latent_channels: int):
    """The ``--init_from`` pipeline's UNet (fresh optimizer and EMA: later sessions build on bundled weights),
    checked against what the recipe trains."""
    unet_cls = denoiser_class(cfg, kind)
    unet = load_unet_folder(args.init_from, subfolder="unet")
    if not isinstance(unet, unet_cls):
        raise ValueError(f"--init_from {args.init_from}: its UNet is a {type(unet).__name__}, but the recipe "
                         f"trains {kind.name} ({unet_cls.__name__}).")
    if unet.config.in_channels != in_channels:
        raise ValueError(f"--init_from {args.init_from}: its UNet takes {unet.config.in_channels} channels, but "
                         f"{num_stems} stems x {latent_channels} latent channels = {in_channels}.")
    logger.info("Initialised the UNet from %s", args.init_from)
    return unet


def new_unet(recipe: dict, cfg: dict, kind: ModelKind, in_channels: int, num_stems: int, vae):
    """A fresh UNet of the recipe's preset (with the recipe's ``msldm.model`` laid over it)."""
    unet_cls = denoiser_class(cfg, kind)
    preset = unet_arguments(recipe["preset"], in_channels, kind.preset_key) if unet_cls is kind.unet_class() else {}
    unet_kwargs = {**preset, **cfg.get("model", {}), "in_channels": in_channels}
    if kind.independent_sources:
        unet_kwargs["num_sources"] = num_stems
    if "window_frames" not in unet_kwargs:
        # The pipeline's generation window: the longest length the recipe trains or validates at (validation
        # samples clips of validation_seconds, so the model is seen working at that length), rounded up to
        # the UNet's multiple so that such a clip is one window (rounded down, a 12-s clip took two windows:
        # twice the model evaluations and a seam). Passed to the constructor, so that the config (and every
        # copy from_config makes) records it.
        with torch.device("meta"):
            multiple = unet_cls(**unet_kwargs).length_multiple
        val_frames = math.ceil(float(cfg.get("validation_seconds", 12.0)) * vae.config.sampling_rate / vae.hop_length)
        unet_kwargs["window_frames"] = max(int(cfg["segment_frames"]), math.ceil(val_frames / multiple) * multiple)
    return unet_cls(**unet_kwargs)


def build_unet(args, recipe: dict, cfg: dict, kind: ModelKind, num_stems: int, vae):
    """The UNet to train: initial or new, with the conditioning input when the recipe trains partial generation."""
    in_channels = num_stems * vae.config.latent_channels
    if args.init_from:
        unet = initial_unet(args, cfg, kind, in_channels, num_stems, vae.config.latent_channels)
        if (cfg.get("model") or {}).get("full_rate_channels"):
            unet = with_full_rate_path(unet, int(cfg["model"]["full_rate_channels"]))
            logger.info("Added a frame-rate path of %d channels to the pipeline's UNet", unet.config.full_rate_channels)
    else:
        unet = new_unet(recipe, cfg, kind, in_channels, num_stems, vae)
    if not hasattr(unet.config, "full_rate_channels") and (cfg.get("conditioning") or (
            cfg.get("model") or {}).get("full_rate_channels")):
        raise ValueError(f"msldm.conditioning and msldm.model.full_rate_channels grow the UNet; the recipe trains a "
                         f"{type(unet).__name__}: leave them unset.")
    if cfg.get("conditioning"):
        if not kind.trains_conditioning:
            raise ValueError(f"msldm.conditioning (trained partial generation) is for model msldm, not {kind.name}.")
        unet = with_conditioning(unet, stem_conditioning_channels(num_stems, vae.config.latent_channels))
        logger.info("Trained conditioning: %s", cfg["conditioning"])
    if int(cfg["segment_frames"]) % unet.length_multiple:
        raise ValueError(f"msldm.segment_frames={int(cfg['segment_frames'])} must be a multiple of the UNet's "
                         f"{unet.length_multiple}.")
    if cfg.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    if cfg.get("lora"):
        unet = with_lora(args, cfg, unet)
    return unet


LORA_ADAPTER = "default"  # the adapter's name inside the UNet while it trains (peft's default)


def with_lora(args, cfg: dict, unet):
    """The UNet frozen, with a trainable LoRA adapter on the recipe's target modules (diffusers' LoRA training:
    ``LoraConfig`` through ``add_adapter``; B starts at zero, so the adapter starts as the pipeline itself)."""
    from mslddm.pipelines.lora import DEFAULT_TARGET_MODULES, lora_config

    if not args.init_from:
        raise ValueError("msldm.lora trains an adapter on a pipeline's UNet: pass --init_from PIPELINE.")
    if cfg.get("use_ema", True) or cfg.get("conditioning"):
        raise ValueError("msldm.lora trains the adapter alone: set msldm.use_ema false and leave "
                         "msldm.conditioning unset.")
    options = cfg["lora"]
    config = lora_config(int(options.get("rank", 16)), options.get("alpha"),
                         options.get("target_modules") or DEFAULT_TARGET_MODULES, float(options.get("dropout", 0.0)))
    unet.requires_grad_(False)
    unet.add_adapter(config, adapter_name=LORA_ADAPTER)
    logger.info("LoRA rank %d, alpha %g on %s: %d trainable parameters of %d", config.r, config.lora_alpha,
                sorted(config.target_modules), unet.num_parameters(only_trainable=True), unet.num_parameters())
    return unet


def build_scheduler(cfg: dict, train_set, vae, init_from=None) -> EDMScheduler:
    """The recipe's scheduler; a ``sigma_data`` set to null is the RMS of the training latents. Continuing a
    pipeline (``init_from``), every setting the recipe leaves out carries over (its default sampler, steps and
    churn; with no ``msldm.scheduler`` section at all, its ``sigma_data`` too: the preconditioning its UNet
    learned, which a fine-tune on other music keeps): the continued pipeline is used as the one it continues."""
    scheduler_cfg = dict(cfg.get("scheduler") or {})
    if init_from:
        inherited = EDMScheduler.load_config(init_from, subfolder="scheduler")
        names = [n for n in inspect.signature(EDMScheduler.__init__).parameters if n != "self"]
        scheduler_cfg = {**{k: inherited[k] for k in names if k in inherited}, **scheduler_cfg}
    if scheduler_cfg.get("sigma_data") is None:
        scheduler_cfg["sigma_data"] = measure_sigma_data(cfg, train_set, vae, int(cfg["segment_frames"]))
        logger.info("sigma_data = %.4f (the RMS of the training latents)", scheduler_cfg["sigma_data"])
    return EDMScheduler(**scheduler_cfg)


def build_optimization(accelerator, cfg: dict, unet):
    """``(unet, ema, optimizer, lr_schedule)``, prepared by the accelerator (EMA registered for checkpointing)."""
    ema = None
    if cfg.get("use_ema", True):
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=float(cfg.get("ema_decay", 0.999)),
                       model_cls=type(unet), model_config=unet.config)
        accelerator.register_for_checkpointing(ema)
    optimizer = torch.optim.Adam(parameter_groups(unet, cfg), lr=float(cfg["learning_rate"]),
                                 betas=tuple(cfg.get("betas", (0.9, 0.99))))
    schedule = dict(warmup_steps=int(cfg.get("lr_warmup_steps", 0)), decay_start=cfg.get("lr_decay_start"),
                    decay_steps=int(cfg.get("lr_decay_steps", 0)), final_ratio=float(cfg.get("lr_final_ratio", 0.1)))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, **schedule))
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)
    if ema is not None:
        ema.to(accelerator.device)
    return unet, ema, optimizer, lr_schedule


def check_sections(cfg: dict) -> None:
    """The loss band and the post-hoc EMA settings, complete and valid, before the data is read."""
    for section, keys in (("sigma_band_weight", ("low", "high", "weight")),
                          ("posthoc_ema", ("sigma_rels", "snapshot_steps"))):
        missing = [k for k in keys if cfg.get(section) and k not in cfg[section]]
        if missing:
            raise ValueError(f"msldm.{section} needs {', '.join(keys)}; it lacks {', '.join(missing)}.")
    if cfg.get("sigma_band_weight"):
        band = cfg["sigma_band_weight"]
        losses.sigma_band_weight(torch.ones(1), band["low"], band["high"], band["weight"])
    if cfg.get("posthoc_ema"):
        for sigma_rel in cfg["posthoc_ema"]["sigma_rels"]:
            sigma_rel_to_gamma(sigma_rel)


def posthoc_averages(t) -> PowerEMA | None:
    """The recipe's post-hoc EMA averages (``msldm.posthoc_ema``), checkpointed with the run; None when unset."""
    settings = t.cfg.get("posthoc_ema")
    if not settings:
        return None
    if t.lora:
        raise ValueError("msldm.posthoc_ema averages a full fine-tune's weights; a LoRA run trains an adapter: "
                         "leave posthoc_ema unset.")
    averages = PowerEMA(t.accelerator.unwrap_model(t.unet).named_parameters(), settings["sigma_rels"])
    t.accelerator.register_for_checkpointing(averages)
    return averages


def validation_latents(accelerator, cfg: dict, kind: ModelKind, val_set, vae, length_multiple: int):
    """``(latents, report)``: the fixed validation segments as the UNet's input, and which segments were used."""
    val_frames = val_set.segment if cfg.get("latents") else val_set.segment // vae.hop_length
    val_frames -= val_frames % length_multiple
    segments, report = validation_segments(val_set, int(cfg.get("validation_segments", 4)))
    segments = kind.training_batch(segments)
    latents = torch.cat([to_latents(segment[None].to(accelerator.device), vae, val_frames)
                         for segment in segments])[..., :val_frames].cpu()
    return latents, report


def vae_training_state(cfg: dict) -> dict:
    """What the VAE's own training recorded (steps, recipe, validation, data), for the model card."""
    folder = Path(cfg.get("vae") or ".")
    path = folder / STATE_FILE if (folder / STATE_FILE).is_file() else folder / "vae" / STATE_FILE
    if not (cfg.get("vae") and path.is_file()):
        return {}
    state = json.loads(path.read_text())
    return {k: state.get(k) for k in ("step", "recipe", "validation", "data")}


@dataclass
class Training:
    """Everything the loop, validation, checkpoints and export share, built once by :func:`set_up`."""

    args: Any
    recipe: dict
    cfg: dict
    kind: ModelKind
    accelerator: Any
    vae: Any
    unet: Any
    ema: Any
    optimizer: Any
    lr_schedule: Any
    scheduler: EDMScheduler
    train_set: Any
    stem_names: list
    mixture_of: list | None
    levels: dict | None = None  # the stems' training levels the pipeline records (kinds of stem latents)
    data_info: dict = field(default_factory=dict)
    vae_state: dict = field(default_factory=dict)  # what the VAE's own training recorded
    val_latents: torch.Tensor | None = None
    writer: Any = None
    posthoc: Any = None  # PowerEMA when the recipe asks for post-hoc EMA snapshots
    start_step: int = 0
    resumed: dict = field(default_factory=dict)  # the state of the checkpoint resumed from
    loader: Any = None

    @property
    def seed(self) -> int:
        return int(self.recipe.get("seed", 0))

    @property
    def lora(self) -> dict | None:
        """The recipe's LoRA settings when only an adapter trains, else None."""
        return self.cfg.get("lora") or None

    def ema_unet(self):
        """A UNet holding the EMA weights (a clean config: EMAModel.save_pretrained adds its own keys)."""
        trained = self.accelerator.unwrap_model(self.unet)
        model = type(trained).from_config(trained.config)
        self.ema.copy_to(model.parameters())
        return model.to(self.accelerator.device)

    def pipeline(self, use_ema: bool):
        """The pipeline of the weights being trained (the EMA's when ``use_ema`` and kept), progress bars off."""
        model = self.ema_unet() if use_ema and self.ema is not None else self.accelerator.unwrap_model(self.unet)
        scheduler = EDMScheduler.from_config(self.scheduler.config)
        pipe = self.kind.build_pipeline(vae=self.vae, unet=model, scheduler=scheduler, stem_names=self.stem_names,
                                        mixture_of=self.mixture_of, stem_levels_dbfs=self.levels,
                                        sample_rate=self.vae.config.sampling_rate)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def state(self, validation: dict, timing: dict) -> dict:
        """``training_state.json``: how the weights were made (export writes the model card from it)."""
        return {"kind": self.kind.name, "recipe": self.recipe, "stem_names": self.stem_names,
                "mixture_of": self.mixture_of, "stem_levels_dbfs": self.levels, "validation": validation,
                "data": self.data_info, "vae_training": self.vae_state, "timing": timing,
                "init_from": public_name(self.args.init_from) if self.args.init_from else None}

    def save_models(self, folder: Path):
        """The checkpoint's model folders: the VAE, the scheduler, and the UNets (a LoRA run: its adapter)."""
        if self.kind.uses_vae:
            self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.lora:
            from mslddm.pipelines.lora import write_adapter

            write_adapter(folder / "lora", self.accelerator.unwrap_model(self.unet), LORA_ADAPTER,
                          base_pipeline=public_name(self.args.init_from), stem_names=self.stem_names,
                          extra={"stem_levels_dbfs": self.levels} if self.levels else None)
            return
        self.accelerator.unwrap_model(self.unet).save_pretrained(folder / "unet")
        if self.ema is not None:
            self.ema_unet().save_pretrained(folder / "unet_ema")


def set_up(args) -> Training:
    """The frozen VAE (a waveform model: the identity), the data (stem names and count come from the data), the
    UNet, its scheduler, EMA and optimizer; the order keeps the seeded initialisation of earlier runs."""
    kind = recipe_kind(args)
    recipe, cfg = load_run_recipe(args, kind.recipe_key)
    accelerator = make_accelerator(args, cfg)
    seed = int(recipe.get("seed", 0))
    logger.info("%d process(es) (%s), batch %d per process", accelerator.num_processes,
                accelerator.distributed_type, int(cfg["batch_size"]))
    check_vae_setting(args, cfg, kind)
    check_sections(cfg)
    vae = frozen_vae(recipe, cfg, kind, accelerator.device)
    train_set, stem_names, data_info = training_data(recipe, cfg, vae, "train", True, seed)
    val_set, val_stems, val_info = training_data(recipe, cfg, vae, recipe["data"].get("validation_split", "validation"),
                                                 False, seed)
    if val_stems != stem_names:
        raise ValueError(f"Training stems {stem_names} differ from validation stems {val_stems}.")
    stem_names, mixture_of = diffusion_sources(cfg, kind, stem_names)
    torch.manual_seed(seed)
    unet = build_unet(args, recipe, cfg, kind, len(stem_names), vae)
    scheduler = build_scheduler(cfg, train_set, vae, args.init_from)
    unet, ema, optimizer, lr_schedule = build_optimization(accelerator, cfg, unet)
    training = Training(args, recipe, cfg, kind, accelerator, vae, unet, ema, optimizer, lr_schedule, scheduler,
                        train_set, stem_names, mixture_of)
    training.posthoc = posthoc_averages(training)  # registered before the resume loads the checkpoint
    training.val_latents = prepare_run(training, val_set, data_info, val_info)
    return training


def prepare_run(training: Training, val_set, data_info: dict, val_info: dict) -> torch.Tensor:
    """Storage check, resume, the loader, fixed validation latents, data report, trackers, the VAE's record and
    the stems' levels; returns the validation latents."""
    t, accelerator, cfg = training, training.accelerator, training.cfg
    check_storage(accelerator, t.args.output_dir, [t.unet], copies=6)  # weights, Adam's 2, EMA, unet/, unet_ema/
    t.start_step, _, t.resumed = resume_step(accelerator, t.args)
    t.loader = step_dataloader(t.train_set, int(cfg["batch_size"]), t.start_step, int(cfg["max_steps"]), accelerator,
                               int(cfg.get("num_workers", 0)))
    val_latents, val_report = validation_latents(accelerator, cfg, t.kind, val_set, t.vae,
                                                 accelerator.unwrap_model(t.unet).length_multiple)
    write_data_report(accelerator, t.args.output_dir, train=data_info.pop("report", {"latents": cfg.get("latents")}),
                      validation=val_info.pop("report", {"latents": cfg.get("latents")}),
                      validation_segments=val_report)
    t.data_info = {**data_info, **val_info}
    if accelerator.is_main_process:
        accelerator.init_trackers("train_msldm")
        t.writer = tensorboard(accelerator)
    t.vae_state = vae_training_state(cfg)
    t.levels = training_levels(t.recipe, t.stem_names, t.vae.config.sampling_rate, t.args.init_from) \
        if t.kind.records_stem_levels else None
    logger.info("The stems' training levels (dBFS): %s", t.levels)
    return val_latents


# ----------------------------------------------------------------------------------------------------------------
# 2. Loop: x0 -> sigma ~ the scheduler's training distribution -> D(x0 + sigma n) -> lambda(sigma)-weighted MSE
# ----------------------------------------------------------------------------------------------------------------
def training_step(t: Training, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
    """One optimizer step on ``batch``, with noise and sigmas seeded by (seed, step, rank): ``(loss, grad norm)``."""
    accelerator, config, sigma_data = t.accelerator, t.scheduler.config, float(t.scheduler.config.sigma_data)
    x0 = to_latents(t.kind.training_batch(batch).to(accelerator.device), t.vae, int(t.cfg["segment_frames"]))
    rank = accelerator.process_index
    sigma = sample_training_sigmas(
        x0.shape[0], config.training_sigma_distribution, sigma_min=config.training_sigma_min,
        sigma_max=config.training_sigma_max, log_normal_mean=config.training_log_normal_mean,
        log_normal_std=config.training_log_normal_std, generator=step_generator(t.seed, step, rank, "sigma"),
        device=accelerator.device)
    noise = torch.randn(x0.shape, generator=step_generator(t.seed, step, rank, "noise")).to(accelerator.device)
    cond, weight = None, None
    if t.cfg.get("conditioning"):
        cond, weight = losses.training_conditioning(x0, t.cfg["conditioning"], len(t.stem_names), sigma_data,
                                             step_generator(t.seed, step, rank, "stems"))
    with accelerator.autocast():
        denoised = losses.edm_denoise(t.unet, x0 + sigma[:, None, None] * noise, sigma, sigma_data,
                                      clip=config.clip_denoised, conditioning=cond)
        loss = losses.edm_training_loss(denoised, x0, sigma, sigma_data, weight=weight, reduce=False)
        band = t.cfg.get("sigma_band_weight")
        if band:
            loss = loss * losses.sigma_band_weight(sigma, band["low"], band["high"], band["weight"]).to(loss)
        loss = loss.mean()
    t.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    grad_norm = clip_grad(accelerator, t.unet.parameters(), t.cfg.get("grad_clip"))
    stop_if_not_finite(accelerator, step, t.args.output_dir, loss=loss.detach(), grad_norm=grad_norm)
    t.optimizer.step()
    t.lr_schedule.step()
    if t.ema is not None:
        t.ema.step(t.unet.parameters())
    return loss, grad_norm


def run_validation(t: Training, step: int) -> dict:
    """Validation numbers of the EMA weights (and the raw weights' loss), logged; main process only."""
    validation = validate(t.pipeline(use_ema=True), t.val_latents, t.cfg, t.seed, t.writer, step)
    if t.ema is not None:
        validation["loss_raw_weights"] = validation_loss(t.accelerator.unwrap_model(t.unet), t.val_latents,
                                                         float(t.scheduler.config.sigma_data), t.seed,
                                                         clip=t.scheduler.config.clip_denoised)
    t.accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=step)
    logger.info("validation at step %d: %s", step, validation)
    return validation


def train_loop(t: Training) -> None:
    """Steps from the resumed one to ``max_steps`` (or the time budget), logging, validating and checkpointing."""
    accelerator, cfg, max_steps = t.accelerator, t.cfg, int(t.cfg["max_steps"])
    validation, step = {}, t.start_step
    t.unet.train()
    if t.posthoc is not None and accelerator.is_main_process:  # a resume from an earlier checkpoint: its trajectory
        for path in remove_later_snapshots(Path(t.args.output_dir) / SNAPSHOT_FOLDER, step):
            logger.info("Removed %s (after the step resumed from)", path.name)
    budget = TimeBudget(accelerator, t.args.time_budget_minutes, t.start_step, t.resumed)
    for batch in t.loader:
        loss, grad_norm = training_step(t, batch, step)
        step += 1
        last = step == max_steps or budget.expired()
        if t.posthoc is not None:
            t.posthoc.step(step)
            if (step % int(cfg["posthoc_ema"]["snapshot_steps"]) == 0 or last) and accelerator.is_main_process:
                t.posthoc.save_snapshots(Path(t.args.output_dir) / SNAPSHOT_FOLDER, step)
        if step % int(cfg.get("log_every", 10)) == 0 or last:
            logs = {"train/loss": accelerator.gather(loss.detach()[None]).mean().item(), "train/grad_norm": grad_norm,
                    "train/lr": t.lr_schedule.get_last_lr()[0]}
            accelerator.log(logs, step=step)
            logger.info("step %d: %s; %s", step, " ".join(f"{k[6:]}={v:.4g}" for k, v in logs.items()),
                        budget.progress(step, max_steps))
        validation = validate_and_checkpoint(t, step, last, budget, validation, run_validation)
        if last:
            break


# ----------------------------------------------------------------------------------------------------------------
# 3. Export the complete pipeline (EMA weights) with its model card
# ----------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = common_arguments(__doc__.splitlines()[0]).parse_args(argv)
    training = set_up(args)
    train_loop(training)
    export_run(args, training.accelerator)
    training.accelerator.end_training()


if __name__ == "__main__":
    run_main(main)
