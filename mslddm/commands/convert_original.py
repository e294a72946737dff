"""Convert the paper's released checkpoints (the SourceVAE file ``sourcevae_ckpt`` and ``msldm.ckpt`` or
``msldm_large.ckpt``, from the Box share linked in the README of github.com/XZWY/MSLDM) into a pipeline folder
that ``MultiSourceLatentPipeline.from_pretrained`` and ``mslddm generate --pipeline`` load. Only tensors are read
from the files; nothing they pickle is imported or run."""

from __future__ import annotations

import json
from pathlib import Path

HELP = "convert the authors' released SourceVAE + MSLDM / MSLDM-Large checkpoints into a pipeline folder"


def add_arguments(parser):
    parser.add_argument("--vae", required=True, metavar="FILE", help="the SourceVAE checkpoint (sourcevae_ckpt)")
    parser.add_argument("--unet", required=True, metavar="FILE", help="msldm.ckpt or msldm_large.ckpt")
    parser.add_argument("--out", required=True, metavar="DIR", help="pipeline folder to write")
    parser.add_argument("--variant", choices=("msldm", "msldm-large"), default=None,
                        help="the UNet's architecture (default: detected from the weights)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="precision of the saved weights")
    parser.add_argument("--vae-config", default=None, metavar="JSON",
                        help="SourceVAE constructor arguments (a JSON file or string) over those read from the weights")
    parser.add_argument("--unet-config", default=None, metavar="JSON",
                        help="UNet constructor arguments (a JSON file or string) over those read from the weights "
                             "and hyper-parameters; needed only for architectures other than the paper's")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out folder")


def _json_arg(value, flag):
    if value is None:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"{flag} must be a JSON object or a file holding one; got {value!r} ({error}).")
    if not isinstance(config, dict):
        raise SystemExit(f"{flag} must be a JSON object, got {type(config).__name__}.")
    return config


def run(args) -> int:
    from mslddm.conversion import CheckpointError, convert_original

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise SystemExit(f"--out {str(out)!r} exists and is not empty; pass --force to write into it.")
    try:
        result = convert_original(
            args.vae, args.unet, out, variant=args.variant, dtype=args.dtype,
            vae_config=_json_arg(args.vae_config, "--vae-config"),
            unet_config=_json_arg(args.unet_config, "--unet-config"),
        )
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    pipe = result.pipeline
    count = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("vae", "unet")}
    print(f"UNet: {result.variant or 'custom architecture'}, {count['unet']:,} parameters; "
          f"SourceVAE: {count['vae']:,} parameters, {pipe.latent_channels} latent channels")
    assumed = sorted(k for k, s in result.unet_config_sources.items() if s == "reference default")
    if assumed:
        values = ", ".join(f"{k}={result.unet_config[k]}" for k in assumed)
        print(f"assumed (not stored in the file; the authors' configs use these): {values}")
    if result.inert_globals:
        print(f"ignored pickled objects (not imported): {', '.join(result.inert_globals)}")
    print(f"wrote {out} (stems {', '.join(pipe.stem_names)}, {pipe.sample_rate} Hz, {args.dtype})")
    return 0
