"""Long-form generation measured: seams at window boundaries, coherence and level over time, time per minute.

Three runs of one pipeline (its default sampler, seed 0):

1. **accompaniment**: a long recording given as one stem (e.g. a three-minute guitar take), the other stems
   generated for its whole length in windows;
2. **total, windowed**: 60 s of total generation in windows;
3. **total, one pass**: the same 60 s in one window (the control: no boundaries at all).

For every generated stem and the mix: the seam statistics of :mod:`mslddm.evaluation.seams` at the window
boundaries (where a window's blend into its predecessor starts and ends) against the in-window distribution; the
one-pass run is measured at the windowed run's boundary positions. Over time: the rhythmic agreement of the given
stem with the generated drums per window-hop segment (beside the real drums' agreement when ``--real-drums`` is
given), and the mix level per 10 s. Prints Markdown tables and writes ``results.json`` and the audio into --out.

    OMP_NUM_THREADS=1 python benchmarks/long_form.py --take data/long/test/Track00003/guitar.wav --stem guitar \
        --real-drums data/long/test/Track00003/drums.wav --out runs/long-form
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def boundaries_s(pipe, num_samples: int, **window_kwargs) -> list[float]:
    """Seconds where a window's blend into its predecessor starts and ends."""
    from mslddm.pipelines.windows import plan_windows

    frames = pipe.num_frames_for(num_samples)
    plan = plan_windows(frames, **pipe.window_settings(**window_kwargs), multiple=pipe.unet.length_multiple)
    seconds = pipe.vae.hop_length / pipe.sample_rate
    marks = []
    for j in range(1, plan.num_windows):
        start = plan.starts[j] + plan.imputed(j)
        marks += [start * seconds, (start + plan.blended(j)) * seconds]
    return [m for m in marks if m * pipe.sample_rate < num_samples]


def seams_table(result, generated, sr, marks) -> dict:
    from mslddm.evaluation.seams import seam_statistics

    parts = {name: result.stems[0, i] for i, name in enumerate(result.stem_names) if name in generated}
    parts["mix"] = result.mixture[0]
    return {name: seam_statistics(audio, sr, marks) for name, audio in parts.items()}


def segment_agreement(stem, drums, sr, segment_s) -> list[float]:
    from mslddm.evaluation.coherence import rhythmic_agreement

    n = round(segment_s * sr)
    return [rhythmic_agreement(stem[i:i + n], drums[i:i + n], sr) for i in range(0, len(stem) - n + 1, n)]


def timed(pipe, **kwargs):
    tic = time.perf_counter()
    out = pipe(**kwargs)
    return out, time.perf_counter() - tic


