"""What a training recipe may say: every section's keys with their types and ranges, checked when a recipe is read
(:func:`mslddm.training.recipes.load_recipe`), so that a misspelt key (``learning_rat``) or a value that would fail
after the first step (``checkpointing_steps: 0``, ``batch_size: 0``) is named before any work, in one sentence.

The schema is data: a section is a dict ``key -> check``; a check is a function ``value -> None or a complaint``
(a phrase that completes "must be ..."), or a nested section (an :class:`OptionalSection` may also be null: off,
as when it is absent). Model-architecture overrides (``model:``) are free mappings: the model's constructor checks
them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Optional

Check = Callable[[Any], Optional[str]]


class RecipeError(ValueError):
    """A recipe that cannot be trained as written: the message names the file, the key and what it must be."""


class OptionalSection(dict):
    """A section that may also be null: off (a recipe based on one that sets it can turn it off so)."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"an integer >= {minimum}"
    return check


def real(low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Check:
    def check(value):
        if not _number(value) or value < low or value > high or (low_open and value == low) or (
                high_open and value == high):
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            return f"a finite number in {left}{low}, {high}{right}"
    return check


def optional(inner: Check) -> Check:
    def check(value):
        if value is not None:
            complaint = inner(value)
            return None if complaint is None else f"{complaint} or null"
    return check


def choice(*options) -> Check:
    def check(value):
        if value not in options:
            return f"one of {list(options)}"
    return check


def of_type(kind: type, name: str) -> Check:
    def check(value):
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            return name
    return check


def number_list(length: Optional[int] = None, item: Check = real()) -> Check:
    def check(value):
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length) or any(
                item(v) for v in value):
            return f"a list of {length or 'some'} numbers"
    return check


def mapping_of(item: Check) -> Check:
    def check(value):
        if not isinstance(value, dict) or any(item(v) for v in value.values()):
            return "a mapping of numbers"
    return check


POSITIVE = real(0.0, low_open=True)
PROBABILITY = real(0.0, 1.0)
TEXT = of_type(str, "a string")
PATH = optional(TEXT)
FLAG = of_type(bool, "true or false")
MAPPING = of_type(dict, "a mapping")

# What both training scripts read from their section.
_TRAINING = {
    "max_steps": integer(1), "batch_size": integer(1), "learning_rate": real(0.0),  # 0: that part stays frozen
    "betas": number_list(2, real(0.0, 1.0, high_open=True)), "grad_clip": optional(POSITIVE),
    "mixed_precision": choice("no", "fp16", "bf16", False), "num_workers": integer(0),
    "log_every": integer(1), "validate_every": integer(1), "validation_seconds": POSITIVE,
    "validation_segments": integer(1), "checkpointing_steps": integer(1),
    "checkpoints_total_limit": optional(integer(1)), "model": MAPPING, "gradient_checkpointing": FLAG,
}

VAE_SECTION = {
    **_TRAINING,
    "source": choice("stems", "mix"), "clip_seconds": POSITIVE, "clips_per_epoch": integer(1),
    "lr_gamma": real(0.0, 1.0, low_open=True), "posterior_logvar_init": optional(real()),
    "discriminator_grad_clip": optional(POSITIVE), "discriminator_learning_rate": POSITIVE,
    "discriminator_start_step": integer(0), "mel": MAPPING,
    "loss_weights": {"mel": real(0.0), "feature": real(0.0), "adversarial": real(0.0), "kl": real(0.0)},
    "discriminator": {"periods": number_list(item=integer(1)), "period_widths": number_list(item=integer(1)),
                      "fft_sizes": number_list(item=integer(2)), "stft_channels": integer(1)},
}


def _scheduler_section() -> dict:
    """Every constructor argument of EDMScheduler (its own checks run when it is built)."""
    import inspect

    from mslddm.schedulers.scheduling_edm import EDMScheduler

    names = [n for n in inspect.signature(EDMScheduler.__init__).parameters if n != "self"]
    return {name: (lambda value: None) for name in names}


def _joint_networks() -> Check:
    """The networks model msldm may train (its UNet, or the transformer of the same interface)."""
    return choice("MultiSourceUNet1DModel", "MultiSourceTransformer1DModel")


