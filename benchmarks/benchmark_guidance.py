"""The cost of reconstruction guidance: seconds for a partial generation (one stem given, three generated) with the
bundled pipeline at each guidance weight, on the threads given (default 1), with the pipeline's own sampler.

    python benchmarks/benchmark_guidance.py [--pipeline P] [--weights 0 1 3] [--seconds 12] [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="pipelines/mslddm-synth-small")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from mslddm.devices import load_pipeline

    pipe, _, dtype = load_pipeline(args.pipeline, "cpu", "auto")
    torch.set_num_threads(args.threads)
    pipe.set_progress_bar_config(disable=True)
    sr = pipe.sample_rate
    t = np.arange(int(args.seconds * sr)) / sr
    given = (0.3 * np.sin(2 * np.pi * 196 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    stem = pipe.stem_names[-1]
    pipe(stems={stem: given}, num_inference_steps=2)  # warm-up
    print(f"{args.seconds:g} s, {stem} given, {args.threads} thread(s), {dtype}, {args.pipeline}\n")
    print("| reconstruction guidance | seconds (best of {}) | model evaluations |\n|---|---|---|".format(args.repeats))
    for weight in args.weights:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = pipe(stems={stem: given}, reconstruction_guidance=weight, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
        print(f"| {weight:g} | {min(times):.2f} | {out.sampling['model_evaluations']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
