"""Pre-encoded latents: every stem of every track encoded once by the SourceVAE (posterior mean), so that the
latent diffusion model trains without running the encoder. Layout::

    OUT/latents.json                       VAE, stems, sample rate, hop, channels, the latent of silence
    OUT/{train,validation,test}/TRACK.safetensors   "latents": (num_stems, latent_channels, frames)

Each track file is written under a temporary name and renamed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mslddm.data.tracks import Track
from mslddm.files import durable_replace

logger = logging.getLogger(__name__)

LATENT_KEY = "latents"
HEADER_FILE = "latents.json"
METADATA_KEY = "mslddm"


def latent_files(root, split: str | None) -> list[Path]:
    folder = Path(root) / split if split else Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"Latent folder {str(folder)!r} does not exist.")
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("."))


def read_latent_header(path) -> dict:
    """Stems and shape of a latent file, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        shape = list(f.get_slice(LATENT_KEY).get_shape())
    info = json.loads(meta.get(METADATA_KEY, "{}"))
    return {"stems": info.get("stems", []), "shape": shape, "num_samples": int(info.get("num_samples", 0))}


def read_dataset_header(root) -> dict:
    path = Path(root) / HEADER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {root} an `mslddm encode-latents` output folder?")
    return json.loads(path.read_text())


def load_vae(path: str, subfolder: str | None = None, dtype=None):
    """A VAE (any class of ``mslddm.models.VAE_CLASSES``) from a pipeline folder (its ``vae/``), a VAE folder, or a
    Hub repo id (``subfolder="vae"``)."""
    from mslddm.models import load_vae_folder

    if subfolder is None:
        local = Path(path)
        if (local / "vae" / "config.json").is_file():
            subfolder = "vae"
        elif not (local / "config.json").is_file() and not local.exists():
            subfolder = "vae"  # a Hub repo id of a pipeline
    kwargs = {"subfolder": subfolder} if subfolder else {}
    return load_vae_folder(path, dtype=dtype, **kwargs)


