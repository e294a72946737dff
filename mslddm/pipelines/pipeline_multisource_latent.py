"""MultiSourceLatentPipeline: total and partial multi-stem music generation (MSLDM)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..audio import AudioLike
from ..hub import PipelineLoadError, model_card, push_folder_to_hub, resolve_pretrained_path
from ..loudness import band_gain, check_stem_levels, gain_to_level
from ..models.autoencoder_source import SourceVAE
from ..models.autoencoder_spectral import SpectralSourceVAE
from ..models.unet_1d_independent import IndependentSourceUNet1DModel
from ..models.unet_1d_multisource import MultiSourceUNet1DModel, stem_conditioning
from ..schedulers.scheduling_edm import EDMScheduler
from ..stems import DEFAULT_STEMS, load_stem
from .windows import crossfade_weights, plan_windows

Generator = Optional[Union[torch.Generator, List[torch.Generator]]]

DEFAULT_WINDOW_SECONDS = 12.0  # window of a UNet config without `window_frames`, and the default length
CONTINUATION_FADE_SAMPLES = 512  # a continued stem crossfades from the take into its continuation over these


@dataclass
class MultiSourceAudioPipelineOutput(BaseOutput):
    """Output of :class:`MultiSourceLatentPipeline`.

    Args:
        stems: ``(batch, num_stems, samples)`` audio in ``stem_names`` order (for ``output_type="latent"``:
            ``(batch, num_stems, latent_channels, frames)`` latents).
        mixture: ``(batch, samples)``, the sum of the stems (``None`` for latents).
        stem_names: names of the stems, in order.
        sample_rate: sample rate of the audio.
        generated: names of the stems the model generated (the others were given or held silent).
        sampling: the sampler, steps, churn and number of model evaluations used (defaults resolved).
    """

    stems: Union[np.ndarray, torch.Tensor]
    mixture: Optional[Union[np.ndarray, torch.Tensor]]
    stem_names: List[str]
    sample_rate: int
    generated: List[str]
    sampling: Optional[Dict[str, Any]] = None


class MultiSourceLatentPipeline(DiffusionPipeline):
    r"""Pipeline for multi-source music generation with latent diffusion (MSLDM).

    Each stem is encoded by the shared ``vae`` to ``latent_channels`` channels; the stems' latents are concatenated
    on channels (in ``stem_names`` order) and ``unet`` denoises them jointly under the EDM ``scheduler``.

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
    """

    model_cpu_offload_seq = "vae->unet->vae"
    _callback_tensor_inputs = ["latents", "denoised"]

    def __init__(
        self,
        vae: Union[SourceVAE, SpectralSourceVAE],
        unet: Union[MultiSourceUNet1DModel, IndependentSourceUNet1DModel],
        scheduler: EDMScheduler,
        stem_names: Optional[Sequence[str]] = None,
        sample_rate: Optional[int] = None,
        stem_levels_dbfs: Optional[Mapping[str, float]] = None,
    ):
        super().__init__()
        stem_names = list(stem_names or DEFAULT_STEMS)
        if len(set(stem_names)) != len(stem_names) or not all(isinstance(s, str) and s for s in stem_names):
            raise ValueError(f"stem_names must be distinct non-empty strings, got {stem_names}.")
        expected = len(stem_names) * vae.config.latent_channels
        if unet.config.in_channels != expected:
            raise ValueError(
                f"unet.in_channels is {unet.config.in_channels} but {len(stem_names)} stems x "
                f"{vae.config.latent_channels} latent channels = {expected}."
            )
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.register_to_config(stem_names=stem_names, sample_rate=int(sample_rate or vae.config.sampling_rate))
        if stem_levels_dbfs is not None:  # only when recorded: folders saved without it keep their model_index.json
            self.register_to_config(stem_levels_dbfs=check_stem_levels(stem_levels_dbfs, stem_names))

    # Read from the config, never stored as attributes: diffusers treats list-valued attributes as components.
    @property
    def stem_names(self) -> List[str]:
        return list(self.config.stem_names)

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    @property
    def stem_levels_dbfs(self) -> Optional[Dict[str, float]]:
        """The stems' training levels in dBFS (``None`` when the pipeline does not record them)."""
        levels = self.config.get("stem_levels_dbfs")
        return dict(levels) if levels else None

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def model_kind(self) -> str:
        """``"msldm"`` (one UNet over all stems) or ``"isldm"`` (independent per-stem UNets, the baseline)."""
        return "isldm" if type(self.unet).__name__ == "IndependentSourceUNet1DModel" else "msldm"

    @property
    def generates_stems(self) -> bool:
        """Whether the pipeline generates separate stems (False for the MixLDM baseline: mixtures only)."""
        return True

    # ----------------------------------------------------------------------------------------------------------
    # Loading and saving
    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        """Loads a pipeline from a local folder or a Hub repo id (``owner/name``). A folder saved by a subclass
        (the baselines: :class:`~mslddm.MixtureLatentPipeline`, :class:`~mslddm.MultiSourceDiffusionPipeline`)
        loads as that class."""
        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "force_download") if k in kwargs}
        local_only = kwargs.get("local_files_only")
        folder = resolve_pretrained_path(pretrained_model_name_or_path, local_files_only=local_only, **hub_kwargs)
        saved_as = _saved_class(folder)
        if saved_as is not None and saved_as is not cls and issubclass(saved_as, cls):
            return saved_as.from_pretrained(folder, **kwargs)
        cls._check_component_classes(folder)
        try:
            pipe = super().from_pretrained(folder, **kwargs)
        except (OSError, ValueError, RuntimeError) as error:  # truncated or corrupt weights, mismatched shapes
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PipelineLoadError(f"The pipeline {str(pretrained_model_name_or_path)!r} could not be loaded: "
                                    f"{first}") from error
        pipe._check_loaded_weights(pretrained_model_name_or_path)
        pipe._name_or_path = str(pretrained_model_name_or_path)
        return pipe

    def _check_loaded_weights(self, name_or_path) -> None:
        for name in ("vae", "unet"):
            bad = [k for k, v in getattr(self, name).state_dict().items() if not torch.isfinite(v).all()]
            if bad:
                raise PipelineLoadError(
                    f"The {name} weights of {str(name_or_path)!r} hold NaN or infinite values "
                    f"({len(bad)} tensors, e.g. {bad[0]}): the file is damaged; download or export it again.")

    @staticmethod
    def _check_component_classes(folder) -> None:
        """Every slot of ``model_index.json`` names a class this pipeline can use, before any weight is read."""
        import json

        from ..models import UNET_CLASSES, VAE_CLASSES

        expected = {"vae": {("mslddm.models.autoencoder_source", "SourceVAE"),
                            *((module, name) for name, module in VAE_CLASSES.items())},
                    "unet": {(module, name) for name, module in UNET_CLASSES.items()},
                    "scheduler": {("mslddm.schedulers.scheduling_edm", "EDMScheduler")}}
        index = json.loads((Path(folder) / "model_index.json").read_text())
        for slot, allowed in expected.items():
            entry = index.get(slot)
            if not (isinstance(entry, list) and len(entry) == 2 and tuple(entry) in allowed):
                names = " or ".join(sorted(f"{m}.{c}" for m, c in allowed))
                raise PipelineLoadError(f"model_index.json of {str(folder)!r} puts {entry!r} in the {slot!r} slot; "
                                        f"this pipeline needs {names} there.")

    def save_pretrained(self, save_directory, *args, model_card_sections=None, repo_id=None, **kwargs):
        """Saves the pipeline folder and, unless one is already there, a model card (``README.md``)."""
        if kwargs.pop("push_to_hub", False):
            raise ValueError("Use pipe.push_to_hub(repo_id) to upload; save_pretrained only writes the folder.")
        super().save_pretrained(save_directory, *args, **kwargs)
        card = os.path.join(save_directory, "README.md")
        if model_card_sections is not None or not os.path.exists(card):
            with open(card, "w", encoding="utf-8") as f:
                f.write(self.model_card(repo_id=repo_id, extra_sections=model_card_sections))

    def model_card(self, repo_id: Optional[str] = None, extra_sections: Optional[Mapping[str, str]] = None) -> str:
        """The model card of this pipeline as Markdown."""
        parameters = {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in ("vae", "unet")}
        return model_card(
            repo_id=repo_id,
            kind=self.model_kind,
            stem_names=getattr(self, "mixture_of", None) or self.stem_names,
            sample_rate=self.sample_rate,
            parameters=parameters,
            extra_sections=extra_sections,
        )

    def push_to_hub(self, repo_id: str, *, private=None, token=None, commit_message="Upload mslddm pipeline",
                    model_card_sections=None, api=None, **save_kwargs) -> str:
        """Saves the pipeline with its mslddm model card and uploads the folder to the Hub repo ``repo_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, repo_id=repo_id, model_card_sections=model_card_sections or {}, **save_kwargs)
            return push_folder_to_hub(
                tmp, repo_id, private=private, token=token, commit_message=commit_message, api=api
            )

    # ----------------------------------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------------------------------
    def enable_compile(self, unet: bool = True, vae: bool = True, **compile_kwargs) -> None:
        """``torch.compile`` for generation: the UNet (on GPUs; on a CPU it was measured no faster, its time is
        in oneDNN's convolutions) and the VAE's activations (:meth:`~SourceVAE.enable_fused_activations`). The
        first call of each shape compiles."""
        if unet:
            self.unet = torch.compile(self.unet, **compile_kwargs)
        if vae and hasattr(self.vae, "enable_fused_activations"):
            self.vae.enable_fused_activations()

    def num_frames_for(self, num_samples: int) -> int:
        """Latent frames to generate so that decoding covers ``num_samples``: a multiple of the UNet's stride."""
        multiple = self.unet.length_multiple
        frames = math.ceil(num_samples / self.vae.hop_length / multiple) * multiple
        while self.vae.num_samples(frames) < num_samples:
            frames += multiple
        return max(frames, multiple)

    def check_inputs(self, stems, generate, audio_length_in_s, num_inference_steps, sampler, s_churn, num_samples,
                     output_type, generator, latents, extend_s=None):
        names = self.stem_names
        unknown = [s for s in list(stems or {}) + list(generate or []) if s not in names]
        if unknown:
            raise ValueError(f"Unknown stem name(s) {unknown}; this pipeline's stems are {names}.")
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
            if audio_length_in_s is not None:
                raise ValueError("Pass either audio_length_in_s or extend_s (the result is the given stems' "
                                 "length plus extend_s), not both.")
        if audio_length_in_s is not None and (
            not isinstance(audio_length_in_s, (int, float)) or not math.isfinite(audio_length_in_s)
            or audio_length_in_s <= 0
        ):
            raise ValueError(f"audio_length_in_s must be a positive number of seconds, got {audio_length_in_s!r}.")
        self.scheduler.sampling_settings(sampler, num_inference_steps, s_churn)  # raises on bad values
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}.")
        if isinstance(generator, list) and len(generator) != num_samples:
            raise ValueError(f"Got {len(generator)} generators for num_samples={num_samples}; pass one per sample.")
        if latents is not None and latents.shape[0] != num_samples:
            raise ValueError(f"latents has batch size {latents.shape[0]} but num_samples is {num_samples}.")

    def _load_given_stems(self, stems: Mapping[str, Any], num_samples: int, input_sample_rate,
                          use_seconds: Optional[float]) -> Dict[str, np.ndarray]:
        """Loads every given stem as float32 ``(num_samples, T_stem)`` at the pipeline's sample rate; a stem that
        cannot be read, or is silent over the part used, raises :class:`~mslddm.stems.StemError`."""
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
                               use_seconds=use_seconds) for a in (items if items is not None else [source])]
            batch = batch * (num_samples if items is None else 1)
            length = max(len(a) for a in batch)
            loaded[name] = np.stack([np.pad(a, (0, length - len(a))) for a in batch])
        return loaded

    @torch.no_grad()
    def encode_stems(self, audio: torch.Tensor) -> torch.Tensor:
        """Encodes ``(batch, num_stems, samples)`` audio to ``(batch, num_stems * latent_channels, frames)`` means."""
        b, k, t = audio.shape
        posterior = self.vae.encode(audio.reshape(b * k, 1, t).to(self.vae.device, self.vae.dtype)).latent_dist
        latents = posterior.mean.float()
        return latents.reshape(b, k * latents.shape[1], latents.shape[2])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decodes ``(batch, num_stems * latent_channels, frames)`` latents to ``(batch, num_stems, samples)``."""
        b, kc, f = latents.shape
        k = kc // self.latent_channels
        audio = self.vae.decode(latents.reshape(b * k, self.latent_channels, f).to(self.vae.device, self.vae.dtype))
        audio = audio.sample
        return audio.float().reshape(b, k, audio.shape[-1])

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
        fps = self.sample_rate / self.vae.hop_length

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
            sampler: ``"euler"`` (the paper's, churned), ``"heun"`` or ``"dpmpp_2m"`` (few-step); default: the
                scheduler's.
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
            cannot be read or is silent (under -60 dBFS RMS over the part used) raises ``StemError`` (a
            ``ValueError``) naming the stem and file; to hold a stem silent, leave it out of both ``stems`` and
            ``generate``.
        """
        # 1. Check inputs
        stems = dict(stems or {})
        self.check_inputs(stems, generate, audio_length_in_s, num_inference_steps, sampler, s_churn, num_samples,
                          output_type, generator, latents, extend_s)
        windows = self.window_settings(window_s, overlap_s, crossfade_s)
        bad_tensor_inputs = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad_tensor_inputs:
            raise ValueError(f"callback_on_step_end_tensor_inputs may hold {self._callback_tensor_inputs}, "
                             f"got {sorted(bad_tensor_inputs)}.")
        names = self.stem_names
        if generate is None:
            generate = [s for s in names if s not in stems or extend_s is not None]
        else:
            generate = [s for s in names if s in generate or (extend_s is not None and s in stems)]
        device = self._execution_device

        # 2. Load the given stems and fix the length
        given = self._load_given_stems(stems, num_samples, input_sample_rate, audio_length_in_s)
        given_length = {n: a.shape[1] for n, a in given.items()}
        if extend_s is not None:
            num_samples_audio = max(given_length.values()) + round(extend_s * self.sample_rate)
        elif audio_length_in_s is None:
            num_samples_audio = max(given_length.values(), default=round(DEFAULT_WINDOW_SECONDS * self.sample_rate))
        else:
            num_samples_audio = round(audio_length_in_s * self.sample_rate)
        if num_samples_audio < 1:
            raise ValueError(f"audio_length_in_s={audio_length_in_s} is shorter than one sample.")
        given = {n: _fit(a, num_samples_audio) for n, a in given.items()}
        gains = self._level_gains(given, match_levels)  # per given stem and sample; undone on the band in step 7
        frames = self.num_frames_for(num_samples_audio) if latents is None else latents.shape[-1]
        if frames % self.unet.length_multiple:
            raise ValueError(f"latents have {frames} frames; the UNet needs a multiple of {self.unet.length_multiple}.")

        # 3. Encode the known stems (given ones, and silence for stems neither given nor generated); in
        #    continuation, a given stem is known up to the frames its end (zeros after it) does not reach
        k, c = len(names), self.latent_channels
        known_frames = torch.zeros(k, dtype=torch.long)
        for i, name in enumerate(names):
            if name not in generate:
                known_frames[i] = frames
            elif name in given and extend_s is not None:
                edge = given_length[name] // self.vae.hop_length - self.vae.encoder_context_frames()
                known_frames[i] = max(0, min(frames, edge))
        mask = torch.arange(frames).view(1, 1, frames) < known_frames.view(1, k, 1)
        mask = mask.unsqueeze(2).expand(1, k, c, frames).reshape(1, k * c, frames).to(device)
        known = None
        if bool(mask.any()):
            padded = self.vae.hop_length * frames
            audio = torch.zeros(num_samples, k, padded)
            for i, name in enumerate(names):
                if name in given:
                    audio[:, i, :num_samples_audio] = torch.from_numpy(given[name] * gains[name][:, None] if name in gains else given[name])
            known = self.encode_stems(audio.to(device))[..., :frames]
            if known.shape[-1] != frames:
                raise RuntimeError(f"The VAE encoded {padded} samples to {known.shape[-1]} frames, not {frames}.")

        # 4. Prepare the timesteps (sampler, steps and churn resolved once, by the scheduler) and the windows
        settings = self.scheduler.sampling_settings(sampler, num_inference_steps, s_churn)
        sampling_plan = self.scheduler.sampling_plan(settings, device)
        timesteps = sampling_plan.timesteps
        plan = plan_windows(frames, multiple=self.unet.length_multiple, **windows)
        # A window whose free frames are all known (the given part of a continuation) is copied, not sampled.
        sampled = [j for j, start in enumerate(plan.starts)
                   if known is None or not bool(mask[..., start + plan.imputed(j):start + plan.window].all())]
        self._num_timesteps = len(timesteps) * len(sampled)

        # 5. Prepare the latents
        shape = (num_samples, k * c, frames)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=torch.float32) * self.scheduler.init_noise_sigma

        # 6. Denoising loop, window by window: the scheduler's sampler, imputing before every model evaluation the
        #    known stems and the frames a window shares with what is already generated
        out = torch.zeros_like(latents)  # what the windows have generated so far
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            for j, start in enumerate(plan.starts):
                span = slice(start, start + plan.window)
                window_known = None if known is None else known[..., span]
                window_mask = mask[..., span]
                imputed, blended = plan.imputed(j), plan.blended(j)
                if imputed:
                    window_known = (out[..., span] if window_known is None else window_known).clone()
                    window_known[..., :imputed] = out[..., start:start + imputed]
                    window_mask = window_mask.clone()
                    window_mask[..., :imputed] = True
                if j not in sampled:
                    out[..., span] = window_known
                    continue
                x = self._denoise_window(latents[..., span], window_known, window_mask, sampling_plan, generator,
                                         progress_bar, callback_on_step_end, callback_on_step_end_tensor_inputs,
                                         offset=sampled.index(j) * len(timesteps))
                if blended:
                    part = slice(imputed, imputed + blended)
                    weight = crossfade_weights(blended, device=x.device)
                    previous = out[..., start + imputed:start + imputed + blended]
                    x[..., part] = torch.where(window_mask[..., part], x[..., part],
                                               previous + weight * (x[..., part] - previous))
                out[..., span] = x
        latents = out
        if not torch.isfinite(latents).all():
            raise FloatingPointError("Sampling produced NaN or infinite latents; try float32 or fewer churn.")
        sampling = {**settings.to_dict(), "model_evaluations": self._num_timesteps, "windows": len(sampled)}

        # 7. Decode, restore the given stems exactly, and mix
        if output_type == "latent":
            out = latents.reshape(num_samples, k, c, frames)
            self.maybe_free_model_hooks()
            if not return_dict:
                return out, None
            return MultiSourceAudioPipelineOutput(out, None, names, self.sample_rate, generate, sampling)
        audio = self.decode_latents(latents)[..., :num_samples_audio]  # on the models' device: "pt" stays there
        if audio.shape[-1] < num_samples_audio:
            audio = torch.nn.functional.pad(audio, (0, num_samples_audio - audio.shape[-1]))
        if gains:  # the band back at the upload's level
            band = torch.tensor([band_gain([g[b] for g in gains.values()]) for b in range(num_samples)])
            for i, name in enumerate(names):
                if name in generate:
                    scale = torch.from_numpy(1.0 / gains[name]) if name in gains else band
                    audio[:, i] *= scale.to(audio.device, audio.dtype)[:, None]
            sampling["levels"] = {"given_gain_db": {n: [round(20 * math.log10(v), 2) for v in g]
                                                    for n, g in gains.items()},
                                  "band_gain_db": [round(20 * math.log10(v), 2) for v in band.tolist()]}
        for i, name in enumerate(names):
            if name in given and name in generate:  # continued: the take, then a crossfade into its continuation
                end = given_length[name]
                fade = min(CONTINUATION_FADE_SAMPLES, end)
                ramp = torch.linspace(1.0, 0.0, fade + 2, device=audio.device)[1:-1]
                take = torch.from_numpy(given[name][:, :end]).to(audio.device)
                audio[:, i, :end - fade] = take[:, :end - fade]
                audio[:, i, end - fade:end] = ramp * take[:, end - fade:] + (1 - ramp) * audio[:, i, end - fade:end]
            elif name not in generate:
                audio[:, i] = torch.from_numpy(given[name]).to(audio.device) if name in given else 0.0
        mixture = audio.sum(dim=1)
        self.maybe_free_model_hooks()
        if output_type == "np":
            audio, mixture = audio.cpu().numpy(), mixture.cpu().numpy()
        if not return_dict:
            return audio, mixture
        return MultiSourceAudioPipelineOutput(audio, mixture, names, self.sample_rate, generate, sampling)

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

    def _denoise_window(self, x, known, mask, plan, generator, progress_bar, callback, tensor_inputs, offset: int):
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

        only_sources = getattr(self.unet, "only_sources", None)  # ISLDM: stems known throughout need no model
        active = None
        if only_sources is not None and known is not None:
            k = len(self.stem_names)
            active = [not bool(m) for m in mask.reshape(mask.shape[0], k, -1).all(-1).all(0)]
        context = only_sources(active) if only_sources is not None else contextlib.nullcontext()
        denoiser = self.scheduler.denoiser(self.unet)
        if known is not None and getattr(self.unet.config, "conditioning_channels", 0):
            # A UNet trained with given stems also reads them (clean) as its conditioning input; imputation stays.
            given = mask[:, ::self.latent_channels].expand(x.shape[0], -1, -1)
            conditioning = stem_conditioning(known, given, self.scheduler.config.sigma_data)
            denoiser = functools.partial(denoiser, conditioning=conditioning)
        with context:
            x = self.scheduler.sample(denoiser, x, plan, generator=generator, impute=impute, callback=on_evaluation)
        return x if known is None else torch.where(mask, known, x)


def _saved_class(folder) -> Optional[type]:
    """The mslddm pipeline class named by ``folder/model_index.json`` (None if it names none of them)."""
    index = Path(folder) / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None
    if name == "MixtureLatentPipeline":
        from .pipeline_mixture_latent import MixtureLatentPipeline

        return MixtureLatentPipeline
    if name == "MultiSourceDiffusionPipeline":
        from .pipeline_multisource_diffusion import MultiSourceDiffusionPipeline

        return MultiSourceDiffusionPipeline
    return MultiSourceLatentPipeline if name == "MultiSourceLatentPipeline" else None


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    """Crops or zero-pads ``(batch, samples)`` audio to ``length`` samples."""
    if audio.shape[1] >= length:
        return audio[:, :length]
    return np.pad(audio, ((0, 0), (0, length - audio.shape[1])))
