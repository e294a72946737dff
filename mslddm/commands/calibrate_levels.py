"""Measure how much quieter (or louder) a pipeline's generated stems come out than its training data, and record
the difference as the pipeline's ``stem_output_gains_db``: every later generation gives its stems that gain after
decoding, so a band comes back at the level the model was trained at (and, in partial generation, in the level
relation the training data had to the given stem).

Total generation of ``--clips`` clips with the pipeline's default sampler (seeds from ``--seed``, apart from the
evaluation's), each stem's median gated level (:func:`mslddm.loudness.stem_levels`, the measure the pipeline's
``stem_levels_dbfs`` was recorded with) against its training level. ``--write`` stores the gains in the folder's
``model_index.json`` (nothing else changes); without it the table is printed only. See docs/ablations.md, "Where
the level is lost".

With ``--lora ADAPTER`` the pipeline generates with the adapter at strength 1, against the levels of the songs the
adapter was trained on (its ``adapter_config.json``), and ``--write`` records the gains there: the pipeline applies
them while the adapter is active (docs/finetune.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HELP = "measure the generated stems' level against the training data's and record the gain that closes it"


def add_arguments(parser):
    parser.add_argument("--pipeline", required=True, help="a pipeline folder (it must record stem_levels_dbfs)")
    parser.add_argument("--clips", type=int, default=16, help="clips generated to measure on (default 16)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each clip in seconds (default 12)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips generated at once (default 4)")
    parser.add_argument("--seed", type=int, default=1_000_000,
                        help="clip i uses seed SEED + i (default 1000000: apart from the evaluation's 0 + i)")
    parser.add_argument("--lora", default=None, metavar="ADAPTER",
                        help="calibrate a LoRA adapter of the pipeline (at strength 1) against its training songs' "
                             "levels; --write records the gains in its adapter_config.json")
    parser.add_argument("--write", action="store_true",
                        help="record the gains in the pipeline's model_index.json (stem_output_gains_db), or with "
                             "--lora in the adapter's adapter_config.json")


def check_counts(clips: int, seconds: float, batch_size: int) -> None:
    if clips < 1 or seconds <= 0 or batch_size < 1:
        raise ValueError(f"--clips and --batch-size must be at least 1 and --seconds above 0, got {clips}, "
                         f"{batch_size} and {seconds}.")


def measure_gains(pipe, clips: int, seconds: float, batch_size: int, seed: int, levels: dict | None = None) -> dict:
    """``{stem: {"training_dbfs", "generated_dbfs", "gain_db"}}``: the pipeline's raw output (any recorded gains
    left off; adapters as loaded) against ``levels`` (default: the pipeline's training levels)."""
    import torch

    from mslddm.loudness import OUTPUT_GAIN_LIMIT_DB, stem_levels

    levels = levels or pipe.stem_levels_dbfs
    if not levels:
        raise ValueError("This pipeline records no training levels (stem_levels_dbfs): there is nothing to "
                         "calibrate its output against. Export it from a training run that measured them.")
    check_counts(clips, seconds, batch_size)
    with pipe.raw_output_levels():  # measure the model itself
        audio = []
        for start in range(0, clips, batch_size):
            count = min(batch_size, clips - start)
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
            audio.extend(pipe(num_samples=count, audio_length_in_s=seconds, generator=generators).stems)
    names = [n for n in pipe.stem_names if n in levels]
    try:
        generated = stem_levels([clip[[pipe.stem_names.index(n) for n in names]] for clip in audio], names,
                                pipe.sample_rate)
    except ValueError as error:
        raise ValueError(f"The pipeline generated silence: {error} A model that does so is broken, not quiet; "
                         "no gain is recorded.") from None
    result = {}
    for name in names:
        gain = round(levels[name] - generated[name], 1)
        if not math.isfinite(gain) or abs(gain) > OUTPUT_GAIN_LIMIT_DB:
            raise ValueError(f"The generated {name} is {generated[name]:.1f} dBFS against its training level "
                             f"{levels[name]:.1f}: a gain of {gain:+.1f} dB is beyond +-{OUTPUT_GAIN_LIMIT_DB:g} dB, "
                             "a broken model rather than a quiet one; no gain is recorded.")
        result[name] = {"training_dbfs": levels[name], "generated_dbfs": generated[name], "gain_db": gain}
    return result


def write_gains(folder, gains: dict, file: str = "model_index.json") -> None:
    """Stores ``{stem: dB}`` as ``stem_output_gains_db`` in ``folder/file`` (a pipeline's ``model_index.json``
    or an adapter's ``adapter_config.json``; written whole, then renamed: a killed write leaves the old file)."""
    from mslddm.files import durable_replace
    from mslddm.loudness import OUTPUT_GAIN_LIMIT_DB, check_stem_levels

    path = Path(folder) / file
    index = json.loads(path.read_text())
    index["stem_output_gains_db"] = check_stem_levels(gains, index.get("stem_names", list(gains)),
                                                      "stem_output_gains_db", OUTPUT_GAIN_LIMIT_DB, "dB")
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(index, indent=2) + "\n")
    durable_replace(partial, path)


