"""Where sampling loses the stems' level: real latents noised to a sigma, sampled back down with the pipeline's
Euler sampler, decoded; their level beside the real latents' own decoding (docs/ablations.md, "Where the level is
lost").

    python scripts/level_from_noise.py --pipeline P [--from 0.5 3 10] [--churn 40] [--clips 8]

Per start sigma ``s``: ``x = x0 + s n`` from the encoded test split's latents, then Euler steps on the Karras sigmas
from ``s`` to the scheduler's ``sigma_min`` (``--steps``, churn ``--churn`` as the scheduler applies it), decoded and
measured as mean clip RMS in dBFS per stem. A sampler that kept the data's level would give the decoded real
latents' level at every ``s``; the drop from one start to the next says which noise levels lose it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latent_statistics import real_latents  # noqa: E402


def clip_levels_db(audio, names, sample_rate):
    """``(clips, stems, samples)`` -> each stem's mean clip level in dBFS, as `mslddm evaluate` reports it."""
    from mslddm.evaluation.levels import level_statistics

    stats = level_statistics(audio.float().cpu().numpy(), names, sample_rate)
    return [stats[name]["mean_dbfs"] for name in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--latents", default="runs/latents/test")
    parser.add_argument("--from", dest="starts", type=float, nargs="+", default=[0.5, 3.0])
    parser.add_argument("--churn", type=float, default=None, help="default: the scheduler's s_churn")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=832)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from mslddm.devices import load_pipeline
    from mslddm.schedulers.sampling import sample_euler
    from mslddm.schedulers.scheduling_edm import get_sigmas_karras

    pipe, _, _ = load_pipeline(args.pipeline, "cpu", "float32")
    c = pipe.scheduler.config
    churn = float(c.s_churn if args.churn is None and c.s_churn is not None else args.churn or 0.0)
    real = real_latents(args.latents, args.clips, args.frames)
    x0 = real.reshape(real.shape[0], -1, real.shape[-1])
    denoiser = pipe.scheduler.denoiser(pipe.unet)
    names = list(pipe.stem_names)
    print(f"| start sigma (Euler x {args.steps}, churn {churn:g}) | level dBFS {' / '.join(n[0] for n in names)} |")
    print("|---|---|")
    real_levels = clip_levels_db(pipe.decode_latents(x0), names, pipe.sample_rate)
    print(f"| real latents decoded | {' / '.join(f'{v:.1f}' for v in real_levels)} |")
    for start in args.starts:
        g = torch.Generator().manual_seed(args.seed)
        x = x0 + start * torch.randn(x0.shape, generator=g)
        sigmas = get_sigmas_karras(args.steps, c.sigma_min, start, c.rho)
        with torch.no_grad():
            out = sample_euler(denoiser, x, sigmas, s_churn=churn, s_tmin=c.s_tmin, s_tmax=c.s_tmax,
                               s_noise=c.s_noise, generator=g)
        levels = clip_levels_db(pipe.decode_latents(out), names, pipe.sample_rate)
        print(f"| {start:g} | {' / '.join(f'{v:.1f}' for v in levels)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
