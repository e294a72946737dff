"""Training losses: SourceVAE (multi-scale log-mel L1, feature matching, least-squares GAN, KL) as in MSLDM's
reference code (DAC's losses), the EDM denoising loss, and SI-SDR for validation."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mslddm.measures import si_sdr  # noqa: F401  (re-exported: the VAE's validation metric)
from mslddm.models.unet_1d_multisource import stem_conditioning
from mslddm.schedulers.sampling import Denoiser
from mslddm.schedulers.scheduling_edm import edm_loss_weight

# MSLDM's SourceVAE mel loss: 7 scales, hop = window / 4.
MEL_WINDOW_LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_N_MELS = (5, 10, 20, 40, 80, 160, 320)


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp_min(1e-10) / min_log_hz) / logstep, lin)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None):
    """Slaney-normalised triangular mel filters ``(n_mels, n_fft // 2 + 1)`` (librosa's ``filters.mel`` defaults)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_pts = torch.linspace(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
                             _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(), n_mels + 2,
                             dtype=torch.float64)
    hz_pts = _mel_to_hz(mel_pts)
    fdiff = hz_pts.diff()
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    return weights.float()


class MultiScaleMelLoss(nn.Module):
    """L1 between ``log10(clamp(mel, 1e-5))`` of the two signals, summed over scales (DAC's ``MelSpectrogramLoss``
    with MSLDM's settings: magnitude power 1, no linear-magnitude term). Inputs ``(B, 1, T)`` or ``(B, T)``."""

    def __init__(self, sample_rate: int = 22050, window_lengths: Sequence[int] = MEL_WINDOW_LENGTHS,
                 n_mels: Sequence[int] = MEL_N_MELS, clamp_eps: float = 1e-5, power: float = 1.0):
        super().__init__()
        if len(window_lengths) != len(n_mels):
            raise ValueError(f"window_lengths ({len(window_lengths)}) and n_mels ({len(n_mels)}) must pair up.")
        self.window_lengths, self.clamp_eps, self.power = tuple(window_lengths), clamp_eps, power
        for w, m in zip(self.window_lengths, n_mels):
            self.register_buffer(f"fb_{w}", mel_filterbank(sample_rate, w, m), persistent=False)
            self.register_buffer(f"win_{w}", torch.hann_window(w), persistent=False)

    def log_mel(self, x: torch.Tensor, window_length: int) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1]).float()
        with torch.autocast(x.device.type, enabled=False):  # bf16 training: the STFT and filterbank stay float32
            spec = torch.stft(x, window_length, window_length // 4, window=getattr(self, f"win_{window_length}"),
                              center=True, return_complex=True).abs()
            mel = getattr(self, f"fb_{window_length}") @ spec
            return mel.clamp_min(self.clamp_eps).pow(self.power).log10()

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        """The loss (a scalar), or with ``reduce=False`` one value per item ``(B,)``."""
        total = 0.0
        for w in self.window_lengths:
            diff = (self.log_mel(estimate, w) - self.log_mel(reference, w)).abs()
            total = total + (diff.mean() if reduce else diff.flatten(1).mean(1))
        return total


def feature_matching_loss(fake_features, real_features) -> torch.Tensor:
    """L1 between discriminator feature maps of generated and real audio, every map but each discriminator's
    last (its score), summed over discriminators and layers (DAC)."""
    loss = 0.0
    for fake, real in zip(fake_features, real_features):
        for f, r in zip(fake[:-1], real[:-1]):
            loss = loss + F.l1_loss(f, r.detach())
    return loss


def generator_adversarial_loss(fake_features) -> torch.Tensor:
    """Least-squares GAN generator loss: ``sum_d mean((1 - D(fake))^2)``."""
    return sum((1 - fake[-1]).pow(2).mean() for fake in fake_features)


def discriminator_loss(fake_features, real_features) -> torch.Tensor:
    """Least-squares GAN discriminator loss: ``sum_d mean(D(fake)^2) + mean((1 - D(real))^2)``."""
    return sum(fake[-1].pow(2).mean() + (1 - real[-1]).pow(2).mean()
               for fake, real in zip(fake_features, real_features))


