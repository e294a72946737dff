"""The MSLDM diffusion network: a 1-D UNet over the joint latent of all stems.

The architecture is the `UNet1d` of audio-diffusion-pytorch 0.0.43, the network behind the published MSLDM numbers:
a patcher folds time into channels, each level downsamples then runs ResNet blocks (scale/shift from a learned
time embedding) and a transformer block, a ResNet/attention/ResNet bottleneck sits in the middle, and the up path
consumes the skips scaled by 2^-0.5. Module names follow the reference so that a released checkpoint loads with
`convert_reference_unet_state_dict` + `load_state_dict(strict=True)`.

The model takes EDM's `c_noise = log(sigma) / 4` directly; preconditioning lives in `schedulers.sampling.Denoiser`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_1d import UNet1DOutput
from torch import nn

__all__ = [
    "MultiSourceUNet1DModel",
    "UNet1DOutput",
    "convert_reference_unet_state_dict",
    "stem_conditioning",
    "stem_conditioning_channels",
]


def convert_reference_unet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turns a reference `UNet1d` state dict into one for `MultiSourceUNet1DModel.load_state_dict(strict=True)`.

    Module names are identical to the reference, so a bare `UNet1d.state_dict()` passes through unchanged. A released
    Lightning checkpoint (or its `state_dict`) keeps only the `model.unet.*` tensors, without the prefix; their
    duplicates under `model.diffusion.net.*` are dropped.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    prefix = "model.unet."
    if any(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    return dict(state_dict)


def stem_conditioning_channels(num_stems: int, latent_channels: int) -> int:
    """Input channels of a conditioned UNet's `conditioning`: each stem's clean latent, then one mask per stem."""
    return num_stems * (latent_channels + 1)


def stem_conditioning(known: torch.Tensor | None, given: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The conditioning input of trained partial generation (as MSG-LD and MGE-LDM): the clean latents of the given
    stems scaled to unit variance, zeros elsewhere, followed by the per-stem masks.

    Args:
        known (`torch.Tensor` of shape `(batch, stems * latent_channels, length)` or `None`): The stems' clean latents
            (only the given frames are read); `None` with nothing given.
        given (`torch.Tensor` of shape `(batch, stems, length)` or `(batch, stems)`, bool): Which stems (and frames)
            are given. All `False` is total generation: the input is then all zeros.
        sigma_data (`float`): The latents' standard deviation (the scheduler's).

    Returns `(batch, stems * (latent_channels + 1), length)`.
    """
    if known is None:
        raise ValueError("stem_conditioning needs the known latents; pass conditioning=None for total generation.")
    batch, channels, length = known.shape
    if given.ndim == 2:
        given = given[..., None].expand(-1, -1, length)
    stems = given.shape[1]
    if channels % stems or given.shape[-1] != length:
        raise ValueError(f"`given` of shape {tuple(given.shape)} does not fit latents of shape {tuple(known.shape)}.")
    given = given.to(known.device).expand(batch, -1, -1)
    per_channel = given.repeat_interleave(channels // stems, dim=1)
    clean = torch.where(per_channel, known.float() / sigma_data, torch.zeros((), device=known.device))
    return torch.cat([clean, given.float()], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks. Attribute names (`block1`, `project`, `to_scale_shift`, `fn`, `g`, ...) are the reference's.


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm with a gain and no bias, over the last dim (tokens) or over dim 1 (channels of a (B, C, L) map)."""

    def __init__(self, features: int, channel_dim: bool = False, eps: float = 1e-5):
        super().__init__()
        self.channel_dim = channel_dim
        self.eps = eps
        self.g = nn.Parameter(torch.ones((1, features, 1) if channel_dim else (features,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channel_dim:
            return F.layer_norm(x, x.shape[-1:], self.g, None, self.eps)
        x = F.layer_norm(x.transpose(1, 2), x.shape[1:2], self.g.flatten(), None, self.eps)
        return x.transpose(1, 2)


class ConvBlock1d(nn.Module):
    """GroupNorm -> (optional time scale/shift) -> SiLU -> Conv k=3."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.groupnorm = nn.GroupNorm(num_groups, in_channels)
        self.project = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.groupnorm(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.project(F.silu(x))


class MappingToScaleShift(nn.Module):
    """Per-channel (scale, shift) of shape (B, C, 1) each from the time mapping (B, M)."""

    def __init__(self, mapping_features: int, channels: int):
        super().__init__()
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(mapping_features, 2 * channels))

    def forward(self, mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.to_scale_shift(mapping).unsqueeze(-1).chunk(2, dim=1)
        return scale, shift


class ResnetBlock1d(nn.Module):
    """Two conv blocks, the second modulated by the time mapping, plus a (1x1-projected) residual."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, mapping_features: int):
        super().__init__()
        self.block1 = ConvBlock1d(in_channels, out_channels, num_groups)
        self.to_scale_shift = MappingToScaleShift(mapping_features, out_channels)
        self.block2 = ConvBlock1d(out_channels, out_channels, num_groups)
        self.to_out = (
            nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        h = self.block2(h, self.to_scale_shift(mapping))
        return h + self.to_out(x)


class MultiHeadOutput(nn.Module):
    """Scaled dot-product attention over heads, then the output projection and a bias-free LayerNorm."""

    def __init__(self, features: int, num_heads: int, head_features: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_out = nn.Sequential(
            nn.Linear(num_heads * head_features, features, bias=False), BiasFreeLayerNorm(features)
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (B, N, H*D) -> (B, H, N, D); SDPA's default scale is D^-0.5, as in the reference.
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention on tokens (B, N, C); q and kv projections have no bias."""

    def __init__(self, features: int, num_heads: int, head_features: int):
        super().__init__()
        mid_features = num_heads * head_features
        self.norm = BiasFreeLayerNorm(features)
        self.to_q = nn.Linear(features, mid_features, bias=False)
        self.to_kv = nn.Linear(features, 2 * mid_features, bias=False)
        self.attention = MultiHeadOutput(features, num_heads, head_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        return self.attention(self.to_q(x), k, v)


class OnTokens(nn.Module):
    """Runs a token module (B, L, C) on a feature map (B, C, L)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.transpose(1, 2)).transpose(1, 2)


class TransformerBlock1d(nn.Module):
    """Residual self-attention then residual feed-forward (1x1 convs with bias-free channel LayerNorms)."""

    def __init__(self, channels: int, num_heads: int, head_features: int, multiplier: int):
        super().__init__()
        mid_channels = channels * multiplier
        self.attention = OnTokens(SelfAttention(channels, num_heads, head_features))
        self.feed_forward = nn.Sequential(
            BiasFreeLayerNorm(channels, channel_dim=True),
            nn.Conv1d(channels, mid_channels, kernel_size=1, bias=False),
            nn.GELU(),
            BiasFreeLayerNorm(mid_channels, channel_dim=True),
            nn.Conv1d(mid_channels, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x) + x
        return self.feed_forward(x) + x


class LearnedFourierFeatures(nn.Module):
    """t -> [t, sin(2 pi w t), cos(2 pi w t)] with learned frequencies w (continuous-time embedding)."""

    def __init__(self, num_frequencies: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(num_frequencies))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Computed in float32 (phases of large frequencies need it), returned in the weights' dtype."""
        t = t.float().unsqueeze(-1)
        phases = 2 * math.pi * t * self.weights.float()
        return torch.cat([t, phases.sin(), phases.cos()], dim=-1).to(self.weights.dtype)


class CheckpointableBlock(nn.Module):
    """A block whose ResNet/transformer sub-blocks run under diffusers' gradient checkpointing when it is enabled."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)


class PatchBlock(nn.Module):
    """ResNet block to `out_channels / patch_size`, then fold each run of `patch_size` steps into channels."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, mapping_features: int):
        super().__init__()
        if out_channels % patch_size:
            raise ValueError(f"out_channels ({out_channels}) must be a multiple of patch_size ({patch_size}).")
        self.patch_size = patch_size
        self.block = ResnetBlock1d(
            in_channels, out_channels // patch_size, min(patch_size, in_channels), mapping_features
        )

    def forward(self, x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        x = self.block(x, mapping)
        b, c, t = x.shape  # (b, c, l*p) -> (b, c*p, l), channel index c*p + i
        return x.view(b, c, t // self.patch_size, self.patch_size).transpose(2, 3).reshape(b, -1, t // self.patch_size)


class UnpatchBlock(nn.Module):
    """Inverse of `PatchBlock`: unfold channels back into time, then a ResNet block to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, mapping_features: int):
        super().__init__()
        if in_channels % patch_size:
            raise ValueError(f"in_channels ({in_channels}) must be a multiple of patch_size ({patch_size}).")
        self.patch_size = patch_size
        self.block = ResnetBlock1d(
            in_channels // patch_size, out_channels, min(patch_size, out_channels), mapping_features
        )

    def forward(self, x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        b, c, l = x.shape  # (b, c*p, l) -> (b, c, l*p)
        x = x.view(b, c // self.patch_size, self.patch_size, l).transpose(2, 3).reshape(b, -1, l * self.patch_size)
        return self.block(x, mapping)


class Patcher(CheckpointableBlock):
    """`blocks` patch blocks, each dividing the length by `factor`; the last one outputs `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, factor: int, mapping_features: int):
        super().__init__()
        widths = [in_channels * factor**i for i in range(blocks)] + [out_channels]
        self.module_list = nn.ModuleList(
            PatchBlock(widths[i], widths[i + 1], factor, mapping_features) for i in range(blocks)
        )

    def forward(self, x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        for block in self.module_list:
            x = self.run(block, x, mapping)
        return x


class Unpatcher(CheckpointableBlock):
    """Mirror of `Patcher`: `blocks` unpatch blocks, each multiplying the length by `factor`."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, factor: int, mapping_features: int):
        super().__init__()
        widths = [in_channels] + [out_channels * factor**i for i in reversed(range(blocks))]
        self.module_list = nn.ModuleList(
            UnpatchBlock(widths[i], widths[i + 1], factor, mapping_features) for i in range(blocks)
        )

    def forward(self, x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        for block in self.module_list:
            x = self.run(block, x, mapping)
        return x


class FullRatePath(CheckpointableBlock):
    """A refinement at the latent frame rate, after the unpatcher: two ResNet blocks of `channels` on the noisy
    input and the coarse output side by side, and a zero-initialised conv whose output is added to the coarse one
    (so a model given the path starts equal to the one without it).

    Why: the patcher folds `patch_factor` frames into channels after a ResNet block to `channels / patch_factor`
    channels, and the unpatcher comes back through as few, so everything the network outputs at frame level lies
    in a space of about 3 x that many dimensions per frame (the bundled small model: 48 of its 256). EDM's
    denoiser is `c_skip x + c_out F`: what F cannot output, the noise in `x` keeps, and sampling ends with latents
    whose frame-to-frame detail is the initial noise's (a buzz at the frame rate and its harmonics, a
    high-frequency floor). This path lets F reach every channel of every frame.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int, num_groups: int, mapping_features: int):
        super().__init__()
        self.blocks = nn.ModuleList([
            ResnetBlock1d(in_channels + out_channels, channels, num_groups, mapping_features),
            ResnetBlock1d(channels, channels, num_groups, mapping_features),
        ])
        self.to_out = nn.Conv1d(channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, sample: torch.Tensor, coarse: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        h = torch.cat([sample.to(coarse.dtype), coarse], dim=1)
        for block in self.blocks:
            h = self.run(block, h, mapping)
        return coarse + self.to_out(h)


class DownBlock1d(CheckpointableBlock):
    """Strided conv, ResNet blocks and an optional transformer; every block's output is a skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        factor: int,
        num_layers: int,
        kernel_multiplier: int,
        num_groups: int,
        mapping_features: int,
        attention: tuple[int, int, int] | None,
    ):
        super().__init__()
        if kernel_multiplier % 2:
            raise ValueError(f"kernel_multiplier_downsample must be even, got {kernel_multiplier}.")
        self.downsample = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size=factor * kernel_multiplier + 1,
            stride=factor,
            padding=factor * kernel_multiplier // 2,
        )
        self.blocks = nn.ModuleList(
            ResnetBlock1d(out_channels, out_channels, num_groups, mapping_features) for _ in range(num_layers)
        )
        if attention is not None:
            self.transformer = TransformerBlock1d(out_channels, *attention)

    def forward(self, x: torch.Tensor, mapping: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.downsample(x)
        skips = []
        for block in self.blocks:
            x = self.run(block, x, mapping)
            skips.append(x)
        if hasattr(self, "transformer"):
            x = self.run(self.transformer, x)
            skips.append(x)
        return x, skips


class UpBlock1d(CheckpointableBlock):
    """ResNet blocks on [x, skip * skip_scale], an optional transformer, then upsampling to `out_channels`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        factor: int,
        num_layers: int,
        num_groups: int,
        mapping_features: int,
        attention: tuple[int, int, int] | None,
        use_nearest: bool,
        use_skip_scale: bool,
    ):
        super().__init__()
        self.skip_scale = 2**-0.5 if use_skip_scale else 1.0
        self.blocks = nn.ModuleList(
            ResnetBlock1d(2 * in_channels, in_channels, num_groups, mapping_features) for _ in range(num_layers)
        )
        if attention is not None:
            self.transformer = TransformerBlock1d(in_channels, *attention)
        if factor == 1:
            self.upsample = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        elif use_nearest:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=factor, mode="nearest"),
                nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1),
            )
        else:
            self.upsample = nn.ConvTranspose1d(
                in_channels,
                out_channels,
                kernel_size=2 * factor,
                stride=factor,
                padding=factor // 2 + factor % 2,
                output_padding=factor % 2,
            )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], mapping: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.cat([x, skips.pop() * self.skip_scale], dim=1)
            x = self.run(block, x, mapping)
        if hasattr(self, "transformer"):
            x = self.run(self.transformer, x)
        return self.upsample(x)


class Bottleneck1d(CheckpointableBlock):
    """ResNet block -> (optional residual-free self-attention) -> ResNet block at the lowest resolution."""

    def __init__(
        self, channels: int, num_groups: int, mapping_features: int, attention: tuple[int, int] | None
    ):
        super().__init__()
        self.pre_block = ResnetBlock1d(channels, channels, num_groups, mapping_features)
        if attention is not None:
            self.attention = OnTokens(SelfAttention(channels, *attention))
        self.post_block = ResnetBlock1d(channels, channels, num_groups, mapping_features)

    def forward(self, x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        x = self.run(self.pre_block, x, mapping)
        if hasattr(self, "attention"):
            # As in the reference: the bottleneck attention replaces x (no residual add).
            x = self.run(self.attention, x)
        return self.run(self.post_block, x, mapping)


# ---------------------------------------------------------------------------------------------------------------------


class MultiSourceUNet1DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    r"""
    The 1-D UNet of MSLDM, denoising the joint latent of all stems (stems concatenated on channels). The defaults are
    the paper's released MSLDM model (364,416,864 parameters); other sizes are named in `mslddm.presets`. LoRA
    adapters attach through diffusers' `PeftAdapterMixin` (`add_adapter`, `load_lora_adapter`; pipelines load them
    with `load_lora_weights`, `mslddm.pipelines.lora`).

    Parameters:
        in_channels (`int`, defaults to 320): Channels of the input (stems x latent channels: 4 x 80).
        channels (`int`, defaults to 512): Base width after the patcher.
        patch_factor (`int`, defaults to 16): Length reduction of each patch block (time folded into channels).
        patch_blocks (`int`, defaults to 1): Number of patch blocks.
        multipliers (`Sequence[int]`): Width of each level as a multiple of `channels`; one more than `factors`.
        factors (`Sequence[int]`): Downsampling factor entering each level.
        num_blocks (`Sequence[int]`): ResNet blocks per down level (the up level has one more if it has attention).
        attentions (`Sequence[bool]`): Whether each level ends with a transformer block.
        attention_heads (`int`, defaults to 12): Attention heads.
        attention_features (`int`, defaults to 64): Features per head.
        attention_multiplier (`int`, defaults to 2): Feed-forward expansion of the transformer blocks.
        resnet_groups (`int`, defaults to 8): GroupNorm groups of the ResNet blocks.
        kernel_multiplier_downsample (`int`, defaults to 2): Downsampling conv kernel = factor * this + 1.
        use_nearest_upsample (`bool`, defaults to `False`): Nearest + conv instead of transposed conv to upsample.
        use_skip_scale (`bool`, defaults to `True`): Scale skips by 2^-0.5 before concatenation.
        use_attention_bottleneck (`bool`, defaults to `True`): Self-attention between the bottleneck ResNet blocks.
        out_channels (`int`, *optional*): Output channels; defaults to `in_channels`.
        num_fourier_features (`int`, *optional*): Learned frequencies of the time embedding; defaults to
            `channels // 2` (256), the reference's rule.
        mapping_features (`int`, *optional*): Width of the time mapping MLP; defaults to `4 * channels` (2048).
        window_frames (`int`, defaults to 1024): Latent frames the model generates in one pass (the paper's
            training segments: 1024 frames, 14.9 s): the pipeline generates longer music in overlapping windows of
            this length. Not used by the network (it takes any multiple of `length_multiple`); `train_msldm.py`
            records its recipe's length. `None`: 12 s.
        conditioning_channels (`int`, defaults to 0): Channels of the optional `conditioning` input of trained
            partial generation (`stem_conditioning`: stems x (latent channels + 1)); 0 (the paper's model) takes
            none and is told about given stems by imputation only. The input enters through a zero-initialised
            patch convolution added after the patcher, so a model converted from an unconditioned one starts equal
            to it.
        full_rate_channels (`int`, defaults to 0): Width of an optional refinement at the latent frame rate after
            the unpatcher (`FullRatePath`: two ResNet blocks on the noisy input and the coarse output, added through
            a zero-initialised conv). 0 (the paper's model) has none: its frame-level output is limited to the
            unpatcher's `channels / patch_factor` channels. A model given the path starts equal to the one without.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 320,
        channels: int = 512,
        patch_factor: int = 16,
        patch_blocks: int = 1,
        multipliers: Sequence[int] = (1, 2, 2, 2, 1, 1, 1),
        factors: Sequence[int] = (1, 1, 2, 1, 1, 2),
        num_blocks: Sequence[int] = (2, 2, 2, 2, 2, 4),
        attentions: Sequence[bool] = (False, True, True, True, True, True),
        attention_heads: int = 12,
        attention_features: int = 64,
        attention_multiplier: int = 2,
        resnet_groups: int = 8,
        kernel_multiplier_downsample: int = 2,
        use_nearest_upsample: bool = False,
        use_skip_scale: bool = True,
        use_attention_bottleneck: bool = True,
        out_channels: int | None = None,
        num_fourier_features: int | None = None,
        mapping_features: int | None = None,
        window_frames: int | None = 1024,
        conditioning_channels: int = 0,
        full_rate_channels: int = 0,
    ):
        super().__init__()
        # Store the level lists as lists, as they come back from config.json, whatever sequence type was passed.
        multipliers, factors, num_blocks, attentions = map(list, (multipliers, factors, num_blocks, attentions))
        self.register_to_config(
            multipliers=multipliers, factors=factors, num_blocks=num_blocks, attentions=attentions
        )
        num_levels = len(factors)
        if not (len(multipliers) == num_levels + 1 and len(num_blocks) == num_levels == len(attentions)):
            raise ValueError(
                f"Expected len(multipliers) == len(factors) + 1 == len(num_blocks) + 1 == len(attentions) + 1, got "
                f"multipliers={list(multipliers)}, factors={list(factors)}, num_blocks={list(num_blocks)}, "
                f"attentions={list(attentions)}."
            )
        out_channels = out_channels or in_channels
        num_fourier_features = num_fourier_features or channels // 2
        mapping_features = mapping_features or 4 * channels
        widths = [channels * m for m in multipliers]
        heads = (attention_heads, attention_features, attention_multiplier)

        self.to_time = nn.Sequential(
            nn.Sequential(
                LearnedFourierFeatures(num_fourier_features), nn.Linear(2 * num_fourier_features + 1, mapping_features)
            ),
            nn.GELU(),
        )
        self.to_mapping = nn.Sequential(
            nn.Linear(mapping_features, mapping_features),
            nn.GELU(),
            nn.Linear(mapping_features, mapping_features),
            nn.GELU(),
        )
        self.to_in = Patcher(in_channels, channels, patch_blocks, patch_factor, mapping_features)
        self.to_cond = None
        if conditioning_channels:
            patch = patch_factor**patch_blocks
            # No bias: all-zero conditioning (total generation) adds exactly nothing, the same as `None`.
            self.to_cond = nn.Conv1d(conditioning_channels, channels, kernel_size=patch, stride=patch, bias=False)
            nn.init.zeros_(self.to_cond.weight)
        self.downsamples = nn.ModuleList(
            DownBlock1d(
                widths[i],
                widths[i + 1],
                factor=factors[i],
                num_layers=num_blocks[i],
                kernel_multiplier=kernel_multiplier_downsample,
                num_groups=resnet_groups,
                mapping_features=mapping_features,
                attention=heads if attentions[i] else None,
            )
            for i in range(num_levels)
        )
        self.bottleneck = Bottleneck1d(
            widths[-1],
            resnet_groups,
            mapping_features,
            attention=heads[:2] if use_attention_bottleneck else None,
        )
        self.upsamples = nn.ModuleList(
            UpBlock1d(
                widths[i + 1],
                widths[i],
                factor=factors[i],
                num_layers=num_blocks[i] + int(attentions[i]),
                num_groups=resnet_groups,
                mapping_features=mapping_features,
                attention=heads if attentions[i] else None,
                use_nearest=use_nearest_upsample,
                use_skip_scale=use_skip_scale,
            )
            for i in reversed(range(num_levels))
        )
        self.to_out = Unpatcher(channels, out_channels, patch_blocks, patch_factor, mapping_features)
        self.full_rate = None
        if not isinstance(full_rate_channels, int) or full_rate_channels < 0 or full_rate_channels % resnet_groups:
            raise ValueError(f"full_rate_channels must be 0 (no frame-rate path) or a positive multiple of "
                             f"resnet_groups={resnet_groups}, got {full_rate_channels!r}.")
        if full_rate_channels:
            self.full_rate = FullRatePath(in_channels, out_channels, full_rate_channels, resnet_groups,
                                          mapping_features)

    @property
    def length_multiple(self) -> int:
        """Input lengths must be multiples of this: patch_factor ** patch_blocks * prod(factors) (64 for MSLDM)."""
        return self.config.patch_factor**self.config.patch_blocks * math.prod(self.config.factors)

    def _embed_conditioning(self, conditioning: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if self.to_cond is None:
            raise ValueError("This UNet was built without conditioning_channels: it takes no `conditioning` (given "
                             "stems reach it by imputation).")
        expected = (sample.shape[0], self.config.conditioning_channels, sample.shape[-1])
        if tuple(conditioning.shape) != expected:
            raise ValueError(f"`conditioning` must have shape {expected}, got {tuple(conditioning.shape)}.")
        return self.to_cond(conditioning.to(self.to_cond.weight.dtype))

    def _check_inputs(self, sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        if sample.ndim != 3 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`sample` must have shape (batch, {self.config.in_channels}, length), got {tuple(sample.shape)}."
            )
        if sample.shape[-1] % self.length_multiple:
            raise ValueError(
                f"`sample` length {sample.shape[-1]} (shape {tuple(sample.shape)}) must be a multiple of "
                f"length_multiple={self.length_multiple}."
            )
        batch_size = sample.shape[0]
        # float32 whatever the model's dtype: the Fourier features of the time embedding need it (in bfloat16
        # the phases 2 pi w t of the larger learned frequencies are off by up to ~0.07 rad).
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32)
        if timestep.ndim == 0 or timestep.shape == (1,):
            return timestep.reshape(1).expand(batch_size)
        if timestep.shape != (batch_size,):
            raise ValueError(
                f"`timestep` must be a scalar or have shape ({batch_size},), got {tuple(timestep.shape)}."
            )
        return timestep

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True,
        conditioning: torch.Tensor | None = None,
    ) -> UNet1DOutput | tuple[torch.Tensor]:
        """
        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, length)`): The preconditioned noisy latent
                (`c_in * x`); `length` must be a multiple of `length_multiple`.
            timestep (`torch.Tensor` or `float`): EDM's `c_noise = log(sigma) / 4`, a scalar or one per item.
            return_dict (`bool`, defaults to `True`): Return a `UNet1DOutput` instead of a tuple.
            conditioning (`torch.Tensor` of shape `(batch, conditioning_channels, length)`, *optional*): The given
                stems (`stem_conditioning`) of a model with `conditioning_channels`; `None` is total generation
                (nothing given). A model without conditioning channels refuses one.
        """
        c_noise = self._check_inputs(sample, timestep)
        mapping = self.to_mapping(self.to_time(c_noise))

        x = self.to_in(sample, mapping)
        if conditioning is not None:
            x = x + self._embed_conditioning(conditioning, sample)
        patched = x
        skips = []
        for down in self.downsamples:
            x, level_skips = down(x, mapping)
            skips.append(level_skips)
        x = self.bottleneck(x, mapping)
        for up in self.upsamples:
            x = up(x, skips.pop(), mapping)
        x = self.to_out(x + patched, mapping)
        if self.full_rate is not None:
            x = self.full_rate(sample, x, mapping)

        if not return_dict:
            return (x,)
        return UNet1DOutput(sample=x)
