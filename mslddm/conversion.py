"""Converting the paper's released checkpoints into an mslddm pipeline folder.

The authors of MSLDM (Xu et al., 2024, arXiv 2409.06190, code at github.com/XZWY/MSLDM) published three files:

* ``sourcevae_ckpt``: ``{'generator': state_dict}`` of the SourceVAE (DAC encoder/decoder, ``weight_g``/``weight_v``);
* ``msldm.ckpt`` and ``msldm_large.ckpt``: PyTorch Lightning checkpoints whose ``state_dict`` holds the UNet under
  ``model.unet.*`` (and again under ``model.diffusion.net.*``), and whose ``hyper_parameters`` pickle an object of a
  module that exists only in the authors' training code.

Only tensors (and plain numbers, strings and lists) are read from these files: :func:`load_checkpoint` tries torch's
``weights_only`` loader and, where a file names other globals, an unpickler that maps every global outside a short
allowlist of tensor-rebuild functions to an inert stand-in that imports and runs nothing. Model configs are read off
the tensor shapes; the few values shapes cannot tell (attention heads, GroupNorm groups, skip scaling) come from the
checkpoint's plain hyper-parameters, else from the paper's preset that matches the shapes, else from an explicit
config.
"""

from __future__ import annotations

import collections
import inspect
import pickle
import re
import types
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .factory import unet_config
from .files import sha256
from .models.autoencoder_source import SourceVAE
from .models.unet_1d_multisource import MultiSourceUNet1DModel
from .stems import DEFAULT_STEMS as PAPER_STEMS

PAPER_SAMPLE_RATE = 22050
ORIGINAL_FILES_URL = "https://uofi.box.com/s/z2qxbdsxravhdg1n95khz8um3olgeya3"
ORIGINAL_CODE_URL = "https://github.com/XZWY/MSLDM"
PAPER_URL = "https://arxiv.org/abs/2409.06190"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A file is not the checkpoint it was given as, or does not fit the model it should build."""


# ---------------------------------------------------------------------------------------------------------------------
# Loading tensors without running the pickle's code


class InertObject:
    """Stands in for a global outside the allowlist: records what the pickle gave it and runs nothing.

    Subclasses are made per global (``qualified_name``) so that errors can say what the file contained.
    Dict-like and list-like pickle opcodes land in ``items`` and ``values``; ``__setstate__`` keeps the state.
    """

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items, self.values = args, kwargs, None, {}, []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.values.append(value)

    def extend(self, values):
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<inert stand-in for {self.qualified_name}>"


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): __import__("codecs").encode,  # how protocol-2 pickles spell bytes
}
if hasattr(torch._utils, "_rebuild_tensor_v3"):
    _ALLOWED_GLOBALS[("torch._utils", "_rebuild_tensor_v3")] = torch._utils._rebuild_tensor_v3


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Resolves torch's tensor-rebuild globals and dtypes; every other global becomes an :class:`InertObject` type.

    Storages never reach this method: torch's loader resolves them (``persistent_load``) before calling it.
    """

    inert_globals: set

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        _TensorOnlyUnpickler.inert_globals.add(f"{module}.{name}")
        return type(f"Inert[{module}.{name}]", (InertObject,), {"qualified_name": f"{module}.{name}"})


_TensorOnlyUnpickler.inert_globals = set()
# torch.load takes a pickle *module*; this one only exposes the restricted unpickler.
_tensor_only_pickle = types.SimpleNamespace(
    __name__="mslddm_tensor_only_pickle",
    Unpickler=_TensorOnlyUnpickler,
    load=lambda file, **kwargs: _TensorOnlyUnpickler(file, **kwargs).load(),
)


