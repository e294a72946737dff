"""The SourceVAE's adversary, as in MSLDM's reference code (DAC's discriminator): a multi-period discriminator
(HiFi-GAN) and a multi-resolution complex-STFT discriminator with frequency bands. Each sub-discriminator
returns its feature maps, the last one being its score map."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def _conv2d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv2d(*args, **kwargs))


class PeriodDiscriminator(nn.Module):
    """Audio folded to ``(T / period, period)`` and read by 2-D convs with kernel ``(5, 1)`` (HiFi-GAN)."""

    def __init__(self, period: int, widths: Sequence[int] = (32, 128, 512, 1024, 1024)):
        super().__init__()
        self.period = period
        chans = (1,) + tuple(widths)
        self.convs = nn.ModuleList(
            _conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < len(widths) - 1 else 1, 1), padding=(2, 0))
            for i in range(len(widths))
        )
        self.conv_post = _conv2d(chans[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.pad(x, (0, -x.shape[-1] % self.period), mode="reflect")
        x = x.reshape(x.shape[0], 1, x.shape[-1] // self.period, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        features.append(self.conv_post(x))
        return features


class STFTDiscriminator(nn.Module):
    """Complex STFT (real, imaginary as 2 channels) split into frequency bands, each read by its own 2-D convs;
    the bands are joined on the frequency axis for the score conv (DAC's ``MRD``)."""

    def __init__(self, n_fft: int, channels: int = 32, bands: Sequence[tuple[float, float]] = BANDS):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        bins = n_fft // 2 + 1
        self.bands = [(int(lo * bins), int(hi * bins)) for lo, hi in bands]

        def stack():
            return nn.ModuleList([
                _conv2d(2, channels, (3, 9), (1, 1), padding=(1, 4)),
                *(_conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)) for _ in range(3)),
                _conv2d(channels, channels, (3, 3), (1, 1), padding=(1, 1)),
            ])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.conv_post = _conv2d(channels, 1, (3, 3), (1, 1), padding=(1, 1))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        spec = torch.stft(x.squeeze(1).float(), self.n_fft, self.hop, window=self.window, return_complex=True)
        x = torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, 2, frames, bins)
        features, outs = [], []
        for (lo, hi), convs in zip(self.bands, self.band_convs):
            band = x[..., lo:hi]
            for conv in convs:
                band = F.leaky_relu(conv(band), 0.1)
                features.append(band)
            outs.append(band)
        features.append(self.conv_post(torch.cat(outs, dim=-1)))
        return features


class SourceDiscriminator(nn.Module):
    """Multi-period (periods 2, 3, 5, 7, 11) plus multi-resolution STFT (2048, 1024, 512) discriminators.

    Inputs are DC-removed and peak-normalised to 0.8 first, as in the reference. ``period_widths`` and
    ``stft_channels`` default to the reference sizes; smaller ones make CPU-sized recipes.
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 period_widths: Sequence[int] = (32, 128, 512, 1024, 1024),
                 fft_sizes: Sequence[int] = (2048, 1024, 512), stft_channels: int = 32):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, period_widths) for p in periods]
            + [STFTDiscriminator(n, stft_channels) for n in fft_sizes]
        )

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=-1, keepdim=True)
        return 0.8 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        x = self.normalize(x)
        return [d(x) for d in self.discriminators]
