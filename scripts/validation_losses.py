"""The validation losses train_msldm.py logs (total, and loss_given_one: each stem given in turn), for any pipeline
folders on the same fixed validation latents: the step-0 point of a run continued from a pipeline, or two runs
compared on one footing.

    python scripts/validation_losses.py --latents runs/latents pipelines/mslddm-synth-small runs/cond/pipeline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


def main(argv=None) -> int:
    from train_msldm import validation_loss  # the training script's own definition

    from mslddm import MultiSourceLatentPipeline
    from mslddm.data.datasets import LatentSegmentDataset, validation_segments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="+", help="pipeline folders")
    parser.add_argument("--latents", required=True, help="an encode-latents folder (its validation split)")
    parser.add_argument("--seconds", type=float, default=12.0, help="validation segment length")
    parser.add_argument("--segments", type=int, default=8, help="validation segments (the recipes': 8)")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed (fixed noise)")
    args = parser.parse_args(argv)
    rows = {}
    for path in args.pipelines:
        pipe = MultiSourceLatentPipeline.from_pretrained(path)
        frames = int(round(args.seconds * pipe.sample_rate / pipe.vae.hop_length))
        val = LatentSegmentDataset(args.latents, "validation", frames, random_offsets=False, seed=args.seed)
        segments, _ = validation_segments(val, args.segments)
        multiple = pipe.unet.length_multiple
        latents = segments.flatten(1, 2)[..., : frames - frames % multiple].float()
        sigma_data, k = pipe.scheduler.config.sigma_data, len(pipe.stem_names)
        with torch.no_grad():
            row = {"loss": validation_loss(pipe.unet, latents, sigma_data, args.seed),
                   "loss_given_one": sum(validation_loss(pipe.unet, latents, sigma_data, args.seed, given=i,
                                                         num_stems=k) for i in range(k)) / k}
        rows[path] = row
        print(json.dumps({path: row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