def load_checkpoint(path: str | Path) -> Any:
    """Reads a ``torch.save`` file, materialising tensors only: no global outside torch's tensor machinery is
    imported or called, whatever the file names (classes of modules that no longer exist included)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {str(path)!r} does not exist.")
    mmap = zipfile.is_zipfile(path)  # memory-map zip checkpoints: tensors never read stay on disk
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        pass  # the file names globals that torch's weights_only loader refuses: read it with the inert stand-ins
    except Exception as error:
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch checkpoint ({error}).") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_tensor_only_pickle)
    except Exception as error:
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch checkpoint ({error}).") from error


def plain_values(obj: Any) -> dict[str, Any]:
    """The entries of a (possibly inert) mapping whose values are plain numbers, strings, or lists of them."""
    if isinstance(obj, InertObject):
        obj = {**(obj.state if isinstance(obj.state, Mapping) else {}), **obj.items}
    if not isinstance(obj, Mapping):
        return {}

    def plain(value):
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return isinstance(value, (bool, int, float, str)) or value is None

    return {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in obj.items() if plain(v)}


# ---------------------------------------------------------------------------------------------------------------------
# Picking the state dicts out of the original files


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        return f"a mapping with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
    return f"a {type(obj).__name__}"


def _tensor_dict(sd: Mapping, path: str, what: str) -> dict[str, torch.Tensor]:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what} in {path!r} has non-tensor entries (e.g. {bad[:3]}); not a state dict.")
    out = {}
    for key, value in sd.items():
        # Newer torch's weight-norm parametrisation stores (g, v) as original0/original1; the model uses g/v names.
        key = re.sub(r"parametrizations\.weight\.original0$", "weight_g", key)
        key = re.sub(r"parametrizations\.weight\.original1$", "weight_v", key)
        out[key] = value.detach()
    if out and all(k.startswith("module.") for k in out):  # saved from DataParallel / DDP
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _looks_like_unet(obj: Any) -> bool:
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else {}
    return isinstance(sd, Mapping) and any(
        str(k).startswith(("model.unet.", "model.diffusion.net.", "to_in.module_list.")) for k in sd
    )


def _looks_like_vae(obj: Any) -> bool:
    sd = obj.get("generator", obj) if isinstance(obj, Mapping) else {}
    return isinstance(sd, Mapping) and any(str(k).startswith(("encoder.block.", "decoder.model.")) for k in sd)


def read_vae_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The SourceVAE weights of ``sourcevae_ckpt`` (``{'generator': state_dict}``) or of a bare state dict."""
    obj, path = load_checkpoint(path), str(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path!r} holds {_describe(obj)}, not a SourceVAE checkpoint {{'generator': ...}}.")
    if _looks_like_unet(obj):
        raise CheckpointError(
            f"{path!r} is a diffusion-model checkpoint (UNet weights under 'model.unet.*'), not the SourceVAE: "
            "pass it as --unet, and the SourceVAE file (sourcevae_ckpt) as --vae."
        )
    if "generator" in obj and isinstance(obj["generator"], Mapping):
        sd = obj["generator"]
    elif _looks_like_vae(obj):
        sd = obj
    elif any(k in obj for k in ("mpd", "msd", "mrd", "discriminator", "optim_g", "optim_d")):
        raise CheckpointError(
            f"{path!r} holds discriminator/optimizer states ({_describe(obj)}), not the SourceVAE generator: "
            "pass the file with the 'generator' entry (sourcevae_ckpt)."
        )
    else:
        raise CheckpointError(f"{path!r} holds {_describe(obj)}; expected a SourceVAE checkpoint {{'generator': ...}}.")
    sd = _tensor_dict(sd, path, "The SourceVAE state dict")
    if not any(k.startswith("encoder.") for k in sd) or not any(k.startswith("decoder.") for k in sd):
        raise CheckpointError(f"{path!r} has no 'encoder.*' and 'decoder.*' weights: not a SourceVAE checkpoint.")
    return sd