def load_for_calibration(folder, adapter=None):
    """``(pipe, levels)``: the pipeline in float32 as `mslddm evaluate` scores it (with ``adapter`` loaded at
    strength 1), progress bars off, and the levels to calibrate against: the adapter's training songs' when it
    records them, else None (the pipeline's own)."""
    import torch

    from mslddm import MultiSourceLatentPipeline
    from mslddm.pipelines.lora import read_adapter_config

    pipe = MultiSourceLatentPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if adapter is None:
        return pipe, None
    pipe.load_lora_weights(adapter)
    return pipe, read_adapter_config(adapter).get("stem_levels_dbfs")


def record_gains(result: dict, folder, adapter=None) -> Path:
    """Writes the measured gains where they apply: the adapter's ``adapter_config.json``, else the pipeline's
    ``model_index.json``; returns that file."""
    target, file = (Path(adapter), "adapter_config.json") if adapter is not None else (Path(folder), "model_index.json")
    write_gains(target, {name: row["gain_db"] for name, row in result.items()}, file)
    return target / file


def _adapter_folder(path) -> Path:
    """A local adapter folder (the gains are recorded in it): its weights and its adapter_config.json."""
    from mslddm.pipelines.lora import ADAPTER_CONFIG_NAME, LORA_WEIGHT_NAME

    folder = Path(path)
    if not (folder / LORA_WEIGHT_NAME).is_file() or not (folder / ADAPTER_CONFIG_NAME).is_file():
        raise ValueError(f"--lora {path} is not a LoRA adapter folder (with {LORA_WEIGHT_NAME} and "
                         f"{ADAPTER_CONFIG_NAME}).")
    return folder


def run(args) -> int:
    from mslddm.hub import PipelineLoadError, resolve_pretrained_path

    try:
        check_counts(args.clips, args.seconds, args.batch_size)  # before any loading
        folder = resolve_pretrained_path(args.pipeline)
        if args.write and not (Path(folder) / "model_index.json").is_file():
            raise SystemExit(f"{args.pipeline} is not a pipeline folder with a model_index.json to record gains in.")
        adapter = _adapter_folder(args.lora) if args.lora else None
        pipe, levels = load_for_calibration(folder, adapter)
        if adapter is not None and not levels:
            print(f"The adapter {args.lora} records no training levels: calibrated against the pipeline's.")
    except (PipelineLoadError, ValueError, OSError, ModuleNotFoundError) as error:
        raise SystemExit(str(error)) from None
    try:
        result = measure_gains(pipe, args.clips, args.seconds, args.batch_size, args.seed, levels)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    settings = pipe.scheduler.sampling_settings(None, None, None)
    print(f"{args.clips} clips of {args.seconds:g} s, the pipeline's default sampler ({settings.sampler} x "
          f"{settings.num_inference_steps}, churn {settings.s_churn:g})")
    print("| stem | training level (dBFS) | generated (dBFS) | gain (dB) |\n|---|---|---|---|")
    for name, row in result.items():
        print(f"| {name} | {row['training_dbfs']:.1f} | {row['generated_dbfs']:.1f} | {row['gain_db']:+.1f} |")
    if args.write:
        print(f"Recorded stem_output_gains_db in {record_gains(result, folder, adapter)}")
    else:
        print("Not recorded (pass --write to store them in the pipeline).")
    return 0
