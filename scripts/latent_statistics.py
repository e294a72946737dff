"""Frame-level statistics of a pipeline's generated latents beside real ones (the encoded test split): what shows
whether sampling ends on the data's latents or on leftover noise (docs/ablations.md, "The frame-rate bottleneck").

    python scripts/latent_statistics.py --pipeline P [--pipeline Q ...] [--latents runs/latents/test] [--clips 8]

Per stem, averaged over clips and latent channels:
- temporal std: each channel's standard deviation over a clip's frames;
- frame difference RMS: of x[t+1] - x[t], the latents' detail from one frame to the next (white noise of the same
  std has sqrt(2) x its std, smooth latents much less);
- clip-mean spread: how much a channel's mean over a clip differs between clips (the slow content of a clip).
And per pipeline: how many dimensions (of the stems x latent channels of a frame) hold 99% of the frame-level
detail of the network's output F on noisy real latents at sigma 0.5, against the real latents' own.
Generated latents: the pipeline's own sampler and steps, total generation, seeds 0..clips-1.
"""

from __future__ import annotations

import argparse
import glob
import sys


def frame_statistics(latents):
    """``latents``: (clips, stems, channels, frames) -> dict of per-stem lists."""
    detail = latents[..., 1:] - latents[..., :-1]
    return {
        "temporal std": latents.std(-1).mean((0, 2)).tolist(),
        "frame difference RMS": detail.pow(2).mean((0, 2, 3)).sqrt().tolist(),
        "clip-mean spread": latents.mean(-1).std(0).mean(-1).tolist(),
    }


def dims_for_99_percent(frames):
    """``frames``: (N, D) rows -> how many principal directions hold 99% of the (centred) energy."""
    import torch

    s = torch.linalg.svdvals(frames - frames.mean(0))
    energy = (s**2).cumsum(0) / (s**2).sum()
    return int((energy < 0.99).sum()) + 1


def network_output_dims(pipe, real, sigma: float = 0.5) -> int:
    import torch

    from mslddm.schedulers.sampling import edm_scalings

    x0 = real.reshape(real.shape[0], -1, real.shape[-1]).to(pipe.unet.dtype)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(x0.dtype)
    _, _, c_in, c_noise = edm_scalings(torch.full((x0.shape[0],), sigma), float(pipe.scheduler.config.sigma_data))
    with torch.no_grad():
        out = pipe.unet((x0 + sigma * noise) * c_in[0], c_noise).sample.float()
    detail = out[..., 1:] - out[..., :-1]
    return dims_for_99_percent(detail.permute(0, 2, 1).reshape(-1, detail.shape[1]))


def real_latents(folder: str, clips: int, frames: int):
    import torch
    from safetensors.torch import load_file

    files = sorted(glob.glob(f"{folder}/*.safetensors"))
    if not files:
        raise SystemExit(f"{folder} holds no latent files (.safetensors): encode a split with `mslddm encode-latents`.")
    out = []
    for i in range(clips):
        x = load_file(files[i % len(files)])["latents"].float()
        start = (i // len(files)) * frames
        if x.shape[-1] < start + frames:
            start = 0
        out.append(x[..., start:start + frames])
    return torch.stack(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", action="append", required=True)
    parser.add_argument("--latents", default="runs/latents/test")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args(argv)
    import torch

    from mslddm.devices import load_pipeline

    rows = []
    real = None
    for path in args.pipeline:
        pipe, _, _ = load_pipeline(path, "cpu", "float32")
        pipe.set_progress_bar_config(disable=True)
        out = pipe(num_samples=args.clips, audio_length_in_s=args.seconds, output_type="latent",
                   generator=[torch.Generator().manual_seed(i) for i in range(args.clips)])
        generated = out.stems.float()
        if real is None:
            real = real_latents(args.latents, args.clips, generated.shape[-1])
            rows.append(("real " + args.latents, frame_statistics(real),
                         dims_for_99_percent((real[..., 1:] - real[..., :-1]).reshape(real.shape[0], -1, real.shape[-1] - 1)
                                             .permute(0, 2, 1).reshape(-1, real.shape[1] * real.shape[2]))))
        rows.append((path, frame_statistics(generated), network_output_dims(pipe, real)))
        stems = out.stem_names
    names = list(rows[0][1])
    print("| latents | " + " | ".join(f"{n} ({' / '.join(s[0] for s in stems)})" for n in names)
          + " | dims holding 99% of the frame-level detail |")
    print("|---" * (len(names) + 2) + "|")
    for label, stats, dims in rows:
        cells = [" / ".join(f"{v:.2f}" for v in stats[n]) for n in names]
        print(f"| {label} | " + " | ".join(cells) + f" | {dims} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