def read_unet_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The UNet weights (``model.unet.*``, prefix removed) and the plain hyper-parameters of a Lightning checkpoint.

    A bare ``UNet1d`` state dict is accepted too (with no hyper-parameters).
    """
    obj, path = load_checkpoint(path), str(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path!r} holds {_describe(obj)}, not a Lightning checkpoint with a 'state_dict'.")
    if _looks_like_vae(obj):
        raise CheckpointError(
            f"{path!r} is a SourceVAE checkpoint (encoder/decoder weights), not the diffusion model: pass it as "
            "--vae, and msldm.ckpt or msldm_large.ckpt as --unet."
        )
    hparams = plain_values(obj.get("hyper_parameters", {}))
    sd = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    keys = [str(k) for k in sd]
    for prefix in ("model.unet.", "model.diffusion.net."):  # the second is the same tensors again
        if any(k.startswith(prefix) for k in keys):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if str(k).startswith(prefix)}
            break
    else:
        if not any(k.startswith("to_in.") for k in keys):
            raise CheckpointError(
                f"{path!r} holds {_describe(sd)}: no UNet weights (expected 'state_dict' with 'model.unet.*' keys)."
            )
    return _tensor_dict(sd, path, "The UNet state dict"), hparams


# ---------------------------------------------------------------------------------------------------------------------
# Configs from tensor shapes


def _indices(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted distinct integers ``i`` of keys ``prefix + 'i.' + ...``."""
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def _shape(sd: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"The {what} weights lack {key!r}: not an MSLDM {what} checkpoint, or a truncated one.")
    return tuple(sd[key].shape)


