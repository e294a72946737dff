"""LoRA adapters of a pipeline's UNet, loaded the way diffusers loads them: ``peft`` layers injected into the UNet
(:meth:`~MultiSourceLoraLoaderMixin.load_lora_weights`), removed again (``unload_lora_weights``: the base weights
are never written to, so the base pipeline's output comes back bit for bit), merged into the weights
(``fuse_lora``) and out again (``unfuse_lora``), combined and scaled (``set_adapters``).

An adapter is a small folder beside the base pipeline, never a copy of it::

    ADAPTER/pytorch_lora_weights.safetensors   keys unet.<module>.lora_{A,B}.weight; peft's LoraConfig in the
                                               header (diffusers' format: diffusers' loaders read it too)
    ADAPTER/adapter_config.json                the base pipeline, its stems, rank, alpha and target modules, the
                                               training songs' levels and (``mslddm calibrate-levels --lora``) the
                                               output gains its stems need
    ADAPTER/README.md                          the model card (training's export writes it)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LoraBaseMixin

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
ADAPTER_CONFIG_NAME = "adapter_config.json"
# The attention projections (q, kv, out) and the convolutions of every ResNet block (``project``) and of the
# transformers' feed-forward (1x1 convs): every weight matrix that mixes features, none of the time embedding's.
DEFAULT_TARGET_MODULES = ("to_q", "to_kv", "to_out.0", "project", "feed_forward.1", "feed_forward.4")


def lora_config(rank: int, alpha: float | None = None, target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
                dropout: float = 0.0):
    """peft's ``LoraConfig`` for a UNet, as diffusers' LoRA training scripts make it (Gaussian-initialised A, zero
    B: the adapter starts as the identity); ``alpha`` defaults to ``rank`` (a scale of 1)."""
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=float(rank if alpha is None else alpha),
                      target_modules=list(target_modules), lora_dropout=float(dropout), init_lora_weights="gaussian")


def require_peft() -> None:
    """LoRA needs ``peft`` (the ``train`` and ``space`` extras); without it, one sentence saying how to get it."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ModuleNotFoundError("LoRA adapters need the peft package: pip install 'mslddm[train]' (or peft).",
                                  name="peft")


def adapter_file(path: str | os.PathLike) -> Path:
    """The weights file of an adapter folder (or the file itself); a Hub repo id is downloaded."""
    path = Path(path)
    if path.is_dir():
        if not (path / LORA_WEIGHT_NAME).is_file():
            raise FileNotFoundError(f"{str(path)!r} holds no {LORA_WEIGHT_NAME}: not a LoRA adapter folder.")
        return path / LORA_WEIGHT_NAME
    if path.is_file():
        return path
    if str(path).count("/") == 1 and not str(path).startswith((".", "/")):  # owner/name: a Hub repo id
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(str(path), LORA_WEIGHT_NAME))
        except Exception as error:  # noqa: BLE001 - offline, no such repo, no such file: one sentence
            raise FileNotFoundError(f"LoRA adapter {str(path)!r} is no local folder and could not be downloaded "
                                    f"from the Hub ({type(error).__name__}).") from None
    raise FileNotFoundError(f"LoRA adapter {str(path)!r} does not exist: give an adapter folder (with "
                            f"{LORA_WEIGHT_NAME}) or a Hub repo id.")


