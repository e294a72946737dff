"""Generation speed and peak memory: seconds per 12-s song of 4 stems, real-time factor, songs per second.

Each row runs in a fresh subprocess so its peak memory is its own. Random weights: speed does not depend on
training. Prints a Markdown table (paste it into docs/benchmarks.md with the command line).

    python benchmarks/benchmark_generation.py                       # tiny and small on CPU
    python benchmarks/benchmark_generation.py --presets msldm small --device cuda --batch-sizes 1 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys


def measure(preset, device, batch, seconds, sampler, steps, dtype, repeats):
    import resource
    import time

    import torch

    from mslddm.presets import build_pipeline

    pipe = build_pipeline(preset).to(device=device, dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # Warm-up (allocator, kernels), then timed runs split into sampling and decoding.
    pipe(audio_length_in_s=seconds, num_inference_steps=2, sampler=sampler, num_samples=batch, generator=gens)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sample_t, decode_t = [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        lat = pipe(audio_length_in_s=seconds, num_inference_steps=steps, sampler=sampler, num_samples=batch,
                   generator=gens, output_type="latent").stems
        sync()
        t1 = time.perf_counter()
        pipe.decode_latents(lat.flatten(1, 2))
        sync()
        sample_t.append(t1 - t0)
        decode_t.append(time.perf_counter() - t1)
    s, d = min(sample_t), min(decode_t)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in pipe.unet.parameters()) + sum(p.numel() for p in pipe.vae.parameters())
    return {"preset": preset, "params_M": params / 1e6, "device": device, "dtype": dtype, "batch": batch,
            "sampler": f"{sampler} x{steps}", "evals": len(pipe.scheduler.timesteps), "sample_s": s / batch,
            "decode_s": d / batch, "song_s": (s + d) / batch, "rtf": seconds * batch / (s + d),
            "songs_per_s": batch / (s + d), "peak_MiB": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    p.add_argument("--samplers", nargs="+", default=["euler:150", "dpmpp_2m:20"],
                   help="sampler:steps pairs (euler = the paper's sampler)")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--_row", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._row:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(**json.loads(args._row))))
        return
    rows = []
    for preset in args.presets:
        for spec in args.samplers:
            sampler, steps = spec.split(":")
            for batch in args.batch_sizes:
                row = dict(preset=preset, device=args.device, batch=batch, seconds=args.seconds, sampler=sampler,
                           steps=int(steps), dtype=args.dtype, repeats=args.repeats)
                cmd = [sys.executable, __file__, "--_row", json.dumps(row)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"row {row} failed")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"done: {rows[-1]}", file=sys.stderr)
    import torch

    print(f"\n{args.seconds:g}-s songs of 4 stems; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores visible\n")
    cols = ["preset", "params_M", "device", "dtype", "batch", "sampler", "evals", "sample_s", "decode_s", "song_s",
            "rtf", "songs_per_s", "peak_MiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