def msldm_section() -> dict:
    return {
        **_TRAINING,
        "vae": PATH, "latents": PATH, "segment_frames": integer(1), "unet_class": optional(_joint_networks()), "lr_warmup_steps": integer(0),
        "lr_decay_start": optional(integer(0)), "lr_decay_steps": integer(0), "lr_final_ratio": real(0.0, 1.0),
        "use_ema": FLAG, "ema_decay": real(0.0, 1.0, high_open=True), "validation_steps": integer(1),
        "validation_sampler": TEXT, "scheduler": _scheduler_section(),
        "conditioning": {"given_probability": PROBABILITY, "total_probability": PROBABILITY,
                         "continuation_probability": PROBABILITY, "learning_rate": optional(real(0.0))},
        # A LoRA adapter on the --init_from pipeline's frozen UNet (docs/finetune.md); null: every weight trains.
        # Post-hoc EMA (EDM2): power-function averages of the weights, written every snapshot_steps, from which
        # `mslddm export CHECKPOINT --posthoc-ema SIGMA_REL` builds any other length (docs/ablations.md).
        "posthoc_ema": OptionalSection({"sigma_rels": number_list(item=real(0.0, 0.28, low_open=True, high_open=True)),
                                        "snapshot_steps": integer(1)}),
        # Extra loss weight on the noise levels in [low, high] (docs/ablations.md, "Loss weighting"); null: EDM's.
        "sigma_band_weight": OptionalSection({"low": real(0.0), "high": POSITIVE, "weight": POSITIVE}),
        "lora": OptionalSection({"rank": integer(1), "alpha": optional(POSITIVE), "dropout": real(0.0, 1.0),
                                 "target_modules": optional(of_type(list, "a list of module names"))}),
    }


def distill_section() -> dict:
    """What train/distill.py reads: the student is the teacher's architecture (no ``model``)."""
    training = {key: check for key, check in _TRAINING.items() if key != "model"}
    return {
        **training,
        "teacher": PATH, "latents": PATH, "segment_frames": integer(1), "lr_warmup_steps": integer(0),
        "ema_decay": real(0.0, 1.0, high_open=True), "num_scales": integer(2),
        "teacher_solver": choice("heun", "euler"), "distance": choice("pseudo_huber", "l2"), "huber_c": POSITIVE,
        "weighting": choice("uniform", "inverse_step"), "student_steps": integer(1),
        "student_sigma_min": optional(POSITIVE),
        "conditioning": {"given_probability": PROBABILITY, "total_probability": PROBABILITY,
                         "continuation_probability": PROBABILITY},
    }


def recipe_schema() -> dict:
    from mslddm.kinds import KINDS

    return {
        "name": TEXT, "base": TEXT, "preset": TEXT, "seed": integer(0), "description": TEXT,
        "model": choice(*KINDS),  # the kinds train/train_msldm.py trains
        "data": {"root": TEXT, "stems": of_type(list, "a list of stem names"), "validation_split": TEXT,
                 "sample_rate": integer(1)},
        "vae": VAE_SECTION,
        "msldm": msldm_section(),
        "distill": distill_section(),  # train/distill.py
    }


def validate(recipe: dict, source: str, schema: Optional[dict] = None, where: str = "") -> None:
    """Raises :class:`RecipeError` at the first key ``schema`` does not know (naming the nearest known one) or the
    first value its check refuses."""
    schema = recipe_schema() if schema is None else schema
    for key, value in recipe.items():
        path = f"{where}{key}"
        if key not in schema:
            near = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.6)
            hint = f" Did you mean '{where}{near[0]}'?" if near else f" Known keys here: {sorted(schema)}."
            raise RecipeError(f"Recipe {source}: unknown key {path!r}.{hint}")
        check = schema[key]
        if isinstance(check, OptionalSection) and value is None:
            continue
        if isinstance(check, dict):
            if not isinstance(value, dict):
                raise RecipeError(f"Recipe {source}: {path!r} must be a section (a mapping), got {value!r}.")
            validate(value, source, check, f"{path}.")
            continue
        complaint = check(value)
        if complaint:
            raise RecipeError(f"Recipe {source}: {path!r} must be {complaint}, got {value!r}.")