def edm_training_loss(denoised: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                      reduce: bool = True, weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSLDM's EDM loss: per item ``mean((D(x + sigma n) - x)^2) * lambda(sigma)``, then the batch mean.

    ``weight`` (broadcastable to ``clean``, e.g. ``(B, channels, 1)`` of 0/1) restricts the mean to the weighted
    elements: with trained conditioning the loss is taken on the generated stems only."""
    error = (denoised.float() - clean.float()).pow(2)
    if weight is None:
        per_item = error.flatten(1).mean(1)
    else:
        weight = weight.float().expand_as(error)
        per_item = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
    per_item = per_item * edm_loss_weight(sigma, sigma_data)
    return per_item.mean() if reduce else per_item


def sigma_band_weight(sigma: torch.Tensor, low: float, high: float, weight: float) -> torch.Tensor:
    """A per-item factor on top of EDM's lambda(sigma): ``weight`` for sigma in ``[low, high]``, 1 elsewhere."""
    if not 0.0 <= low < high or weight <= 0:
        raise ValueError(f"sigma_band_weight needs 0 <= low < high and weight > 0, got low {low}, high {high}, "
                         f"weight {weight}.")
    inside = (sigma >= low) & (sigma <= high)
    return torch.where(inside, torch.full_like(sigma, float(weight)), torch.ones_like(sigma))


def edm_denoise(model, noisy: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                clip: float | None = None, conditioning: torch.Tensor | None = None) -> torch.Tensor:
    """``D(x; sigma)`` for a batch of per-item sigmas ``(B,)``: the sampler's :class:`Denoiser`, with gradients."""
    return Denoiser(model, sigma_data, clip=clip)(noisy, sigma, conditioning=conditioning)


def draw_given_stems(batch_size: int, num_stems: int, given_probability: float, total_probability: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random stem masks for training with conditioning, ``(B, stems)`` bool (``True``: given).

    An item is total generation (nothing given) with ``total_probability``; otherwise each stem is given with
    ``given_probability``, and one generated stem is kept where the draw gave them all."""
    if not (0.0 <= given_probability <= 1.0 and 0.0 <= total_probability <= 1.0):
        raise ValueError(f"given_probability and total_probability must lie in [0, 1], got {given_probability} "
                         f"and {total_probability}.")
    given = torch.rand(batch_size, num_stems, generator=generator) < given_probability
    total = torch.rand(batch_size, generator=generator) < total_probability
    given &= ~total[:, None]
    keep = torch.randint(num_stems, (batch_size,), generator=generator)
    all_given = given.all(1)
    given[all_given, keep[all_given]] = False
    return given


def draw_given_frames(given: torch.Tensor, frames: int, continuation_probability: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-frame masks ``(B, stems, frames)`` from per-stem ones: with ``continuation_probability`` an item also
    knows every stem's first 10-60 % of frames (continuation, and the overlap of the pipeline's next window)."""
    mask = given[..., None].expand(-1, -1, frames).clone()
    prefix = (torch.rand(given.shape[0], generator=generator) * 0.5 + 0.1) * frames
    continued = torch.rand(given.shape[0], generator=generator) < continuation_probability
    known = torch.arange(frames)[None, :] < prefix.long()[:, None]
    mask |= (known & continued[:, None])[:, None, :]
    return mask


def training_conditioning(x0: torch.Tensor, options: dict, num_stems: int, sigma_data: float, generator):
    """Random given stems (and continuation prefixes) for one batch of latents ``(B, stems * C, frames)``: the
    conditioned UNet's input and the loss weight (1 on the generated stems' channels and frames). ``options`` are
    a recipe's ``conditioning`` probabilities."""
    given = draw_given_stems(x0.shape[0], num_stems, float(options.get("given_probability", 0.5)),
                             float(options.get("total_probability", 0.25)), generator)
    frames = draw_given_frames(given, x0.shape[-1], float(options.get("continuation_probability", 0.1)),
                               generator).to(x0.device)
    weight = (~frames).repeat_interleave(x0.shape[1] // num_stems, dim=1)
    return stem_conditioning(x0, frames, sigma_data), weight
