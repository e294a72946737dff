"""Copies a few short clips of the synthetic test split into ``space/examples/`` for the page's examples.

    python space/make_examples.py --split data/synth/test            # the split written by `mslddm make-dataset`

Each example is a folder holding the stems it gives (FLAC, mono, cropped) and an ``example.json``; the page
generates the other stems. The defaults keep the committed folder under 2 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mslddm.audio import read_audio, rms_db, to_mono, write_audio

# Which stems each example gives (cycled over the chosen tracks); the page generates the rest.
GIVEN = (("bass",), ("drums",), ("bass", "drums"), ("piano",))


def loudest_window(stems: dict, sample_rate: int, seconds: float) -> int:
    """Start (in samples) of the window where the quietest given stem is loudest: no silent example clips."""
    length = min(len(a) for a in stems.values())
    window, hop = int(seconds * sample_rate), sample_rate
    starts = range(0, max(1, length - window + 1), hop)
    return max(starts, key=lambda s: min(rms_db(a[s:s + window]) for a in stems.values()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, help="folder of Track*/<stem>.wav (the dataset's test split)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "examples"), help="examples folder")
    p.add_argument("--num", type=int, default=4, help="number of examples")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each clip")
    args = p.parse_args(argv)

    tracks = sorted(t for t in Path(args.split).iterdir() if t.is_dir()) if Path(args.split).is_dir() else []
    if not tracks:
        raise SystemExit(f"No track folders in {args.split!r}: make the dataset first (mslddm make-dataset).")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    tracks = list(np.random.default_rng(0).permutation(tracks))
    for i in range(args.num):  # a small split lends one track to several examples
        track, given = tracks[i % len(tracks)], GIVEN[i % len(GIVEN)]
        if not all((track / f"{g}.wav").is_file() for g in given):
            continue
        audio = {g: read_audio(track / f"{g}.wav") for g in given}
        sr = next(iter(audio.values()))[1]
        mono = {g: to_mono(a) for g, (a, _) in audio.items()}
        start = loudest_window(mono, sr, args.seconds)
        folder = out / f"{i + 1:02d}_{track.name}_{'_'.join(given)}"
        for g, a in mono.items():
            write_audio(folder / f"{g}.flac", a[start:start + int(args.seconds * sr)], sr, on_clip="scale")
        meta = {"label": f"{track.name}: given {' + '.join(given)}", "duration": args.seconds, "seed": 0,
                "source": f"{track.name}, from {start / sr:.0f} s"}
        (folder / "example.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {folder}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
