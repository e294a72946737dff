"""What both training scripts share: command-line options, the Accelerator, TensorBoard audio, the resume step."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from mslddm.training.checkpointing import (export_adapter, export_pipeline, list_checkpoints, read_state,
                                           resolve_checkpoint, save_checkpoint)
from mslddm.training.lock import FolderInUseError, folder_lock
from mslddm.training.recipe_schema import RecipeError
from mslddm.training.storage import storage_problem
from mslddm.training.recipes import load_recipe

logger = logging.getLogger("mslddm.training")
_held = contextlib.ExitStack()  # the run folder's lock, taken by make_accelerator, released by run_main
_run_folder: list = []  # the run's --output_dir, for run_main's storage sentence


def common_arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="recipe name (train/recipes/NAME.yaml) or path to a recipe file")
    p.add_argument("--output_dir", required=True, help="run folder: checkpoint-N folders, logs/, the export")
    p.add_argument("--data_root", default=None, help="dataset root (default: the recipe's data.root)")
    p.add_argument("--max_steps", type=int, default=None, help="total optimizer steps (default: the recipe's)")
    p.add_argument("--resume_from_checkpoint", default=None,
                   help="'latest' (the newest checkpoint of --output_dir that passes its manifest, or a fresh start "
                        "if it holds none; damaged ones are named and skipped), 'none' (start afresh), or a path")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value (parsed as YAML), e.g. --set vae.batch_size=4; repeatable")
    p.add_argument("--init_from", default=None, metavar="PIPELINE",
                   help="start from the weights of a pipeline folder (or Hub id) instead of a random init; fresh "
                        "optimizer; ignored when resuming from a checkpoint")
    p.add_argument("--time_budget_minutes", type=float, default=None,
                   help="stop (checkpoint, validate, export) after this many wall-clock minutes of training, "
                        "even before --max_steps")
    p.add_argument("--push_to_hub", action="store_true", help="upload the final export to the Hub")
    p.add_argument("--hub_model_id", default=None, help="Hub repo id for --push_to_hub (owner/name)")
    return p


def load_run_recipe(args, section: str) -> tuple[dict, dict]:
    """The recipe with overrides, and its ``section`` (``vae`` or ``msldm``) with ``--max_steps`` applied."""
    recipe = load_recipe(args.config, args.set)
    if section not in recipe:
        raise ValueError(f"Recipe {args.config!r} has no {section!r} section.")
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise RecipeError(f"--max_steps must be at least 1, got {args.max_steps}.")
        recipe[section]["max_steps"] = int(args.max_steps)
    if args.data_root is not None:
        recipe.setdefault("data", {})["root"] = args.data_root
    return recipe, recipe[section]


def make_accelerator(args, cfg: dict):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    # Several processes on a machine without GPUs (accelerate launch --multi_gpu there): accelerate only sets up
    # gloo DDP (MULTI_CPU) when told it runs on CPU; otherwise every process would train alone as rank 0.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_cpu,
        mixed_precision=cfg.get("mixed_precision") or "no",  # YAML reads a bare `no` as False
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.is_main_process:  # one run per folder, held until run_main returns (or the process dies)
        from mslddm.training.storage import check_output_dir

        check_output_dir(args.output_dir, 0)  # a folder that cannot be made or written: one sentence, not a lock's
        _held.enter_context(folder_lock(args.output_dir, "training", log=logger.warning))
    _run_folder[:] = [args.output_dir]
    return accelerator


def resume_step(accelerator, args) -> tuple[int, Optional[Path], dict]:
    """Loads the state of the checkpoint asked for (if any): ``(step to start at, checkpoint, its state)``."""
    checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint, log=logger.warning)
    if checkpoint is None:
        if args.resume_from_checkpoint:
            logger.info("No checkpoint in %s: starting from scratch.", args.output_dir)
        return 0, None, {}
    accelerator.load_state(str(checkpoint))
    state = read_state(checkpoint)
    logger.info("Resumed from %s at step %d.", checkpoint, state["step"])
    return int(state["step"]), checkpoint, state


class TimeBudget:
    """Wall-clock budget of a run: ``expired()`` once ``minutes`` have passed since it was made (never for None).
    All processes agree (the main process's clock decides). ``timing(step)`` is what ``training_state.json``
    records: minutes over all resumed runs (``resumed`` is the state resumed from), this run's steps and speed."""

    def __init__(self, accelerator, minutes: Optional[float], start_step: int = 0, resumed: Optional[dict] = None):
        import time

        self.accelerator, self.minutes, self.start = accelerator, minutes, time.monotonic()
        self.start_step = start_step
        self.earlier_minutes = float(((resumed or {}).get("timing") or {}).get("train_minutes_total", 0.0))

    def timing(self, step: int) -> dict:
        minutes = self.elapsed_minutes()
        return {"train_minutes_total": round(self.earlier_minutes + minutes, 2), "run_minutes": round(minutes, 2),
                "run_steps": step - self.start_step,
                "run_steps_per_second": round((step - self.start_step) / max(minutes * 60, 1e-9), 4)}

    def progress(self, step: int, max_steps: int) -> str:
        """``step N/M, S s/step, ETA m min (max_steps or time budget)``: where the run is and when it ends."""
        minutes = self.elapsed_minutes()
        per_step = minutes * 60 / max(step - self.start_step, 1)
        left, until = (max_steps - step) * per_step / 60, "max_steps"
        if self.minutes is not None and self.minutes - minutes < left:
            left, until = max(self.minutes - minutes, 0.0), "time budget"
        return f"step {step}/{max_steps}, {per_step:.3g} s/step, ETA {left:.1f} min ({until})"

    def elapsed_minutes(self) -> float:
        import time

        return (time.monotonic() - self.start) / 60

    def expired(self) -> bool:
        if self.minutes is None:
            return False
        flag = torch.tensor([float(self.elapsed_minutes() >= self.minutes)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            flag = broadcast(flag, 0)
        return bool(flag.item())


def stop_if_not_finite(accelerator, step: int, output_dir, **values) -> None:
    """Raises ``FloatingPointError`` on every process together when any process has a NaN or infinite value among
    ``values`` (losses, gradient norms), before the optimizer step and the EMA update touch the weights: the run
    stops with the weights of the last good checkpoint on disk, and says which one."""
    bad = [name for name, v in values.items() if not torch.isfinite(torch.as_tensor(v, dtype=torch.float32)).all()]
    flag = torch.tensor([float(bool(bad))], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if flag.item() == 0:
        return
    found = list_checkpoints(output_dir)
    last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
    where = f" ({', '.join(bad)} on process {accelerator.process_index})" if bad else " on another process"
    raise FloatingPointError(
        f"Non-finite training values at step {step + 1}{where}: stopping before the optimizer step, so no weight "
        f"was changed; {last} (resume with --resume_from_checkpoint latest, perhaps with a lower learning rate "
        "or mixed_precision no).")


def tensorboard(accelerator):
    """The TensorBoard ``SummaryWriter`` on the main process, else None."""
    if not accelerator.is_main_process:
        return None
    return accelerator.get_tracker("tensorboard", unwrap=True)


def log_audio(writer, tag: str, audio: torch.Tensor, step: int, sample_rate: int) -> None:
    """Logs mono audio, peak-limited to [-1, 1] so that TensorBoard plays it without clipping."""
    if writer is None:
        return
    audio = audio.detach().float().cpu().reshape(-1)
    peak = audio.abs().max().clamp_min(1.0)
    writer.add_audio(tag, (audio / peak)[None], step, sample_rate=sample_rate)


def clip_grad(accelerator, parameters, max_norm: Optional[float]) -> float:
    """The gradients' total norm, clipped to ``max_norm``; with no clipping (``None``) the norm is still measured,
    so that it is logged and a NaN or infinite gradient still stops the run."""
    return float(accelerator.clip_grad_norm_(parameters, max_norm or float("inf")))


def lr_multiplier(step: int, warmup_steps: int = 0, decay_start: Optional[int] = None, decay_steps: int = 0,
                  final_ratio: float = 0.1) -> float:
    """The learning-rate factor at ``step``: linear warm-up over ``warmup_steps``, then constant; from
    ``decay_start`` on (when set) linear decay to ``final_ratio`` over ``decay_steps``, then ``final_ratio``.
    A function of the global step only, so that a resumed run (or one continued with a decay added) follows it."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if decay_start is not None and step >= decay_start:
        progress = min(1.0, (step - decay_start) / decay_steps) if decay_steps else 1.0
        factor *= 1.0 - (1.0 - final_ratio) * progress
    return factor


DATA_REPORT_FILE = "data_report.json"


def write_data_report(accelerator, output_dir, **sections) -> None:
    """``OUTPUT/data_report.json``: every track a run skipped, padded, trimmed or found incomplete, and the
    validation segments it used and refused, by name (the log has a summary line per split)."""
    if not accelerator.is_main_process:
        return
    import json

    path = Path(output_dir) / DATA_REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sections, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    logger.info("Data report: %s", path)


def run_main(main, argv=None) -> None:
    """Runs a training script's ``main``: a bad recipe, missing or unusable data, or a storage failure ends it with
    one sentence on stderr and exit code 1 instead of a traceback (``MSLDDM_TRACEBACK=1`` shows the traceback).

    Storage failures are caught wherever a run writes (checkpoints, TensorBoard's writer thread, logs, data reports,
    the export): a full, read-only or failing disk gives the same sentence, naming the last good checkpoint."""
    import sys
    import threading

    from mslddm.training.storage import StorageError

    default_hook, thread_failures = threading.excepthook, []

    def quiet_storage_failures(hook_args):  # e.g. TensorBoard's event writer: told once, by the main thread
        if storage_problem(hook_args.exc_value) is None:
            default_hook(hook_args)
        else:
            thread_failures.append(hook_args.exc_value)

    threading.excepthook = quiet_storage_failures
    try:
        main(argv)
        if thread_failures:
            raise thread_failures[0]
    except (ValueError, FileNotFoundError, StorageError, FolderInUseError) as error:
        if os.environ.get("MSLDDM_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Exception as error:
        failure = error if storage_problem(error) else next(iter(thread_failures), None)
        if failure is None or os.environ.get("MSLDDM_TRACEBACK"):
            raise
        print(f"error: {_storage_sentence(failure)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        threading.excepthook = default_hook
        _held.close()


def validate_and_checkpoint(t, step: int, last: bool, budget: TimeBudget, validation, run_validation):
    """The end of a training step every script shares: ``run_validation(t, step)`` every ``validate_every`` steps
    and at the last (main process; the others wait), a checkpoint every ``checkpointing_steps`` and at the last, with
    ``t.state(validation, timing)``; returns the latest validation."""
    accelerator, cfg = t.accelerator, t.cfg
    if step % int(cfg.get("validate_every", 500)) == 0 or last:
        if accelerator.is_main_process:
            validation = run_validation(t, step)
        accelerator.wait_for_everyone()
    if step % int(cfg.get("checkpointing_steps", 500)) == 0 or last:
        save_checkpoint(accelerator, t.args.output_dir, step, t.state(validation, budget.timing(step)),
                        t.save_models, cfg.get("checkpoints_total_limit"))
    return validation


def export_run(args, accelerator, description: Optional[str] = None) -> None:
    """``OUTPUT/pipeline`` from the run's newest checkpoint (EMA weights), with its model card (``description``
    opens it), or for a LoRA run ``OUTPUT/lora`` (the adapter), and the Hub upload asked for; main process only."""
    if not accelerator.is_main_process:
        return
    checkpoints = list_checkpoints(args.output_dir)
    if checkpoints:
        repo = args.hub_model_id if args.push_to_hub else None
        if args.push_to_hub and not repo:
            raise ValueError("--push_to_hub needs --hub_model_id owner/name.")
        if (checkpoints[-1] / "lora").is_dir():
            out = Path(args.output_dir) / "lora"
            export_adapter(checkpoints[-1], out, push_to_hub=repo)
            logger.info("Exported the LoRA adapter to %s (load it with pipe.load_lora_weights, or mslddm "
                        "generate --lora)", out)
            return
        out = Path(args.output_dir) / "pipeline"
        export_pipeline(checkpoints[-1], out, ema=True, push_to_hub=repo, description=description)
        logger.info("Exported the pipeline to %s", out)


def _storage_sentence(error: BaseException) -> str:
    """The storage failure of a run in one sentence, with its last good checkpoint."""
    from mslddm.training.storage import storage_error

    folder = _run_folder[0] if _run_folder else "."
    try:
        last_good = resolve_checkpoint(folder, "latest")
    except (ValueError, OSError):
        last_good = None
    return str(storage_error(error, "the run's files", folder, last_good))


def check_storage(accelerator, output_dir, modules, copies: float) -> None:
    """Before the first step: the output folder is writable and has room for one checkpoint (main process)."""
    from mslddm.training.storage import check_output_dir, checkpoint_bytes

    if accelerator.is_main_process:
        check_output_dir(output_dir, checkpoint_bytes(modules, copies))
