"""CPU threads under load: seconds for a 12-s partial generation (one stem given, three generated) with the bundled
pipeline, with N torch threads, while B busy processes hold B of the cores (another user's training, a second job).

Why: torch's thread pool waits for its slowest thread at every operation, so one thread on a core that another
process holds slows every step of the others. ``mslddm.devices.use_free_cores`` (what every command and the page
use by default) picks the idle cores; this prints what that is worth. Each row runs in a fresh subprocess.

    python benchmarks/benchmark_threads.py                     # busy 0 and 1, threads 1, 2 and auto
    python benchmarks/benchmark_threads.py --busy 0 1 --threads 1 2 auto --seconds 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROW = r"""
import json, sys, time, numpy as np, torch
from mslddm import devices
threads = devices.use_free_cores(None if sys.argv[2] == "auto" else int(sys.argv[2]))
pipe, _, _ = devices.load_pipeline(sys.argv[1], "cpu", "auto")
torch.set_num_threads(threads)
pipe.set_progress_bar_config(disable=True)
seconds = float(sys.argv[3])
t = np.arange(int(seconds * pipe.sample_rate)) / pipe.sample_rate
given = (0.3 * np.sin(2 * np.pi * 110 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
pipe(stems={pipe.stem_names[0]: given}, num_inference_steps=2, generator=torch.Generator().manual_seed(0))  # warm-up
start = time.perf_counter()
pipe(stems={pipe.stem_names[0]: given}, generator=torch.Generator().manual_seed(0))
print(json.dumps({"threads": threads, "seconds": time.perf_counter() - start}))
"""


def busy_processes(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each hold one core (a pure-Python loop), on the last cores this process may use."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    procs = []
    for core in cores[::-1][:count]:
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(proc.pid, {core})
        procs.append(proc)
    time.sleep(1.0)  # let the idle-share measurement see them
    return procs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="pipelines/mslddm-synth-small")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="busy cores in turn")
    parser.add_argument("--threads", nargs="+", default=["1", "2", "auto"], help="thread counts, or auto")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the generated music")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    print(f"{args.seconds:g} s of music, {os.cpu_count()} cores, pipeline {args.pipeline}\n")
    print("| busy cores | threads asked | threads used | seconds |\n|---|---|---|---|")
    for busy in args.busy:
        procs = busy_processes(busy)
        try:
            for threads in args.threads:
                out = subprocess.run([sys.executable, "-c", ROW, args.pipeline, threads, str(args.seconds)], env=env,
                                     capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {busy} | {threads} | {row['threads']} | {row['seconds']:.1f} |", flush=True)
        finally:
            for proc in procs:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
