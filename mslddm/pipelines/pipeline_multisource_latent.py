"""MultiSourceLatentPipeline: total and partial multi-stem music generation (MSLDM), and the ISLDM baseline."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

from ..loudness import OUTPUT_GAIN_LIMIT_DB, check_stem_levels
from ..models.autoencoder_source import SourceVAE
from ..models.autoencoder_spectral import SpectralSourceVAE
from ..models.unet_1d_independent import IndependentSourceUNet1DModel
from ..models.unet_1d_multisource import MultiSourceUNet1DModel
from ..schedulers.scheduling_edm import EDMScheduler
from ..stems import DEFAULT_STEMS
from .codecs import LatentCodec
from .pipeline_base import MultiSourcePipelineBase, latent_component_classes
from .pipeline_output import MultiSourceAudioPipelineOutput  # noqa: F401  (its public path: mslddm/__init__.py)

class MultiSourceLatentPipeline(MultiSourcePipelineBase):
    r"""Pipeline for multi-source music generation with latent diffusion (MSLDM).

    Each stem is encoded by the shared ``vae`` to ``latent_channels`` channels; the stems' latents are concatenated
    on channels (in ``stem_names`` order) and ``unet`` denoises them jointly under the EDM ``scheduler``.
    ``MultiSourceLatentPipeline.from_pretrained`` loads a folder of any mslddm kind as its own class (the
    baselines: :class:`~mslddm.MixtureLatentPipeline`, :class:`~mslddm.MultiSourceDiffusionPipeline`).

    Args:
        vae: the VAE shared by all stems: the paper's DAC-style :class:`SourceVAE` or the frame-rate
            :class:`SpectralSourceVAE` (any class with their interface).
        unet: the :class:`MultiSourceUNet1DModel` with ``in_channels = len(stem_names) * vae latent_channels``
            (MSLDM), or an :class:`~mslddm.IndependentSourceUNet1DModel` (one UNet per stem: the ISLDM baseline,
            whose stems are generated independently of each other).
        scheduler: the :class:`EDMScheduler`.
        stem_names: names of the stems, any number (default: the paper's bass, drums, guitar, piano).
        sample_rate: audio sample rate (default: the VAE's).
        stem_levels_dbfs: the level (gated RMS, :mod:`mslddm.loudness`) each stem has in the training data; when
            recorded, given stems are set to it before encoding and the generated band is given back at the
            level of the upload (``match_levels``). Folders saved without it generate as before.
        stem_output_gains_db: a gain in dB per stem applied to every generated stem after decoding, measured by
            ``mslddm calibrate-levels`` (the model's generated stems against its training levels, with its default
            sampler): what the sampled latents lose in level comes back. Absent: no gain. Not applied to
            ``output_type="latent"`` nor to a continued stem (its take sets its level).
    """

    model_cpu_offload_seq = "vae->unet->vae"
    model_kinds = {"MultiSourceUNet1DModel": "msldm", "IndependentSourceUNet1DModel": "isldm",
                   "MultiSourceTransformer1DModel": "msldm"}

    def __init__(
        self,
        vae: Union[SourceVAE, SpectralSourceVAE],
        unet: Union[MultiSourceUNet1DModel, IndependentSourceUNet1DModel],
        scheduler: EDMScheduler,
        stem_names: Optional[Sequence[str]] = None,
        sample_rate: Optional[int] = None,
        stem_levels_dbfs: Optional[Mapping[str, float]] = None,
        stem_output_gains_db: Optional[Mapping[str, float]] = None,
    ):
        super().__init__()
        stem_names = list(stem_names or DEFAULT_STEMS)
        self.register_pipeline(stem_names, sample_rate or vae.config.sampling_rate, vae=vae, unet=unet,
                               scheduler=scheduler)
        if stem_levels_dbfs is not None:  # only when recorded: folders saved without it keep their model_index.json
            self.register_to_config(stem_levels_dbfs=check_stem_levels(stem_levels_dbfs, stem_names))
        if stem_output_gains_db is not None:
            self.register_to_config(stem_output_gains_db=check_stem_levels(
                stem_output_gains_db, stem_names, "stem_output_gains_db", OUTPUT_GAIN_LIMIT_DB, "dB"))

    @classmethod
    def component_classes(cls) -> Dict[str, set]:
        return latent_component_classes()

    @property
    def codec(self) -> LatentCodec:
        return LatentCodec(self.vae)


__all__ = ["MultiSourceLatentPipeline", "MultiSourceAudioPipelineOutput"]
