"""Encode every stem of a multi-stem dataset with a SourceVAE (posterior means) into OUT/SPLIT/TRACK.safetensors
for latent-diffusion training. DATA is a stem-folder dataset (e.g. from `mslddm make-dataset`) or an original
Slakh2100 copy. Resumable (finished tracks are skipped). Several GPUs:
`accelerate launch -m mslddm encode-latents DATA --vae PATH OUT`. See docs/data.md."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

HELP = "pre-encode a multi-stem dataset into SourceVAE latents"
SPLITS = ("train", "validation", "test")


def add_arguments(parser):
    parser.add_argument("data", metavar="DATA", help="dataset folder (stem folders or Slakh2100)")
    parser.add_argument("--vae", required=True, metavar="PATH",
                        help="a pipeline folder (its vae/ is used), a SourceVAE folder, or a Hub pipeline repo id")
    parser.add_argument("out", metavar="OUT", help="output folder (an existing one is resumed)")
    parser.add_argument("--split", action="append", default=None,
                        help="split sub-folder to encode; repeat for several; None means every one of "
                             "train, validation, test found in DATA, else DATA itself")
    parser.add_argument("--stems", default=None,
                        help="comma-separated stem names, in the model's order; None means the pipeline's "
                             "stem_names, else bass,drums,guitar,piano")
    parser.add_argument("--mix", action="store_true", default=None,
                        help="encode each track's mixture (the sum of --stems) as one source named 'mix': the "
                             "MixLDM baseline's latents; default: on when the VAE was trained on mixtures "
                             "(train_vae.py with vae.source mix records it)")
    parser.add_argument("--layout", choices=("auto", "stems", "slakh"), default="auto", help="dataset layout")
    parser.add_argument("--on-length-mismatch", choices=("pad", "trim", "skip"), default="pad",
                        help="tracks whose stems differ in length: pad with silence, trim, or skip")
    parser.add_argument("--skip-failed", action="store_true",
                        help="finish when some tracks cannot be read: they are left out, named in OUT/latents.json "
                             "(failed_tracks) and the exit code is 0 (default: exit 1, so that a run retries them)")
    parser.add_argument("--batch-size", type=int, default=4, help="stem signals encoded per VAE call")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:1, ...; auto: accelerate's device when installed, else cuda if any")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="precision of the VAE's computation")
    parser.add_argument("--save-dtype", choices=("float32", "float16"), default="float32",
                        help="precision of the saved latents (float16 halves the disk)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _close(found, measured) -> bool:
    import torch

    if not isinstance(found, list) or len(found) != len(measured):
        return False
    return torch.allclose(torch.tensor(found), torch.tensor(measured), rtol=1e-3, atol=1e-4)


def _default_stems(vae_path: str) -> list[str]:
    index = Path(vae_path) / "model_index.json"
    if index.is_file():
        config = json.loads(index.read_text())
        names = config.get("mixture_of") or config.get("stem_names")  # a MixLDM pipeline: the stems it mixes
        if names:
            return list(names)
    from mslddm.stems import DEFAULT_STEMS

    return list(DEFAULT_STEMS)


def _trained_on_mixtures(vae_path: str) -> bool:
    """Whether train_vae.py recorded that this VAE (folder, or a pipeline's vae/) learned mixtures."""
    for state in (Path(vae_path) / "training_state.json", Path(vae_path) / "vae" / "training_state.json"):
        if state.is_file():
            try:
                return json.loads(state.read_text()).get("source") == "mix"
            except ValueError:
                return False
    index = Path(vae_path) / "model_index.json"
    if not index.is_file():
        return False
    from mslddm.kinds import kind_of_index

    kind = kind_of_index(json.loads(index.read_text()))
    return kind is not None and not kind.generates_stems  # a MixLDM pipeline's vae/ is a MixtureVAE


def _processes(device: str):
    """(device, process index, number of processes, barrier) - through accelerate when it is usable."""
    import torch

    if device == "auto":
        try:
            from accelerate import Accelerator
        except ImportError:
            from mslddm.devices import resolve_device

            return torch.device(resolve_device()), 0, 1, lambda: None
        acc = Accelerator()
        return acc.device, acc.process_index, acc.num_processes, acc.wait_for_everyone
    return torch.device(device), 0, 1, lambda: None


def run(args) -> int:
    from mslddm.training.lock import FolderInUseError, folder_lock

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {args.batch_size}.")
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        raise SystemExit(f"Dataset folder {str(data)!r} does not exist.")
    splits = args.split or [s for s in SPLITS if (data / s).is_dir()] or [None]
    stems = [s.strip() for s in args.stems.split(",") if s.strip()] if args.stems else _default_stems(args.vae)
    mix = _trained_on_mixtures(args.vae) if args.mix is None else bool(args.mix)

    device, rank, world, barrier = _processes(args.device)
    try:  # one encoding per folder: a second one on the same OUT stops (the first process holds the lock)
        lock = folder_lock(out, "encode-latents", log=print) if rank == 0 else contextlib.nullcontext()
        with lock:
            return _encode(args, data, out, splits, stems, mix, device, rank, world, barrier)
    except FolderInUseError as error:
        raise SystemExit(str(error)) from None


def _encode(args, data, out, splits, stems, mix, device, rank, world, barrier) -> int:
    """Indexes, encodes and writes the header and report (``run`` holds the folder's lock)."""
    import torch

    from mslddm.data.datasets import load_tracks
    from mslddm.data.latents import HEADER_FILE, encode_tracks, load_vae, silence_latent, vae_fingerprint

    dtype = getattr(torch, args.dtype)
    vae = load_vae(args.vae, dtype=dtype).to(device).eval()
    sample_rate = int(vae.config.sampling_rate)
    try:
        indexed = {split or ".": load_tracks(data, split, stems, args.layout, sample_rate=sample_rate,
                                             on_length_mismatch=args.on_length_mismatch, return_summary=True)
                   for split in splits}
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    tracks = {split: found for split, (found, _) in indexed.items()}

    header = {"vae": str(args.vae), "data": str(data), "stems": ["mix"] if mix else stems, "sample_rate": sample_rate,
              "hop_length": vae.hop_length, "latent_channels": int(vae.config.latent_channels),
              "save_dtype": args.save_dtype}
    if mix:
        header["mixture_of"] = stems
    header_path = out / HEADER_FILE
    if rank == 0:
        header["silence_latent"] = silence_latent(vae, device, dtype)
        header["vae_fingerprint"] = vae_fingerprint(vae, device, dtype)
        if header_path.is_file():
            found = json.loads(header_path.read_text())
            measured = ("silence_latent", "vae_fingerprint")
            differ = {k: (found.get(k), v) for k, v in header.items()
                      if k not in ("vae", "data", *measured) and found.get(k) != v}
            # Same VAE, same numbers (to a tolerance: another device or dtype may round differently). Folders
            # written before the fingerprint existed are checked on the silence latent alone.
            if not all(_close(found.get(k), header[k]) for k in measured if k in found or k == "silence_latent"):
                differ["vae"] = (found.get("vae"), header["vae"])
            if differ:
                raise SystemExit(f"{out} holds latents made differently ({differ}); use another OUT folder.")
        else:
            out.mkdir(parents=True, exist_ok=True)
            tmp = header_path.with_name(f".{HEADER_FILE}.partial")
            tmp.write_text(json.dumps(header, indent=1) + "\n")
            tmp.replace(header_path)
    barrier()

    report = encode_tracks(vae, tracks, out, stems, device=device, dtype=dtype,
                           save_dtype=getattr(torch, args.save_dtype), batch_size=args.batch_size,
                           process_index=rank, num_processes=world, progress=not args.quiet, mix=mix)
    barrier()
    # A track the index could not read (a stem failing at its header) failed as surely as one failing at encoding
    for split, (_, summary) in indexed.items():
        for name, why in summary.skipped.items():
            if why.startswith("unreadable"):
                report.failed.setdefault(f"{split}/{name}", why)
    accepted = args.skip_failed or not report.failed
    if rank == 0:
        # What was left out, by name (index: skipped / padded / incomplete tracks; failed: unreadable at encoding),
        # and the latent statistics (sigma_data for training, the per-stem and per-channel spread).
        from mslddm.data.latents import latent_statistics

        header = json.loads(header_path.read_text())
        header["data_report"] = {split: summary.to_dict() for split, (_, summary) in indexed.items()}
        header["failed_tracks"] = dict(report.failed) if args.skip_failed else {}
        if accepted and "train" in tracks:
            header["statistics"] = latent_statistics(out, "train")
        tmp = header_path.with_name(f".{HEADER_FILE}.partial")
        tmp.write_text(json.dumps(header, indent=1) + "\n")
        tmp.replace(header_path)
        if "statistics" in header and accepted and "train" in tracks:
            stats = header["statistics"]
            print(f"Training latents: RMS {stats['rms']:.4f} (the sigma_data train_msldm.py uses by default), mean "
                  f"{stats['mean']:.4f}, std {stats['std']:.4f}; per stem RMS "
                  + ", ".join(f"{k} {v['rms']:.3f}" for k, v in stats["per_stem"].items()) + ".")
    print(f"{out}: {len(report.encoded)} tracks encoded, {len(report.skipped)} already done, "
          f"{len(report.failed)} failed" + (f" (process {rank} of {world})" if world > 1 else "") + ".")
    for name, error in report.failed.items():
        print(f"FAILED {name}: {error}")
    if report.failed:
        print(f"{len(report.failed)} track(s) left out and named in {header_path} (--skip-failed)." if args.skip_failed
              else "Run again to retry them, or pass --skip-failed to finish without them.")
    return 0 if accepted else 1
