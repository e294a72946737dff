"""Evaluate a pipeline as the MSLDM paper does: FAD per stem and on the mix for total generation, sub-FAD for
every non-empty proper subset of stems for partial generation, and whether the generated stems play together
(rhythmic and harmonic agreement, silent stems); beside them, on the same test chunks, the real-data floor
(training chunks), the VAE's reconstruction and the level statistics of real, reconstructed and generated stems. Writes results.json, results.md and bar charts into --out;
generated audio is kept under --out/audio so that an interrupted run resumes. See docs/evaluation.md."""

from __future__ import annotations

import os
from pathlib import Path

HELP = "FAD, sub-FAD and stem-coherence metrics of a pipeline against a dataset's test split"


def add_arguments(parser):
    from mslddm.hub import default_pipeline

    parser.add_argument(
        "--pipeline",
        default=default_pipeline(),
        help="pipeline folder or Hub repo id, loaded only when audio must be generated; 'none': evaluate only "
        "audio already under --out (another model's, see docs/evaluation.md)",
    )
    parser.add_argument("--data", required=True, help="dataset root: DATA/<split>/TrackNNNNN/<stem>.wav")
    parser.add_argument("--out", required=True, help="output folder: results, charts, generated audio, state")
    parser.add_argument("--lora", default=None, metavar="PATH",
                        help="evaluate the pipeline with this LoRA adapter (mslddm finetune's OUT/lora)")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="the adapter's strength")
    add_protocol_arguments(parser)


def add_protocol_arguments(parser):
    """The protocol's options (shared with ``mslddm compare``)."""
    from mslddm.evaluation.embedders import EMBEDDERS
    from mslddm.evaluation.config import TASKS, ProtocolConfig
    from mslddm.schedulers.sampler_table import CHURN_SAMPLERS, SAMPLER_DEFAULTS, SAMPLER_HELP, SEPARATION_METHODS

    d = ProtocolConfig()
    parser.add_argument("--split", default=d.split, help="dataset split holding the reference tracks")
    parser.add_argument(
        "--tasks", default=",".join(d.tasks), help=f"comma-separated tasks to run, from {', '.join(TASKS)}"
    )
    parser.add_argument(
        "--vae-only", action="store_true",
        help="only the real-data floor and the VAE's reconstruction (--tasks floor,reconstruction): minutes, no "
        "sampling",
    )
    parser.add_argument(
        "--subsets",
        default=None,
        help="partial generation: comma-separated subset labels to run, e.g. B,DG (unset: all of them)",
    )
    parser.add_argument(
        "--num-clips",
        type=int,
        default=d.num_clips,
        help="total generation: clips generated and reference chunks",
    )
    parser.add_argument(
        "--num-chunks",
        type=int,
        default=d.num_chunks,
        help="partial generation: reference chunks with every stem present",
    )
    parser.add_argument("--clip-seconds", type=float, default=d.clip_seconds, help="length of every clip")
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="chunk draw seed; item i is generated with seed + i"
    )
    own = "default: the pipeline's scheduler config, recorded in results.json"
    parser.add_argument("--steps", type=int, default=None, help=f"sampler steps ({own})")
    parser.add_argument(
        "--sampler",
        choices=tuple(SAMPLER_DEFAULTS),
        default=d.sampler,
        help=f"{SAMPLER_HELP} ({own})",
    )
    parser.add_argument("--churn", type=float, default=None,
                        help=f"s_churn for {'/'.join(CHURN_SAMPLERS)}; the others take none ({own})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="clips generated at once")
    parser.add_argument("--separation-method", choices=SEPARATION_METHODS, default=d.separation_method,
                        help="separation task: dirac (MSDM's) or gaussian")
    parser.add_argument("--separation-steps", type=int, default=None,
                        help=f"separation task: Euler steps ({own})")
    parser.add_argument("--separation-churn", type=float, default=None,
                        help=f"separation task: s_churn ({own})")
    parser.add_argument("--window-s", type=float, default=None,
                        help="seconds of one generation window (default: each pipeline's own, its UNet's "
                        "window_frames); the clip length makes every clip one window, for models whose windows differ")
    parser.add_argument(
        "--embedder",
        choices=EMBEDDERS,
        default="musicnn",
        help="FAD embedder: musicnn runs offline; vggish is the paper's and needs --embedder-weights",
    )
    parser.add_argument(
        "--embedder-weights",
        default=None,
        help="vggish: torchvggish state dict file or Hub repo id (env MSLDDM_VGGISH_WEIGHTS); "
        "clap: folder or Hub repo id",
    )
    parser.add_argument(
        "--cache-dir",
        default=str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "mslddm" / "fad"),
        help="where reference statistics are cached, keyed by embedder, chunks and data",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute reference statistics, store nothing"
    )
    parser.add_argument(
        "--silence-db",
        type=float,
        default=d.silence_db,
        help="RMS level (dBFS) under which a stem counts as silent",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16", "auto"),
        default="float32",
        help="model weights' precision (sampling math stays float32); auto: as `mslddm generate` loads the pipeline "
             "by default (mslddm.devices.load_pipeline), to score what users get",
    )


