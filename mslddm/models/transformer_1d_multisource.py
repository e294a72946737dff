"""A transformer over latent frames for the joint distribution of the stems: the other network shape of issue 24's
ablation table (Stable Audio and MGE-LDM denoise latents with transformers; MSLDM with a 1-D UNet).

The stems' latents, concatenated on channels as for :class:`~mslddm.MultiSourceUNet1DModel`, are cut into patches of
``patch_frames`` frames, one token each; a depthwise convolution gives the tokens their relative position (no
absolute positions: the model trains on short segments and generates longer windows), then ``depth`` pre-norm
blocks of self-attention and an MLP, each modulated by the noise level (DiT's adaLN-Zero: scale, shift and a gate
from the noise embedding, the gates starting at zero so that every block starts as the identity), and a linear
layer back to the patch's frames, also starting at zero (``D(x) = c_skip x`` at the start).

It is a drop-in for the UNet in :class:`~mslddm.MultiSourceLatentPipeline` (the same ``forward(sample, timestep)``,
``length_multiple`` and ``window_frames``); trained with ``msldm.unet_class: MultiSourceTransformer1DModel`` and
its arguments in ``msldm.model`` (recipe ``small-cpu-transformer``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_1d import UNet1DOutput
from torch import nn

__all__ = ["MultiSourceTransformer1DModel"]


class NoiseEmbedding(nn.Module):
    """EDM's ``c_noise`` -> fixed Fourier features -> a two-layer MLP (``(B,)`` -> ``(B, width)``)."""

    def __init__(self, width: int, num_frequencies: int = 128):
        super().__init__()
        self.num_frequencies = num_frequencies
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        # 1 to 1000 rad per unit of c_noise (DiT's span per unit of t / 1000), made here in float32 whatever the
        # model's dtype: a float16 copy of 1000 is off by up to 0.25, a phase error of 0.4 rad at the ends
        frequencies = torch.exp(torch.linspace(0.0, math.log(1000.0), self.num_frequencies, device=c_noise.device))
        phases = c_noise.float()[:, None] * frequencies[None]
        features = torch.cat([phases.cos(), phases.sin()], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and MLP, each with adaLN-Zero modulation by the noise embedding."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}.")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(embedding)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_qkv(h).chunk(3, dim=-1))
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + gate1 * self.to_out(h)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class MultiSourceTransformer1DModel(ModelMixin, ConfigMixin):
    r"""A transformer denoiser over patches of latent frames, for all stems at once.

    Parameters:
        in_channels (`int`, defaults to 256): Input and output channels (stems x latent channels).
        patch_frames (`int`, defaults to 4): Frames per token; inputs must be a multiple of it long.
        width (`int`, defaults to 256): Token features.
        depth (`int`, defaults to 8): Transformer blocks.
        heads (`int`, defaults to 4): Attention heads.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden features / width.
        position_kernel (`int`, defaults to 7): Kernel of the depthwise convolution that gives tokens their
            relative position (odd).
        window_frames (`int`, *optional*): Frames of the pipeline's generation window (as the UNet's).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 256, patch_frames: int = 4, width: int = 256, depth: int = 8,
                 heads: int = 4, mlp_ratio: float = 4.0, position_kernel: int = 7, window_frames: int | None = None):
        super().__init__()
        if patch_frames < 1 or depth < 1 or position_kernel < 1 or position_kernel % 2 == 0:
            raise ValueError(f"patch_frames and depth must be at least 1 and position_kernel odd, got "
                             f"{patch_frames}, {depth} and {position_kernel}.")
        if window_frames is not None and window_frames % patch_frames:
            raise ValueError(f"window_frames ({window_frames}) must be a multiple of patch_frames ({patch_frames}).")
        self.to_tokens = nn.Linear(in_channels * patch_frames, width)
        self.position = nn.Conv1d(width, width, position_kernel, padding=position_kernel // 2, groups=width)
        self.embedding = NoiseEmbedding(width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.to_frames = nn.Linear(width, in_channels * patch_frames)
        for layer in (self.modulation_out[1], self.to_frames):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.gradient_checkpointing = False

    @property
    def length_multiple(self) -> int:
        return int(self.config.patch_frames)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True,
                conditioning: torch.Tensor | None = None) -> UNet1DOutput | tuple[torch.Tensor]:
        """
        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, length)`): The preconditioned noisy latent
                (`c_in * x`); `length` must be a multiple of `patch_frames`.
            timestep (`torch.Tensor` or `float`): EDM's `c_noise = log(sigma) / 4`, a scalar or one per item.
            conditioning: not supported (given stems reach this model by imputation); must be None.
        """
        if conditioning is not None:
            raise ValueError("MultiSourceTransformer1DModel takes no `conditioning` (given stems reach it by "
                             "imputation).")
        batch, channels, length = sample.shape if sample.ndim == 3 else (None, None, None)
        if channels != self.config.in_channels or length % self.length_multiple:
            raise ValueError(f"`sample` must have shape (batch, {self.config.in_channels}, length) with length a "
                             f"multiple of {self.length_multiple}, got {tuple(sample.shape)}.")
        c_noise = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32).reshape(-1)
        if c_noise.numel() == 1:
            c_noise = c_noise.expand(batch)
        if c_noise.shape != (batch,):
            raise ValueError(f"`timestep` must be a scalar or have shape ({batch},), got {tuple(c_noise.shape)}.")
        p = self.config.patch_frames
        tokens = sample.unflatten(-1, (length // p, p)).permute(0, 2, 1, 3).flatten(2)  # (B, N, C * p)
        x = self.to_tokens(tokens)
        x = x + self.position(x.transpose(1, 2)).transpose(1, 2)
        embedding = self.embedding(c_noise)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x, embedding)
            else:
                x = block(x, embedding)
        shift, scale = self.modulation_out(embedding)[:, None].chunk(2, dim=-1)
        x = self.to_frames(self.norm_out(x) * (1 + scale) + shift)  # (B, N, C * p)
        out = x.unflatten(-1, (channels, p)).permute(0, 2, 1, 3).flatten(2)
        if not return_dict:
            return (out,)
        return UNet1DOutput(sample=out)
