"""Each pipeline's EDM-weighted denoising loss per noise level on the same held-out latent segments and the same
noise (1.0: the noise left in as it was; docs/ablations.md, "The frame-rate bottleneck").

    python scripts/loss_by_sigma.py pipelines/mslddm-synth-small runs/fullrate/pipeline-fp16 \\
        [--latents runs/latents/validation] [--segments 32] [--frames 256]
"""

from __future__ import annotations

import argparse
import glob
import sys

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0)


def segments(folder: str, count: int, frames: int):
    import torch
    from safetensors.torch import load_file

    files = sorted(glob.glob(f"{folder}/*.safetensors"))
    if not files:
        raise SystemExit(f"{folder} holds no latent files (.safetensors): encode a split with `mslddm encode-latents`.")
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(count):
        x = load_file(files[i % len(files)])["latents"].float()
        start = int(torch.randint(0, max(1, x.shape[-1] - frames), (1,), generator=generator))
        out.append(x[..., start:start + frames].reshape(-1, frames))
    return torch.stack(out)


def losses_by_sigma(path: str, x0, noise) -> list[float]:
    import torch

    from mslddm import MultiSourceLatentPipeline
    from mslddm.training import losses

    pipe = MultiSourceLatentPipeline.from_pretrained(path, dtype=torch.float32)
    sigma_data = float(pipe.scheduler.config.sigma_data)
    row = []
    with torch.no_grad():
        for sigma in SIGMAS:
            denoised = losses.edm_denoise(pipe.unet, x0 + sigma * noise, torch.full((x0.shape[0],), sigma), sigma_data)
            weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
            row.append(float((denoised - x0).square().mean() * weight))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipelines", nargs="+")
    parser.add_argument("--latents", default="runs/latents/validation")
    parser.add_argument("--segments", type=int, default=32)
    parser.add_argument("--frames", type=int, default=256)
    args = parser.parse_args(argv)
    import torch

    x0 = segments(args.latents, args.segments, args.frames)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    print("| pipeline | " + " | ".join(str(s) for s in SIGMAS) + " |")
    print("|---" * (len(SIGMAS) + 1) + "|")
    for path in args.pipelines:
        print(f"| {path} | " + " | ".join(f"{v:.3f}" for v in losses_by_sigma(path, x0, noise)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
