"""Codecs: what the pipelines' sampling and windows need to know about the space they sample in.

A codec turns ``(batch, num_stems, samples)`` audio into ``(batch, num_stems * latent_channels, frames)`` and back,
and says how many samples a frame is (``hop_length``), how far the encoder reaches (``encoder_context_frames``) and
the audio's ``sampling_rate``. :class:`LatentCodec` does it with the VAE shared by all stems (MSLDM, ISLDM, MixLDM);
:class:`WaveformCodec` is the identity of a waveform model (MSDM). Neither is a pipeline component: nothing of a
codec is saved, the latent one reads the pipeline's ``vae``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


class LatentCodec:
    """Stems <-> latents through one VAE shared by all stems (posterior means in, decoded audio out)."""

    def __init__(self, vae):
        self.vae = vae

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def hop_length(self) -> int:
        return int(self.vae.hop_length)

    @property
    def sampling_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    def num_samples(self, frames: int) -> int:
        return self.vae.num_samples(frames)

    def encoder_context_frames(self) -> int:
        return self.vae.encoder_context_frames()

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """``(batch, num_stems, samples)`` audio -> ``(batch, num_stems * latent_channels, frames)`` means."""
        b, k, t = audio.shape
        posterior = self.vae.encode(audio.reshape(b * k, 1, t).to(self.vae.device, self.vae.dtype)).latent_dist
        latents = posterior.mean.float()
        return latents.reshape(b, k * latents.shape[1], latents.shape[2])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(batch, num_stems * latent_channels, frames)`` latents -> ``(batch, num_stems, samples)`` audio."""
        b, kc, f = latents.shape
        c = self.latent_channels
        audio = self.vae.decode(latents.reshape(b * (kc // c), c, f).to(self.vae.device, self.vae.dtype)).sample
        return audio.float().reshape(b, kc // c, audio.shape[-1])


class WaveformCodec:
    """The identity codec of a waveform model: one channel per stem, one frame per sample. ``config`` mirrors a
    VAE's two fields that training reads (``latent_channels``, ``sampling_rate``)."""

    hop_length = 1
    latent_channels = 1

    def __init__(self, sampling_rate: int):
        self.config = SimpleNamespace(latent_channels=1, sampling_rate=int(sampling_rate))

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @staticmethod
    def num_samples(frames: int) -> int:
        return int(frames)

    @staticmethod
    def encoder_context_frames() -> int:
        return 0

    @staticmethod
    def encode(audio: torch.Tensor) -> torch.Tensor:
        return audio.float()

    @staticmethod
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return latents.float()
