"""The kinds of model mslddm trains, exports, documents, runs and evaluates: one table, read by every layer.

A kind is what a training recipe's ``model`` names and what a pipeline's ``model_kind`` returns:

- ``msldm``: MSLDM, one UNet over all stems' SourceVAE latents (:class:`~mslddm.MultiSourceLatentPipeline`);
- ``isldm``: the paper's ISLDM baseline, the same pipeline with independent per-stem UNets;
- ``mixldm``: the paper's MixLDM baseline, one UNet on the latent of the mix (:class:`~mslddm.MixtureLatentPipeline`);
- ``msdm``: MSDM, one UNet on the stems' waveforms, no VAE (:class:`~mslddm.MultiSourceDiffusionPipeline`).

Code asks a :class:`ModelKind` what it needs (``kind.uses_vae``, ``kind.generates_stems``, ``kind.build_pipeline``)
instead of comparing names, so a new kind is one more row here. Classes are named by their import path and
imported on first use: this module imports nothing of mslddm, so the lowest layers may read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# Where a kind's diffusion runs: what one training item becomes before the UNet sees it.
STEM_LATENTS = "stem_latents"  # each stem encoded by the SourceVAE, stacked on channels
MIXTURE_LATENTS = "mixture_latents"  # the sum of the stems encoded by a MixtureVAE: one source named "mix"
WAVEFORMS = "waveforms"  # the stems' raw audio (the identity codec)

_LATENT = "mslddm.pipelines.pipeline_multisource_latent.MultiSourceLatentPipeline"
_MIXTURE = "mslddm.pipelines.pipeline_mixture_latent.MixtureLatentPipeline"
_WAVEFORM = "mslddm.pipelines.pipeline_multisource_diffusion.MultiSourceDiffusionPipeline"
_JOINT_UNET = "mslddm.models.unet_1d_multisource.MultiSourceUNet1DModel"
_INDEPENDENT_UNET = "mslddm.models.unet_1d_independent.IndependentSourceUNet1DModel"

_LIBRARY = "[mslddm](https://github.com/mslddm/mslddm)"
_LOAD = 'from mslddm import MultiSourceLatentPipeline\n\npipe = MultiSourceLatentPipeline.from_pretrained("{repo}")'
_STEMS_USAGE = (_LOAD + "\nout = pipe(audio_length_in_s=12.0)  # total generation, with the sampler of "
                "scheduler_config.json\n"
                'out = pipe(stems={{"{stem}": "my_{stem}.wav"}})   # partial generation\n'
                "out.stems  # (batch, {num_stems}, samples); out.mixture: (batch, samples)")


@dataclass(frozen=True)
class ModelCard:
    """A kind's model-card text; ``{stems}``, ``{sample_rate}``, ``{repo}``, ``{stem}`` (the first stem) and
    ``{num_stems}`` are filled in by :func:`mslddm.hub.model_card`."""

    title: str
    intro: str
    tags: tuple[str, ...]
    cli: str
    usage: str


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: its classes, its training recipe's section and data, and its model card."""

    name: str
    pipeline_class_path: str
    unet_class_path: str
    source: str  # STEM_LATENTS, MIXTURE_LATENTS or WAVEFORMS
    pipeline_arguments: tuple[str, ...]  # the constructor arguments its pipeline takes (besides the components)
    card: ModelCard
    recipe_key: str = "msldm"  # the section of train/recipes/*.yaml holding the diffusion settings
    preset_key: str = "unet"  # the entry of a preset (mslddm.presets.PRESETS) holding the UNet's architecture
    independent_sources: bool = False  # its UNet is told the number of sources (one UNet per stem)
    trains_conditioning: bool = False  # may learn partial generation from given stems (msldm.conditioning)

    @property
    def uses_vae(self) -> bool:
        return self.source != WAVEFORMS

    @property
    def generates_stems(self) -> bool:
        """False for a mixture-only model: no stems to give, to ask for, or to score."""
        return self.source != MIXTURE_LATENTS

    @property
    def records_stem_levels(self) -> bool:
        """Whether its pipeline records the stems' training levels (given stems are encoded at them)."""
        return self.source == STEM_LATENTS

    def pipeline_class(self):
        return _import(self.pipeline_class_path)

    def unet_class(self):
        return _import(self.unet_class_path)

    def build_pipeline(self, *, unet, scheduler, vae=None, **arguments):
        """This kind's pipeline around trained components; of ``arguments`` (``stem_names``, ``mixture_of``,
        ``stem_levels_dbfs``, ``sample_rate``) it takes those its constructor knows and that are not None (None
        is every constructor's default)."""
        kwargs = {k: v for k, v in arguments.items() if k in self.pipeline_arguments and v is not None}
        if self.uses_vae:
            kwargs["vae"] = vae
        return self.pipeline_class()(unet=unet, scheduler=scheduler, **kwargs)

    def training_batch(self, batch):
        """A batch of the training data as the diffusion's sources: a mixture model's audio stems ``(B, K, T)``
        are summed into the one source ``(B, 1, T)`` (its pre-encoded mixture latents already are one)."""
        if self.source == MIXTURE_LATENTS and batch.ndim == 3:
            return batch.sum(1, keepdim=True)
        return batch

    def generated_audio(self, output, index: int):
        """Item ``index`` of a pipeline output as ``(sources, samples)``: the stems, or the one mixture."""
        import numpy as np

        if self.generates_stems:
            return np.asarray(output.stems[index])
        return np.asarray(output.mixture[index])[None]


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind(
        name="msldm", pipeline_class_path=_LATENT, unet_class_path=_JOINT_UNET, source=STEM_LATENTS,
        pipeline_arguments=("stem_names", "stem_levels_dbfs", "sample_rate"), trains_conditioning=True,
        card=ModelCard(
            title="Multi-source latent diffusion pipeline ({stems})",
            intro=f"""A {_LIBRARY} pipeline: a SourceVAE encodes each stem to a latent, one UNet
models the stems' latents jointly with EDM diffusion (Multi-Source Music Generation with Latent Diffusion,
MSLDM). It generates all stems at once (total generation) or the missing stems around given ones
(partial generation). Stems: **{{stems}}**, {{sample_rate}} Hz mono.""",
            tags=("multi-source",),
            cli="mslddm generate --pipeline {repo} --duration 12 --out outputs/",
            usage=_STEMS_USAGE)),
    ModelKind(
        name="isldm", pipeline_class_path=_LATENT, unet_class_path=_INDEPENDENT_UNET, source=STEM_LATENTS,
        pipeline_arguments=("stem_names", "stem_levels_dbfs", "sample_rate"), independent_sources=True,
        card=ModelCard(
            title="ISLDM baseline pipeline ({stems})",
            intro=f"""A {_LIBRARY} pipeline of the MSLDM paper's **ISLDM baseline**: a SourceVAE encodes
each stem to a latent and one *independent* UNet per stem models that stem's latent alone
(`IndependentSourceUNet1DModel`). Its stems know nothing of each other: in total generation they are drawn
independently, in partial generation the missing stems are generated without looking at the given ones. It is
here to be compared with MSLDM (docs/baselines.md), not to make music whose parts fit. Stems: **{{stems}}**,
{{sample_rate}} Hz mono.""",
            tags=("baseline", "isldm"),
            cli="mslddm generate --pipeline {repo} --duration 12 --out outputs/",
            usage=_STEMS_USAGE)),
    ModelKind(
        name="mixldm", pipeline_class_path=_MIXTURE, unet_class_path=_JOINT_UNET, source=MIXTURE_LATENTS,
        pipeline_arguments=("mixture_of", "sample_rate"),
        card=ModelCard(
            title="MixLDM baseline pipeline (mixtures of {stems})",
            intro=f"""A {_LIBRARY} pipeline of the MSLDM paper's **MixLDM baseline**: a MixtureVAE (the
SourceVAE class trained on mixes, with stems x C latent channels) encodes the whole mix and one UNet models that
latent (`MixtureLatentPipeline`). It generates **mixtures only**: no stems, no partial generation. It is here to be
compared with MSLDM (docs/baselines.md). Trained on mixes of **{{stems}}**, {{sample_rate}} Hz mono.""",
            tags=("baseline", "mixldm"),
            cli="mslddm generate --pipeline {repo} --duration 12 --out outputs/   # writes mix.wav",
            usage=_LOAD + """  # loads as MixtureLatentPipeline
out = pipe(audio_length_in_s=12.0)  # mixtures only
out.mixture  # (batch, samples); out.stems and pipe(stems=...) raise ValueError: this model has no stems""")),
    ModelKind(
        name="msdm", pipeline_class_path=_WAVEFORM, unet_class_path=_JOINT_UNET, source=WAVEFORMS,
        pipeline_arguments=("stem_names", "sample_rate"), preset_key="waveform_unet",
        card=ModelCard(
            title="MSDM pipeline ({stems})",
            intro=f"""A {_LIBRARY} pipeline of **MSDM** (multi-source diffusion on waveforms,
Mariani et al.; the MSLDM paper's main baseline): one UNet models the stems' raw audio jointly with EDM
diffusion (`MultiSourceDiffusionPipeline`, no autoencoder). It generates all stems (total generation), the
missing ones around given ones (partial generation), and **separates** a mixture into stems that sum to it
(`pipe.separate(mixture)`, `mslddm separate`). Stems: **{{stems}}**, {{sample_rate}} Hz mono.""",
            tags=("multi-source", "msdm", "source-separation"),
            cli=("mslddm generate --pipeline {repo} --duration 12 --out outputs/\n"
                 "mslddm separate my_mix.wav --pipeline {repo} --out separated/"),
            usage=_LOAD + """  # loads as MultiSourceDiffusionPipeline
out = pipe(audio_length_in_s=12.0)                        # total generation
out = pipe(stems={{"{stem}": "my_{stem}.wav"}})   # partial generation
sep = pipe.separate("my_mix.wav")                          # sep.stems (1, {num_stems}, samples) sums to sep.mixture""")),
)}