@torch.no_grad()
def _centre_latent(vae, audio: torch.Tensor, device, dtype) -> list[float]:
    mean = vae.encode(audio.to(device=device, dtype=dtype)).latent_dist.mean
    return mean[0, :, mean.shape[-1] // 2].float().cpu().tolist()


def _probe_length(vae) -> int:
    return (2 * vae.encoder_context_frames() + 1) * vae.hop_length


def silence_latent(vae, device, dtype) -> list[float]:
    """The posterior mean of a frame of silence, far from the edges: the value to pad latents with."""
    return _centre_latent(vae, torch.zeros(1, 1, _probe_length(vae)), device, dtype)


def vae_fingerprint(vae, device, dtype) -> list[float]:
    """The posterior mean of a frame of fixed noise: other weights, other numbers. (Silence cannot tell VAEs apart:
    one with zero biases, as a fresh SourceVAE, encodes it to 0 whatever its weights.)"""
    probe = 0.1 * torch.randn(1, 1, _probe_length(vae), generator=torch.Generator().manual_seed(0))
    return _centre_latent(vae, probe, device, dtype)


@torch.no_grad()
def encode_track(vae, track: Track, stem_names, device, dtype, batch_size: int, mix: bool = False) -> torch.Tensor:
    """Posterior means ``(num_stems, C, frames)`` float32 of a track's stems, ``batch_size`` stems per call; with
    ``mix``, ``(1, C, frames)`` of their sum (the MixLDM baseline's mixture latents)."""
    audio = torch.from_numpy(track.read(stems=stem_names))  # (K, T)
    if mix:
        audio = audio.sum(0, keepdim=True)
    means = []
    for chunk in audio.split(batch_size):
        mean = vae.encode(chunk[:, None].to(device=device, dtype=dtype)).latent_dist.mean
        means.append(mean.float().cpu())
    return torch.cat(means)


def save_latents(path: Path, latents: torch.Tensor, stem_names, num_samples: int, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    # One metadata key: safetensors writes several in an arbitrary order, and identical runs should give
    # identical files.
    meta = {METADATA_KEY: json.dumps({"stems": list(stem_names), "num_samples": int(num_samples)})}
    save_file({LATENT_KEY: latents.to(dtype).contiguous()}, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)  # safetensors creates files readable by their owner only
    durable_replace(tmp, path)


@torch.no_grad()
def latent_statistics(root, split: str | None = "train") -> dict:
    """Statistics of the latents of ``root/split``: the RMS (the ``sigma_data`` the EDM preconditioning assumes
    for zero-mean data), mean and std over everything, per stem, and per channel (pooled over stems)."""
    from safetensors.torch import load_file

    files = latent_files(root, split)
    if not files:
        raise ValueError(f"No latent files under {Path(root) / (split or '')} to measure.")
    total = total_sq = None
    frames = 0
    for path in files:
        x = load_file(str(path))[LATENT_KEY].double()  # (K, C, F)
        s, sq = x.sum(-1), x.pow(2).sum(-1)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        frames += x.shape[-1]
    mean, mean_sq = total / frames, total_sq / frames  # (K, C)
    channel_std = (mean_sq.mean(0) - mean.mean(0).pow(2)).clamp_min(0).sqrt()
    stems = read_latent_header(files[0])["stems"]
    per_stem = {name: {"rms": float(mean_sq[k].mean().sqrt()), "mean": float(mean[k].mean()),
                       "std": float((mean_sq[k].mean() - mean[k].mean().pow(2)).clamp_min(0).sqrt())}
                for k, name in enumerate(stems)}
    overall_mean = float(mean.mean())
    return {
        "split": split, "files": len(files), "frames": frames,
        "rms": float(mean_sq.mean().sqrt()), "mean": overall_mean,
        "std": float((mean_sq.mean() - overall_mean ** 2) ** 0.5),
        "per_stem": per_stem,
        "channel_std": [round(float(v), 5) for v in channel_std],
        "channel_mean": [round(float(v), 5) for v in mean.mean(0)],
    }


def measured_sigma_data(root) -> float:
    """The ``sigma_data`` for latents in ``root``: the RMS of the training latents recorded in ``latents.json``
    (measured now and recorded if it is not there yet)."""
    header_path = Path(root) / HEADER_FILE
    header = read_dataset_header(root)
    stats = header.get("statistics")
    if not stats:
        stats = latent_statistics(root, "train" if (Path(root) / "train").is_dir() else None)
        header["statistics"] = stats
        tmp = header_path.with_name(f".{HEADER_FILE}.partial")
        tmp.write_text(json.dumps(header, indent=1) + "\n")
        tmp.replace(header_path)
    return float(stats["rms"])


@dataclass
class EncodeReport:
    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def encode_tracks(
    vae,
    tracks_by_split: dict[str, list[Track]],
    out,
    stem_names,
    device="cpu",
    dtype=torch.float32,
    save_dtype=torch.float32,
    batch_size: int = 4,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    mix: bool = False,
) -> EncodeReport:
    """Encodes this process's share (every ``num_processes``-th track) of all splits into ``out``; tracks whose
    file exists are skipped, and a track that fails is logged and left for the next run. With ``mix``, each
    track's mixture (the sum of ``stem_names``) is encoded, as one source named ``mix``."""
    from tqdm.auto import tqdm

    out = Path(out)
    jobs = [(split, t) for split, tracks in tracks_by_split.items() for t in tracks]
    jobs = jobs[process_index::num_processes]
    report = EncodeReport()
    todo = []
    for split, track in jobs:
        target = out / split / f"{track.name}.safetensors"
        (report.skipped.append(track.name) if target.exists() else todo.append((split, track, target)))
    for split, track, target in tqdm(todo, desc="encode-latents", unit="track", disable=not progress):
        try:
            latents = encode_track(vae, track, stem_names, device, dtype, batch_size, mix=mix)
            save_latents(target, latents, ["mix"] if mix else stem_names, track.num_samples, save_dtype)
            report.encoded.append(track.name)
        except (OSError, ValueError, RuntimeError) as error:  # unreadable audio, or a VAE error on one track
            report.failed[f"{split}/{track.name}"] = f"{type(error).__name__}: {error}"
            logger.error("Could not encode %s: %s", track.path, error)
    return report
