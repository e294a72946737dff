"""Fine-tune a pipeline on your own multitracks, in one command: a LoRA adapter on its UNet (default; a few MB
beside the base) or every weight of the UNet (--mode full, a new pipeline folder). DATA is a folder of songs, one
folder per song holding one audio file per stem (any format, rate, channels; missing stems are silence). The songs
are checked first (unknown stem names, unreadable files, stems of different lengths: one sentence, before any
work), encoded with the pipeline's VAE, trained on with `accelerate launch train/train_msldm.py` and the
`finetune` recipe (progress and ETA in its log), and exported with a model card naming the base pipeline, the data
and the training numbers. Run the same command again to resume. See docs/finetune.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HELP = "fine-tune a pipeline on your own songs' stems (LoRA adapter or full), resumable"
MODES = {"lora": "finetune", "full": "finetune-full"}  # --mode -> the recipe it trains with
RUN_FILE = "finetune.json"  # what a run in OUT was started with (a resumed run must match it)


def add_arguments(parser):
    from mslddm.hub import default_pipeline

    parser.add_argument("data", metavar="DATA", help="folder of songs: DATA/SONG/{stem}.wav|flac|mp3|..., or "
                                                     "DATA/{train,validation}/SONG/... when already split")
    parser.add_argument("--pipeline", default=default_pipeline(), help="pipeline folder or Hub repo id to start from")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, logs, the encoded songs, the result "
                                                     "(OUT/lora or OUT/pipeline); an existing one is resumed")
    parser.add_argument("--mode", choices=tuple(MODES), default="lora",
                        help="lora: a small adapter on the frozen UNet; full: every UNet weight trains")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the finetune recipe's, 16)")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha; None means the rank (a scale of 1)")
    parser.add_argument("--max_steps", "--max-steps", dest="max_steps", type=int, default=None,
                        help="total optimizer steps (default: the recipe's)")
    parser.add_argument("--time_budget_minutes", "--time-budget-minutes", dest="time_budget_minutes", type=float,
                        default=None, help="stop, checkpoint and export after this many minutes of training "
                                           "(per session; unset: no budget)")
    parser.add_argument("--stem-map", action="append", default=[], metavar="NAME=KNOWN",
                        help="read the files called NAME as the pipeline's stem KNOWN (e.g. keys=piano); repeatable")
    parser.add_argument("--drop-unknown", action="store_true",
                        help="leave out files whose names are none of the pipeline's stems (default: refuse them)")
    parser.add_argument("--holdout", type=float, default=0.1,
                        help="share of the songs held out for validation when DATA is not split")
    parser.add_argument("--on-length-mismatch", choices=("refuse", "pad", "trim"), default="refuse",
                        help="a song whose stems differ in length by more than 0.1 s: refuse it, pad the short "
                             "stems with silence, or trim to the shortest")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value of the finetune recipe, e.g. --set msldm.batch_size=8; repeatable")
    parser.add_argument("--num-processes", type=int, default=1, help="training processes (accelerate launch)")
    parser.add_argument("--device", default="auto", help="device of the encoding and the training: cpu, cuda, ... "
                                                         "(auto: cuda when available)")
    parser.add_argument("--check", action="store_true", help="only check the songs and print what would be "
                                                             "trained on; write nothing")
    parser.add_argument("--calibrate-clips", type=int, default=16,
                        help="after training, generate this many 12-s clips with the result and record the gains "
                             "that bring its stems to the songs' levels (mslddm calibrate-levels; 0: skip)")


def run(args) -> int:
    from mslddm.data.survey import DataError
    from mslddm.training.lock import FolderInUseError

    try:
        return _run(args)
    except (DataError, FolderInUseError) as error:
        raise SystemExit(str(error)) from None
    except KeyboardInterrupt:
        print(f"Interrupted: run the same command again to resume from the last checkpoint in {args.out}.",
              file=sys.stderr)
        return 130


def _run(args) -> int:
    # 1. Check the arguments, the recipe with its overrides, and the pipeline
    _check_numbers(args)
    lora = _lora_shape(args)
    pipeline, index = _pipeline(args.pipeline)
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    if out == data or data in out.parents or out in data.parents:
        raise SystemExit(f"--out {args.out} and DATA {args.data} overlap: the run folder must be apart from the "
                         "songs.")

    # 2. Check the songs (nothing is written before this passes)
    survey = _survey(args, data, index["stem_names"])
    print(survey.describe(), flush=True)
    if args.check:
        return 0

    # 3. Prepare the run folder: the songs' view, the record, the recipe, the latents (resumed when present)
    from mslddm.training.lock import folder_lock

    with folder_lock(out, "finetune", log=print):
        record = _record(args, pipeline, survey, lora)
        _check_resume(out, record)
        recipe = _prepare(args, out, pipeline, survey, record)
        _encode(args, out, pipeline, survey)

    # 4. Train (and export), in a process of its own
    code = _train(args, out, pipeline, recipe)
    if code == 0:
        # 5. Calibrate the result's output levels against the songs'
        _calibrate(args, out, pipeline)
        _say_where(args, out)
    return code


def _calibrate(args, out: Path, pipeline: Path) -> None:
    """Records the gains that bring the fine-tuned stems to the songs' levels (``mslddm calibrate-levels``: in
    the adapter's ``adapter_config.json``, or the full fine-tune's ``model_index.json``). A model too broken to
    calibrate keeps no gain, with the sentence why; the result is still written."""
    if args.calibrate_clips <= 0:
        return
    from mslddm.commands.calibrate_levels import load_for_calibration, measure_gains, record_gains

    print(f"Calibrating the output levels on {args.calibrate_clips} generated clips", flush=True)
    lora = args.mode == "lora"
    folder, adapter = (pipeline, out / "lora") if lora else (out / "pipeline", None)
    pipe, levels = load_for_calibration(folder, adapter)
    try:
        result = measure_gains(pipe, args.calibrate_clips, 12.0, 4, 1_000_000, levels)
    except ValueError as error:
        print(f"No output gains recorded: {error}", flush=True)
        return
    written = record_gains(result, folder, adapter)
    target, file = written.parent, written.name
    card = target / "README.md"
    if card.is_file():  # the model card says what was measured and recorded
        rows = "\n".join(f"| {name} | {row['training_dbfs']:.1f} | {row['generated_dbfs']:.1f} | {row['gain_db']:+.1f} |"
                         for name, row in result.items())
        card.write_text(card.read_text().rstrip("\n") + (
            f"\n\n## Output levels\n\nMeasured on {args.calibrate_clips} generated clips of 12 s (the pipeline's default "
            "sampler, seeds from 1000000), each stem's median gated level against the training songs'; the gain is "
            f"recorded in `{file}` (`stem_output_gains_db`) and applied to generated stems"
            + (" while the adapter is active, by its strength" if lora else "") + ".\n\n"
            "| stem | songs (dBFS) | generated (dBFS) | gain (dB) |\n|---|---|---|---|\n" + rows + "\n"))
    print(f"Output gains (dB), recorded in {written}: " + ", ".join(
        f"{name} {row['gain_db']:+.1f} ({row['generated_dbfs']:.1f} -> {row['training_dbfs']:.1f} dBFS)"
        for name, row in result.items()), flush=True)


def _check_numbers(args) -> None:
    """Flags that would fail later, refused now in one sentence."""
    import math

    if args.mode == "full" and (args.rank is not None or args.alpha is not None):
        raise SystemExit("--rank and --alpha are LoRA's: leave them out with --mode full.")
    checks = {"--rank": (args.rank, 1), "--max_steps": (args.max_steps, 1), "--num-processes": (args.num_processes, 1),
              "--calibrate-clips": (args.calibrate_clips, 0)}
    for flag, (value, least) in checks.items():
        if value is not None and value < least:
            raise SystemExit(f"{flag} must be at least {least}, got {value}.")
    for flag, value in {"--alpha": args.alpha, "--time_budget_minutes": args.time_budget_minutes}.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SystemExit(f"{flag} must be a positive number, got {value:g}.")
    if not (math.isfinite(args.holdout) and 0 <= args.holdout < 1):
        raise SystemExit(f"--holdout must be a share from 0 to below 1, got {args.holdout:g}.")


def _lora_shape(args) -> dict | None:
    """The adapter's rank and alpha as the run will train it (the recipe's, the flags', --set's); None in full mode.
    A bad --set is named here, before anything else."""
    from mslddm.training.recipes import load_recipe

    try:
        lora = load_recipe(MODES[args.mode], args.set)["msldm"].get("lora")
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.mode != "lora" or not lora:
        return None
    rank = args.rank or int(lora.get("rank", 16))
    alpha = args.alpha if args.alpha is not None else (
        lora.get("alpha") if args.rank is None and lora.get("alpha") is not None else rank)
    return {"rank": rank, "alpha": float(alpha)}


def _pipeline(name: str) -> tuple[Path, dict]:
    """The pipeline's local folder and its model_index.json; a kind that cannot be fine-tuned here is refused."""
    from mslddm.hub import resolve_pretrained_path
    from mslddm.kinds import STEM_LATENTS, kind_of_index

    try:
        folder = Path(resolve_pretrained_path(name)).resolve()
        index = json.loads((folder / "model_index.json").read_text())
    except (ValueError, OSError) as error:
        raise SystemExit(f"--pipeline {name}: {error}") from None
    kind = kind_of_index(index)
    if kind is None or kind.source != STEM_LATENTS:
        raise SystemExit(f"--pipeline {name} is a {kind.name if kind else 'foreign'} pipeline: mslddm finetune "
                         "fine-tunes pipelines of stem latents (MSLDM, ISLDM).")
    return folder, index