def read_adapter_config(path: str | os.PathLike) -> dict:
    """``adapter_config.json`` of an adapter folder (next to the weights file); ``{}`` when there is none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """``(state_dict, lora_config)`` of an adapter: the tensors and the LoraConfig its header records."""
    from safetensors import safe_open

    file = adapter_file(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: one sentence
        raise ValueError(f"The LoRA adapter {str(path)!r} could not be read ({error}): download or export it "
                         "again.") from None
    config = json.loads(header[LORA_ADAPTER_METADATA_KEY]) if LORA_ADAPTER_METADATA_KEY in header else None
    return state, config


def adapter_fits(config: dict, stem_names: Sequence[str], in_channels: int) -> str | None:
    """Why an adapter (its ``adapter_config.json``) cannot serve a pipeline with these stems and UNet input, or
    None when it can (or does not say)."""
    stems = config.get("stem_names")
    if stems is not None and list(stems) != list(stem_names):
        return f"it was trained for the stems {list(stems)}, this pipeline has {list(stem_names)}"
    channels = config.get("unet_in_channels")
    if channels is not None and int(channels) != int(in_channels):
        return f"it was trained for a UNet of {channels} input channels, this pipeline's takes {in_channels}"
    return None


def find_adapters(folder: str | os.PathLike | None, stem_names: Sequence[str], in_channels: int) -> dict[str, Path]:
    """The adapter folders directly under ``folder`` that fit a pipeline with these stems and UNet input, by
    folder name (``{}`` when ``folder`` is None or missing): what a page offers in its menu."""
    if not folder or not Path(folder).is_dir():
        return {}
    return {sub.name: sub for sub in sorted(Path(folder).iterdir())
            if (sub / LORA_WEIGHT_NAME).is_file() and adapter_fits(read_adapter_config(sub), stem_names,
                                                                   in_channels) is None}


def write_adapter(folder: str | os.PathLike, unet, adapter_name: str = "default", *,
                  base_pipeline: str | None, stem_names: Sequence[str], dtype: torch.dtype | None = None,
                  extra: dict | None = None) -> Path:
    """Writes the adapter ``adapter_name`` of ``unet`` as an adapter folder (weights in ``dtype``, default as
    trained) with its ``adapter_config.json``; ``extra`` goes into that file too."""
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    config = unet.peft_config[adapter_name]
    state = {k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous()
             for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
    MultiSourceLoraLoaderMixin.save_lora_weights(folder, unet_lora_layers=state,
                                                 unet_lora_adapter_metadata=config.to_dict())
    record = {"base_pipeline": base_pipeline, "stem_names": list(stem_names),
              "unet_class": type(unet).__name__, "unet_in_channels": int(unet.config.in_channels),
              "r": int(config.r), "lora_alpha": float(config.lora_alpha),
              "target_modules": sorted(config.target_modules), "lora_dropout": float(config.lora_dropout),
              "dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
              "parameters": int(sum(v.numel() for v in state.values())), **(extra or {})}
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return folder


def lora_layer_state(unet) -> tuple[dict[str, float], bool, set[str]]:
    """``(scales, disabled, merged)`` of a UNet's LoRA layers as peft holds them: each active adapter's strength
    (1: as trained), whether the layers are switched off, and the adapters merged into the weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer) and getattr(module, "scaling", None):
            scales = {}
            for name in module.active_adapters:
                if name in module.scaling and module.r.get(name):
                    base = module.lora_alpha[name] / (module.r[name] ** 0.5 if module.use_rslora.get(name) else
                                                      module.r[name])
                    scales[name] = float(module.scaling[name] / base)
            return scales, bool(module.disable_adapters), set(module.merged_adapters)
    return {}, False, set()


def blend_output_gains(base: dict | None, adapters: dict[str, dict], scales: dict[str, float]) -> dict | None:
    """The output gain of each stem while adapters are active: the base pipeline's gain moved towards each active
    adapter's recorded gain by its strength (``base + scale * (adapter - base)`` in dB; at strength 1 one adapter's
    own, at 0 the base's; beyond 1 further, up to the +-24 dB any recorded gain may have). Adapters that record no
    gain leave the base's."""
    from ..loudness import OUTPUT_GAIN_LIMIT_DB

    moved = {name: gains for name, gains in adapters.items() if gains and name in scales}
    if not moved:
        return base
    stems = set(base or {}).union(*(gains.keys() for gains in moved.values()))
    blended = {}
    for stem in stems:
        start = float((base or {}).get(stem, 0.0))
        gain = start + sum(scales[name] * (float(gains.get(stem, start)) - start) for name, gains in moved.items())
        blended[stem] = round(min(max(gain, -OUTPUT_GAIN_LIMIT_DB), OUTPUT_GAIN_LIMIT_DB), 2)
    return blended


