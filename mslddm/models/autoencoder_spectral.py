"""SpectralSourceVAE: a CPU-efficient SourceVAE that works at the latent frame rate.

The DAC-style :class:`~mslddm.models.autoencoder_source.SourceVAE` spends most of its time in full-rate
layers (its first and last convolutions run at 22050 Hz). This VAE runs every layer at the latent frame rate
(22050 / 320 = 69 frames per second): the encoder reads a short-time Fourier transform whose hop is the latent
hop, and the decoder predicts one STFT frame (log-magnitude and phase) per latent frame and inverts it by
weighted overlap-add, as Vocos (Siuzdak, 2023) does for mel spectrograms. Both bodies are stacks of 1-D ConvNeXt
blocks (Liu et al., 2022).

Interface and length arithmetic are those of every mslddm VAE (:class:`TiledAudioAutoencoder`): audio
``(B, 1, T)`` -> moments ``(B, 2C, ceil(T / hop))`` -> latents ``(B, C, F)`` -> audio ``(B, 1, F * hop)``;
latent frame ``f`` stands for samples ``[f hop, (f + 1) hop)``, and long inputs are tiled exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .autoencoder_source import TiledAudioAutoencoder, _ceil_div

LOG_MAGNITUDE_MAX = 7.0  # exp(7) ~ 1100: above a full-scale sine's STFT peak (n_fft / 4 = 320 for n_fft 1280)


class ConvNeXtBlock1d(nn.Module):
    """Depthwise conv -> LayerNorm -> pointwise expand -> GELU -> pointwise project -> layer scale, residual."""

    def __init__(self, dim: int, intermediate: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class _ConvNeXtBody(nn.Module):
    """Conv embedding -> LayerNorm -> ConvNeXt blocks -> LayerNorm, all at the frame rate ``(B, dim, F)``."""

    def __init__(self, in_channels: int, dim: int, num_blocks: int, intermediate: int, kernel_size: int,
                 embed_kernel_size: int):
        super().__init__()
        self.embed = nn.Conv1d(in_channels, dim, embed_kernel_size, padding=embed_kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock1d(dim, intermediate, kernel_size, 1.0 / max(num_blocks, 1)) for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
        return self.final_norm(x.transpose(1, 2))  # (B, F, dim)


class SpectralEncoder(nn.Module):
    """Audio ``(B, 1, T)`` -> STFT (hop = latent hop) -> log-magnitude and power-compressed real / imaginary parts
    -> ConvNeXt body -> ``out_channels`` moments per frame ``(B, out_channels, ceil(T / hop))``."""

    def __init__(self, n_fft: int, hop_length: int, dim: int, num_blocks: int, intermediate: int,
                 kernel_size: int, out_channels: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        bins = n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # A pointwise embedding: the 3 x 641 spectral features are wide, and the blocks give temporal context.
        self.body = _ConvNeXtBody(3 * bins, dim, num_blocks, intermediate, kernel_size, embed_kernel_size=1)
        self.proj = nn.Linear(dim, out_channels)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, 3 bins, F)``: frame ``f``'s window is centred on samples ``[f hop, (f + 1) hop)``."""
        t = audio.shape[-1]
        frames = _ceil_div(t, self.hop_length)
        pad = (self.n_fft - self.hop_length) // 2
        x = F.pad(audio[:, 0].float(), (pad, pad + frames * self.hop_length - t))
        spec = torch.stft(x, self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True)
        magnitude = spec.abs()
        compressed = spec * (magnitude + 1e-7).pow(-0.7)  # magnitude^0.3, phase kept
        return torch.cat([torch.log(magnitude + 1e-5), compressed.real, compressed.imag], dim=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.features(audio).to(self.proj.weight.dtype)
        return self.proj(self.body(x)).transpose(1, 2)


class SpectralDecoder(nn.Module):
    """Latents ``(B, C, F)`` -> ConvNeXt body -> per-frame log-magnitude and phase -> inverse STFT by weighted
    overlap-add -> audio ``(B, 1, F * hop)`` (the exact inverse of the encoder's framing)."""

    def __init__(self, latent_channels: int, n_fft: int, hop_length: int, dim: int, num_blocks: int,
                 intermediate: int, kernel_size: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.body = _ConvNeXtBody(latent_channels, dim, num_blocks, intermediate, kernel_size, kernel_size)
        self.head = nn.Linear(dim, 2 * (n_fft // 2 + 1))

    def spectrum(self, latents: torch.Tensor) -> torch.Tensor:
        """The complex STFT ``(B, bins, F)`` the decoder predicts."""
        log_magnitude, phase = self.head(self.body(latents)).float().transpose(1, 2).chunk(2, dim=1)
        magnitude = torch.exp(log_magnitude.clamp(max=LOG_MAGNITUDE_MAX))
        return torch.polar(magnitude, phase)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        spec = self.spectrum(latents)
        frames, n, hop = spec.shape[-1], self.n_fft, self.hop_length
        window = self.window.float()
        segments = torch.fft.irfft(spec, n=n, dim=1) * window[:, None]  # (B, n_fft, F)
        length = (frames - 1) * hop + n
        audio = F.fold(segments, (1, length), (1, n), stride=(1, hop))[:, 0, 0]
        envelope = F.fold(window.pow(2)[None, :, None].expand(1, n, frames), (1, length), (1, n),
                          stride=(1, hop))[0, 0, 0]
        pad = (n - hop) // 2
        audio = audio[:, pad : pad + frames * hop] / envelope[pad : pad + frames * hop].clamp_min(1e-8)
        return audio[:, None].to(latents.dtype)


class SpectralSourceVAE(TiledAudioAutoencoder, ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""A SourceVAE whose layers all run at the latent frame rate: STFT + ConvNeXt encoder, ConvNeXt + iSTFT
    decoder. Same interface as :class:`~mslddm.models.autoencoder_source.SourceVAE`.

    Args:
        sampling_rate: audio sample rate in Hz (metadata).
        hop_length: audio samples per latent frame (the STFT hop).
        n_fft: STFT size of the encoder's input and the decoder's output (``n_fft - hop_length`` must be even).
        latent_channels: channels ``C`` of the latent; the encoder outputs ``2C`` (mean, log-variance).
        encoder_dim, encoder_blocks: width and depth of the encoder's ConvNeXt body.
        decoder_dim, decoder_blocks: width and depth of the decoder's ConvNeXt body.
        intermediate_multiplier: ConvNeXt expansion (pointwise width = multiplier x dim).
        kernel_size: the depthwise (and embedding) convolutions' kernel, in frames (odd).
        logvar_min, logvar_max: clamp of the posterior log-variance.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sampling_rate: int = 22050,
        hop_length: int = 320,
        n_fft: int = 1280,
        latent_channels: int = 64,
        encoder_dim: int = 256,
        encoder_blocks: int = 4,
        decoder_dim: int = 256,
        decoder_blocks: int = 8,
        intermediate_multiplier: int = 3,
        kernel_size: int = 7,
        logvar_min: float = -30.0,
        logvar_max: float = 20.0,
    ):
        super().__init__()
        if hop_length < 1 or n_fft < hop_length or (n_fft - hop_length) % 2:
            raise ValueError(f"n_fft ({n_fft}) must be at least hop_length ({hop_length}) and differ from it by "
                             "an even number of samples.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number of frames, got {kernel_size}.")
        if not logvar_min < logvar_max:
            raise ValueError(f"logvar_min ({logvar_min}) must be smaller than logvar_max ({logvar_max}).")
        self.encoder = SpectralEncoder(n_fft, hop_length, encoder_dim, encoder_blocks,
                                       intermediate_multiplier * encoder_dim, kernel_size, 2 * latent_channels)
        self.decoder = SpectralDecoder(latent_channels, n_fft, hop_length, decoder_dim, decoder_blocks,
                                       intermediate_multiplier * decoder_dim, kernel_size)
        self._init_memory_options()

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return int(self.config.hop_length)

    def num_frames(self, num_samples: int) -> int:
        """Latent frames the encoder produces from ``num_samples`` samples: ``ceil(T / hop)``."""
        return _ceil_div(int(num_samples), self.hop_length)

    def num_samples(self, num_frames: int) -> int:
        """Audio samples the decoder produces from ``num_frames`` frames: ``F * hop``."""
        return int(num_frames) * self.hop_length

    def _context(self, convs: int) -> int:
        # STFT framing reaches (n_fft - hop) / 2 samples beyond a frame's hop on each side; each of the body's
        # `convs` frame convolutions reaches kernel_size // 2 frames.
        stft = _ceil_div((self.config.n_fft - self.hop_length) // 2, self.hop_length)
        return stft + convs * (self.config.kernel_size // 2)

    def encoder_context_frames(self) -> int:
        """Frames of audio context on each side of an encoder tile for it to equal the untiled output."""
        return self._context(self.config.encoder_blocks)  # pointwise embedding

    def decoder_context_frames(self) -> int:
        """Latent frames of context on each side of a decoder tile for it to equal the untiled output."""
        return self._context(1 + self.config.decoder_blocks)

    def posterior_output_layer(self) -> nn.Module:
        return self.encoder.proj
