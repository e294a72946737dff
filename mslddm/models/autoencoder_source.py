"""SourceVAE: the variational autoencoder shared by all stems in MSLDM (Xu et al., 2024).

The network is DAC's (Kumar et al., 2023) encoder and decoder without the quantiser and without the
decoder's final tanh, run at 22050 Hz: audio ``(B, 1, T)`` -> ``(B, 2C, T / 320)`` Gaussian moments ->
latents ``(B, C, F)`` -> audio ``(B, 1, 320 F - 8)``. Module paths and parameter names (``weight_g`` /
``weight_v``, from torch's original weight norm) are those of the released ``sourcevae_ckpt``, so its
``'generator'`` state dict loads unchanged::

    vae.load_state_dict(torch.load("sourcevae_ckpt", weights_only=True)["generator"])

Long audio is encoded and decoded in overlapping tiles whose overlap covers the network's receptive field,
which the layers compute from their own conv arithmetic; the stitched result equals the untiled one to float
precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..randomness import Generator

Span = tuple[int, int]

# 1024 frames = 327672 samples = 14.86 s at 22050 Hz, the paper's training segment: a 12-s song (827 frames)
# is one tile; longer audio is processed in pieces of at most this size, so peak memory stops growing.
DEFAULT_TILE_FRAMES = 1024


# ------------------------------------------------------------------------------------------------------------
# Layers. Each knows its length arithmetic (``output_length``) and which input positions an output range reads
# (``input_span``), so that hop, frame counts and tile overlaps follow from the config instead of constants.
# ------------------------------------------------------------------------------------------------------------
def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _snake(x: torch.Tensor, alpha: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    return x + inverse * torch.sin(alpha * x).pow(2)


_compiled_snake = None


def compiled_snake():
    """:func:`_snake` compiled once per process (one fused pass over the activations instead of five)."""
    global _compiled_snake
    if _compiled_snake is None:
        _compiled_snake = torch.compile(_snake, dynamic=True)
    return _compiled_snake


class Snake1d(nn.Module):
    """Snake activation (Ziyin et al., 2020): ``x + sin(alpha x)^2 / alpha``, one ``alpha`` per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))
        self.fused = False  # set by SourceVAE.enable_fused_activations(): torch.compile'd at inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad):
            return _snake(x, self.alpha, (self.alpha + 1e-9).reciprocal())
        if self.fused:
            return compiled_snake()(x, self.alpha, (self.alpha + 1e-9).reciprocal())
        # Inference: one temporary instead of four (full-rate activations make this memory-bound; decoding is
        # 18% faster in float32, 13% in bfloat16, with identical output).
        t = torch.mul(x, self.alpha)
        t.sin_()
        t.square_()
        return torch.addcmul(x, t, (self.alpha + 1e-9).reciprocal())

    def output_length(self, length: int) -> int:
        return length

    def input_span(self, first: int, last: int) -> Span:
        return first, last


