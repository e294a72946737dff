"""Export a diffusion training checkpoint (OUTPUT/checkpoint-N of train/train_msldm.py) as a complete pipeline
folder (vae/, unet/, scheduler/, model_index.json) with a model card recording the recipe, data, steps and
validation numbers; loadable with MultiSourceLatentPipeline.from_pretrained. See docs/training.md."""

from __future__ import annotations

HELP = "export a training checkpoint as a pipeline folder (EMA or raw UNet weights)"


def add_arguments(parser):
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a checkpoint-N folder, or a run folder (its newest complete checkpoint is used)")
    parser.add_argument("--out", required=True, help="pipeline folder to write")
    parser.add_argument("--ema", action="store_true", default=True, help="export the EMA UNet weights")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="export the raw UNet weights")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="weight dtype of the export (default: as trained)")
    parser.add_argument("--description", default=None,
                        help="a paragraph for the model card's 'About this model' section")
    parser.add_argument("--push-to-hub", default=None, metavar="OWNER/NAME", help="also upload to this Hub repo")


def run(args) -> int:
    from pathlib import Path

    from mslddm.training.checkpointing import STATE_FILE, export_pipeline, list_checkpoints

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / STATE_FILE).is_file():
        found = list_checkpoints(checkpoint)
        if not found:
            raise SystemExit(f"{checkpoint} is neither a complete checkpoint folder (no {STATE_FILE}) nor a run "
                             "folder holding checkpoint-N folders.")
        checkpoint = found[-1]
    try:
        export_pipeline(checkpoint, args.out, ema=args.ema, dtype=args.dtype, push_to_hub=args.push_to_hub,
                        description=args.description)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    print(f"Exported {checkpoint} to {args.out}")
    return 0
