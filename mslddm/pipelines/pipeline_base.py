"""MultiSourcePipelineBase: what every mslddm pipeline shares, and the one way in to a saved pipeline of any kind.

The leaves (:class:`~mslddm.MultiSourceLatentPipeline`, :class:`~mslddm.MixtureLatentPipeline`,
:class:`~mslddm.MultiSourceDiffusionPipeline`) differ in their components and their codec (a VAE's latents, or the
waveform itself); loading, saving, the checks, and sampling in windows over the codec live here. A saved folder is
loaded as the class its ``model_index.json`` names, looked up in :data:`PIPELINE_CLASSES` (as diffusers'
``AutoPipeline`` does): no pipeline module imports another.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..audio import AudioLike
from ..files import CHECKSUMS_FILE, checksum_problem, write_checksums
from ..hub import PipelineLoadError, model_card, push_folder_to_hub, resolve_pretrained_path
from ..loudness import gain_to_level
from ..models.unet_1d_multisource import stem_conditioning
from ..randomness import Generator
from ..schedulers.sampling import guided, reconstruction_guided
from ..stems import SILENCE_DBFS, load_stem, unknown_stems_message
from . import known as known_part
from .lora import MultiSourceLoraLoaderMixin
from .pipeline_output import MultiSourceAudioPipelineOutput
from .windows import plan_windows, sample_in_windows, sampled_windows

logger = logging.getLogger(__name__)


DEFAULT_WINDOW_SECONDS = 12.0  # window of a UNet config without `window_frames`, and the default length

# `_class_name` of model_index.json -> module of the class. The names and modules are the saved-pipeline format.
PIPELINE_CLASSES = {
    "MultiSourceLatentPipeline": "mslddm.pipelines.pipeline_multisource_latent",
    "MixtureLatentPipeline": "mslddm.pipelines.pipeline_mixture_latent",
    "MultiSourceDiffusionPipeline": "mslddm.pipelines.pipeline_multisource_diffusion",
}
NO_GUIDANCE = {"guidance_scale": 1.0, "reconstruction_guidance": 0.0}  # the guidance settings that change nothing


def pipeline_class(name: str) -> type:
    """The pipeline class called ``name`` (one of :data:`PIPELINE_CLASSES`)."""
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"Unknown pipeline class {name!r}; mslddm has {sorted(PIPELINE_CLASSES)}.")
    return getattr(importlib.import_module(PIPELINE_CLASSES[name]), name)


def saved_class_name(folder) -> Optional[str]:
    """The ``_class_name`` of ``folder/model_index.json`` (None when there is none to read)."""
    try:
        return json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def read_model_index(folder) -> dict:
    """``folder/model_index.json`` as a dict; a file that is not a JSON object is named in the error."""
    path = Path(folder) / "model_index.json"
    try:
        index = json.loads(path.read_text())
    except ValueError as error:
        raise PipelineLoadError(f"{path} is not valid JSON ({error}): the pipeline folder is damaged.") from None
    if not isinstance(index, dict):
        raise PipelineLoadError(f"{path} holds a {type(index).__name__}, not a JSON object: the pipeline folder is "
                                "damaged.")
    return index


EDM_SCHEDULER = ("mslddm.schedulers.scheduling_edm", "EDMScheduler")


def latent_component_classes() -> Dict[str, set]:
    """The classes a latent pipeline's slots may hold: any mslddm VAE and UNet, the EDM scheduler."""
    from ..models import UNET_CLASSES, VAE_CLASSES

    return {"vae": {(module, name) for name, module in VAE_CLASSES.items()},
            "unet": {(module, name) for name, module in UNET_CLASSES.items()},
            "scheduler": {EDM_SCHEDULER}}


def unet_class_name(unet) -> str:
    """The class a UNet was saved as: its config's ``_class_name``, else its class (unwrapped from
    ``torch.compile``, whose wrapper is another class)."""
    return unet.config.get("_class_name") or type(getattr(unet, "_orig_mod", unet)).__name__


