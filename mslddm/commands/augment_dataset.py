"""Widen what a model hears in training: copies of a stem-folder dataset's training songs with every stem through
its own seeded effect chain (:mod:`mslddm.data.augment`: EQ, amp-like drive, compression, room), so that SoundFont
renders sound more like recordings. OUT holds the original songs (links) and ``--copies`` augmented copies of each
training song (``TRACK-aug0``, ...); the validation and test splits are linked unchanged, so evaluation stays on the
original data. Each copy keeps its stems' levels unless ``--gain-db G`` moves each stem by up to +-G dB (the
pipeline already encodes a given stem at the training level and gives the band back at the upload's). Resumable:
finished copies are kept. Then ``mslddm encode-latents OUT --vae PIPELINE LATENTS`` as for any dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HELP = "copies of a dataset's training songs with each stem through a seeded effect chain"
SPLITS = ("train", "validation", "test")


def add_arguments(parser):
    parser.add_argument("data", metavar="DATA", help="a stem-folder dataset with a train/ split (mslddm make-dataset)")
    parser.add_argument("out", metavar="OUT", help="the augmented dataset (an existing one is resumed)")
    parser.add_argument("--copies", type=int, default=1, help="augmented copies of each training song")
    parser.add_argument("--seed", type=int, default=0, help="the chains' seed (the same seed, the same copies)")
    parser.add_argument("--gain-db", type=float, default=0.0,
                        help="move each augmented stem's level by a uniform draw in +-G dB (default 0: keep it)")
    parser.add_argument("--no-originals", action="store_true",
                        help="leave the original training songs out of OUT/train (default: linked beside the copies)")


def check_arguments(args) -> None:
    import math

    if args.copies < 1:
        raise SystemExit(f"--copies must be at least 1, got {args.copies}.")
    if not (math.isfinite(args.gain_db) and 0 <= args.gain_db <= 24):
        raise SystemExit(f"--gain-db must be from 0 to 24, got {args.gain_db:g}.")
    train = Path(args.data) / "train"
    if not train.is_dir() or not any(p.is_dir() for p in train.iterdir()):
        raise SystemExit(f"{args.data} has no train/ folder of songs: give a stem-folder dataset (mslddm "
                         "make-dataset writes one).")
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    if out == data or data in out.parents or out in data.parents:
        raise SystemExit(f"OUT {args.out} and DATA {args.data} overlap: write the augmented dataset apart.")


def _link(source: Path, target: Path) -> None:
    if target.is_symlink() or target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), target, target_is_directory=source.is_dir())


def augment_song(song: Path, target: Path, seed: int, gain_db: float) -> None:
    """Writes ``target``: each stem file of ``song`` through a chain drawn from (``seed``, the stem's name), at
    its own level moved by up to ``gain_db``; the metadata is copied, the mix left out (the loaders sum stems)."""
    import zlib

    import numpy as np
    import soundfile as sf

    from mslddm.audio import rms_db
    from mslddm.data.augment import draw_chain, set_level
    from mslddm.data.tracks import AUDIO_EXTENSIONS

    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for file in sorted(song.iterdir()):
        if file.suffix.lower() not in AUDIO_EXTENSIONS:
            if file.is_file():
                (partial / file.name).write_bytes(file.read_bytes())
            continue
        if file.stem.lower() in ("mix", "mixture"):
            continue
        try:
            audio, rate = sf.read(str(file), dtype="float32", always_2d=True)
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file: one sentence, nothing half-written
            raise SystemExit(f"{file} could not be read ({type(error).__name__}: {error}). Replace or remove it and "
                             "run again: the copies already made are kept.") from None
        stem_seed = zlib.crc32(f"{seed}/{file.stem.lower()}".encode())
        rng = np.random.default_rng(stem_seed)
        out = np.stack([draw_chain(stem_seed)(channel, rate) for channel in audio.T], axis=1)
        if gain_db > 0 and np.isfinite(rms_db(out)):
            out = set_level(out, rms_db(out) + float(rng.uniform(-gain_db, gain_db)))
        sf.write(str(partial / f"{file.stem}.wav"), out, rate, subtype="FLOAT")
    partial.rename(target)


def run(args) -> int:
    import zlib

    check_arguments(args)
    data, out = Path(args.data), Path(args.out)
    for split in SPLITS[1:]:
        if (data / split).is_dir():
            _link(data / split, out / split)
    songs = sorted(p for p in (data / "train").iterdir() if p.is_dir())
    made = kept = 0
    for song in songs:
        if not args.no_originals:
            _link(song, out / "train" / song.name)
        for copy in range(args.copies):
            target = out / "train" / f"{song.name}-aug{copy}"
            if target.is_dir():
                kept += 1
                continue
            augment_song(song, target, zlib.crc32(f"{args.seed}/{song.name}/{copy}".encode()), args.gain_db)
            made += 1
    record = {"generator": "mslddm augment-dataset", "data": str(data.resolve()), "copies": args.copies,
              "seed": args.seed, "gain_db": args.gain_db, "originals": not args.no_originals,
              "train_songs": len(songs)}
    (out / "augment.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{out}: {made} augmented copies made, {kept} already there, of {len(songs)} training songs "
          f"({'with' if not args.no_originals else 'without'} the originals); validation and test linked unchanged.")
    return 0