def _survey(args, data: Path, stem_names: list[str]):
    """The songs, checked against the pipeline's stems (mslddm.data.survey)."""
    from mslddm.data.survey import survey_songs

    stem_map = {}
    for item in args.stem_map:
        name, sep, known = item.partition("=")
        if not sep or not name.strip() or not known.strip():
            raise SystemExit(f"--stem-map expects NAME=KNOWN (e.g. keys=piano), got {item!r}.")
        stem_map[name.strip()] = known.strip()
    return survey_songs(data, stem_names, stem_map, args.drop_unknown, args.holdout, args.on_length_mismatch)


def _record(args, pipeline: Path, survey, lora: dict | None) -> dict:
    """What this run is (``OUT/finetune.json``): the base, the mode and the adapter's shape, and the songs."""
    from mslddm.hub import public_name

    return {"pipeline": public_name(args.pipeline), "pipeline_path": str(pipeline), "mode": args.mode,
            "lora": lora, "data": survey.to_dict()}


def _check_resume(out: Path, record: dict) -> None:
    """A run folder with checkpoints continues only the run it holds: same base pipeline, mode and LoRA shape."""
    from mslddm.training.checkpointing import checkpoint_folders

    path = out / RUN_FILE
    if not (path.is_file() and checkpoint_folders(out)):
        return
    before = json.loads(path.read_text())
    keys = ("pipeline_path", "mode", "lora")
    differ = {k: (before.get(k), record[k]) for k in keys if before.get(k) != record[k]}
    if differ:
        said = "; ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise SystemExit(f"{out} holds checkpoints of another fine-tune ({said}): run it with its own settings to "
                         "resume it, or choose another --out.")


