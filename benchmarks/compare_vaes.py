"""Compare VAEs on the same test chunks: reconstruction FAD (per stem and mix) against the real-data floor,
multi-scale mel distance, level loss, noise floor (frame-energy range), training speed and decode time.

    python benchmarks/compare_vaes.py runs/vae-small-dac/vae runs/vae-small/vae --data data/synth \
        --num-clips 64 --out runs/vae-comparison

Each VAE is a VAE folder (train_vae.py's OUTPUT/vae) or a pipeline folder. Prints one Markdown table (and writes it
to OUT/comparison.md); the per-VAE evaluation reports are under OUT/<name>/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mslddm.data.latents import load_vae
from mslddm.stems import DEFAULT_STEMS
from mslddm.evaluation.embedders import get_embedder
from mslddm.evaluation.protocol import ProtocolConfig, evaluate
from mslddm.evaluation.report import write_report
from mslddm.training.losses import MultiScaleMelLoss


class Reconstructor:
    """What the evaluation's reconstruction task needs of a pipeline, around a bare VAE."""

    def __init__(self, vae, stem_names):
        self.vae, self.stem_names, self.sample_rate = vae, list(stem_names), int(vae.config.sampling_rate)

    @torch.no_grad()
    def encode_stems(self, audio):
        b, k, t = audio.shape
        mean = self.vae.encode(audio.reshape(b * k, 1, t)).latent_dist.mean
        return mean.reshape(b, k * mean.shape[1], mean.shape[2])

    @torch.no_grad()
    def decode_latents(self, latents):
        b, kc, f = latents.shape
        c = self.vae.config.latent_channels
        audio = self.vae.decode(latents.reshape(b * kc // c, c, f)).sample
        return audio.reshape(b, kc // c, audio.shape[-1])


def decode_seconds(vae, repeats: int = 3) -> float:
    """Best of ``repeats`` wall-clock times to decode 12 s of 4 stems (one batch of 4)."""
    frames = vae.num_frames(12 * vae.config.sampling_rate)
    latents = torch.randn(4, vae.config.latent_channels, frames)
    best = float("inf")
    with torch.no_grad():
        vae.decode(latents)  # warm-up
        for _ in range(repeats):
            tic = time.perf_counter()
            vae.decode(latents)
            best = min(best, time.perf_counter() - tic)
    return best


def mel_distance(out_dir: Path, stem_names, sample_rate) -> dict:
    """Multi-scale mel distance (the VAE loss's mel term) of the saved reconstructions to the real chunks."""
    from mslddm.audio import read_audio
    from mslddm.evaluation.reference import Chunk, ReferenceClips

    state = json.loads((out_dir / "state" / "chunks-total.json").read_text())
    chunks = [Chunk(**c) for c in state["chunks"]]
    spec = state["spec"]
    reference = ReferenceClips(spec["root"], spec["split"], chunks, stem_names, sample_rate)
    loss = MultiScaleMelLoss(sample_rate)
    per_stem = {s: [] for s in stem_names}
    for i in range(len(reference)):
        real = reference[i]
        for k, stem in enumerate(stem_names):
            recon = read_audio(out_dir / "audio" / "reconstruction" / f"{i:05d}" / f"{stem}.wav")[0][0]
            if np.sqrt(np.mean(real[k] ** 2)) > 10 ** (-50 / 20):  # sounding stems only
                per_stem[stem].append(float(loss(torch.from_numpy(recon)[None], torch.from_numpy(real[k])[None])))
    values = {s: float(np.mean(v)) for s, v in per_stem.items() if v}
    values["mean"] = float(np.mean(list(values.values())))
    return values


def training_info(path: Path) -> dict:
    for candidate in (path / "training_state.json", path / "vae" / "training_state.json",
                      path.parent / "training_state.json"):
        if candidate.is_file():
            state = json.loads(candidate.read_text())
            return {"steps": state.get("step"), **(state.get("timing") or {})}
    return {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("vaes", nargs="+", help="VAE folders or pipeline folders")
    p.add_argument("--data", required=True, help="dataset root with train/ and test/ splits")
    p.add_argument("--out", default="runs/vae-comparison", help="output folder")
    p.add_argument("--num-clips", type=int, default=64, help="12-s test chunks (and as many training chunks)")
    p.add_argument("--stems", default=",".join(DEFAULT_STEMS), help="comma-separated stem names")
    p.add_argument("--batch-size", type=int, default=4, help="chunks reconstructed at once")
    args = p.parse_args(argv)

    stems = [s for s in args.stems.split(",") if s]
    embedder = get_embedder("musicnn")
    config = ProtocolConfig(num_clips=args.num_clips, batch_size=args.batch_size, tasks=("floor", "reconstruction"))
    rows, floor = [], None
    for path in map(Path, args.vaes):
        name = path.parent.name if path.name == "vae" else path.name
        vae = load_vae(str(path)).eval()
        out = Path(args.out) / name
        result = evaluate(Reconstructor(vae, stems), args.data, out, embedder, config,
                          cache_dir=Path(args.out) / "cache", log=print, pipeline_name=str(path)).to_dict()
        write_report(result, out)
        floor = floor or result["floor"]
        recon, levels = result["reconstruction"], result["reconstruction"]["levels"]
        real = recon["levels_reference"]
        rows.append({
            "vae": name, "class": type(vae).__name__,
            "parameters_M": round(sum(p.numel() for p in vae.parameters()) / 1e6, 2),
            "fad": recon["fad"], "mel": mel_distance(out, stems, vae.config.sampling_rate),
            "level_loss_db": {s: levels[s]["mean_dbfs"] - real[s]["mean_dbfs"] for s in stems},
            "range_db": {s: levels[s]["frame_energy_range_db"] for s in stems},
            "range_db_real": {s: real[s]["frame_energy_range_db"] for s in stems},
            "decode_12s_x4_s": round(decode_seconds(vae), 3), "training": training_info(path),
        })
    labels = [*stems, "mix"]
    lines = ["| VAE | params (M) | train min | steps | steps/s | " + " | ".join(f"FAD {x}" for x in labels)
             + " | mix / floor | mel dist | level loss dB (" + "/".join(s[0] for s in stems) + ") | frame range dB ("
             + "/".join(s[0] for s in stems) + ") | decode 4x12 s |",
             "|" + "---|" * (10 + len(labels))]
    lines.append("| real training chunks (floor) | | | | | " + " | ".join(f"{floor['fad'][x]:.2f}" for x in labels)
                 + " | 1.00 | 0 | 0 | " + "/".join(f"{rows[0]['range_db_real'][s]:.0f}" for s in stems) + " | |")
    for r in rows:
        t = r["training"]
        lines.append(
            f"| {r['vae']} ({r['class']}) | {r['parameters_M']} | {t.get('train_minutes_total', '?')} | "
            f"{t.get('steps', '?')} | {t.get('run_steps_per_second', '?')} | "
            + " | ".join(f"{r['fad'][x]:.2f}" for x in labels)
            + f" | {r['fad']['mix'] / floor['fad']['mix']:.2f} | {r['mel']['mean']:.3f} | "
            + "/".join(f"{r['level_loss_db'][s]:+.1f}" for s in stems) + " | "
            + "/".join(f"{r['range_db'][s]:.0f}" for s in stems) + f" | {r['decode_12s_x4_s']:.2f} s |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "comparison.md").write_text(table + "\n")
    (Path(args.out) / "comparison.json").write_text(json.dumps({"floor": floor, "vaes": rows}, indent=1))


if __name__ == "__main__":
    main()
