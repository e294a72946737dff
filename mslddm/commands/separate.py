"""Separate a mixture into stems with a waveform multi-source pipeline (MSDM): sample stems whose sum is the mixture
(MSDM's Dirac separator, or its Gaussian variant). Writes one folder per sample with a WAV per stem, mix.wav (the
mixture as read) and settings.json."""

from __future__ import annotations

import time
from pathlib import Path

HELP = "separate a mixture into stems (MSDM pipelines)"


def add_arguments(parser):
    from mslddm.schedulers.sampler_table import SEPARATION_METHODS

    parser.add_argument("mixture", metavar="MIX", help="the mixture: any format, rate and channel count")
    parser.add_argument("--pipeline", required=True, help="an MSDM pipeline folder or Hub repo id")
    parser.add_argument("--method", choices=SEPARATION_METHODS, default="dirac",
                        help="dirac: one stem is the mixture minus the others throughout (MSDM); gaussian: a "
                             "Gaussian likelihood on the sum, the residual shared at the end")
    own = "default: the pipeline's scheduler config, written to settings.json"
    parser.add_argument("--steps", type=int, default=None, help=f"Euler steps ({own})")
    parser.add_argument("--churn", type=float, default=None, help=f"s_churn ({own})")
    parser.add_argument("--resamples", type=int, default=1, help="repeats of every step from re-noised estimates")
    parser.add_argument("--constrained-stem", default=None,
                        help="dirac: the stem set to the mixture minus the others (default: the first)")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="longer mixtures are separated in consecutive windows of this (default: the model's)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="longest mixture accepted; None means 600 s (10 min)")
    parser.add_argument("--seed", type=int, action="append", default=None,
                        help="seed of a separation; repeat for several (default: 0)")
    parser.add_argument("--out", default="separated", help="output folder; one sub-folder per seed")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="model weights' precision (sampling math stays float32)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="generation compiled: the VAE's fused Snake activations (and the UNet on a GPU); auto: on for paper-size pipelines, where decoding gains 13-18%%, off for small ones (the first call compiles for seconds)")


def run(args) -> int:
    try:
        return _run(args)
    except ValueError as error:  # bad input: one sentence, exit code 1, no traceback
        raise SystemExit(str(error)) from None


def _run(args) -> int:
    import sys

    import torch

    from mslddm.audio import common_gain, write_audio
    from mslddm.devices import load_pipeline
    from mslddm.records import sampling_record, write_settings
    from mslddm.stems import MAX_STEM_SECONDS, load_stem

    for name in ("steps", "resamples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name} must be at least 1.")
    pipe, device, dtype_name = load_pipeline(args.pipeline, args.device, args.dtype, args.compile)
    if not hasattr(pipe, "separate"):
        raise SystemExit(f"{args.pipeline!r} is a {type(pipe).__name__} ({getattr(pipe, 'model_kind', '?')}): "
                         "separation needs a waveform multi-source model (an MSDM pipeline, "
                         "MultiSourceDiffusionPipeline).")
    max_seconds = MAX_STEM_SECONDS if args.max_seconds is None else args.max_seconds
    print(f"Reading the mixture {Path(args.mixture).name} ...", file=sys.stderr, flush=True)
    mixture = load_stem("mixture", args.mixture, pipe.sample_rate, max_seconds=max_seconds,
                        limit_hint=" (--max-seconds raises the limit)")
    for seed in args.seed or [0]:
        tic = time.perf_counter()
        out = pipe.separate(mixture, method=args.method, num_inference_steps=args.steps, s_churn=args.churn,
                            num_resamples=args.resamples, constrained_stem=args.constrained_stem,
                            window_s=args.window, generator=torch.Generator().manual_seed(seed))
        seconds = time.perf_counter() - tic
        folder = Path(args.out) / f"seed{seed}"
        stems, mix = out.stems[0], out.mixture[0]
        gain = common_gain(mix, *stems)
        for name, audio in zip(out.stem_names, stems):
            write_audio(folder / f"{name}.wav", audio * gain, out.sample_rate)
        write_audio(folder / "mix.wav", mix * gain, out.sample_rate)
        settings = {"pipeline": str(args.pipeline), "mixture": Path(args.mixture).name, "seed": seed,
                    **sampling_record(out), **out.sampling, "gain_applied": gain,  # the separation's own settings too
                    "device": device, "dtype": dtype_name, "seconds": round(seconds, 3),
                    "max_sum_error": float(abs(stems.sum(0) - mix).max())}
        write_settings(folder, settings)
        print(f"wrote {folder}")
    return 0