class MultiSourcePipelineBase(DiffusionPipeline, MultiSourceLoraLoaderMixin):
    r"""Base of the mslddm pipelines: stems (or a mixture) sampled jointly by one ``unet`` under the EDM
    ``scheduler`` in the space of the leaf's :attr:`codec`. ``MultiSourcePipelineBase.from_pretrained(folder)``
    loads a folder of any kind as its own class.

    Leaves set ``model_kinds`` (the UNet's class name -> the kind of model, ``"msldm"``, ``"isldm"``, ``"mixldm"``
    or ``"msdm"``), implement :meth:`component_classes` and :attr:`codec`, and register their modules with
    :meth:`register_pipeline`. LoRA adapters of the UNet load, fuse and unload as in diffusers
    (:class:`~mslddm.pipelines.lora.MultiSourceLoraLoaderMixin`).
    """

    _callback_tensor_inputs = ["latents", "denoised"]
    model_kinds: Mapping[str, str] = {}
    loads_every_kind = True  # from_pretrained of this class loads a folder saved by any leaf as that leaf

    # ----------------------------------------------------------------------------------------------------------
    # What a leaf says about itself
    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def component_classes(cls) -> Dict[str, set]:
        """Slot of ``model_index.json`` -> the ``(module, class)`` pairs this pipeline can use there."""
        raise NotImplementedError(f"{cls.__name__} is a base class: load a folder or build a leaf pipeline.")

    @property
    def codec(self):
        """The :mod:`~mslddm.pipelines.codecs` codec of the space sampled in (stems <-> latents)."""
        raise NotImplementedError

    def register_pipeline(self, stem_names: Sequence[str], sample_rate: int, **modules) -> None:
        """Checks the stem names and the UNet's channels, and registers ``modules`` and the config."""
        stem_names = self.check_stem_names(stem_names)
        self.register_modules(**modules)
        self.register_to_config(stem_names=stem_names, sample_rate=int(sample_rate))
        expected = len(stem_names) * self.codec.latent_channels
        if self.unet.config.in_channels != expected:
            raise ValueError(f"unet.in_channels is {self.unet.config.in_channels} but {len(stem_names)} stems x "
                             f"{self.codec.latent_channels} latent channels = {expected}.")

    @staticmethod
    def check_stem_names(stem_names: Sequence[str]) -> List[str]:
        stem_names = list(stem_names)
        if len(set(stem_names)) != len(stem_names) or not all(isinstance(s, str) and s for s in stem_names):
            raise ValueError(f"stem_names must be distinct non-empty strings, got {stem_names}.")
        return stem_names

    # Read from the config, never stored as attributes: diffusers treats list-valued attributes as components.
    @property
    def stem_names(self) -> List[str]:
        return list(self.config.stem_names)

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    @property
    def stem_output_gains_db(self) -> Optional[Dict[str, float]]:
        """The calibrated gain of each generated stem in dB (``None`` when none applies): the pipeline's own, or
        while a LoRA adapter that records its own is active, that one (blended by its strength); none inside
        :meth:`raw_output_levels`."""
        if self.__dict__.get("_raw_output_levels"):
            return None
        gains = self.config.get("stem_output_gains_db")
        gains = self.lora_output_gains(dict(gains) if gains else None)
        return dict(gains) if gains else None

    @contextlib.contextmanager
    def raw_output_levels(self):
        """Within it, generated stems come out at the level the model makes them: no calibrated output gain (the
        pipeline's or an adapter's). What ``mslddm calibrate-levels`` measures."""
        self.__dict__["_raw_output_levels"] = True
        try:
            yield self
        finally:
            self.__dict__["_raw_output_levels"] = False

    @property
    def stem_levels_dbfs(self) -> Optional[Dict[str, float]]:
        """The stems' training levels in dBFS (``None`` when the pipeline does not record them)."""
        levels = self.config.get("stem_levels_dbfs")
        return dict(levels) if levels else None

    @property
    def latent_channels(self) -> int:
        return self.codec.latent_channels

    @property
    def model_kind(self) -> str:
        """``"msldm"``, ``"isldm"``, ``"mixldm"`` or ``"msdm"``: from the leaf class and the UNet's class (as
        saved, so that a compiled UNet keeps its kind)."""
        name = unet_class_name(self.unet)
        if name not in self.model_kinds:
            raise ValueError(f"A {type(self).__name__} has no kind of model with a {name}.")
        return self.model_kinds[name]

    @property
    def generates_stems(self) -> bool:
        """Whether the pipeline generates separate stems (False for the MixLDM baseline: mixtures only)."""
        return True

    @property
    def modules_with_weights(self) -> Dict[str, torch.nn.Module]:
        """The components that hold weights (the VAE, if any, and the UNet)."""
        return {name: getattr(self, name) for name in ("vae", "unet")
                if isinstance(getattr(self, name, None), torch.nn.Module)}

    # ----------------------------------------------------------------------------------------------------------
    # Loading and saving
    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        """Loads a pipeline from a local folder or a Hub repo id (``owner/name``). From this base (and from
        :class:`~mslddm.MultiSourceLatentPipeline`, which users call on any folder) a folder loads as the class
        its ``model_index.json`` names."""
        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "force_download") if k in kwargs}
        local_only = kwargs.get("local_files_only")
        folder = resolve_pretrained_path(pretrained_model_name_or_path, local_files_only=local_only, **hub_kwargs)
        saved = saved_class_name(folder)
        if cls.loads_every_kind and saved in PIPELINE_CLASSES and saved != cls.__name__:
            return pipeline_class(saved)._load(folder, pretrained_model_name_or_path, kwargs)
        if cls is MultiSourcePipelineBase:
            raise PipelineLoadError(f"model_index.json of {str(folder)!r} names the pipeline class {saved!r}, "
                                    f"not one of mslddm's {sorted(PIPELINE_CLASSES)}.")
        return cls._load(folder, pretrained_model_name_or_path, kwargs)

    @classmethod
    def _load(cls, folder, name_or_path, kwargs):
        cls._check_component_classes(folder)
        cls._check_checksums(folder, name_or_path)
        try:
            pipe = super().from_pretrained(folder, **kwargs)
        except (OSError, ValueError, RuntimeError) as error:  # truncated or corrupt weights, mismatched shapes
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PipelineLoadError(f"The pipeline {str(name_or_path)!r} could not be loaded: {first}") from error
        pipe._check_loaded_weights(name_or_path)
        pipe._name_or_path = str(name_or_path)
        return pipe

    @staticmethod
    def _check_checksums(folder, name_or_path) -> None:
        """The files are those that were saved (``checksums.json``, written by :meth:`save_pretrained`): a weight
        file changed in place is named before it is loaded. Folders saved without checksums load with a note."""
        problem = checksum_problem(folder)
        if problem == "none":
            logger.info("%s has no %s (saved before mslddm wrote them): its files are not verified.", folder,
                        CHECKSUMS_FILE)
        elif problem is not None:
            raise PipelineLoadError(f"The pipeline {str(name_or_path)!r} is damaged: {problem}. Download or export "
                                    "it again.")

    @classmethod
    def _check_component_classes(cls, folder) -> None:
        """Every slot of ``model_index.json`` names a class this pipeline can use, before any weight is read."""
        index = read_model_index(folder)
        for slot, allowed in cls.component_classes().items():
            entry = index.get(slot)
            if not (isinstance(entry, list) and len(entry) == 2 and tuple(entry) in allowed):
                names = " or ".join(sorted(f"{m}.{c}" for m, c in allowed))
                raise PipelineLoadError(f"model_index.json of {str(folder)!r} puts {entry!r} in the {slot!r} slot; "
                                        f"this pipeline needs {names} there.")
            importlib.import_module(entry[0])  # one of mslddm's own: diffusers loads only imported modules

    def _check_loaded_weights(self, name_or_path) -> None:
        for name, module in self.modules_with_weights.items():
            bad = [k for k, v in module.state_dict().items() if not torch.isfinite(v).all()]
            if bad:
                raise PipelineLoadError(
                    f"The {name} weights of {str(name_or_path)!r} hold NaN or infinite values "
                    f"({len(bad)} tensors, e.g. {bad[0]}): the file is damaged; download or export it again.")

    def save_pretrained(self, save_directory, *args, model_card_sections=None, repo_id=None, **kwargs):
        """Saves the pipeline folder and, unless one is already there, a model card (``README.md``)."""
        if kwargs.pop("push_to_hub", False):
            raise ValueError("Use pipe.push_to_hub(repo_id) to upload; save_pretrained only writes the folder.")
        if getattr(self.unet, "peft_config", None):  # its weights would be saved as peft's layers: no pipeline
            raise ValueError("The UNet holds LoRA adapters: call unload_lora_weights() first, or fuse_lora() then "
                             "unload_lora_weights() to save the pipeline with the adapter merged into it.")
        super().save_pretrained(save_directory, *args, **kwargs)
        card = os.path.join(save_directory, "README.md")
        if model_card_sections is not None or not os.path.exists(card):
            with open(card, "w", encoding="utf-8") as f:
                f.write(self.model_card(repo_id=repo_id, extra_sections=model_card_sections))
        write_checksums(save_directory)  # last: loading checks the weights against it

    def model_card(self, repo_id: Optional[str] = None, extra_sections: Optional[Mapping[str, str]] = None) -> str:
        """The model card of this pipeline as Markdown."""
        parameters = {name: sum(p.numel() for p in module.parameters())
                      for name, module in self.modules_with_weights.items()}
        return model_card(repo_id=repo_id, kind=self.model_kind, stem_names=self.model_card_stems,
                          sample_rate=self.sample_rate, parameters=parameters, extra_sections=extra_sections)

    @property
    def model_card_stems(self) -> List[str]:
        """The instruments the model card names."""
        return self.stem_names

    def push_to_hub(self, repo_id: str, *, private=None, token=None, commit_message="Upload mslddm pipeline",
                    model_card_sections=None, api=None, **save_kwargs) -> str:
        """Saves the pipeline with its mslddm model card and uploads the folder to the Hub repo ``repo_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, repo_id=repo_id, model_card_sections=model_card_sections or {}, **save_kwargs)
            return push_folder_to_hub(
                tmp, repo_id, private=private, token=token, commit_message=commit_message, api=api
            )

    # ----------------------------------------------------------------------------------------------------------
    # Checks and helpers of generation
    # ----------------------------------------------------------------------------------------------------------
    def enable_compile(self, unet: bool = True, vae: bool = True, **compile_kwargs) -> None:
        """``torch.compile`` for generation: the UNet (on GPUs; on a CPU it was measured no faster, its time is
        in oneDNN's convolutions) and the VAE's activations, if there is a VAE
        (:meth:`~mslddm.SourceVAE.enable_fused_activations`). The first call of each shape compiles."""
        if unet:
            self.unet = torch.compile(self.unet, **compile_kwargs)
        if vae and hasattr(getattr(self, "vae", None), "enable_fused_activations"):
            self.vae.enable_fused_activations()

    def num_frames_for(self, num_samples: int) -> int:
        """Latent frames to generate so that decoding covers ``num_samples``: a multiple of the UNet's stride."""
        multiple, codec = self.unet.length_multiple, self.codec
        frames = math.ceil(num_samples / codec.hop_length / multiple) * multiple
        while codec.num_samples(frames) < num_samples:
            frames += multiple
        return max(frames, multiple)

    def check_inputs(self, stems, generate, audio_length_in_s, num_inference_steps, sampler, s_churn, num_samples,
                     output_type, generator, latents, extend_s=None, callback_on_step_end_tensor_inputs=()):
        """Raises ``ValueError`` (a sentence naming the argument) on arguments generation cannot use."""
        self._check_stem_choice(stems, generate, extend_s)
        if extend_s is not None and audio_length_in_s is not None:
            raise ValueError("Pass either audio_length_in_s or extend_s (the result is the given stems' "
                             "length plus extend_s), not both.")
        if audio_length_in_s is not None and (
            not isinstance(audio_length_in_s, (int, float)) or not math.isfinite(audio_length_in_s)
            or audio_length_in_s <= 0
        ):
            raise ValueError(f"audio_length_in_s must be a positive number of seconds, got {audio_length_in_s!r}.")
        self.scheduler.sampling_settings(sampler, num_inference_steps, s_churn)  # raises on bad values
        self.check_batch_arguments(num_samples, generator, output_type)
        if latents is not None and latents.shape[0] != num_samples:
            raise ValueError(f"latents has batch size {latents.shape[0]} but num_samples is {num_samples}.")
        bad_tensor_inputs = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad_tensor_inputs:
            raise ValueError(f"callback_on_step_end_tensor_inputs may hold {self._callback_tensor_inputs}, "
                             f"got {sorted(bad_tensor_inputs)}.")

    def check_guidance(self, guidance_scale: float | None, reconstruction_guidance: float | None) -> dict:
        """The guidance settings resolved (``None``: none), ``{"guidance_scale", "reconstruction_guidance"}``; a
        sentence for a value guidance cannot use."""
        resolved = dict(NO_GUIDANCE)
        if reconstruction_guidance is None:  # the pipeline's own default (its scheduler config), else none
            reconstruction_guidance = self.scheduler.config.get("reconstruction_guidance") or None
        for name, value in (("guidance_scale", guidance_scale), ("reconstruction_guidance", reconstruction_guidance)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (no guidance: {resolved[name]:g}), got {value!r}.")
            resolved[name] = float(value)
        if resolved["guidance_scale"] != 1 and not self.conditioned:
            raise ValueError(f"guidance_scale {resolved['guidance_scale']:g} needs a UNet trained with given stems as "
                             "its conditioning input; this pipeline's UNet has none (use 1, or a conditioned "
                             "pipeline; reconstruction_guidance works with any).")
        return resolved

    @staticmethod
    def check_batch_arguments(num_samples, generator, output_type, output_types=("np", "pt", "latent")) -> None:
        """The arguments every sampling call shares: the batch, its generators, the output type."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        if output_type not in output_types:
            names = ", ".join(repr(t) for t in output_types[:-1]) + f" or {output_types[-1]!r}"
            raise ValueError(f"output_type must be {names}, got {output_type!r}.")
        if isinstance(generator, list) and len(generator) != num_samples:
            raise ValueError(f"Got {len(generator)} generators for num_samples={num_samples}; pass one per sample.")

    def _check_stem_choice(self, stems, generate, extend_s) -> None:
        names = self.stem_names
        if message := unknown_stems_message(list(stems or {}) + list(generate or []), names):
            raise ValueError(message)
        given = set(stems or {})
        if generate is not None:
            if not generate:
                raise ValueError("generate is empty: name at least one stem to generate.")
            both = given.intersection(generate)
            if both and extend_s is None:
                raise ValueError(f"Stem(s) {sorted(both)} are both given in `stems` and listed in `generate`.")
        elif len(given) == len(names) and extend_s is None:
            raise ValueError(f"Every stem ({names}) is given in `stems`: there is nothing left to generate "
                             "(to continue them, pass extend_s).")
        if extend_s is not None:
            if not isinstance(extend_s, (int, float)) or not math.isfinite(extend_s) or extend_s <= 0:
                raise ValueError(f"extend_s must be a positive number of seconds, got {extend_s!r}.")
            if not given:
                raise ValueError("extend_s continues given stems: pass the stems to continue in `stems`.")

    def _load_given_stems(self, stems: Mapping[str, Any], num_samples: int, input_sample_rate,
                          use_seconds: Optional[float], allow_silent: bool = False) -> Dict[str, np.ndarray]:
        """Loads every given stem as float32 ``(num_samples, T_stem)`` at the pipeline's sample rate; a stem that
        cannot be read, or is silent over the part used (unless ``allow_silent``), raises
        :class:`~mslddm.stems.StemError`."""
        loaded = {}
        for name, source in stems.items():
            items = None
            if isinstance(source, list):
                if len(source) != num_samples:
                    raise ValueError(f"Given stem {name!r} is a list of {len(source)} items; pass one per sample "
                                     f"({num_samples}) or a single audio.")
                items = source
            elif not isinstance(source, (str, os.PathLike, bytes, tuple)):
                array = source.detach().cpu().float().numpy() if hasattr(source, "detach") else np.asarray(source)
                if array.ndim == 2 and array.shape[0] == num_samples and num_samples > 1:
                    items = list(array)
            batch = [load_stem(name, a, self.sample_rate, source_sample_rate=input_sample_rate,
                               use_seconds=use_seconds, silence_dbfs=None if allow_silent else SILENCE_DBFS)
                     for a in (items if items is not None else [source])]
            batch = batch * (num_samples if items is None else 1)
            length = max(len(a) for a in batch)
            loaded[name] = np.stack([np.pad(a, (0, length - len(a))) for a in batch])
        return loaded

    def _level_gains(self, given: Mapping[str, np.ndarray], match_levels: Optional[bool]) -> Dict[str, np.ndarray]:
        """``{stem: (num_samples,) gains}`` that set each given stem to its training level (empty when off)."""
        levels = self.stem_levels_dbfs
        if match_levels not in (None, True, False):
            raise ValueError(f"match_levels must be True, False or None (the pipeline's choice), got {match_levels!r}.")
        if match_levels and not levels:
            raise ValueError("match_levels=True, but this pipeline records no stem_levels_dbfs (its training "
                             "levels); save it with them, or leave match_levels unset.")
        if match_levels is False or not levels:
            return {}
        return {name: np.array([gain_to_level(item, self.sample_rate, levels[name]) for item in audio],
                               dtype=np.float32)
                for name, audio in given.items() if name in levels}

    @torch.no_grad()
    def encode_stems(self, audio: torch.Tensor) -> torch.Tensor:
        """Encodes ``(batch, num_stems, samples)`` audio to ``(batch, num_stems * latent_channels, frames)``."""
        return self.codec.encode(audio)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decodes ``(batch, num_stems * latent_channels, frames)`` latents to ``(batch, num_stems, samples)``."""
        return self.codec.decode(latents)

    def _encode_known(self, generate, given, given_length, gains, frames, num_samples, continuing, device):
        """The known latents (``None`` when nothing is known) and their ``(1, channels, frames)`` mask."""
        names, codec = self.stem_names, self.codec
        frames_known = known_part.known_frames(names, generate, given_length, frames, codec.hop_length,
                                               codec.encoder_context_frames(), continuing)
        mask = known_part.known_mask(frames_known, codec.latent_channels, frames).to(device)
        if not bool(mask.any()):
            return None, mask
        padded = codec.hop_length * frames
        audio = known_part.given_audio(names, given, gains, num_samples, padded)
        known = self.encode_stems(audio.to(device))[..., :frames]
        if known.shape[-1] != frames:
            raise RuntimeError(f"The codec encoded {padded} samples to {known.shape[-1]} frames, not {frames}.")
        return known, mask

    def prepare_latents(self, num_samples: int, frames: int, generator: Generator, latents, device) -> torch.Tensor:
        """Initial noise at ``sigma_max``: drawn from ``generator`` (one per sample when a list), or ``latents``."""
        shape = (num_samples, len(self.stem_names) * self.latent_channels, frames)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

    # ----------------------------------------------------------------------------------------------------------
    # Windows (music longer than the model's window)
    # ----------------------------------------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        """Model evaluations of the last call over all its windows (what its progress bar counts)."""
        return getattr(self, "_num_timesteps", 0)

    def window_settings(self, window_s: Optional[float] = None, overlap_s: Optional[float] = None,
                        crossfade_s: Optional[float] = None) -> Dict[str, int]:
        """Window, overlap and crossfade in latent frames: the given seconds, else the model's defaults: the UNet
        config's ``window_frames`` (the length the model was trained to generate; 12 s when a config predates
        it), an overlap of a third of the window and a crossfade of a quarter of the overlap. The window is
        rounded up to the UNet's length multiple: ``window_s=12`` makes a 12-s request one window."""
        fps = self.sample_rate / self.codec.hop_length

        def to_frames(seconds, name, positive=False):
            if (not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0
                    or (positive and seconds <= 0)):
                raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} number of "
                                 f"seconds, got {seconds!r}.")
            return int(round(seconds * fps))

        multiple = self.unet.length_multiple
        if window_s is None:
            window = getattr(self.unet.config, "window_frames", None) or round(DEFAULT_WINDOW_SECONDS * fps)
        else:
            window = to_frames(window_s, "window_s", positive=True)
        # Rounded up to the UNet's multiple, so that a request of exactly the window's length is one window.
        window = max(multiple, -(-window // multiple) * multiple)
        overlap = window // 3 if overlap_s is None else to_frames(overlap_s, "overlap_s")
        crossfade = overlap // 4 if crossfade_s is None else to_frames(crossfade_s, "crossfade_s")
        return {"window": window, "overlap": overlap, "crossfade": crossfade}

    def _denoise_window(self, x, known, mask, plan, generator, progress_bar, callback, tensor_inputs, offset: int,
                        guidance: Optional[dict] = None):
        """Samples one window from its initial noise ``x`` with the sampling ``plan``; where ``mask`` holds, the
        channels and frames of ``known`` are imputed before every model evaluation and restored at the end."""
        timesteps = plan.timesteps
        impute = None
        if known is not None:
            def impute(sample, sigma, gen):
                noise = randn_tensor(sample.shape, generator=gen, device=sample.device, dtype=torch.float32)
                return torch.where(mask, known + sigma * noise, sample)

        def on_evaluation(info):
            progress_bar.update()
            if callback is None:
                return None
            tensors = {"latents": info["x"], "denoised": info["denoised"]}
            result = callback(self, offset + info["i"], timesteps[info["i"]], {n: tensors[n] for n in tensor_inputs})
            return (result or {}).get("latents")

        with self._only_active_sources(known, mask):
            denoiser = self._denoiser(known, mask, x.shape[0], **(guidance or {}))
            x = self.scheduler.sample(denoiser, x, plan, generator=generator, impute=impute, callback=on_evaluation)
        return x if known is None else torch.where(mask, known, x)

    def _sample_windows(self, latents, known, mask, plan, sampled, sampling_plan, generator, guidance, callback):
        """Step 6 of :meth:`__call__`: every window sampled in turn under one progress bar (``callback``:
        ``(callback_on_step_end, its tensor inputs)``); NaN or infinite latents raise."""
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            def sample_window(x, window_known, window_mask, index):
                return self._denoise_window(x, window_known, window_mask, sampling_plan, generator, progress_bar,
                                            *callback, offset=index * len(sampling_plan.timesteps),
                                            guidance=guidance)

            latents = sample_in_windows(plan, latents, known, mask, sampled, sample_window)
        if not torch.isfinite(latents).all():
            raise FloatingPointError("Sampling produced NaN or infinite latents; try float32 or fewer churn.")
        return latents

    def _only_active_sources(self, known, mask):
        """ISLDM: the per-stem UNets of stems known throughout the window are not run (they are not needed)."""
        only_sources = getattr(self.unet, "only_sources", None)
        if only_sources is None:
            return contextlib.nullcontext()
        active = None
        if known is not None:
            k = len(self.stem_names)
            active = [not bool(m) for m in mask.reshape(mask.shape[0], k, -1).all(-1).all(0)]
        return only_sources(active)

    def _denoiser(self, known, mask, batch: int, guidance_scale: float = 1.0, reconstruction_guidance: float = 0.0
                  ) -> Callable:
        """The scheduler's denoiser of the UNet; a UNet trained with given stems also reads them (clean) as its
        conditioning input (imputation stays), guided by ``guidance_scale``; with ``reconstruction_guidance`` the
        free channels are also drawn towards what the known ones need."""
        denoiser = self.scheduler.denoiser(self.unet)
        if known is not None and self.conditioned:
            given = mask[:, ::self.latent_channels].expand(batch, -1, -1)
            conditioning = stem_conditioning(known, given, self.scheduler.config.sigma_data)
            denoiser = guided(denoiser, conditioning, guidance_scale)
        if known is not None:
            denoiser = reconstruction_guided(denoiser, known, mask, reconstruction_guidance)
        return denoiser

    @property
    def conditioned(self) -> bool:
        """Whether the UNet was trained with given stems as its conditioning input."""
        return bool(getattr(self.unet.config, "conditioning_channels", 0))

    # ----------------------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        stems: Optional[Mapping[str, AudioLike]] = None,
        generate: Optional[Sequence[str]] = None,
        audio_length_in_s: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        sampler: Optional[str] = None,
        s_churn: Optional[float] = None,
        num_samples: int = 1,
        generator: Generator = None,
        latents: Optional[torch.Tensor] = None,
        input_sample_rate: Optional[int] = None,
        match_levels: Optional[bool] = None,
        extend_s: Optional[float] = None,
        window_s: Optional[float] = None,
        overlap_s: Optional[float] = None,
        crossfade_s: Optional[float] = None,
        guidance_scale: Optional[float] = None,
        reconstruction_guidance: Optional[float] = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[[Any, int, torch.Tensor, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        r"""Generates stems, all of them (total generation) or the ones not given (partial generation), or
        continues given stems (``extend_s``), in overlapping windows when the music is longer than the model's.

        Args:
            stems: given stems by name (partial generation): file paths, encoded bytes, ``(array, sample_rate)``
                tuples, or arrays / tensors of shape ``(samples,)`` or ``(channels, samples)``, shared by all
                samples; one per sample as a list of ``num_samples`` such items or, when ``num_samples > 1``, an
                array ``(num_samples, samples)``. Any sample rate and channel count: mixed to mono, resampled.
            generate: the stems to generate (default: every stem not given). Stems neither given nor generated
                are held silent.
            audio_length_in_s: length of the result (default: the longest given stem, else 12 s); any length:
                beyond the window it is generated in overlapping windows.
            num_inference_steps: sampler steps (default: the pipeline's scheduler config for its own sampler, else
                the sampler's, see ``EDMScheduler.sampling_settings``).
            sampler: ``"euler"`` (the paper's, churned), ``"heun"``, ``"dpmpp_2m"`` (few-step) or ``"consistency"``
                (a distilled student's, 1-8 steps); default: the scheduler's.
            s_churn: churn for Euler/Heun (default: as ``num_inference_steps``).
            num_samples: number of variations generated at once (the batch).
            generator: a ``torch.Generator``, or a list of ``num_samples`` generators: with a list, each sample
                depends only on its own generator, so a seed reproduces its item in any batch.
            latents: initial unit-variance noise ``(num_samples, num_stems * latent_channels, frames)``.
            input_sample_rate: sample rate of bare arrays in ``stems`` (default: the pipeline's).
            match_levels: set each given stem to the level its stem has in the training data
                (``stem_levels_dbfs``) before encoding it, and give the generated stems back at the upload's level
                (each generated stem scaled by the inverse of the given stems' mean gain in dB; a continued stem by
                its own). The given stems themselves always come back unchanged. Default: on when the pipeline
                records its training levels.
            extend_s: continuation: the given stems are the beginning of the music (a previous result, or takes
                of some stems); the result is ``extend_s`` seconds longer than the longest of them, the given
                stems continue after their ends and the other stems (``generate``) are generated throughout.
                Excludes ``audio_length_in_s``.
            window_s: length of one window (default: the model's, :meth:`window_settings`); a request that fits
                one window is generated in one pass.
            overlap_s: seconds each window shares with the previous one (default: a third of the window).
            crossfade_s: seconds of the overlap over which the previous window's latents are blended into the
                new one's (default: a quarter of the overlap); the rest of the overlap is imputed.
            guidance_scale: classifier-free guidance on the given stems, for a UNet trained with them
                (:attr:`conditioned`): each denoised estimate moves from total generation's by this multiple of
                the given stems' effect; 1 (the default) is none, larger follows the given stems more closely
                at twice the model evaluations' cost.
            reconstruction_guidance: weight of reconstruction guidance (Ho et al., 2022) in partial generation,
                continuation and long-form windows, for any UNet: the generated stems are drawn towards what the
                given ones need of them, at about three times the model evaluations' cost; 0 is plain
                imputation; default: the pipeline's (``scheduler.config.reconstruction_guidance``, else 0).
            output_type: ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return a :class:`MultiSourceAudioPipelineOutput` rather than a tuple.
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` after each model evaluation
                (``step`` counts over all windows, up to :attr:`num_timesteps`); a returned ``"latents"`` replaces
                the current window's latents.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (``"latents"``, ``"denoised"``).

        Returns:
            :class:`MultiSourceAudioPipelineOutput` or ``(stems, mixture)``. Given stems come back unchanged
            (resampled and mono), sample-aligned with the generated ones; continued stems are unchanged up to
            the last 23 ms of the given audio, where they crossfade into their continuation. A given stem that
            cannot be read or is silent (under ``stems.SILENCE_DBFS``, -50 dBFS RMS over the part used) raises
            ``StemError`` (a ``ValueError``) naming the stem and file; to hold a stem silent, leave it out of both
            ``stems`` and ``generate``.
        """
        # 1. Check inputs
        stems = dict(stems or {})
        self.check_inputs(stems, generate, audio_length_in_s, num_inference_steps, sampler, s_churn, num_samples,
                          output_type, generator, latents, extend_s, callback_on_step_end_tensor_inputs)
        windows = self.window_settings(window_s, overlap_s, crossfade_s)
        guidance = self.check_guidance(guidance_scale, reconstruction_guidance)
        continuing, device = extend_s is not None, self._execution_device

        # 2. Load the given stems (in a continuation, a silent one is held silent, as in the result it came from)
        #    and fix the length
        given = self._load_given_stems(stems, num_samples, input_sample_rate, audio_length_in_s, continuing)
        given, generate = known_part.given_and_generated(self.stem_names, given, generate, continuing)
        given_length = {n: a.shape[1] for n, a in given.items()}
        length = known_part.result_length(given_length, self.sample_rate, audio_length_in_s, extend_s,
                                          DEFAULT_WINDOW_SECONDS)
        given = {n: known_part.fit_length(a, length) for n, a in given.items()}
        gains = self._level_gains(given, match_levels)  # per given stem and sample; undone on the band in step 7
        frames = self.num_frames_for(length) if latents is None else latents.shape[-1]
        if frames % self.unet.length_multiple:
            raise ValueError(f"latents have {frames} frames; the UNet needs a multiple of {self.unet.length_multiple}.")

        # 3. Encode the known stems (given ones, and silence for stems neither given nor generated)
        known, mask = self._encode_known(generate, given, given_length, gains, frames, num_samples, continuing, device)

        # 4. Prepare the timesteps (sampler, steps and churn resolved once, by the scheduler) and the windows
        settings = self.scheduler.sampling_settings(sampler, num_inference_steps, s_churn)
        sampling_plan = self.scheduler.sampling_plan(settings, device)
        plan = plan_windows(frames, multiple=self.unet.length_multiple, **windows)
        sampled = sampled_windows(plan, known, mask)
        self._num_timesteps = len(sampling_plan.timesteps) * len(sampled)

        # 5. Prepare the latents
        latents = self.prepare_latents(num_samples, frames, generator, latents, device)

        # 6. Denoising loop, window by window: the scheduler's sampler, imputing before every model evaluation the
        #    known stems and the frames a window shares with what is already generated
        latents = self._sample_windows(latents, known, mask, plan, sampled, sampling_plan, generator, guidance,
                                       (callback_on_step_end, callback_on_step_end_tensor_inputs))
        sampling = {**settings.to_dict(), "model_evaluations": self._num_timesteps, "windows": len(sampled)}
        sampling.update({k: v for k, v in guidance.items() if v != NO_GUIDANCE[k]})  # recorded where used

        # 7. Decode, restore the given stems exactly, and mix
        if output_type == "latent":
            stems_out, mixture = latents.reshape(num_samples, len(self.stem_names), self.latent_channels, frames), None
        else:
            stems_out = self._decode_with_given(latents, length, given, given_length, generate, gains, sampling)
            mixture = stems_out.sum(dim=1)
        self.maybe_free_model_hooks()
        if output_type == "np":
            stems_out, mixture = stems_out.cpu().numpy(), mixture.cpu().numpy()
        if not return_dict:
            return stems_out, mixture
        return MultiSourceAudioPipelineOutput(stems_out, mixture, self.stem_names, self.sample_rate, generate, sampling)

    def _decode_with_given(self, latents, length, given, given_length, generate, gains, sampling) -> torch.Tensor:
        """``(batch, num_stems, length)`` audio: decoded (on the models' device: ``"pt"`` stays there), the band at
        the upload's level (``sampling["levels"]`` says by how much), the given stems put back exactly."""
        audio = self.decode_latents(latents)[..., :length]
        if audio.shape[-1] < length:
            audio = torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))
        if self.stem_output_gains_db:  # the calibrated level, before the band follows the upload's
            sampling["output_gain_db"] = known_part.apply_output_gains(audio, self.stem_names, generate,
                                                                       self.stem_output_gains_db, list(given))
        if gains:
            sampling["levels"] = known_part.restore_upload_level(audio, self.stem_names, generate, gains)
        known_part.restore_given(audio, self.stem_names, given, given_length, generate)
        return audio
