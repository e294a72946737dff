"""Checkpoints shared by both training scripts: ``OUTPUT/checkpoint-N`` folders written atomically, rotated,
found again for ``--resume_from_checkpoint latest``, and exported as complete pipeline folders.

A checkpoint folder holds ``accelerator.save_state`` files (models, optimizers, LR schedulers, EMA, RNG states),
diffusers-format model folders (``vae/``, and for diffusion ``unet/``, ``unet_ema/``, ``scheduler/``) and
``training_state.json`` (step, recipe, data, validation numbers, stem names). It is written under
``.checkpoint-N.partial`` and renamed when complete: a process killed while saving leaves only a hidden
partial folder, which resume never picks and the next save of that step replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional

from mslddm.files import durable_replace, file_records, records_problem

STATE_FILE = "training_state.json"
MANIFEST_FILE = "manifest.json"  # every file of a checkpoint with its size and sha256, written last
_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints of ``output_dir``, oldest (lowest step) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _NAME.match(p.name)) and p.is_dir() and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def write_manifest(folder: Path) -> None:
    """Records every file of ``folder`` (size, sha256) in its manifest, so that a damaged copy can be told apart."""
    _write_json(Path(folder) / MANIFEST_FILE, {"files": file_records(folder, lambda p: p.name != MANIFEST_FILE)})


def checkpoint_problem(folder: Path) -> Optional[str]:
    """Why the checkpoint ``folder`` cannot be trusted, or None: its state file missing or unreadable, no manifest
    (the manifest is written last, so a checkpoint without one was never finished, or was altered), or a file
    missing, of another size, or with another sha256 than the manifest records."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        return f"{STATE_FILE} is missing (the checkpoint was never completed)"
    try:
        read_state(folder)
    except (OSError, ValueError) as error:
        return f"{STATE_FILE} is unreadable ({error})"
    if not (folder / MANIFEST_FILE).is_file():
        return f"{MANIFEST_FILE} is missing (written last: the checkpoint was never finished, or was altered)"
    return records_problem(folder, MANIFEST_FILE)


