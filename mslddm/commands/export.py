"""Export a diffusion training checkpoint (OUTPUT/checkpoint-N of train/train_msldm.py) as a complete pipeline
folder (vae/, unet/, scheduler/, model_index.json) with a model card recording the recipe, data, steps and
validation numbers; loadable with MultiSourceLatentPipeline.from_pretrained. A LoRA run's checkpoint exports as its
adapter folder (pipe.load_lora_weights, mslddm generate --lora). See docs/training.md and docs/finetune.md."""

from __future__ import annotations

HELP = "export a training checkpoint as a pipeline folder (EMA or raw UNet weights)"


def add_arguments(parser):
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a checkpoint-N folder, or a run folder (its newest complete checkpoint is used)")
    parser.add_argument("--out", required=True, help="pipeline folder to write")
    parser.add_argument("--ema", action="store_true", default=True, help="export the EMA UNet weights")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="export the raw UNet weights")
    parser.add_argument("--posthoc-ema", type=float, default=None, metavar="SIGMA_REL",
                        help="export the post-hoc EMA of this relative length (e.g. 0.05-0.15), built from the run's "
                             "snapshots up to the checkpoint's step (a run trained with msldm.posthoc_ema)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="weight dtype of the export (default: as trained)")
    parser.add_argument("--description", default=None,
                        help="a paragraph for the model card's 'About this model' section")
    parser.add_argument("--push-to-hub", default=None, metavar="OWNER/NAME", help="also upload to this Hub repo")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing pipeline folder at --out (atomically); nothing else is replaced")


def check_target(out, checkpoint, overwrite: bool) -> None:
    """Refuses an ``--out`` whose replacement would lose something: a file, the run or checkpoint being exported
    (or any folder holding checkpoints), a folder of other files, or an existing pipeline without ``--overwrite``."""
    from pathlib import Path

    from mslddm.training.checkpointing import STATE_FILE, list_checkpoints

    out, checkpoint = Path(out), Path(checkpoint)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {str(out)!r} is a file, not a folder: choose a new folder for the pipeline.")
    if not out.is_dir():
        return
    resolved = out.resolve()
    if resolved == checkpoint.resolve() or resolved in checkpoint.resolve().parents or (
            out / STATE_FILE).is_file() or list_checkpoints(out):
        raise SystemExit(f"--out {str(out)!r} is a training run or checkpoint folder: exporting there would delete "
                         "its checkpoints. Choose a new folder, e.g. RUN/pipeline.")
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return
    held = ("a pipeline" if (out / "model_index.json").is_file() else
            "a LoRA adapter" if (out / "pytorch_lora_weights.safetensors").is_file() else None)
    if held:
        if not overwrite:
            raise SystemExit(f"--out {str(out)!r} already holds {held}: pass --overwrite to replace it, or "
                             "choose a new folder.")
        return
    raise SystemExit(f"--out {str(out)!r} is a folder of other files ({', '.join(sorted(entries)[:3])}"
                     f"{', ...' if len(entries) > 3 else ''}), not a pipeline: choose a new or empty folder.")


def run(args) -> int:
    import sys
    from pathlib import Path

    from mslddm.training.checkpointing import STATE_FILE, resolve_checkpoint
    from mslddm.training.lock import FolderInUseError, folder_lock

    checkpoint = Path(args.checkpoint)
    try:  # a checkpoint must pass its manifest; a run folder gives its newest checkpoint that does
        if (checkpoint / STATE_FILE).is_file():
            resolve_checkpoint(checkpoint.parent, str(checkpoint))
        else:
            checkpoint = resolve_checkpoint(checkpoint, "latest", log=lambda line: print(line, file=sys.stderr))
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if checkpoint is None:
        raise SystemExit(f"{args.checkpoint} is neither a complete checkpoint folder (no {STATE_FILE}) nor a run "
                         "folder holding checkpoint-N folders.")
    check_target(args.out, checkpoint, args.overwrite)  # before the lock: a refused --out is left as it was
    try:
        with folder_lock(args.out, "export", beside=True):  # two exports to one folder: the second stops
            check_target(args.out, checkpoint, args.overwrite)  # again, now that no other export can change it
            _export(checkpoint, args)
    except FolderInUseError as error:
        raise SystemExit(str(error)) from None
    print(f"Exported {checkpoint} to {args.out}")
    return 0


def _export(checkpoint, args) -> None:
    """The export itself, with a full or read-only disk said in one sentence."""
    from mslddm.training.checkpointing import export_adapter, export_pipeline
    from mslddm.training.storage import free_bytes, human_bytes, storage_problem

    try:
        if (checkpoint / "lora").is_dir() and args.posthoc_ema is not None:
            raise ValueError(f"{checkpoint} holds a LoRA adapter: --posthoc-ema averages a full run's UNet weights.")
        if (checkpoint / "lora").is_dir():  # a LoRA run: its adapter (float16 unless --dtype says otherwise)
            export_adapter(checkpoint, args.out, dtype=args.dtype or "float16", push_to_hub=args.push_to_hub,
                           description=args.description)
            return
        export_pipeline(checkpoint, args.out, ema=args.ema, dtype=args.dtype, push_to_hub=args.push_to_hub,
                        description=args.description, posthoc_ema=args.posthoc_ema)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    except Exception as error:  # a full or read-only disk, in whichever shape the writer raises it
        why = storage_problem(error)
        if why is None:
            raise
        raise SystemExit(f"Could not write the pipeline {args.out}: {why} ({human_bytes(free_bytes(args.out))} "
                         "free once the partial copy was removed). Nothing was replaced: an existing folder there "
                         "is unchanged.") from None