def infer_vae_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """SourceVAE constructor arguments read off the weight shapes of a (DAC-layout) state dict."""
    what = "SourceVAE"
    blocks = _indices(sd, "encoder.block.")
    if not blocks:
        raise CheckpointError("The SourceVAE weights have no 'encoder.block.*' keys.")
    encoder_dim = _shape(sd, "encoder.block.0.weight_v", what)[0]
    encoder_rates = [_shape(sd, f"encoder.block.{i}.block.4.weight_v", what)[-1] // 2 for i in blocks[1:-2]]
    latent_channels = _shape(sd, f"encoder.block.{blocks[-1]}.weight_v", what)[0] // 2
    layers = _indices(sd, "decoder.model.")
    decoder_dim, decoder_latent = _shape(sd, "decoder.model.0.weight_v", what)[:2]
    decoder_rates = [_shape(sd, f"decoder.model.{i}.block.1.weight_v", what)[-1] // 2 for i in layers[1:-2]]
    if decoder_latent != latent_channels:
        raise CheckpointError(
            f"The SourceVAE encoder outputs {latent_channels} latent channels but the decoder takes {decoder_latent}."
        )
    return dict(
        encoder_dim=encoder_dim,
        encoder_rates=encoder_rates,
        latent_channels=latent_channels,
        decoder_dim=decoder_dim,
        decoder_rates=decoder_rates,
    )


# Constructor arguments the shapes cannot tell; the reference code's values for both released models.
_UNET_UNSEEN_DEFAULTS = dict(resnet_groups=8, use_skip_scale=True)
# What a paper configuration states: the reference UNet1d's architecture arguments (its other switches are
# _UNET_UNSEEN_DEFAULTS or read off the shapes).
_REFERENCE_ARCHITECTURE = ("in_channels", "channels", "patch_factor", "patch_blocks", "multipliers", "factors",
                           "num_blocks", "attentions", "attention_heads", "attention_features", "attention_multiplier")


def _paper_unet(preset: str, in_channels: int, entry: str = "unet") -> dict[str, Any]:
    config = unet_config(preset, in_channels, entry)
    return {k: config[k] for k in _REFERENCE_ARCHITECTURE}


# The two released MSLDM UNets (UPSTREAM.md) in the reference's arguments, from the named sizes (mslddm.presets),
# with the paper's 4 stems x 80 latent channels: 364,416,864 and 441,314,656 parameters.
UNET_PRESETS: dict[str, dict[str, Any]] = {name: _paper_unet(name, 320) for name in ("msldm", "msldm-large")}
_UNET_ARGS = set(inspect.signature(MultiSourceUNet1DModel.__init__).parameters) - {"self"}


def infer_unet_shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The UNet constructor arguments that the weight shapes determine (every one but heads, groups, skip scale)."""
    what = "UNet"
    patch_blocks = len(_indices(sd, "to_in.module_list."))
    levels = _indices(sd, "downsamples.")
    if not patch_blocks or not levels:
        raise CheckpointError("The UNet weights have no 'to_in.module_list.*' or 'downsamples.*' keys.")
    in_channels = _shape(sd, "to_in.module_list.0.block.block1.groupnorm.weight", what)[0]
    patch_out = _shape(sd, f"to_in.module_list.{patch_blocks - 1}.block.block2.project.weight", what)[0]
    down = [_shape(sd, f"downsamples.{i}.downsample.weight", what) for i in levels]
    channels = down[0][1]
    widths = [channels] + [shape[0] for shape in down]
    if channels % patch_out or any(w % channels for w in widths):
        raise CheckpointError(f"The UNet level widths {widths} are not multiples of its base width {channels}.")
    config: dict[str, Any] = dict(
        in_channels=in_channels,
        channels=channels,
        patch_factor=channels // patch_out,
        patch_blocks=patch_blocks,
        multipliers=[w // channels for w in widths],
        num_blocks=[len(_indices(sd, f"downsamples.{i}.blocks.")) for i in levels],
        attentions=[any(k.startswith(f"downsamples.{i}.transformer.") for k in sd) for i in levels],
        use_attention_bottleneck=any(k.startswith("bottleneck.attention.") for k in sd),
    )
    # Upsampling of level i (upsamples run deepest first): Conv1d k=3 for factor 1, ConvTranspose1d k=2f, or
    # nearest + Conv1d (key "upsample.1.weight"), where the factor only shows in the downsampling kernel f*m+1.
    factors, nearest = [], False
    for j, i in enumerate(reversed(levels)):
        key = f"upsamples.{j}.upsample.weight"
        if key in sd:
            k = sd[key].shape[-1]
            factors.insert(0, 1 if k == 3 else k // 2)
        else:
            _shape(sd, f"upsamples.{j}.upsample.1.weight", what)
            nearest = True
            factors.insert(0, None)
    known = [(f, shape[-1]) for f, shape in zip(factors, down) if f is not None]
    multiplier = (known[0][1] - 1) // known[0][0] if known else None
    if None in factors:
        if multiplier is None:
            raise CheckpointError(
                "The UNet upsamples with nearest interpolation at every level, so its factors cannot be read off the "
                "weights: pass them with --unet-config."
            )
        factors = [f if f is not None else (shape[-1] - 1) // multiplier for f, shape in zip(factors, down)]
    config.update(factors=factors, use_nearest_upsample=nearest)
    if multiplier is not None:
        config["kernel_multiplier_downsample"] = multiplier
    first_ff = next((i for i, a in zip(levels, config["attentions"]) if a), None)
    if first_ff is not None:
        config["attention_multiplier"] = (
            _shape(sd, f"downsamples.{first_ff}.transformer.feed_forward.1.weight", what)[0] // widths[first_ff + 1]
        )
    out_blocks = _indices(sd, "to_out.module_list.")
    out_channels = _shape(sd, f"to_out.module_list.{out_blocks[-1]}.block.block2.project.weight", what)[0]
    if out_channels != in_channels:
        config["out_channels"] = out_channels
    fourier = _shape(sd, "to_time.0.0.weights", what)[0]
    mapping = _shape(sd, "to_mapping.0.weight", what)[0]
    if fourier != channels // 2:
        config["num_fourier_features"] = fourier
    if mapping != 4 * channels:
        config["mapping_features"] = mapping
    return config


def attention_width(sd: Mapping[str, torch.Tensor]) -> int | None:
    """heads x features per head of the attention layers (their product is all the shapes tell)."""
    key = next((k for k in sd if k.endswith("attention.fn.to_q.weight")), None)
    return None if key is None else sd[key].shape[0]


def detect_variant(shapes: Mapping[str, Any], width: int | None, presets=None) -> str | None:
    """The name of the paper preset whose architecture these shapes are, if any."""
    presets = UNET_PRESETS if presets is None else presets
    for name, preset in presets.items():
        reference = infer_unet_shapes(_preset_shapes(name, presets))
        if reference == dict(shapes) and width == preset["attention_heads"] * preset["attention_features"]:
            return name
    return None


def _preset_shapes(name: str, presets=None) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return MultiSourceUNet1DModel(**(UNET_PRESETS if presets is None else presets)[name]).state_dict()


@dataclass
class UNetConfigResolution:
    """A UNet config and where each of its values came from (``shapes``, ``hyper_parameters``, a preset, ...)."""

    config: dict[str, Any]
    variant: str | None
    sources: dict[str, str] = field(default_factory=dict)


def resolve_unet_config(
    sd: Mapping[str, torch.Tensor],
    hparams: Mapping[str, Any],
    variant: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> UNetConfigResolution:
    """Builds the UNet config: reference defaults < named/detected preset < checkpoint hyper-parameters < tensor
    shapes < explicit ``overrides``. Attention heads must come from a preset, the hyper-parameters or overrides.
    ``presets``: the named architectures to detect (default: MSLDM's; :data:`MSDM_PRESETS` for MSDM)."""
    presets = UNET_PRESETS if presets is None else presets
    shapes = infer_unet_shapes(sd)
    width = attention_width(sd)
    detected = detect_variant(shapes, width, presets)
    if variant is not None and variant not in presets:
        raise CheckpointError(f"Unknown variant {variant!r}; choose one of {sorted(presets)}.")
    if variant is not None and variant != detected:
        raise CheckpointError(
            f"--variant {variant} was given, but the checkpoint's weights are not those of {variant} (they are "
            f"{detected or 'another architecture'}); leave --variant out to convert the architecture they have."
        )
    variant = variant or detected
    layers: list[tuple[str, Mapping[str, Any]]] = [("reference default", _UNET_UNSEEN_DEFAULTS)]
    if variant is not None:
        layers.append((f"preset {variant}", presets[variant]))
    layers += [
        ("checkpoint hyper_parameters", {k: v for k, v in hparams.items() if k in _UNET_ARGS}),
        ("tensor shapes", shapes),
        ("explicit config", dict(overrides or {})),
    ]
    config, sources = {}, {}
    for source, values in layers:
        for key, value in values.items():
            if key not in _UNET_ARGS:
                raise CheckpointError(f"{key!r} is not a MultiSourceUNet1DModel argument (from the {source}).")
            config[key], sources[key] = value, source
    if width is not None and ("attention_heads" not in config or "attention_features" not in config):
        raise CheckpointError(
            f"The checkpoint's attention layers are {width} wide (heads x features per head), but neither its "
            "hyper-parameters nor a paper preset say how many heads: pass --unet-config with attention_heads and "
            "attention_features."
        )
    if width is not None and config["attention_heads"] * config["attention_features"] != width:
        raise CheckpointError(
            f"attention_heads x attention_features = {config['attention_heads']} x {config['attention_features']} "
            f"(from the {sources['attention_heads']}) does not match the checkpoint's attention width {width}."
        )
    return UNetConfigResolution(config=config, variant=variant, sources=sources)


def _load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str, path: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} with other shapes (file vs model, e.g. {wrong[:2]})" if wrong else ""]
        raise CheckpointError(
            f"The {what} weights in {path!r} do not fit the model built from their config: "
            + "; ".join(p for p in parts if p) + "."
        )
    model.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------------------------------
# The conversion


@dataclass
class ConversionResult:
    pipeline: Any
    variant: str | None
    vae_config: dict[str, Any]
    unet_config: dict[str, Any]
    unet_config_sources: dict[str, str]
    inert_globals: list[str]


def build_vae(path: str | Path, config: Mapping[str, Any] | None = None) -> tuple[SourceVAE, dict[str, Any]]:
    sd = read_vae_state_dict(path)
    vae_config = {**infer_vae_config(sd), **dict(config or {}), "sampling_rate": PAPER_SAMPLE_RATE}
    try:
        vae = SourceVAE(**vae_config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"The SourceVAE config {vae_config} is not valid: {error}") from error
    _load_strict(vae, sd, "SourceVAE", str(path))
    return vae.eval(), vae_config


def build_unet(path: str | Path, variant: str | None = None, config: Mapping[str, Any] | None = None,
               presets: Mapping[str, Mapping[str, Any]] | None = None):
    sd, hparams = read_unet_state_dict(path)
    resolution = resolve_unet_config(sd, hparams, variant, config, presets)
    try:
        unet = MultiSourceUNet1DModel(**resolution.config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"The UNet config {resolution.config} is not valid: {error}") from error
    _load_strict(unet, sd, "UNet", str(path))
    return unet.eval(), resolution


def convert_original(
    vae_path: str | Path,
    unet_path: str | Path,
    output_dir: str | Path | None = None,
    *,
    variant: str | None = None,
    dtype: str = "float32",
    vae_config: Mapping[str, Any] | None = None,
    unet_config: Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Builds a :class:`MultiSourceLatentPipeline` from the original files and, given ``output_dir``, saves it with
    a model card. The pipeline has the paper's stems (bass, drums, guitar, piano), 22050 Hz and sampler."""
    from .pipelines.pipeline_multisource_latent import MultiSourceLatentPipeline
    from .schedulers.scheduling_edm import EDMScheduler

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    _TensorOnlyUnpickler.inert_globals = set()
    vae, vae_config = build_vae(vae_path, vae_config)
    unet, resolution = build_unet(unet_path, variant, unet_config)
    expected = len(PAPER_STEMS) * vae.config.latent_channels
    if unet.config.in_channels != expected:
        raise CheckpointError(
            f"The UNet takes {unet.config.in_channels} input channels, but {len(PAPER_STEMS)} stems x "
            f"{vae.config.latent_channels} SourceVAE latent channels = {expected}: these two files do not belong "
            "together (a waveform MSDM checkpoint has 4 input channels)."
        )
    # nn.Module.to, not diffusers' override: that one warns about casting models that have nothing to keep in fp32.
    pipe = MultiSourceLatentPipeline(
        vae=torch.nn.Module.to(vae, DTYPES[dtype]),
        unet=torch.nn.Module.to(unet, DTYPES[dtype]),
        scheduler=EDMScheduler(),
        stem_names=list(PAPER_STEMS),
        sample_rate=PAPER_SAMPLE_RATE,
    )
    result = ConversionResult(
        pipeline=pipe,
        variant=resolution.variant,
        vae_config=vae_config,
        unet_config=resolution.config,
        unet_config_sources=resolution.sources,
        inert_globals=sorted(_TensorOnlyUnpickler.inert_globals),
    )
    if output_dir is not None:
        sections = model_card_sections(result, Path(vae_path), Path(unet_path), dtype)
        pipe.save_pretrained(output_dir, model_card_sections=sections)
    return result


def model_card_sections(result: ConversionResult, vae_path: Path, unet_path: Path, dtype: str) -> dict[str, str]:
    """Model card sections crediting the authors and recording where the weights came from."""
    name = {"msldm": "MSLDM", "msldm-large": "MSLDM-Large"}.get(result.variant or "", "a UNet of MSLDM's family")
    return {
        "Original model and credit": f"""
These weights are **{name}** and the SourceVAE, trained and released by the authors of
*Multi-Source Music Generation with Latent Diffusion*: Zhongweiyang Xu, Debottam Dutta, Yu-Lin Wei and
Romit Roy Choudhury ([arXiv 2409.06190]({PAPER_URL}); code: [XZWY/MSLDM]({ORIGINAL_CODE_URL}), MIT licence).
Trained on Slakh2100 (bass, drums, guitar, piano; 22050 Hz mono). Please cite the paper:

```bibtex
@misc{{xu2024multisourcemusicgenerationlatent,
  title = {{Multi-Source Music Generation with Latent Diffusion}},
  author = {{Zhongweiyang Xu and Debottam Dutta and Yu-Lin Wei and Romit Roy Choudhury}},
  year = {{2024}}, eprint = {{2409.06190}}, archivePrefix = {{arXiv}}
}}
```""",
        "Conversion": f"""
Converted with `mslddm convert-original` from the authors' files (downloaded from the university Box share linked
in the README of {ORIGINAL_CODE_URL}: {ORIGINAL_FILES_URL}):

| file | sha256 |
|---|---|
| `{vae_path.name}` (SourceVAE, `{{'generator': state_dict}}`) | `{sha256(vae_path)}` |
| `{unet_path.name}` (Lightning checkpoint, `model.unet.*`) | `{sha256(unet_path)}` |

Only tensors were read (the checkpoint's pickled training objects were not imported). The weights are unchanged
(stored as {dtype}); the scheduler is the paper's sampler: Karras sigmas 0.01 to 3 (rho 7), 150 churned Euler
steps with s_churn 20, sigma_data 0.4. Verification: mslddm's tests convert checkpoints written by the reference
implementations (audio-diffusion-pytorch 0.0.43 `UNet1d`, descript-audio-codec's DAC encoder/decoder without
tanh) and match their outputs and the reference sampling loop numerically (see `docs/convert_original.md`).""",
    }


# ---------------------------------------------------------------------------------------------------------------------
# MSDM (the waveform baseline): one Lightning checkpoint holding the UNet1d on the 4 stems' waveforms

# MSDM's released architecture (UPSTREAM.md): 405,497,700 parameters on 4 waveform channels.
MSDM_PRESETS: dict[str, dict[str, Any]] = {"msdm": _paper_unet("msldm", 4, "waveform_unet")}


def convert_msdm(
    unet_path: str | Path,
    output_dir: str | Path | None = None,
    *,
    dtype: str = "float32",
    unet_config: Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Builds a :class:`~mslddm.MultiSourceDiffusionPipeline` from one of MSDM's released Lightning checkpoints
    (UNet1d weights under ``model.unet.*`` / ``model.diffusion.net.*``; only tensors are read) with MSDM's sampling
    settings, and given ``output_dir`` saves it with a model card."""
    from .pipelines.pipeline_multisource_diffusion import MultiSourceDiffusionPipeline, msdm_scheduler

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    _TensorOnlyUnpickler.inert_globals = set()
    unet, resolution = build_unet(unet_path, None, unet_config, MSDM_PRESETS)
    if unet.config.in_channels != len(PAPER_STEMS):
        raise CheckpointError(
            f"The UNet takes {unet.config.in_channels} input channels, but MSDM models the {len(PAPER_STEMS)} stems' "
            "waveforms (4 channels): this looks like a latent MSLDM checkpoint; convert it with convert-original.")
    pipe = MultiSourceDiffusionPipeline(unet=torch.nn.Module.to(unet, DTYPES[dtype]), scheduler=msdm_scheduler(),
                                        stem_names=list(PAPER_STEMS), sample_rate=PAPER_SAMPLE_RATE)
    result = ConversionResult(pipeline=pipe, variant=resolution.variant, vae_config={},
                              unet_config=resolution.config, unet_config_sources=resolution.sources,
                              inert_globals=sorted(_TensorOnlyUnpickler.inert_globals))
    if output_dir is not None:
        count = sum(p.numel() for p in unet.parameters())
        sections = {"Conversion": "\n".join([
            f"- Converted from MSDM's `{Path(unet_path).name}` with `mslddm convert-msdm` (tensors only).",
            f"- Architecture: {resolution.variant or 'custom (read off the weights)'}, {count:,} parameters.",
            "- Sampling: MSDM's (Karras sigmas 1e-4 to 20, rho 7, churned Euler 150 steps, churn 20; denoised "
            "clamped to [-1, 1], sigma_data 0.2).", f"- Weights saved in {dtype}."])}
        pipe.save_pretrained(output_dir, model_card_sections=sections)
    return result