class _WeightNormConv(nn.Module):
    """Weight-normalised 1-D convolution (Salimans & Kingma, 2016): ``weight = g * v / ||v||``.

    The norm runs over all dims but 0, as ``torch.nn.utils.weight_norm(dim=0)`` does for both ``Conv1d``
    ``(out, in, k)`` and ``ConvTranspose1d`` ``(in, out, k)`` weights: ``g`` is ``(weight.shape[0], 1, 1)``.
    """

    def __init__(
        self, weight_shape: Sequence[int], out_channels: int, stride: int, padding: int, dilation: int
    ):
        super().__init__()
        self.kernel_size = weight_shape[-1]
        self.stride, self.padding, self.dilation = stride, padding, dilation
        # Registration order (bias, g, v) is that of torch's weight_norm modules: state_dict() order matches.
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(weight_shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(*weight_shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default conv init for ``v``, then ``g = ||v||`` so that ``weight == v``; zero bias, as DAC's
        ``init_weights`` does. (With random biases the encoder's output of quiet stems is mostly bias, and a VAE
        trained from there decodes one average sound whatever its latent.)"""
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        nn.init.zeros_(self.bias)
        with torch.no_grad():
            self.weight_g.copy_(torch.linalg.vector_norm(self.weight_v, dim=(1, 2), keepdim=True))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (
            self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=(1, 2), keepdim=True)
        )

    @property
    def _reach(self) -> int:
        return self.dilation * (self.kernel_size - 1)


class WNConv1d(_WeightNormConv):
    """Weight-normalised ``Conv1d``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__((out_channels, in_channels, kernel_size), out_channels, stride, padding, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def output_length(self, length: int) -> int:
        return (length + 2 * self.padding - self._reach - 1) // self.stride + 1

    def input_span(self, first: int, last: int) -> Span:
        return first * self.stride - self.padding, last * self.stride - self.padding + self._reach


class WNConvTranspose1d(_WeightNormConv):
    """Weight-normalised ``ConvTranspose1d`` (no output padding)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__((in_channels, out_channels, kernel_size), out_channels, stride, padding, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding, 0, 1, self.dilation)

    def output_length(self, length: int) -> int:
        return (length - 1) * self.stride - 2 * self.padding + self._reach + 1

    def input_span(self, first: int, last: int) -> Span:
        # Output n sums input i over taps j with n = i * stride - padding + j * dilation.
        lo = _ceil_div(first + self.padding - self._reach, self.stride)
        return lo, (last + self.padding) // self.stride


class _Stack(nn.Module):
    """Layers applied in order; lengths and spans compose. Subclasses name them as the checkpoint does."""

    _layers_name = "block"

    @property
    def layers(self) -> nn.Sequential:
        return getattr(self, self._layers_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checkpointing = getattr(self, "gradient_checkpointing", False) and torch.is_grad_enabled()
        for layer in self.layers:
            x = self._gradient_checkpointing_func(layer, x) if checkpointing else layer(x)
        return x

    def output_length(self, length: int) -> int:
        for layer in self.layers:
            length = layer.output_length(length)
        return length

    def input_span(self, first: int, last: int) -> Span:
        for layer in reversed(self.layers):
            first, last = layer.input_span(first, last)
        return first, last


class ResidualUnit(_Stack):
    """Snake -> dilated conv k=7 -> Snake -> conv k=1, added to the (centre-cropped) input."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(channels),
            WNConv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(channels),
            WNConv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        return (x[..., crop : x.shape[-1] - crop] if crop > 0 else x) + y

    def input_span(self, first: int, last: int) -> Span:
        # "same" padding: the skip reads [first, last], which the centred kernel's span contains.
        lo, hi = super().input_span(first, last)
        return min(lo, first), max(hi, last)


def _residual_units(channels: int) -> list[nn.Module]:
    return [ResidualUnit(channels, dilation) for dilation in (1, 3, 9)]


class EncoderBlock(_Stack):
    """Three residual units at ``channels // 2``, then Snake and a strided conv to ``channels``."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            *_residual_units(channels // 2),
            Snake1d(channels // 2),
            WNConv1d(
                channels // 2, channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
        )


class DecoderBlock(_Stack):
    """Snake and a transposed conv upsampling by ``stride``, then three residual units."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_channels),
            WNConvTranspose1d(
                in_channels,
                out_channels,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
            ),
            *_residual_units(out_channels),
        )


class Encoder(_Stack):
    """DAC encoder: conv -> blocks doubling the width while downsampling -> Snake -> conv."""

    def __init__(self, channels: int, rates: Sequence[int], out_channels: int):
        super().__init__()
        layers = [WNConv1d(1, channels, kernel_size=7, padding=3)]
        for stride in rates:
            channels *= 2
            layers.append(EncoderBlock(channels, stride))
        layers += [Snake1d(channels), WNConv1d(channels, out_channels, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)
        self.gradient_checkpointing = False


class Decoder(_Stack):
    """DAC decoder minus its final tanh: conv -> blocks halving width while upsampling -> Snake -> conv."""

    _layers_name = "model"

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]):
        super().__init__()
        layers = [WNConv1d(in_channels, channels, kernel_size=7, padding=3)]
        for stride in rates:
            layers.append(DecoderBlock(channels, channels // 2, stride))
            channels //= 2
        layers += [Snake1d(channels), WNConv1d(channels, 1, kernel_size=7, padding=3)]
        self.model = nn.Sequential(*layers)
        self.gradient_checkpointing = False


# ------------------------------------------------------------------------------------------------------------
# Posterior and outputs
# ------------------------------------------------------------------------------------------------------------
class DiagonalGaussian:
    """Diagonal Gaussian posterior from ``(B, 2C, F)`` moments: channels ``[:C]`` mean, ``[C:]`` log-var."""

    def __init__(self, parameters: torch.Tensor, logvar_min: float = -30.0, logvar_max: float = 20.0):
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = logvar.clamp(logvar_min, logvar_max)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: Generator = None) -> torch.Tensor:
        """Reparameterised ``mean + std * eps``; given a list, item ``i`` comes from ``generator[i]``."""
        eps = randn_tensor(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per item, a mean (not a sum) over channels and frames as in MSLDM: ``(B,)``."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).mean(dim=dims)


@dataclass
class SourceVAEEncoderOutput(BaseOutput):
    """Output of :meth:`SourceVAE.encode`: the posterior over latents ``(B, C, F)``."""

    latent_dist: DiagonalGaussian


@dataclass
class SourceVAEDecoderOutput(BaseOutput):
    """Output of :meth:`SourceVAE.decode` and :meth:`SourceVAE.forward`: audio ``(B, 1, samples)``."""

    sample: torch.Tensor


# ------------------------------------------------------------------------------------------------------------
# What every mslddm VAE shares: tiling, slicing, input checks, encode / decode / forward
# ------------------------------------------------------------------------------------------------------------
class TiledAudioAutoencoder:
    """Encode / decode for VAEs between mono audio ``(B, 1, T)`` and latents ``(B, C, F)`` at ``hop_length``.

    A subclass provides ``encoder`` (audio -> ``2C`` moments), ``decoder`` (latents -> audio), ``hop_length``,
    ``num_frames``, ``num_samples`` and the receptive fields ``encoder_context_frames`` /
    ``decoder_context_frames``; tiling of long inputs follows from those. The pipeline uses only this interface.
    """

    def _init_memory_options(self) -> None:
        self.use_slicing = False
        self.use_tiling = True
        self.tile_frames = DEFAULT_TILE_FRAMES
        self.tile_overlap_frames: int | None = None

    def enable_fused_activations(self, enabled: bool = True) -> None:
        """Compiles the Snake activations with ``torch.compile`` for inference (the first call of each shape
        compiles, about 6 s on a CPU): decoding with the paper's SourceVAE is about 18% faster on a CPU, where its
        full-rate activations are memory-bound. Training is unaffected. A VAE without Snake activations ignores it."""
        for module in self.modules():
            if isinstance(module, Snake1d):
                module.fused = bool(enabled)

    def enable_tiling(
        self, tile_frames: int = DEFAULT_TILE_FRAMES, overlap_frames: int | None = None
    ) -> None:
        """Encodes and decodes inputs longer than ``tile_frames`` frames (x ``hop_length`` samples) in tiles.

        ``overlap_frames`` frames of context are added on each side of every tile and discarded; the default
        is the receptive field (:meth:`encoder_context_frames`, :meth:`decoder_context_frames`), which makes
        tiled output equal to untiled output up to float rounding. A smaller overlap (at least 1: a decoded
        tile is a few samples shorter than ``hop_length`` times its frames) trades exactness for speed.
        """
        if overlap_frames is not None and overlap_frames < 1:
            raise ValueError(
                f"overlap_frames must be at least 1 (or None for the receptive field), got {overlap_frames}."
            )
        overlap = max(self.encoder_context_frames(), self.decoder_context_frames())
        overlap = overlap if overlap_frames is None else overlap_frames
        if tile_frames - 2 * overlap < 1:
            raise ValueError(
                f"tile_frames={tile_frames} must exceed twice the overlap ({overlap} frames on each side)."
            )
        self.use_tiling, self.tile_frames, self.tile_overlap_frames = True, int(tile_frames), overlap_frames

    def _tiled(
        self, fn: Callable, x: torch.Tensor, unit_in: int, unit_out: int, overlap: int
    ) -> torch.Tensor:
        """Applies ``fn`` to overlapping tiles of ``x`` (edges on multiples of ``unit_in``) and stitches."""
        units = _ceil_div(x.shape[-1], unit_in)
        if not self.use_tiling or units <= self.tile_frames:
            return fn(x)
        step = self.tile_frames - 2 * overlap
        if step < 1:
            raise ValueError(
                f"tile_frames={self.tile_frames} must exceed twice the overlap ({overlap} frames)."
            )
        pieces = []
        for start in range(0, units, step):
            stop = min(start + step, units)
            a, b = max(start - overlap, 0), min(stop + overlap, units)
            y = fn(x[..., a * unit_in : b * unit_in])
            # Tile output position j is global position a * unit_out + j (the network is shift-equivariant).
            end = (stop - a) * unit_out if stop < units else y.shape[-1]
            pieces.append(y[..., (start - a) * unit_out : end])
        return torch.cat(pieces, dim=-1)

    def _encode(self, audio: torch.Tensor) -> torch.Tensor:
        overlap = self.tile_overlap_frames or self.encoder_context_frames()
        return self._tiled(self.encoder, audio, self.hop_length, 1, overlap)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        overlap = self.tile_overlap_frames or self.decoder_context_frames()
        return self._tiled(self.decoder, latents, 1, self.hop_length, overlap)

    def encode(
        self, audio: torch.Tensor, return_dict: bool = True
    ) -> SourceVAEEncoderOutput | tuple[DiagonalGaussian]:
        """Encodes mono audio ``(B, 1, T)`` to the posterior over latents ``(B, C, num_frames(T))``."""
        if not isinstance(audio, torch.Tensor) or audio.ndim != 3 or audio.shape[1] != 1:
            shape = tuple(audio.shape) if hasattr(audio, "shape") else type(audio).__name__
            raise ValueError(
                f"{type(self).__name__}.encode expects audio of shape (batch, 1, samples), got {shape}."
            )
        if self.num_frames(audio.shape[-1]) < 1:
            raise ValueError(
                f"Audio of {audio.shape[-1]} samples is too short to encode: at least "
                f"{self.hop_length} are needed."
            )
        if self.use_slicing and audio.shape[0] > 1:
            moments = torch.cat([self._encode(item) for item in audio.split(1)])
        else:
            moments = self._encode(audio)
        posterior = DiagonalGaussian(moments, self.config.logvar_min, self.config.logvar_max)
        return SourceVAEEncoderOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(
        self, latents: torch.Tensor, return_dict: bool = True
    ) -> SourceVAEDecoderOutput | tuple[torch.Tensor]:
        """Decodes latents ``(B, C, F)`` to audio ``(B, 1, num_samples(F))``."""
        c = self.config.latent_channels
        if not isinstance(latents, torch.Tensor) or latents.ndim != 3 or latents.shape[1] != c:
            shape = tuple(latents.shape) if hasattr(latents, "shape") else type(latents).__name__
            raise ValueError(
                f"{type(self).__name__}.decode expects latents of shape (batch, {c}, frames), got {shape}."
            )
        if latents.shape[-1] < 1:
            raise ValueError(
                f"{type(self).__name__}.decode needs at least one latent frame, got shape "
                f"{tuple(latents.shape)}."
            )
        if self.use_slicing and latents.shape[0] > 1:
            audio = torch.cat([self._decode(item) for item in latents.split(1)])
        else:
            audio = self._decode(latents)
        return SourceVAEDecoderOutput(sample=audio) if return_dict else (audio,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SourceVAEDecoderOutput | tuple[torch.Tensor]:
        """Reconstructs audio ``(B, 1, T)``: decodes the posterior mean, or a posterior sample if asked."""
        posterior = self.encode(sample).latent_dist
        latents = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(latents, return_dict=return_dict)

    def set_posterior_logvar_bias(self, value: float) -> None:
        """Sets the bias of the log-variance half of the encoder's output layer: a narrow initial posterior for
        short training schedules (with std 1 a fresh encoder's sampled latent is all noise, the decoder learns
        to ignore it, and the posterior collapses)."""
        with torch.no_grad():
            self.posterior_output_layer().bias[self.config.latent_channels:] = float(value)


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------
class SourceVAE(TiledAudioAutoencoder, ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""MSLDM's SourceVAE: one DAC-style VAE shared by all stems (mono audio <-> ``latent_channels`` x T/hop).

    Args:
        sampling_rate: audio sample rate in Hz (metadata: the network has no notion of time).
        encoder_dim: width of the encoder's first conv; doubles at every encoder block.
        encoder_rates: downsampling factor of each encoder block; their product is the hop length.
        latent_channels: channels ``C`` of the latent; the encoder outputs ``2C`` (mean, log-variance).
        decoder_dim: width of the decoder's first conv; halves at every decoder block.
        decoder_rates: upsampling factor of each decoder block; their product must equal the encoder's.
        logvar_min, logvar_max: clamp of the posterior log-variance.

    The defaults are the paper's model (61,050,402 parameters).
    Tiling is on by default (``tile_frames=1024``, see :meth:`enable_tiling`); slicing is off.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sampling_rate: int = 22050,
        encoder_dim: int = 64,
        encoder_rates: Sequence[int] = (2, 4, 5, 8),
        latent_channels: int = 80,
        decoder_dim: int = 1536,
        decoder_rates: Sequence[int] = (8, 5, 4, 2),
        logvar_min: float = -30.0,
        logvar_max: float = 20.0,
    ):
        super().__init__()
        encoder_rates, decoder_rates = tuple(encoder_rates), tuple(decoder_rates)
        for name, rates in (("encoder_rates", encoder_rates), ("decoder_rates", decoder_rates)):
            if not rates or any(not isinstance(r, int) or r < 1 for r in rates):
                raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {rates!r}.")
        if math.prod(encoder_rates) != math.prod(decoder_rates):
            raise ValueError(
                f"The encoder downsamples by {math.prod(encoder_rates)} (encoder_rates={encoder_rates!r}) "
                f"but the decoder upsamples by {math.prod(decoder_rates)} (decoder_rates={decoder_rates!r}); "
                "they must match."
            )
        if decoder_dim % 2 ** len(decoder_rates):
            raise ValueError(
                f"decoder_dim={decoder_dim} must be divisible by 2**len(decoder_rates) = "
                f"{2 ** len(decoder_rates)}."
            )
        if not logvar_min < logvar_max:
            raise ValueError(f"logvar_min ({logvar_min}) must be smaller than logvar_max ({logvar_max}).")

        self.encoder = Encoder(encoder_dim, encoder_rates, 2 * latent_channels)
        self.decoder = Decoder(latent_channels, decoder_dim, decoder_rates)

        self._init_memory_options()

    # --------------------------------------------------------------------------------------------------------
    # Length arithmetic
    # --------------------------------------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame (product of the encoder rates; 320 for the paper)."""
        return math.prod(self.config.encoder_rates)

    def num_frames(self, num_samples: int) -> int:
        """Latent frames the encoder produces from ``num_samples`` samples (327672 -> 1024 for the paper)."""
        return self.encoder.output_length(int(num_samples))

    def num_samples(self, num_frames: int) -> int:
        """Audio samples the decoder produces from ``num_frames`` frames (``320 F - 8`` for the paper)."""
        return self.decoder.output_length(int(num_frames))

    def encoder_context_frames(self) -> int:
        """Frames of audio context on each side of an encoder tile for it to equal the untiled output."""
        hop, f = self.hop_length, 1 << 20  # any frame far from the edges: the network is shift-equivariant
        first, last = self.encoder.input_span(f, f)
        return max(_ceil_div(f * hop - first, hop), _ceil_div(last + 1 - (f + 1) * hop, hop), 0)

    def decoder_context_frames(self) -> int:
        """Latent frames of context on each side of a decoder tile for it to equal the untiled output."""
        hop, f = self.hop_length, 1 << 20
        first, _ = self.decoder.input_span(f * hop, f * hop)
        _, last = self.decoder.input_span(f * hop - 1, f * hop - 1)
        return max(f - first, last + 1 - f, 0)

    def posterior_output_layer(self) -> nn.Module:
        return self.encoder.block[-1]