def _prepare(args, out: Path, pipeline: Path, survey, record: dict) -> Path:
    """Writes the songs' view (``OUT/data``), ``OUT/finetune.json`` and the run's recipe ``OUT/recipe.yaml``."""
    import yaml

    from mslddm.data.survey import write_view
    from mslddm.files import durable_replace

    write_view(survey, out / "data")
    for name, text in ((RUN_FILE, json.dumps(record, indent=1) + "\n"), ("recipe.yaml", _recipe_text(
            args, out, pipeline, survey, record, yaml))):
        tmp = out / f".{name}.partial"
        tmp.write_text(text)
        durable_replace(tmp, out / name)
    return out / "recipe.yaml"


def _recipe_text(args, out: Path, pipeline: Path, survey, record: dict, yaml) -> str:
    """The run's recipe: the shipped one of its mode with the data, the pipeline and the adapter's shape."""
    msldm = {"vae": str(pipeline), "latents": str(out / "latents")}
    how = "every weight of the UNet"
    if record["lora"]:
        msldm["lora"] = dict(record["lora"])
        how = f"a LoRA adapter of rank {record['lora']['rank']}, alpha {record['lora']['alpha']:g}"
    recipe = {"name": MODES[args.mode], "base": MODES[args.mode],
              "description": f"Fine-tuned from `{record['pipeline']}` ({how}) with `mslddm finetune` on "
                             + survey.describe(),
              "data": {"root": str(out / "data"), "stems": list(survey.stem_names)}, "msldm": msldm}
    head = (f"# Written by `mslddm finetune` (docs/finetune.md): the shipped recipe `{MODES[args.mode]}` with this "
            "run's data, pipeline and flags (--set overrides are recorded in the checkpoints).\n")
    return head + yaml.safe_dump(recipe, sort_keys=False, width=110)