class MultiSourceLoraLoaderMixin(LoraBaseMixin):
    r"""Loads LoRA adapters into the pipeline's ``unet`` (diffusers' ``LoraBaseMixin`` with one loadable module):
    ``load_lora_weights``, ``unload_lora_weights``, ``fuse_lora`` / ``unfuse_lora``, ``set_adapters``,
    ``disable_lora`` / ``enable_lora``, ``delete_adapters``, ``get_active_adapters`` and ``get_list_adapters``
    behave as in diffusers.

    An adapter that records ``stem_output_gains_db`` (``mslddm calibrate-levels --lora``: the gains that bring its
    stems to its training songs' levels) replaces the pipeline's own calibrated gains while it is active, blended
    by its strength (:func:`blend_output_gains`); ``fuse_lora`` then ``unload_lora_weights`` records the blend in
    the pipeline's config, so a pipeline saved fused keeps it."""

    _lora_loadable_modules = ("unet",)
    unet_name = "unet"

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, return_lora_metadata: bool = False, **kwargs):
        """The adapter's tensors (``unet.``-prefixed keys), and with ``return_lora_metadata`` its LoraConfig."""
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            state, metadata = dict(pretrained_model_name_or_path_or_dict), kwargs.get("metadata")
        else:
            state, metadata = read_adapter(pretrained_model_name_or_path_or_dict)
        return (state, metadata) if return_lora_metadata else state

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                          hotswap: bool = False, scale: float = 1.0, **kwargs):
        """Loads an adapter (a folder, its weights file, a Hub repo id or a state dict) into the UNet as
        ``adapter_name`` (default ``default_0``, ``default_1``, ...) and makes it the active one (as in diffusers:
        ``set_adapters`` combines several) at ``scale``, the LoRA's strength (0: the base pipeline, 1: the adapter
        as trained). Returns the adapter's name. An adapter made for other stems or another UNet is refused in
        one sentence, and the pipeline is left as it was."""
        require_peft()
        source = pretrained_model_name_or_path_or_dict
        shown = "given as a state dict" if isinstance(source, dict) else repr(str(source))
        config = {} if isinstance(source, dict) else read_adapter_config(source)
        problem = adapter_fits(config, self.stem_names, self.unet.config.in_channels)
        if problem:
            raise ValueError(f"The LoRA adapter {shown} does not fit this pipeline: {problem}.")
        state, metadata = self.lora_state_dict(source, return_lora_metadata=True, **kwargs)
        if not state or not all("lora" in key for key in state):
            raise ValueError(f"The LoRA adapter {shown} holds no LoRA weights (keys with 'lora').")
        before = set(getattr(self.unet, "peft_config", {}))
        try:
            self.unet.load_lora_adapter(state, prefix=self.unet_name, adapter_name=adapter_name, metadata=metadata,
                                        _pipeline=self, hotswap=hotswap)
        except (ValueError, RuntimeError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            base = f" (it was made for {config['base_pipeline']})" if config.get("base_pipeline") else ""
            raise ValueError(f"The LoRA adapter {shown} does not fit this pipeline's UNet{base}: {first}") from None
        name = adapter_name or next(iter(set(self.unet.peft_config) - before))
        self._adapter_output_gains()[name] = config.get("stem_output_gains_db") or None
        if float(scale) != 1.0:
            self.set_adapters(name, float(scale))
        return name

    def _adapter_output_gains(self) -> dict[str, dict | None]:
        """The recorded output gains of the adapters loaded, by adapter name."""
        if "_lora_output_gains" not in self.__dict__:
            self.__dict__["_lora_output_gains"] = {}
        return self.__dict__["_lora_output_gains"]

    def lora_output_gains(self, base: dict | None) -> dict | None:
        """The output gains in force: ``base`` (the pipeline's own) unless adapters with recorded gains are active
        and switched on (merged ones count: their weights are in the UNet)."""
        adapters = self._adapter_output_gains()
        if not adapters or not hasattr(self.unet, "peft_config"):
            return base
        scales, disabled, merged = lora_layer_state(self.unet)
        if disabled:  # peft takes merged weights out again before its next forward
            return base
        return blend_output_gains(base, adapters, scales)  # fuse_lora's lora_scale is in the layers' scaling

    def unload_lora_weights(self):
        """Removes the adapters (the base weights come back bit for bit, unless fused: then the fused weights stay,
        and so do the output gains they need, now in the pipeline's config)."""
        scales, _, merged = lora_layer_state(self.unet) if hasattr(self.unet, "peft_config") else ({}, False, set())
        if merged:  # at the strength they were fused with
            gains = blend_output_gains(self.config.get("stem_output_gains_db"), self._adapter_output_gains(),
                                       {name: scales.get(name, 1.0) for name in merged})
            if gains is not None:
                self.register_to_config(stem_output_gains_db=gains)
        super().unload_lora_weights()
        self._adapter_output_gains().clear()

    def delete_adapters(self, adapter_names: list[str] | str):
        """Deletes adapters (as diffusers does), with their recorded output gains."""
        super().delete_adapters(adapter_names)
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            self._adapter_output_gains().pop(name, None)

    @classmethod
    def save_lora_weights(cls, save_directory: str | os.PathLike,
                          unet_lora_layers: dict[str, torch.nn.Module | torch.Tensor] | None = None,
                          is_main_process: bool = True, weight_name: str | None = None, save_function=None,
                          safe_serialization: bool = True, unet_lora_adapter_metadata: dict | None = None):
        """Writes the UNet's LoRA layers (keys prefixed ``unet.``) and their LoraConfig, as diffusers does."""
        if not unet_lora_layers:
            raise ValueError("save_lora_weights needs unet_lora_layers.")
        cls._save_lora_weights(save_directory=save_directory, lora_layers={cls.unet_name: unet_lora_layers},
                               lora_metadata={cls.unet_name: unet_lora_adapter_metadata},
                               is_main_process=is_main_process, weight_name=weight_name,
                               save_function=save_function, safe_serialization=safe_serialization)

    def fuse_lora(self, components: list[str] | None = None, lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs):
        """Merges the active adapters, at ``lora_scale``, into the UNet's weights (faster sampling; undone by
        :meth:`unfuse_lora` up to rounding; ``unload_lora_weights`` after it keeps the fused weights)."""
        super().fuse_lora(components=components or [self.unet_name], lora_scale=lora_scale,
                          safe_fusing=safe_fusing, adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: list[str] | None = None, **kwargs):
        """Takes the fused adapters back out of the UNet's weights."""
        super().unfuse_lora(components=components or [self.unet_name], **kwargs)
