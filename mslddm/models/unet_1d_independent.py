"""The ISLDM baseline's network: one independent latent diffusion UNet per stem, saved as one component.

ISLDM (the MSLDM paper's "independent source" baseline) trains a separate model on each stem's SourceVAE latent,
so its stems are good one by one but know nothing of each other. :class:`IndependentSourceUNet1DModel` holds one
:class:`MultiSourceUNet1DModel` with ``in_channels = C`` per stem and takes the same input as the multi-source UNet,
the stems' latents concatenated on channels ``(batch, num_sources * C, frames)``: it drops into
:class:`~mslddm.MultiSourceLatentPipeline` unchanged. Stem ``i``'s output depends only on channels
``[i C, (i + 1) C)`` of the input, so partial generation generates the missing stems independently of the given
ones (the given ones are still imputed, and the sub-UNets of stems that are known throughout are not run).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .unet_1d_multisource import MultiSourceUNet1DModel, UNet1DOutput

__all__ = ["IndependentSourceUNet1DModel"]


class IndependentSourceUNet1DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    r"""
    ``num_sources`` independent 1-D UNets, one per stem (ISLDM), behind the interface of
    :class:`MultiSourceUNet1DModel`.

    Parameters:
        in_channels (`int`, defaults to 320): Channels of the joint input, ``num_sources`` x latent channels.
        num_sources (`int`, defaults to 4): Number of stems, each with its own UNet on ``in_channels / num_sources``
            channels.
        window_frames (`int`, defaults to 1024): As for :class:`MultiSourceUNet1DModel`.
        **unet_kwargs: The architecture of every per-stem UNet (:class:`MultiSourceUNet1DModel`'s arguments other
            than ``in_channels``, ``out_channels`` and ``window_frames``), e.g. ``channels``, ``factors``.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 320,
        num_sources: int = 4,
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
        num_fourier_features: int | None = None,
        mapping_features: int | None = None,
        window_frames: int | None = 1024,
    ):
        super().__init__()
        if num_sources < 1 or in_channels % num_sources:
            raise ValueError(f"in_channels ({in_channels}) must be a positive multiple of num_sources "
                             f"({num_sources}): each stem's UNet takes in_channels / num_sources channels.")
        multipliers, factors, num_blocks, attentions = map(list, (multipliers, factors, num_blocks, attentions))
        self.register_to_config(multipliers=multipliers, factors=factors, num_blocks=num_blocks,
                                attentions=attentions)
        self.source_channels = in_channels // num_sources
        kwargs = dict(
            channels=channels, patch_factor=patch_factor, patch_blocks=patch_blocks, multipliers=multipliers,
            factors=factors, num_blocks=num_blocks, attentions=attentions, attention_heads=attention_heads,
            attention_features=attention_features, attention_multiplier=attention_multiplier,
            resnet_groups=resnet_groups, kernel_multiplier_downsample=kernel_multiplier_downsample,
            use_nearest_upsample=use_nearest_upsample, use_skip_scale=use_skip_scale,
            use_attention_bottleneck=use_attention_bottleneck, num_fourier_features=num_fourier_features,
            mapping_features=mapping_features, window_frames=window_frames,
        )
        self.sources = nn.ModuleList(
            MultiSourceUNet1DModel(in_channels=self.source_channels, **kwargs) for _ in range(num_sources)
        )
        self._active: tuple[bool, ...] | None = None

    @property
    def length_multiple(self) -> int:
        """Input lengths must be multiples of this (that of every per-stem UNet)."""
        return self.sources[0].length_multiple

    def source_model(self, index: int) -> MultiSourceUNet1DModel:
        """The UNet of stem ``index`` (a :class:`MultiSourceUNet1DModel` on ``in_channels / num_sources``)."""
        return self.sources[index]

    @contextmanager
    def only_sources(self, active: Sequence[bool] | None):
        """Within the block, only the UNets of the stems marked ``True`` run; the others' output is zero (for
        stems the caller imputes throughout, such as the given stems of partial generation). ``None``: all."""
        if active is not None and len(active) != len(self.sources):
            raise ValueError(f"only_sources needs {len(self.sources)} flags, got {len(active)}.")
        previous, self._active = self._active, None if active is None else tuple(bool(a) for a in active)
        try:
            yield self
        finally:
            self._active = previous

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                return_dict: bool = True) -> UNet1DOutput | tuple[torch.Tensor]:
        """
        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, length)`): The preconditioned noisy latents of
                all stems, concatenated on channels in stem order.
            timestep (`torch.Tensor` or `float`): EDM's `c_noise`, a scalar or one per item (shared by the stems).
            return_dict (`bool`, defaults to `True`): Return a `UNet1DOutput` instead of a tuple.
        """
        if sample.ndim != 3 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`sample` must have shape (batch, {self.config.in_channels}, length), got {tuple(sample.shape)}."
            )
        parts = sample.split(self.source_channels, dim=1)
        active = self._active or (True,) * len(self.sources)
        out = torch.cat([model(part, timestep).sample if on else torch.zeros_like(part)
                         for model, part, on in zip(self.sources, parts, active)], dim=1)
        if not return_dict:
            return (out,)
        return UNet1DOutput(sample=out)