def _encode(args, out: Path, pipeline: Path, survey) -> None:
    """The songs' latents with the pipeline's VAE (``mslddm encode-latents``; songs done before are kept unless
    their files changed or they moved to another split)."""
    import argparse

    from mslddm.commands import encode_latents
    from mslddm.devices import resolve_device

    _forget_stale_latents(out / "latents", out / "data")
    policy = "pad" if args.on_length_mismatch == "refuse" else args.on_length_mismatch  # refused ones are gone
    parser = argparse.ArgumentParser(add_help=False)
    encode_latents.add_arguments(parser)
    code = encode_latents.run(parser.parse_args([
        str(out / "data"), "--vae", str(pipeline), str(out / "latents"), "--split", "train", "--split",
        "validation", "--stems", ",".join(survey.stem_names), "--layout", "stems", "--on-length-mismatch", policy,
        "--device", resolve_device(args.device)]))
    if code:
        raise SystemExit(code)


def _forget_stale_latents(latents: Path, view: Path) -> None:
    """Removes encoded songs that are no longer in their split of the view, or older than one of their files."""
    for path in sorted(latents.glob("*/*.safetensors")):
        song = view / path.parent.name / path.stem
        files = list(song.iterdir()) if song.is_dir() else []
        if not files or any(f.resolve().stat().st_mtime > path.stat().st_mtime for f in files):
            path.unlink()


def training_script() -> Path:
    """``train/train_msldm.py`` of the source checkout this mslddm runs from."""
    import mslddm

    script = Path(mslddm.__file__).resolve().parents[1] / "train" / "train_msldm.py"
    if not script.is_file():
        raise SystemExit(f"mslddm finetune runs train/train_msldm.py of an mslddm source checkout (pip install -e "
                         f"the repository); it is not at {script}.")
    return script


def _train(args, out: Path, pipeline: Path, recipe: Path) -> int:
    """``accelerate launch train/train_msldm.py`` on the run's recipe, resuming OUT's latest checkpoint."""
    import subprocess

    from mslddm.devices import resolve_device

    script = training_script()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(args.num_processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if args.num_processes > 1:
        launch.append("--multi_gpu")  # without GPUs accelerate runs the processes as MULTI_CPU (gloo DDP)
    elif resolve_device(args.device) == "cpu":
        launch.append("--cpu")
    command = launch + [str(script), "--config", str(recipe), "--output_dir", str(out), "--init_from",
                        str(pipeline), "--resume_from_checkpoint", "latest"]
    for flag in ("max_steps", "time_budget_minutes"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    for item in args.set:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(script.parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    print(f"Training: {' '.join(command[2:])}", flush=True)
    return subprocess.run(command, env=env, cwd=str(script.parents[1]), check=False).returncode


def _say_where(args, out: Path) -> None:
    """Where the result is and how to use it."""
    if args.mode == "lora":
        size = (out / "lora" / "pytorch_lora_weights.safetensors").stat().st_size / 1e6
        print(f"LoRA adapter: {out / 'lora'} ({size:.2f} MB). Try it: mslddm generate --pipeline {args.pipeline} "
              f"--lora {out / 'lora'}", flush=True)
    else:
        print(f"Pipeline: {out / 'pipeline'}. Try it: mslddm generate --pipeline {out / 'pipeline'}", flush=True)