def write(folder: Path, result, sr) -> None:
    from mslddm.audio import common_gain, write_audio

    gain = common_gain(result.mixture[0], *result.stems[0])
    for i, name in enumerate(result.stem_names):
        write_audio(folder / f"{name}.wav", result.stems[0, i] * gain, sr)
    write_audio(folder / "mix.wav", result.mixture[0] * gain, sr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pipeline", default="pipelines/mslddm-synth-small")
    p.add_argument("--take", required=True, help="the long recording given as one stem")
    p.add_argument("--stem", default="guitar", help="which stem the take is")
    p.add_argument("--real-drums", default=None, help="the take's real drums, for the agreement it should reach")
    p.add_argument("--total-seconds", type=float, default=60.0)
    p.add_argument("--out", default="runs/long-form")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mslddm import MultiSourceLatentPipeline
    from mslddm.audio import load_audio
    from mslddm.evaluation.seams import level_over_time

    pipe = MultiSourceLatentPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    sr, out_root = pipe.sample_rate, Path(args.out)
    take = load_audio(args.take, sr)
    window = pipe.window_settings()
    hop_s = (window["window"] - window["overlap"]) * pipe.vae.hop_length / sr
    gen = lambda: [torch.Generator().manual_seed(args.seed)]  # noqa: E731
    report = {"pipeline": args.pipeline, "take": args.take, "stem": args.stem, "threads": torch.get_num_threads(),
              "window_s": {k: v * pipe.vae.hop_length / sr for k, v in window.items()},
              "sampling": pipe.scheduler.sampling_settings().to_dict(), "runs": {}}

    runs = {
        "accompaniment": dict(stems={args.stem: take}, input_sample_rate=sr),
        "total, windowed": dict(audio_length_in_s=args.total_seconds),
        "total, one pass": dict(audio_length_in_s=args.total_seconds, window_s=args.total_seconds + 60.0),
    }
    for label, kwargs in runs.items():
        result, seconds = timed(pipe, generator=gen(), **kwargs)
        n = result.stems.shape[-1]
        marks = boundaries_s(pipe, n)  # the one-pass run is measured where the windowed one has its boundaries
        entry = {"seconds": round(seconds, 2), "music_s": round(n / sr, 2), "windows": result.sampling["windows"],
                 "seconds_per_minute": round(seconds / (n / sr) * 60, 2), "boundaries_s": marks,
                 "seams": seams_table(result, result.generated, sr, marks),
                 "mix_level_per_10s": level_over_time(result.mixture[0], sr)}
        if "drums" in result.stem_names and args.stem in result.stem_names and label == "accompaniment":
            drums = result.stems[0, result.stem_names.index("drums")]
            entry["agreement_per_segment"] = segment_agreement(take[:n], drums, sr, hop_s)
            if args.real_drums:
                real = load_audio(args.real_drums, sr)[:n]
                entry["real_agreement_per_segment"] = segment_agreement(take[:len(real)], real, sr, hop_s)
        report["runs"][label] = entry
        folder = out_root / label.replace(", ", "-").replace(" ", "-")
        write(folder, result, sr)
        print(f"{label}: {n / sr:.1f} s of music in {seconds:.1f} s ({entry['windows']} windows)", flush=True)

    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [f"Window {report['window_s']['window']:.1f} s, overlap {report['window_s']['overlap']:.1f} s, crossfade "
             f"{report['window_s']['crossfade']:.1f} s; sampler {report['sampling']['sampler']} x "
             f"{report['sampling']['num_inference_steps']}; {report['threads']} thread(s).", "",
             "| run | music | windows | time | s per minute of music |", "|---|---|---|---|---|"]
    for label, r in report["runs"].items():
        lines.append(f"| {label} | {r['music_s']:.1f} s | {r['windows']} | {r['seconds']:.1f} s | "
                     f"{r['seconds_per_minute']:.1f} |")
    lines += ["", "Seams: level jump (dB, 0.5 s after vs before) and spectral flux at the window boundaries against "
              "the same statistic inside windows (mean / 95th percentile), and the share of boundaries above that "
              "percentile (about 0.05 by chance).", "",
              "| run | part | boundaries | level jump at boundaries | inside (mean / p95) | share > p95 | "
              "flux at boundaries | inside (mean / p95) | share > p95 |", "|---|---|---|---|---|---|---|---|---|"]
    for label, r in report["runs"].items():
        for part, s in r["seams"].items():
            lj, fl = s["boundary"]["level_jump_db"], s["boundary"]["flux"]
            ilj, ifl = s["inside"]["level_jump_db"], s["inside"]["flux"]
            lines.append(f"| {label} | {part} | {s['boundaries']} | {lj['mean']:.2f} (max {lj['max']:.2f}) | "
                         f"{ilj['mean']:.2f} / {ilj['p95']:.2f} | {s['above_inside_p95']['level_jump_db']:.2f} | "
                         f"{fl['mean']:.3f} (max {fl['max']:.3f}) | {ifl['mean']:.3f} / {ifl['p95']:.3f} | "
                         f"{s['above_inside_p95']['flux']:.2f} |")
    lines += ["", "Over time: mix level per 10 s (dBFS); rhythmic agreement of the given stem with the generated "
              "drums per window hop (the real drums' beside it).", ""]
    for label, r in report["runs"].items():
        lines.append(f"- {label}, mix level: " + ", ".join(f"{v:.1f}" for v in r["mix_level_per_10s"]))
        if "agreement_per_segment" in r:
            lines.append(f"- {label}, agreement with the generated drums: "
                         + ", ".join(f"{v:.2f}" for v in r["agreement_per_segment"]))
        if "real_agreement_per_segment" in r:
            lines.append(f"- {label}, agreement with the real drums: "
                         + ", ".join(f"{v:.2f}" for v in r["real_agreement_per_segment"]))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
