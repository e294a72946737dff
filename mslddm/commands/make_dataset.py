"""Make a Slakh-like multi-stem dataset offline: MMA grooves on random chord charts, each GM instrument class
(bass, drums, guitar, piano) rendered on its own with FluidSynth and several GM SoundFonts. Writes
OUT/{train,validation,test}/TrackNNNNN/{bass,drums,guitar,piano,mix}.wav (22050 Hz mono 16-bit), song.mid,
song.mma and metadata.json. The test and validation splits use groove families never heard in training.
Same options, same bytes; an interrupted run is resumed by running the same command again.
See docs/data.md."""

from __future__ import annotations

import logging
import os

HELP = "make the synthetic Slakh-like multi-stem dataset (MMA + FluidSynth)"


def add_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="output folder (created; an existing dataset is resumed)")
    parser.add_argument("--hours", type=float, default=1.0,
                        help="hours of music to make (all splits together; each stem holds this much audio)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed: same seed and options, same bytes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel processes (each keeps its SoundFonts loaded: up to 0.7 GB)")
    parser.add_argument("--soundfont", action="append", default=None, metavar="PATH",
                        help="a GM SoundFont (.sf2/.sf3) to draw from; repeat for several; None means FluidR3_GM, "
                             "MuseScore_General_Full and TimGM6mb from the Debian packages")
    parser.add_argument("--track-seconds", type=float, nargs=2, default=(30.0, 90.0), metavar=("MIN", "MAX"),
                        help="range of song lengths (rounded to whole bars; a 2-s release tail is added)")
    parser.add_argument("--sample-rate", type=int, default=22050, help="sample rate of the written files")
    parser.add_argument("--render-sample-rate", type=int, default=44100,
                        help="FluidSynth's rate; the audio is resampled to --sample-rate with soxr")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from mslddm.data.songs import GeneratorOptions
    from mslddm.data.synth import make_dataset
    from mslddm.data.system import MissingDependencyError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    lo, hi = args.track_seconds
    if not 0 < lo <= hi:
        raise SystemExit(f"--track-seconds needs 0 < MIN <= MAX, got {lo} {hi}.")
    if args.hours <= 0:
        raise SystemExit(f"--hours must be positive, got {args.hours}.")
    if args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}.")
    options = GeneratorOptions(
        seed=args.seed,
        soundfonts=tuple(args.soundfont or ()),
        track_seconds=(lo, hi),
        sample_rate=args.sample_rate,
        render_sample_rate=args.render_sample_rate,
    )
    try:
        report = make_dataset(args.out, args.hours, options, workers=args.workers, progress=not args.quiet)
    except (MissingDependencyError, ValueError) as error:
        raise SystemExit(str(error)) from None

    splits = ", ".join(f"{s} {report.seconds.get(s, 0) / 60:.1f} min" for s in ("train", "validation", "test"))
    print(f"{args.out}: {len(report.made)} tracks made, {len(report.skipped)} already done, "
          f"{len(report.failed)} failed; {splits}.")
    if report.made:
        print(f"Made {report.made_seconds / 60:.1f} min of music ({4 * report.made_seconds / 60:.1f} stem-minutes) "
              f"in {report.wall_seconds:.1f} s wall, {report.cpu_seconds:.1f} CPU-s: "
              f"{report.stem_seconds_per_cpu_second:.0f} stem-seconds per CPU-second.")
    for name, error in report.failed.items():
        print(f"FAILED {name}: {error}")
    if report.failed:
        print("Run the same command again to retry the failed tracks.")
    return 1 if report.failed else 0