DEFAULT_KIND = "msldm"  # what a recipe without ``model`` and a checkpoint without ``kind`` hold


def kind_names() -> tuple[str, ...]:
    return tuple(KINDS)


def get_kind(name: str | None) -> ModelKind:
    """The kind called ``name`` (None: the default, as recipes and checkpoints written before kinds existed)."""
    name = DEFAULT_KIND if name is None else name
    if name not in KINDS:
        raise ValueError(f"The model kind must be one of {kind_names()}, got {name!r}.")
    return KINDS[name]


def kind_of(pipe) -> ModelKind:
    """The kind of a pipeline, from its ``model_kind`` (a pipeline-like object without one: the default kind)."""
    return get_kind(getattr(pipe, "model_kind", None))


def kind_of_index(index: dict) -> ModelKind | None:
    """The kind of a saved pipeline from its ``model_index.json`` (read without loading anything): its pipeline
    class and its UNet's class (diffusers records each component as ``[module, class]``); None when no kind
    matches."""
    pipeline, unet = index.get("_class_name"), (index.get("unet") or [None, None])[-1]
    matches = [k for k in KINDS.values() if k.pipeline_class_path.rsplit(".", 1)[1] == pipeline]
    return next((k for k in matches if k.unet_class_path.rsplit(".", 1)[1] == unet), matches[0] if matches else None)
