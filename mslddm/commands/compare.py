"""Evaluate several pipelines on one protocol (the MSLDM paper's model comparison: MSLDM against the ISLDM and MixLDM
baselines) and write one table and one bar chart: FAD per stem and on the mix, sub-FAD per subset where a model can
do partial generation, the coherence metrics, the empty-stem rate, parameters and time per song. Each pipeline's own
evaluation (results.md, charts, generated audio) goes to OUT/NAME and resumes like `mslddm evaluate`; a finished
one (OUT/NAME/results.json of the same protocol, e.g. from `mslddm evaluate --out OUT/NAME`) is reused.
See docs/baselines.md."""

from __future__ import annotations

import time
from pathlib import Path

HELP = "evaluate several pipelines on one protocol into one comparison table and chart"
SAMPLING_KEYS = ("sampler", "num_inference_steps", "s_churn")


def add_arguments(parser):
    from mslddm.commands.evaluate import add_protocol_arguments

    parser.add_argument("--pipeline", action="append", required=True, metavar="NAME=PATH",
                        help="a pipeline to compare, named (e.g. MSLDM=pipelines/mslddm-synth-small); repeat")
    parser.add_argument("--data", required=True, help="dataset root: DATA/<split>/TrackNNNNN/<stem>.wav")
    parser.add_argument("--out", required=True, help="output folder: comparison.{md,json,png}, OUT/NAME per model")
    parser.add_argument("--timing-seconds", type=float, default=12.0,
                        help="length of the song timed for the time-per-song column (0: not timed)")
    parser.add_argument("--timing-runs", type=int, default=2, help="timed generations per model; the fastest counts")
    add_protocol_arguments(parser)


def parse_pipelines(items) -> dict[str, str]:
    """``["NAME=PATH", ...]`` -> ``{NAME: PATH}`` in order; a bare PATH is named by its folder."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name or item, item
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise SystemExit(f"--pipeline {item!r}: expected NAME=PATH.")
        if name in named:
            raise SystemExit(f"--pipeline: the name {name!r} is given twice.")
        named[name] = path
    return named


def describe(pipe, args) -> dict:
    """What the table says about a model besides its scores: kind, parameters, time per song."""
    import torch

    def count(module):  # MSDM's identity codec (waveforms) is not a module: no parameters
        return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0

    info = {"kind": getattr(pipe, "model_kind", "msldm"),
            "parameters": {n: count(getattr(pipe, n)) for n in ("vae", "unet")}}
    info["parameters"]["total"] = sum(info["parameters"].values())
    if args.timing_seconds > 0:
        pipe.set_progress_bar_config(disable=True)
        times = []
        for _ in range(max(1, args.timing_runs)):
            start = time.perf_counter()
            out = pipe(audio_length_in_s=args.timing_seconds, num_inference_steps=args.steps, sampler=args.sampler,
                       s_churn=args.churn, window_s=args.window_s, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
        info["seconds_per_song"] = min(times)
        sampling = getattr(out, "sampling", None) or {}
        info["timing"] = {"song_seconds": args.timing_seconds, "runs": len(times), "threads": torch.get_num_threads(),
                          "device": str(pipe.device), "windows": sampling.get("windows"),
                          "model_evaluations": sampling.get("model_evaluations")}
    return info


def run(args) -> int:
    import torch

    from mslddm.commands.evaluate import check_protocol_arguments, evaluate_one
    from mslddm.evaluation.report import write_report, write_comparison

    named = parse_pipelines(args.pipeline)
    check_protocol_arguments(args)
    if args.timing_runs < 1:
        raise SystemExit("--timing-runs must be at least 1.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    for name, path in named.items():
        print(f"== {name}: {path}")
        results = evaluate_one(args, path, out / name, reuse=True)
        write_report(results, out / name)
        from mslddm import MultiSourceLatentPipeline
        from mslddm.devices import resolve_device

        pipe = MultiSourceLatentPipeline.from_pretrained(path, dtype=getattr(torch, args.dtype))
        pipe = pipe.to(resolve_device(args.device))
        models[name] = {"pipeline": path, **describe(pipe, args), "results": results}
        del pipe
    comparison = {"protocol": next(iter(models.values()))["results"]["protocol"], "models": models}
    for model in models.values():
        # Unset sampler flags are each pipeline's own (its scheduler config): recorded per model.
        model["sampling"] = {k: model["results"]["protocol"].get(k) for k in SAMPLING_KEYS}
        model["results"] = {k: v for k, v in model["results"].items() if k != "protocol"}
    paths = write_comparison(comparison, out)
    print((out / "comparison.md").read_text())
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0

