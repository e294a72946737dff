"""Seconds per training step (forward, backward and an Adam step, EDM-preconditioned as in training) of the networks
that recipes train: what "equal cost" means in docs/ablations.md when two network shapes are compared for the
same CPU minutes. Every network is timed in the same process, one after the other, best of ``--repeats``, so that
a machine under load slows them alike.

    python benchmarks/benchmark_training_step.py                      # small-cpu, -fullrate, -transformer
    python benchmarks/benchmark_training_step.py --recipes small-cpu small-cpu-transformer --batch-size 16 \
        --frames 256 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from mslddm.factory import unet_arguments
from mslddm.models import unet_class
from mslddm.schedulers.sampling import Denoiser
from mslddm.training.recipes import load_recipe


def network(recipe_name: str, in_channels: int):
    """The fresh network a recipe trains from scratch (its preset's UNet or ``msldm.unet_class``)."""
    recipe = load_recipe(recipe_name)
    cfg = recipe["msldm"]
    name = cfg.get("unet_class") or "MultiSourceUNet1DModel"
    preset = unet_arguments(recipe["preset"], in_channels) if name == "MultiSourceUNet1DModel" else {}
    return unet_class(name)(**{**preset, **cfg.get("model", {}), "in_channels": in_channels})


def seconds_per_step(model, batch_size: int, frames: int, repeats: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    denoiser = Denoiser(model, sigma_data=0.93)
    generator = torch.Generator().manual_seed(0)
    channels = model.config.in_channels
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        x0 = torch.randn(batch_size, channels, frames, generator=generator)
        sigma = torch.rand(batch_size, generator=generator) * 3
        start = time.perf_counter()
        loss = (denoiser(x0 + sigma[:, None, None] * torch.randn_like(x0), sigma) - x0).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["small-cpu", "small-cpu-fullrate", "small-cpu-transformer"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--in-channels", type=int, default=256, help="stems x latent channels (4 x 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size} x {args.frames} frames, {args.threads} thread(s), best of {args.repeats}\n")
    print("| recipe | network | parameters (M) | s / step |\n|---|---|---|---|")
    for name in args.recipes:
        model = network(name, args.in_channels)
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        seconds = seconds_per_step(model, args.batch_size, args.frames, args.repeats)
        print(f"| {name} | {type(model).__name__} | {parameters:.2f} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
