"""Generation speed and peak memory: seconds per 12-s song of 4 stems, real-time factor, songs per second.

Each row runs in a fresh subprocess so its peak memory is its own. Random weights: speed does not depend on
training. Prints a Markdown table (paste it into docs/benchmarks.md with the command line).

    python benchmarks/benchmark_generation.py                       # tiny and small on CPU
    python benchmarks/benchmark_generation.py --presets msldm small --device cuda --batch-sizes 1 16
    python benchmarks/benchmark_generation.py --presets msldm --samplers euler:150 --dtypes float32 bfloat16 \
        --reference --snr                                           # against the reference implementation

``--reference`` adds rows for the reference implementation of the paper's models in the same run (the `reference`
extra: audio-diffusion-pytorch's ``UNet1d`` and descript-audio-codec's DAC decoder, float32, the MSLDM sampling
loop: one network call per Euler step), so that ratios are measured, not remembered. ``--snr`` runs every
non-float32 row once more in float32 with the same seeds and reports the SNR (dB) of its stems against those.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys


def _peak_mib(device) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def snr_db(reference, estimate) -> float:
    """``10 log10(|ref|^2 / |ref - est|^2)`` over all stems and samples."""
    import numpy as np

    reference, estimate = np.asarray(reference, dtype=np.float64), np.asarray(estimate, dtype=np.float64)
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((reference - estimate) ** 2), 1e-30)))


def measure(preset, device, batch, seconds, sampler, steps, dtype, repeats, snr=False, compile_unet=False,
            pipeline=None):
    """One row. ``pipeline``: a pipeline folder loaded as ``mslddm generate`` loads it (``devices.load_pipeline``
    with ``dtype`` and its default compile policy), instead of the random-weight ``preset``. ``sampler`` ``decode``:
    the decoding alone (the physical floor of any sampler). ``first_call_s`` is the first generation of the row's
    settings in this process: allocations, kernel selection and any compilation."""
    import time

    import torch

    if pipeline:
        from mslddm.devices import load_pipeline

        pipe, device, dtype = load_pipeline(pipeline, device, dtype)
        preset = os.path.basename(os.path.normpath(pipeline))
    else:
        from mslddm.devices import resolve_dtype
        from mslddm.factory import build_pipeline

        pipe = build_pipeline(preset)
        if dtype == "auto":  # as `mslddm generate` would pick for a pipeline of this size
            dtype = str(resolve_dtype("auto", device, sum(p.numel() for p in pipe.unet.parameters()))).split(".")[-1]
        pipe = pipe.to(device=device, dtype=getattr(torch, dtype))
        if compile_unet:  # the UNet only where it pays (GPUs), the VAE's activations everywhere
            pipe.enable_compile(unet=device.startswith("cuda"))
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    decode_only = sampler == "decode"
    sampling = dict(sampler=pipe.scheduler.config.sampler, num_inference_steps=1) if decode_only else \
        dict(sampler=sampler, num_inference_steps=steps)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def generate():  # (sampling seconds, decoding seconds)
        sync()
        t0 = time.perf_counter()
        lat = pipe(audio_length_in_s=seconds, num_samples=batch, generator=gens, output_type="latent",
                   **sampling).stems
        sync()
        t1 = time.perf_counter()
        pipe.decode_latents(lat.flatten(1, 2))
        sync()
        return (0.0 if decode_only else t1 - t0), time.perf_counter() - t1

    first = sum(generate())  # the first call (warm-up: allocator, kernels, compilation), then the timed runs
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sample_t, decode_t = zip(*(generate() for _ in range(repeats)))
    s, d = min(sample_t), min(decode_t)
    peak = _peak_mib(device)
    params = sum(p.numel() for p in pipe.unet.parameters()) + sum(p.numel() for p in pipe.vae.parameters())
    row = {"preset": preset + (" +compile" if compile_unet else ""), "params_M": params / 1e6, "device": device,
           "dtype": dtype, "batch": batch, "sampler": "decode only" if decode_only else f"{sampler} x{steps}",
           "evals": 0 if decode_only else pipe.scheduler.sampling_settings(sampler, steps).model_evaluations,
           "sample_s": s / batch, "decode_s": d / batch, "song_s": (s + d) / batch, "rtf": seconds * batch / (s + d),
           "songs_per_s": batch / (s + d), "peak_MiB": peak, "snr_db": None, "first_call_s": first}
    if snr and dtype != "float32" and not decode_only:
        kwargs = dict(audio_length_in_s=seconds, num_inference_steps=steps, sampler=sampler, num_samples=batch)
        low = pipe(generator=[torch.Generator().manual_seed(i) for i in range(batch)], **kwargs).stems
        exact = pipe.to(dtype=torch.float32)(generator=[torch.Generator().manual_seed(i) for i in range(batch)],
                                              **kwargs).stems
        row["snr_db"] = snr_db(exact, low)
    return row


def measure_reference(device, batch, seconds, steps, repeats, **unused):
    """The reference implementation of the paper's models: audio-diffusion-pytorch's UNet1d (the released MSLDM
    configuration) called once per Euler step, then descript-audio-codec's DAC decoder (the SourceVAE's, without
    its final tanh) on every stem, float32."""
    import importlib.util
    import math
    import time
    import types

    import torch

    from audio_diffusion_pytorch.modules import UNet1d  # before the stand-in below: it probes torchaudio

    stand_in = importlib.util.find_spec("torchaudio") is None or not _loads("torchaudio")
    if stand_in:  # the torchaudio descript-audio-codec pulls does not load with CPU torch; dac.model.dac never uses it
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    import dac.model.dac as dac_model

    if stand_in:
        del sys.modules["torchaudio"]

    from mslddm.conversion import UNET_PRESETS
    from mslddm.models.unet_1d_multisource import MultiSourceUNet1DModel

    torch.manual_seed(0)
    with torch.device("meta"):  # the released configuration's remaining switches: this package's defaults
        config = MultiSourceUNet1DModel.from_config(UNET_PRESETS["msldm"]).config
    switches = ("resnet_groups", "kernel_multiplier_downsample", "use_nearest_upsample", "use_skip_scale",
                "use_attention_bottleneck")
    unet = UNet1d(**UNET_PRESETS["msldm"], **{k: config[k] for k in switches}, kernel_sizes_init=[1, 3, 7],
                  use_context_time=True).eval().to(device)
    decoder = dac_model.Decoder(80, 1536, [8, 5, 4, 2], 1)
    decoder.model = decoder.model[:-1]
    decoder = decoder.eval().to(device)
    frames = math.ceil(seconds * 22050 / 320 / 64) * 64
    sigmas = torch.linspace(3.0, 0.0, steps + 1)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def sample(n):
        x = torch.randn(batch, 320, frames, device=device) * sigmas[0]
        for i in range(n):
            t = torch.full((batch,), float(sigmas[i]), device=device)
            x = x + (sigmas[i + 1] - sigmas[i]) * unet(x, t)
        return x

    start = time.perf_counter()
    sample(2)
    first = time.perf_counter() - start
    sample_t, decode_t = [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        latents = sample(steps)
        sync()
        t1 = time.perf_counter()
        with torch.no_grad():
            decoder(latents.reshape(batch * 4, 80, frames))
        sync()
        sample_t.append(t1 - t0)
        decode_t.append(time.perf_counter() - t1)
    s, d = min(sample_t), min(decode_t)
    params = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in decoder.parameters())
    return {"preset": "reference msldm (UNet1d + DAC decoder)", "params_M": params / 1e6, "device": device,
            "dtype": "float32", "batch": batch, "sampler": f"euler x{steps}", "evals": steps, "sample_s": s / batch,
            "decode_s": d / batch, "song_s": (s + d) / batch, "rtf": seconds * batch / (s + d),
            "songs_per_s": batch / (s + d), "peak_MiB": _peak_mib(device), "snr_db": None, "first_call_s": first}


def _loads(module: str) -> bool:
    try:
        __import__(module)
        return True
    except (ImportError, OSError, RuntimeError):
        return False


def sampler_specs(specs) -> list[tuple[str, int, str | None]]:
    """``["euler:150", "student@consistency:1/2/4/8"]`` -> ``[("euler", 150, None), ("consistency", 1, "student"),
    ("consistency", 2, "student"), ...]``: a ``FOLDER@`` prefix runs the spec on that ``--pipelines`` folder only (its
    name), as a teacher and its student are compared in one run; a sampler not in the table, or steps that are not
    positive integers, stop with one sentence."""
    from mslddm.schedulers.sampler_table import SAMPLERS

    triples = []
    for spec in specs:
        folder, _, rest = spec.rpartition("@")
        only = os.path.basename(os.path.normpath(folder)) if folder else None
        if rest == "decode":  # the decoding alone: the floor under every sampler
            triples.append(("decode", 0, only))
            continue
        sampler, _, steps = rest.partition(":")
        if sampler not in SAMPLERS or not all(s.isdigit() and int(s) > 0 for s in steps.split("/")):
            raise SystemExit(f"--samplers {spec!r}: expected [FOLDER@]SAMPLER:STEPS[/STEPS...] with SAMPLER one of "
                             f"{', '.join(SAMPLERS)}, e.g. consistency:1/2/4/8, or decode (the decoding alone).")
        triples += [(sampler, int(s), only) for s in steps.split("/")]
    return triples


def fad_columns(items) -> dict:
    """``["[FOLDER@]SAMPLER:STEPS=results.json", ...]`` -> ``{(folder name or None, "SAMPLER xSTEPS"): "F [lo, hi]"}``,
    the mix FAD of an `mslddm evaluate` run (its total-generation task) with its bootstrap interval."""
    found = {}
    for item in items:
        key, sep, path = item.partition("=")
        folder, _, spec = key.rpartition("@")
        sampler, _, steps = spec.partition(":")
        if not sep or not sampler or not steps.isdigit():
            raise SystemExit(f"--fad {item!r}: expected [FOLDER@]SAMPLER:STEPS=RESULTS_JSON.")
        try:
            mix = json.load(open(path))["total"]["fad_interval"]["mix"]
            value, low, high = mix["value"], mix["low"], mix["high"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"--fad {item!r}: no mix FAD with an interval in {path} ({error!r}).")
        name = os.path.basename(os.path.normpath(folder)) if folder else None
        found[(name, f"{sampler} x{steps}")] = f"{value:.2f} [{low:.2f}, {high:.2f}]"
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=None, help="random-weight presets (default: tiny small)")
    p.add_argument("--pipelines", nargs="+", default=[], metavar="FOLDER",
                   help="pipeline folders, loaded as `mslddm generate` loads them (dtype and compile auto unless "
                        "--dtypes says otherwise)")
    p.add_argument("--fad", action="append", default=[], metavar="[FOLDER@]SAMPLER:STEPS=RESULTS_JSON",
                   help="a mix FAD column for the rows of that sampler and steps (of that pipeline folder), read from "
                        "an `mslddm evaluate` results.json; repeat")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=None, choices=["auto", "float32", "float16", "bfloat16"],
                   help="weight dtypes (default: float32 for the preset rows, auto for the --pipelines rows)")
    p.add_argument("--reference", action="store_true",
                   help="also time the reference implementation of the paper's models (the `reference` extra)")
    p.add_argument("--snr", action="store_true", help="SNR of every non-float32 row's stems against float32")
    p.add_argument("--compile", action="store_true", help="also rows with torch.compile on the UNet")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    p.add_argument("--samplers", nargs="+", default=["euler:150", "dpmpp_2m:20"],
                   help="sampler:steps pairs, several steps separated by / (euler = the paper's sampler; "
                        "consistency:1/2/4/8 = a distilled student's sampler at 1, 2, 4 and 8 steps)")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--_row", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._row:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        spec = json.loads(args._row)
        fn = measure_reference if spec.pop("reference", False) else measure
        print(json.dumps(fn(**spec)))
        return
    presets = args.presets if args.presets is not None else ([] if args.pipelines else ["tiny", "small"])
    fads = fad_columns(args.fad)
    specs = []
    triples = sampler_specs(args.samplers)
    names = {os.path.basename(os.path.normpath(f)) for f in args.pipelines}
    unknown = sorted({only for _, _, only in triples if only is not None} - names)
    if unknown:
        raise SystemExit(f"--samplers names {', '.join(unknown)}, which is not among --pipelines ({', '.join(sorted(names)) or 'none'}).")
    for sampler, steps, only in triples:
        for batch in args.batch_sizes:
            common = dict(device=args.device, batch=batch, seconds=args.seconds, steps=steps,
                          repeats=args.repeats)
            if args.reference and sampler == "euler" and only is None:
                specs.append(dict(reference=True, **common))
            for folder in args.pipelines:
                if only is not None and os.path.basename(os.path.normpath(folder)) != only:
                    continue
                for dtype in args.dtypes or ["auto"]:
                    specs.append(dict(preset=None, pipeline=folder, sampler=sampler, dtype=dtype, snr=args.snr,
                                      **common))
            for preset in presets if only is None else ():
                for dtype in args.dtypes or ["float32"]:
                    for compiled in (False, True) if args.compile else (False,):
                        specs.append(dict(preset=preset, sampler=sampler, dtype=dtype, snr=args.snr,
                                          compile_unet=compiled, **common))
    rows = []
    for row in specs:
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
            "rtf", "songs_per_s", "peak_MiB", "first_call_s"]
    if fads:
        cols.append("mix_fad [95%]")
        for r in rows:
            r["mix_fad [95%]"] = fads.get((r["preset"], r["sampler"]), fads.get((None, r["sampler"])))
    reference = {(r["batch"], r["sampler"]): r["song_s"] for r in rows if r["preset"].startswith("reference")}
    if reference:
        cols.append("vs_reference")
    if args.snr:
        cols.append("snr_db")
    for r in rows:
        ref = reference.get((r["batch"], r["sampler"]))
        r["vs_reference"] = r["song_s"] / ref if ref else None
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("" if r.get(c) is None else f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")


if __name__ == "__main__":
    main()
