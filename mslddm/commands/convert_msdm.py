"""Convert one of MSDM's released checkpoints (the multi-source diffusion model on the four stems' waveforms,
Mariani et al., github.com/gladia-research-group/multi-source-diffusion-models; a PyTorch Lightning file) into
a pipeline folder that `MultiSourceLatentPipeline.from_pretrained`, `mslddm generate` and `mslddm separate` load.
Only tensors are read from the file; nothing it pickles is imported or run."""

from __future__ import annotations

from pathlib import Path

HELP = "convert MSDM's released Lightning checkpoint into a waveform pipeline folder"


def add_arguments(parser):
    parser.add_argument("checkpoint", metavar="FILE", help="the MSDM checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, metavar="DIR", help="pipeline folder to write")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="precision of the saved weights")
    parser.add_argument("--unet-config", default=None, metavar="JSON",
                        help="UNet constructor arguments (a JSON file or string) over those read from the weights "
                             "and hyper-parameters; needed only for architectures other than MSDM's")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out folder")


def run(args) -> int:
    from mslddm.commands.convert_original import _json_arg
    from mslddm.conversion import CheckpointError, convert_msdm

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise SystemExit(f"--out {str(out)!r} exists and is not empty; pass --force to write into it.")
    try:
        result = convert_msdm(args.checkpoint, out, dtype=args.dtype,
                              unet_config=_json_arg(args.unet_config, "--unet-config"))
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    count = sum(p.numel() for p in result.pipeline.unet.parameters())
    print(f"UNet: {result.variant or 'custom architecture'}, {count:,} parameters")
    assumed = sorted(k for k, s in result.unet_config_sources.items() if s == "reference default")
    if assumed:
        print("assumed (not stored in the file; the reference defaults): "
              + ", ".join(f"{k}={result.unet_config[k]}" for k in assumed))
    if result.inert_globals:
        print(f"ignored pickled objects (not imported): {', '.join(result.inert_globals)}")
    print(f"wrote {out} (MSDM, stems {', '.join(result.pipeline.stem_names)}, {args.dtype})")
    return 0
