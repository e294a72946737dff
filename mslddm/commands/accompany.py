"""The accompaniment task (mslddm.evaluation.accompaniment): each held-out chunk's stems given one at a time (through
the recorded-sound augmentation chain with --augment, at each --level), the rest generated; writes OUT/accompaniment.json
(every run and the summary) and prints the summary table: rhythmic agreement of the generated stems (and drums) with
the given one against the real aligned stems and chance, beat F-measure of the generated drums against the song's
beat grid, and the band's level error against the real band's level relation. See docs/evaluation.md."""

from __future__ import annotations

import json
from pathlib import Path

HELP = "score how the generated band follows a given stem (rhythm, beats, level) against the real band and chance"


def add_arguments(parser):
    parser.add_argument("--pipeline", required=True, help="pipeline folder or Hub id")
    parser.add_argument("--lora", default=None, metavar="PATH",
                        help="with this LoRA adapter of the pipeline (mslddm finetune's OUT/lora)")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="the adapter's strength")
    parser.add_argument("--data", required=True, help="dataset root: DATA/<split>/TrackNNNNN/<stem>.wav (+ metadata.json)")
    parser.add_argument("--out", required=True, help="output folder for accompaniment.json")
    parser.add_argument("--split", default="test", help="split of DATA to draw chunks from")
    parser.add_argument("--clips", type=int, default=8, help="chunks (each given stem in turn, at each level)")
    parser.add_argument("--seconds", type=float, default=12.0, help="chunk length")
    parser.add_argument("--given", action="append", help="a stem to give (repeat); default: every stem in turn")
    parser.add_argument("--level", action="append", type=float, metavar="DBFS",
                        help="set the given stem to this RMS level (repeat, e.g. -40 -25 -10); default: as recorded")
    parser.add_argument("--augment", action="store_true", help="pass the given stem through the augmentation chain")
    from mslddm.schedulers.sampler_table import SAMPLERS

    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="sampler (default: the pipeline's own)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the pipeline's own)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="guidance on the given stems (a conditioned pipeline; default 1: none)")
    parser.add_argument("--reconstruction-guidance", type=float, default=None,
                        help="reconstruction guidance weight (any pipeline; default 0: plain imputation)")
    parser.add_argument("--seed", type=int, default=0, help="chunk choice, augmentation and noise seed")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="generation compiled: the VAE's fused Snake activations (and the UNet on a GPU); auto: on for paper-size pipelines, where decoding gains 13-18%%, off for small ones (the first call compiles for seconds)")


def summary_table(summary: dict) -> str:
    columns = ["runs", "agreement", "agreement_real", "agreement_chance", "drums_agreement", "drums_agreement_real",
               "beat_f_measure", "beat_f_measure_real", "level_error_db", "level_offset_db"]
    lines = ["| given@level | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, row in summary.items():
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interval_lines(intervals: dict) -> str:
    """One line per decisive mean with its 95% interval over chunks."""
    return "\n".join(f"{key}: {row['value']:.3g} [{row['low']:.3g}, {row['high']:.3g}] ({row['chunks']} chunks)"
                     for key, row in intervals.items())


def run(args) -> int:
    from mslddm.devices import load_pipeline
    from mslddm.evaluation.accompaniment import AccompanimentConfig, evaluate_accompaniment

    if args.clips < 1:
        raise SystemExit("--clips must be at least 1.")
    pipe, _, _ = load_pipeline(args.pipeline, args.device, args.dtype, args.compile)
    if args.lora:
        from mslddm.commands.generate import load_lora

        load_lora(pipe, args.lora, args.lora_scale)
    if not getattr(pipe, "generates_stems", True):
        raise SystemExit(f"{args.pipeline!r} generates a mixture: the accompaniment task needs a stem model.")
    pipe.set_progress_bar_config(disable=True)
    config = AccompanimentConfig(split=args.split, num_clips=args.clips, seconds=args.seconds, seed=args.seed,
                                 given=tuple(args.given) if args.given else None,
                                 levels_dbfs=tuple(args.level) if args.level else (None,), augment=args.augment,
                                 sampler=args.sampler, num_inference_steps=args.steps,
                                 guidance_scale=args.guidance_scale,
                                 reconstruction_guidance=args.reconstruction_guidance)
    try:
        results = evaluate_accompaniment(pipe, args.data, config)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    results["pipeline"] = str(args.pipeline) + (f" + LoRA {args.lora} at {args.lora_scale:g}" if args.lora else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accompaniment.json").write_text(json.dumps(results, indent=1, default=float))
    print(summary_table(results["summary"]))
    print(interval_lines(results["intervals"]))
    return 0