def _split(value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _config(args, tasks):
    from mslddm.evaluation.protocol import ProtocolConfig

    return ProtocolConfig(
        split=args.split,
        num_clips=args.num_clips,
        num_chunks=args.num_chunks,
        clip_seconds=args.clip_seconds,
        seed=args.seed,
        num_inference_steps=args.steps,
        sampler=args.sampler,
        s_churn=args.churn,
        batch_size=args.batch_size,
        tasks=tasks,
        subsets=_split(args.subsets),
        silence_db=args.silence_db,
        separation_method=args.separation_method,
        separation_steps=args.separation_steps,
        separation_churn=args.separation_churn,
        window_s=args.window_s,
    )


def _resolved_config(args, tasks, pipeline: str, out):
    """The protocol of ``args``, unset sampler settings resolved from the pipeline's own scheduler config (read
    without loading the models); for ``--pipeline none``, from the settings of the audio already under ``out``."""
    from mslddm.evaluation.protocol import resolve_sampling
    from mslddm.hub import resolve_pretrained_path
    from mslddm.schedulers import EDMScheduler

    config = _config(args, tasks)
    scheduler = None
    if pipeline.lower() != "none" and not config.is_resolved():
        try:
            scheduler = EDMScheduler.from_pretrained(resolve_pretrained_path(pipeline), subfolder="scheduler")
        except (OSError, ValueError) as error:
            raise SystemExit(f"--pipeline {pipeline}: its scheduler config could not be read ({error}).") from None
    return resolve_sampling(config, scheduler, out)


def run(args) -> int:
    from mslddm.evaluation.report import markdown, write_report

    results = evaluate_one(args, args.pipeline, args.out)
    paths = write_report(results, args.out)
    print(markdown(results))
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def check_protocol_arguments(args):
    """The tasks asked for, after checking every protocol option (SystemExit with one sentence otherwise)."""
    from mslddm.evaluation.protocol import TASKS, VAE_TASKS

    tasks = VAE_TASKS if args.vae_only else (_split(args.tasks) or ())
    if not tasks or any(t not in TASKS for t in tasks):
        raise SystemExit(f"--tasks must name some of {TASKS}, got {args.tasks!r}.")
    for name in ("num_clips", "num_chunks", "steps", "batch_size", "separation_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1.")
    if args.clip_seconds <= 0:
        raise SystemExit("--clip-seconds must be positive.")
    if args.window_s is not None and not 0 < args.window_s < float("inf"):
        raise SystemExit(f"--window-s must be a positive, finite number of seconds, got {args.window_s!r}.")
    if args.separation_churn is not None and args.separation_churn < 0:
        raise SystemExit("--separation-churn must be at least 0.")
    if not (Path(args.data) / args.split).is_dir():
        raise SystemExit(f"--data: no {args.split!r} split at {Path(args.data) / args.split}.")
    return tasks


def _stored_results(out, protocol: dict) -> dict | None:
    """``out/results.json`` when it was made with ``protocol`` (the settings, embedder, data, pipeline), by a run of
    the same tasks or more; separation settings matter only when separation is asked for."""
    import json

    path = Path(out) / "results.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return None
    found = stored.get("protocol", {})
    separating = "separation" in protocol.get("tasks", ())

    def same(key, value):
        if key == "tasks":  # a run of more tasks holds every result asked for
            return set(value) <= set(found.get(key) or ())
        if key.startswith("separation_") and not separating:
            return True
        return found.get(key) == value

    return stored if all(same(k, v) for k, v in protocol.items()) else None


def evaluate_one(args, pipeline: str, out, reuse: bool = False) -> dict:
    """Runs the protocol of ``args`` on one pipeline (folder, Hub id or 'none') into ``out``; returns the results.
    With ``reuse``, a ``results.json`` already in ``out`` from the same protocol is returned as it is."""
    import torch
    from tqdm.auto import tqdm

    from mslddm.devices import resolve_device
    from mslddm.evaluation.embedders import get_embedder
    from mslddm.evaluation.protocol import evaluate

    tasks = check_protocol_arguments(args)
    device = resolve_device(args.device)
    lora, scale = getattr(args, "lora", None), getattr(args, "lora_scale", 1.0)  # `mslddm compare` has none
    shown = str(pipeline) + (f" + LoRA {lora} at {scale:g}" if lora else "")  # what results.json names
    try:
        config = _resolved_config(args, tasks, pipeline, out)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    try:
        embedder = get_embedder(args.embedder, weights=args.embedder_weights, device=device)
    except (ValueError, ImportError, FileNotFoundError) as error:
        raise SystemExit(f"--embedder {args.embedder}: {error}") from None
    if reuse:
        import json

        wanted = json.loads(json.dumps({**config.describe(), "embedder": embedder.identity(),
                                        "data": str(Path(args.data).resolve()), "pipeline": shown}))
        stored = _stored_results(out, wanted)
        if stored is not None:
            print(f"{out}: results.json of the same protocol found; reused (delete it to evaluate again).")
            return stored

    def load_pipeline():
        from mslddm import MultiSourceLatentPipeline

        if args.dtype == "auto":
            from mslddm.devices import load_pipeline as load_as_generate_does

            pipe = load_as_generate_does(pipeline, device, "auto", "off")[0]
        else:
            pipe = MultiSourceLatentPipeline.from_pretrained(pipeline, dtype=getattr(torch, args.dtype)).to(device)
        if lora:
            pipe.load_lora_weights(lora, scale=scale)
        return pipe

    try:
        result = evaluate(
            None if pipeline.lower() == "none" else load_pipeline,
            args.data,
            out,
            embedder,
            config,
            cache_dir=None if args.no_cache else Path(args.cache_dir).expanduser(),
            progress=lambda it, **kw: tqdm(it, **kw),
            log=lambda msg: tqdm.write(msg),
            pipeline_name="" if pipeline.lower() == "none" else shown,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    results = result.to_dict()
    results["protocol"]["device"] = device
    return results