def checkpoint_folders(output_dir) -> list[Path]:
    """Every ``checkpoint-N`` folder of ``output_dir``, complete or not, lowest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir, resume: Optional[str], log=None) -> Optional[Path]:
    """``None`` or ``"none"`` -> None (start afresh); ``"latest"`` -> the newest checkpoint that passes
    :func:`checkpoint_problem`, each one skipped named with its reason through ``log``; None if the folder holds no
    checkpoint at all, and a ``ValueError`` if it holds only damaged ones (starting over would overwrite them: that
    takes an explicit ``none``); else the path, which must pass the same check."""
    if not resume or str(resume).lower() == "none":
        return None
    if resume == "latest":
        found = checkpoint_folders(output_dir)
        problems = []
        for checkpoint in reversed(found):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                return checkpoint
            problems.append(f"{checkpoint.name}: {problem}")
            if log is not None:
                log(f"Skipping damaged checkpoint {checkpoint}: {problem}.")
        if found:
            raise ValueError(f"Every checkpoint in {output_dir} is damaged or incomplete ({'; '.join(problems[:3])}"
                             f"{'; ...' if len(problems) > 3 else ''}): nothing to resume from. Pass "
                             "--resume_from_checkpoint none to start over in this folder (new checkpoints replace "
                             "the damaged ones of the same step), or choose another --output_dir.")
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume!r}: no {STATE_FILE} there; not a complete "
                                "checkpoint folder.")
    problem = checkpoint_problem(path)
    if problem:
        raise ValueError(f"--resume_from_checkpoint {resume!r} is damaged: {problem}; resume from another one "
                         "(or 'latest', which skips damaged checkpoints).")
    return path


def read_state(checkpoint) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def fsync_tree(folder: Path) -> None:
    """Flushes every file under ``folder`` (and the folders themselves) to disk: after a machine crash a renamed
    folder then never holds empty or partly written files."""
    for path in sorted(Path(folder).rglob("*"), key=lambda p: len(p.parts), reverse=True) + [Path(folder)]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_folder(tmp: Path, final: Path) -> None:
    """Puts the complete folder ``tmp`` at ``final`` (fsync'd first): at any moment ``final`` is the old folder, the
    new one, or absent (between two renames), never a half-written one."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(final) -> Iterator[Path]:
    """Write a folder under a temporary name next to ``final``; it replaces ``final`` only when the block ends
    without an exception (an interrupted export leaves the previous one, or none, never a half one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, final)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    durable_replace(tmp, path)


def save_checkpoint(accelerator, output_dir, step: int, state: dict,
                    save_models: Callable[[Path], None], total_limit: Optional[int] = None) -> Path:
    """Writes ``output_dir/checkpoint-{step}`` atomically on the main process (every process calls this), then
    keeps the newest ``total_limit`` checkpoints."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_models(tmp)
            _write_json(tmp / STATE_FILE, {**state, "step": int(step)})
            write_manifest(tmp)
            replace_folder(tmp, final)
    except Exception as error:  # a full or read-only disk: remove the partial folder, keep the last good one
        from mslddm.training.storage import storage_error

        shutil.rmtree(tmp, ignore_errors=True)
        found = list_checkpoints(output_dir)
        named = storage_error(error, f"checkpoint-{step}", output_dir, found[-1] if found else None)
        if named is None:
            raise
        raise named from None
    if accelerator.is_main_process:
        if total_limit:
            for old in list_checkpoints(output_dir)[:-int(total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card_sections(state: dict, weights: str) -> dict[str, str]:
    """Model card sections recording how the weights were made: recipe, data, steps, validation numbers."""
    import yaml

    sections = {}
    description = state.get("description") or (state.get("recipe") or {}).get("description")
    if description:
        sections["About this model"] = description
    distilled = state.get("distillation") or {}
    what = "Consistency distillation steps" if distilled else "Diffusion training steps"
    lines = [f"- Weights: {weights}.", f"- {what}: {state.get('step')}."]
    if state.get("init_from"):
        lines.append(f"- Continued from the pipeline `{state['init_from']}`.")
    timing = state.get("timing") or {}
    if timing.get("train_minutes_total") is not None:
        lines.append(f"- Training time: {timing['train_minutes_total']} minutes (this run's last session: "
                     f"{timing.get('run_steps')} steps at {timing.get('run_steps_per_second')} steps/s).")
    vae = state.get("vae_training") or {}
    if vae:
        lines.append(f"- SourceVAE training steps: {vae.get('step')}.")
    unet_run = ("Distillation", "distill") if distilled else ("Diffusion", "msldm")
    runs = ((unet_run[0], state.get("recipe"), unet_run[1]), ("SourceVAE", vae.get("recipe"), "vae"))
    for title, recipe, section in runs:
        if recipe:
            shown = {k: recipe[k] for k in ("name", "model", "preset", "seed", "data", section) if k in recipe}
            lines.append(f"- {title} recipe `{recipe.get('name')}` (with its overrides):\n\n```yaml\n"
                         f"{yaml.safe_dump(shown, sort_keys=False, default_flow_style=None).strip()}\n```")
    sections["Training"] = "\n".join(lines)
    if distilled:
        sections["Distillation"] = "\n".join(f"- {k}: {_fmt(v)}" for k, v in distilled.items())
    data = state.get("data") or {}
    if data:
        sections["Training data"] = "\n".join(f"- {k}: {_fmt(v)}" for k, v in data.items())
    rows = []
    for who, metrics in (("diffusion", state.get("validation") or {}), ("SourceVAE", vae.get("validation") or {})):
        rows += [f"| {who} | {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    if rows:
        sections["Validation (measured at the end of training)"] = (
            "| model | metric | value |\n|---|---|---|\n" + "\n".join(rows))
    return sections


def export_adapter(checkpoint, out, dtype: str | None = "float16", push_to_hub: str | None = None,
                   description: str | None = None) -> Path:
    """Builds the LoRA adapter folder ``out`` from a LoRA run's checkpoint (its ``lora/``): the weights in ``dtype``
    (default float16: half the size, far below the adapter's own precision), ``adapter_config.json`` and a model
    card naming the base pipeline, the data and the training numbers; optionally uploads it."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mslddm.hub import adapter_card, push_folder_to_hub
    from mslddm.pipelines.lora import ADAPTER_CONFIG_NAME, LORA_WEIGHT_NAME

    checkpoint, source = Path(checkpoint), Path(checkpoint) / "lora"
    state = read_state(checkpoint)
    if description:
        state = {**state, "description": description}
    with safe_open(str(source / LORA_WEIGHT_NAME), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    if dtype:
        tensors = {k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}
    config = {**json.loads((source / ADAPTER_CONFIG_NAME).read_text()),
              "dtype": str(next(iter(tensors.values())).dtype).replace("torch.", "")}
    with atomic_folder(out) as tmp:
        save_file(tensors, str(tmp / LORA_WEIGHT_NAME), metadata=header)
        (tmp / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
        size = (tmp / LORA_WEIGHT_NAME).stat().st_size
        sections = model_card_sections(state, f"LoRA adapter (rank {config.get('r')}) of the UNet")
        (tmp / "README.md").write_text(adapter_card(base_pipeline=config.get("base_pipeline"), config=config,
                                                    size_bytes=size, extra_sections=sections))
    if push_to_hub:
        push_folder_to_hub(out, push_to_hub, commit_message="Upload mslddm LoRA adapter")
    return Path(out)


def _posthoc_unet(checkpoint: Path, state: dict, sigma_rel: float, dtype):
    """The checkpoint's UNet with the post-hoc EMA of ``sigma_rel`` (the run's snapshots up to its step) loaded in
    float32, then cast to ``dtype``; and the model card's phrase for it."""
    import torch

    from mslddm.models import load_unet_folder
    from mslddm.training.posthoc_ema import SNAPSHOT_FOLDER, reconstruct

    step = int(state.get("step", checkpoint.name.rpartition("-")[2]))
    weights, report = reconstruct(checkpoint.parent / SNAPSHOT_FOLDER, sigma_rel, step=step)
    if not report["snapshots"][-1].startswith(f"step-{step:08d}-"):  # weights after the last snapshot are unknown
        raise ValueError(f"The run's post-hoc EMA snapshots end before {checkpoint.name} (last: "
                         f"{report['snapshots'][-1]}): export a checkpoint at a snapshot step.")
    unet = load_unet_folder(checkpoint / "unet")
    names = dict(unet.named_parameters())
    if set(weights) != {n for n, p in names.items() if p.requires_grad}:
        raise ValueError(f"The post-hoc EMA snapshots of {checkpoint.parent} do not hold this UNet's parameters.")
    with torch.no_grad():
        for name, tensor in weights.items():
            names[name].copy_(tensor)
    if dtype is not None:
        unet = unet.to(dtype)
    phrase = (f"post-hoc EMA (EDM2) of the UNet weights, sigma_rel {sigma_rel:g} at step {step}, from "
              f"{len(report['snapshots'])} snapshots")
    return unet, phrase


def export_pipeline(checkpoint, out, ema: bool = True, dtype: Optional[str] = None, push_to_hub: Optional[str] = None,
                    description: Optional[str] = None, posthoc_ema: Optional[float] = None):
    """Builds the pipeline folder ``out`` from a diffusion checkpoint (``unet_ema/`` when ``ema`` and present, else
    ``unet/``; with ``posthoc_ema`` the post-hoc EMA of that ``sigma_rel`` from the run's snapshots up to the
    checkpoint's step), with a model card from its ``training_state.json``; optionally uploads it. Returns the
    pipeline."""
    import torch

    from mslddm import EDMScheduler
    from mslddm.kinds import get_kind
    from mslddm.models import load_unet_folder, load_vae_folder

    checkpoint = Path(checkpoint)
    state = read_state(checkpoint)
    if not (checkpoint / "unet").is_dir():
        raise ValueError(f"{checkpoint} is a {state.get('kind', 'SourceVAE')} checkpoint without a UNet; export "
                         "needs a diffusion checkpoint (train/train_msldm.py). Its vae/ folder is a SourceVAE folder.")
    unet_dir = checkpoint / ("unet_ema" if ema and (checkpoint / "unet_ema").is_dir() else "unet")
    weights = "EMA of the UNet weights" if unet_dir.name == "unet_ema" else "raw (non-EMA) UNet weights"
    weights_dtype = getattr(torch, dtype) if dtype else None
    kind = get_kind(state.get("kind"))  # checkpoints written before kinds were recorded are MSLDM's
    vae = load_vae_folder(checkpoint / "vae", dtype=weights_dtype) if kind.uses_vae else None
    if posthoc_ema is not None:
        unet, weights = _posthoc_unet(checkpoint, state, posthoc_ema, weights_dtype)
    else:
        unet = load_unet_folder(unet_dir, dtype=weights_dtype)
    pipe = kind.build_pipeline(vae=vae, unet=unet,
                               scheduler=EDMScheduler.from_pretrained(checkpoint / "scheduler"),
                               stem_names=state.get("stem_names"), mixture_of=state.get("mixture_of"),
                               stem_levels_dbfs=state.get("stem_levels_dbfs"))
    if description:
        state = {**state, "description": description}
    sections = model_card_sections(state, weights)
    with atomic_folder(out) as tmp:
        pipe.save_pretrained(tmp, model_card_sections=sections)
    if push_to_hub:
        pipe.push_to_hub(push_to_hub, model_card_sections=sections)
    return pipe
