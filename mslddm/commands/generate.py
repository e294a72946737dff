"""Generate stems and their mix with a pretrained pipeline: all stems (total generation) or the stems missing
from the ones you give (partial generation), or continue given stems (--extend). Music longer than the model's
window (a whole song under a given take) is generated in overlapping windows. Writes one folder per sample with a
WAV per stem, mix.wav and settings.json (every setting, the seed and the gain applied)."""

from __future__ import annotations

import json
import time
from pathlib import Path

HELP = "generate stems and mix (total or partial generation) into WAV files"


def add_arguments(parser):
    from mslddm.hub import default_pipeline

    parser.add_argument("--pipeline", default=default_pipeline(),
                        help="pipeline folder or Hub repo id (env MSLDDM_PIPELINE overrides the default)")
    parser.add_argument("--stem", action="append", default=[], metavar="NAME=FILE",
                        help="a given stem (partial generation); repeat for several; any format, rate, channels")
    parser.add_argument("--generate", action="append", default=None, metavar="NAME",
                        help="a stem to generate; repeat or comma-separate (default: every stem not given)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds to generate (default: length of the given stems, the whole song, else 12)")
    parser.add_argument("--extend", type=float, default=None, metavar="SECONDS",
                        help="continue the given stems by SECONDS: they are kept and continue, the other stems are "
                             "generated throughout (excludes --duration)")
    parser.add_argument("--from-result", default=None, metavar="DIR",
                        help="give every stem of an earlier result folder (a sample_* folder of this command) at "
                             "the levels the model made them; with --extend, continues that result")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="window of windowed generation (default: the model's, recorded in its UNet config)")
    parser.add_argument("--overlap", type=float, default=None, metavar="SECONDS",
                        help="seconds each window shares with the one before (default: a third of the window)")
    from mslddm.schedulers.sampler_table import CHURN_SAMPLERS, SAMPLER_DEFAULTS, SAMPLER_HELP

    own = "default: the pipeline's scheduler config, written to settings.json"
    parser.add_argument("--sampler", choices=tuple(SAMPLER_DEFAULTS), default=None,
                        help=f"{SAMPLER_HELP} ({own})")
    parser.add_argument("--steps", type=int, default=None, help=f"sampler steps ({own})")
    parser.add_argument("--churn", type=float, default=None, help=f"s_churn for {'/'.join(CHURN_SAMPLERS)} ({own})")
    parser.add_argument("--reconstruction-guidance", type=float, default=None, metavar="W",
                        help="how closely the generated stems follow the given ones (reconstruction guidance, about "
                             "3x the time of a step; 0: plain imputation; default: the pipeline's)")
    parser.add_argument("--lora", default=None, metavar="PATH",
                        help="a LoRA adapter of the pipeline (a folder written by `mslddm finetune`, or a Hub id)")
    parser.add_argument("--lora-scale", type=float, default=1.0,
                        help="the adapter's strength: 0 is the base pipeline, 1 the adapter as trained")
    parser.add_argument("--no-match-levels", dest="match_levels", action="store_false", default=None,
                        help="encode given stems at their own level (default: set them to the pipeline's training "
                             "levels first and give the band back at their level, when the pipeline records them)")
    parser.add_argument("--max-stem-seconds", type=float, default=None,
                        help="longest given stem, and longest result, accepted (as on the web page); None means 600 s (10 min)")
    parser.add_argument("--seed", type=int, action="append", default=None,
                        help="seed of a sample; repeat for several; with one seed and --num-samples N the seeds "
                             "are seed, seed+1, ... (default: 0)")
    parser.add_argument("--num-samples", type=int, default=None, help="number of samples (default: number of seeds)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples generated at once")
    parser.add_argument("--out", default="outputs", help="output folder; one sub-folder per sample")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="model weights' precision (sampling math stays float32); auto: bfloat16 on a GPU, and "
                             "on a CPU with native bf16 for paper-size models (where it is faster), else float32")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="generation compiled: the VAE's fused Snake activations (and the UNet on a GPU); auto: on for paper-size pipelines, where decoding gains 13-18%%, off for small ones (the first call compiles for seconds)")


def _sample_levels(levels, j: int):
    """Sample ``j``'s level matching (given stems' gains and the band's, in dB), or None when it was off."""
    if not levels:
        return None
    return {"given": {n: g[j] for n, g in levels["given_gain_db"].items()}, "band": levels["band_gain_db"][j]}


def _load_given(pipe, given: dict, duration, max_seconds) -> dict:
    """The given stems read, checked and resampled with the library's checks (the page's sentences), each with
    the upload as decoded (what the result gives back)."""
    import sys

    from mslddm.delivery import Upload
    from mslddm.stems import load_stem

    loaded = {}
    for name, path in given.items():
        print(f"Reading the {name} stem from {Path(path).name} ...", file=sys.stderr, flush=True)
        audio = load_stem(name, path, pipe.sample_rate, use_seconds=duration, max_seconds=max_seconds,
                          limit_hint=" (--max-stem-seconds raises the limit)")
        loaded[name] = audio, Upload.read(path)
        print(f"  {len(audio) / pipe.sample_rate:.1f} s at {pipe.sample_rate} Hz", file=sys.stderr, flush=True)
    return loaded


def _result_stems(pipe, folder) -> dict:
    """The stems of an earlier result folder, divided by the gain written into its settings.json: ``{name: (path,
    audio at the pipeline's rate, the file as an Upload)}``."""
    import math

    from mslddm.audio import load_audio, rms_db
    from mslddm.delivery import Upload
    from mslddm.stems import SILENCE_DBFS

    folder = Path(folder)
    settings_path = folder / "settings.json"
    if not settings_path.is_file():
        raise SystemExit(f"--from-result {folder}: no settings.json there; give a sample_* folder of "
                         "`mslddm generate`.")
    try:
        settings = json.loads(settings_path.read_text())
        gain = float(settings.get("gain_applied", 1.0))
    except (ValueError, TypeError, AttributeError) as error:
        raise SystemExit(f"--from-result {folder}: {settings_path} is not a settings file of `mslddm generate` "
                         f"({error}).") from None
    if not (math.isfinite(gain) and gain > 0):
        raise SystemExit(f"--from-result {folder}: {settings_path} records gain_applied {gain:g}; the stems cannot "
                         "be divided by it (a gain must be a positive number).")
    stems = {}
    for name in pipe.stem_names:
        path = folder / f"{name}.wav"
        if path.is_file():
            audio = load_audio(path, pipe.sample_rate) / gain
            if rms_db(audio) >= SILENCE_DBFS:  # a stem silent there stays silent (the page's Extend's rule)
                upload = Upload.read(path)
                stems[name] = str(path), audio, Upload(upload.audio / gain, upload.sample_rate)
    if not stems:
        raise SystemExit(f"--from-result {folder}: no sounding stem WAV of {pipe.stem_names} there.")
    return stems


def run(args) -> int:
    try:
        return _run(args)
    except ValueError as error:  # bad input: one sentence, exit code 1, no traceback
        raise SystemExit(str(error)) from None
    except KeyboardInterrupt:  # Ctrl-C: one line; only complete sample folders are left (written under .partial)
        import sys

        print(f"Interrupted: the complete samples are in {args.out}; nothing partial was left.", file=sys.stderr)
        return 130


def load_lora(pipe, path: str, scale: float) -> None:
    """The adapter loaded into the pipeline at ``scale``; one that is missing or does not fit is one sentence."""
    import sys

    try:
        pipe.load_lora_weights(path, scale=scale)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        raise SystemExit(str(error)) from None
    print(f"LoRA adapter {path} at strength {scale:g}.", file=sys.stderr, flush=True)


def _parse_stem_arguments(args) -> tuple[dict, list | None]:
    """``(given, generate)``: the ``--stem NAME=FILE`` paths by name, and the ``--generate`` names (None: all)."""
    given = {}
    for item in args.stem:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--stem expects NAME=FILE, got {item!r}.")
        given[name] = path
    generate = None
    if args.generate:
        generate = [g.strip() for item in args.generate for g in item.split(",") if g.strip()]
    return given, generate


def _check_numbers(args) -> None:
    """Numbers that would slip through to a wrong result (nan disables a limit, 0 samples made one), refused up front
    in one sentence naming the flag."""
    import math

    positive = {"--duration": args.duration, "--extend": args.extend, "--window": args.window,
                "--max-stem-seconds": args.max_stem_seconds}
    for flag, value in positive.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SystemExit(f"{flag} must be a positive number of seconds, got {value:g}.")
    if args.overlap is not None and not (math.isfinite(args.overlap) and args.overlap >= 0):
        raise SystemExit(f"--overlap must be zero or a positive number of seconds, got {args.overlap:g}.")
    if args.num_samples is not None and args.num_samples < 1:
        raise SystemExit(f"--num-samples must be at least 1, got {args.num_samples}.")
    w = args.reconstruction_guidance
    if w is not None and not (math.isfinite(w) and w >= 0):
        raise SystemExit(f"--reconstruction-guidance must be a number >= 0 (0: plain imputation), got {w:g}.")
    if not math.isfinite(args.lora_scale):
        raise SystemExit(f"--lora-scale must be a finite number, got {args.lora_scale:g}.")
    if args.lora is None and args.lora_scale != 1.0:
        raise SystemExit("--lora-scale is the strength of a LoRA adapter: give the adapter with --lora PATH.")


def _seeds(args) -> list[int]:
    """One seed per sample: the ``--seed`` values, or one seed counted up to ``--num-samples``."""
    seeds = args.seed or [0]
    num = args.num_samples or len(seeds)
    if len(seeds) == 1 and num > 1:
        seeds = [seeds[0] + i for i in range(num)]
    if len(seeds) != num:
        raise SystemExit(f"Got {len(seeds)} seeds for --num-samples {num}.")
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1.")
    return seeds


def _check_stem_arguments(pipe, kind, args, given: dict, generate) -> None:
    """Stem arguments this pipeline can take: none for a mixture-only model, its own stems for the others."""
    from mslddm.stems import unknown_stems_message

    if not kind.generates_stems:
        if given or generate or args.extend is not None or args.from_result:
            from mslddm.pipelines.pipeline_mixture_latent import _no_stems_message

            raise SystemExit(_no_stems_message(pipe.mixture_of) + " (--stem, --generate, --extend and "
                             "--from-result need one.)")
        return
    if message := unknown_stems_message(list(given) + list(generate or []), pipe.stem_names):
        raise SystemExit(message)
    if args.extend is not None and args.duration is not None:
        raise SystemExit("Give either --duration or --extend (the result is the given stems' length plus --extend).")


def _given_audio(pipe, args, given: dict, max_seconds: float) -> tuple[dict, dict, dict]:
    """``(names, audio, uploads)``: the given stems' file names (what settings.json records), their audio at the
    pipeline's rate and as decoded, with the stems of ``--from-result`` that no ``--stem`` replaces."""
    names = dict(given)
    loaded = _load_given(pipe, given, args.duration, max_seconds)
    given = {n: audio for n, (audio, _) in loaded.items()}
    uploads = {n: upload for n, (_, upload) in loaded.items()}
    if args.from_result:
        for name, (path, audio, upload) in _result_stems(pipe, args.from_result).items():
            if name not in given:
                names[name], given[name], uploads[name] = path, audio, upload
    if args.extend is not None and not given:
        raise SystemExit("--extend continues given stems: give them with --stem NAME=FILE or --from-result DIR.")
    return names, given, uploads


def _in_upload_format(result, args, uploads: dict):
    """The stems ``(batch, stems, channels, samples)`` and their rate, in the uploads' format
    (:mod:`mslddm.delivery`): given stems as decoded, generated ones resampled, continued ones take then
    continuation."""
    from mslddm.delivery import deliver, in_format, output_format, output_length
    from mslddm.pipelines.known import CONTINUATION_FADE_SAMPLES

    listed = list(uploads.values())
    fmt = output_format(listed, result.sample_rate)
    if not uploads:
        return result.stems[:, :, None], fmt
    if args.extend is not None:  # each take as long as it is, then its continuation
        length = output_length(listed, fmt, None) + round(args.extend * fmt.sample_rate)
        given = {n: in_format(u, fmt, output_length([u], fmt, None)) for n, u in uploads.items()}
    else:
        length = output_length(listed, fmt, args.duration)
        given = {n: in_format(u, fmt, length) for n, u in uploads.items()}
    continued = {n: given[n].shape[-1] for n in given if n in result.generated}
    stems = deliver(result.stems, result.sample_rate, result.stem_names, fmt, length, given, continued,
                    fade_s=CONTINUATION_FADE_SAMPLES / result.sample_rate)
    return stems, fmt


def _settings(args, kind, result, j: int, seed: int, names: dict, gains: tuple[float, float], fmt, stems,
              device, dtype_name, seconds: float) -> dict:
    """settings.json of one sample: every setting, the seed and the gain applied (a mixture-only model's record
    names the stems it mixes instead of given and generated stems)."""
    from mslddm.records import sampling_record

    settings = {
        "pipeline": str(args.pipeline), "seed": seed, "mixture_of": getattr(result, "mixture_of", None),
        "given": {n: Path(p).name for n, p in names.items()}, **sampling_record(result),
        "sample_rate": fmt.sample_rate, "channels": fmt.channels, "model_sample_rate": int(result.sample_rate),
        "extended_by_s": args.extend, "gain_applied": gains[0], "mix_gain_applied": gains[1], "device": device,
        "level_gain_db": _sample_levels(result.sampling.get("levels"), j),
        "lora": None if args.lora is None else str(args.lora),
        "lora_scale": None if args.lora is None else args.lora_scale,
        "dtype": dtype_name,
        "batch_seconds": round(seconds, 3),
    }
    if kind.generates_stems:
        settings.update(_tempo(stems, result.stem_names, fmt.sample_rate))
    if kind.generates_stems:
        settings["duration_s"] = stems.shape[-1] / fmt.sample_rate
    dropped = ("mixture_of",) if kind.generates_stems else ("given", "extended_by_s", "level_gain_db")
    dropped += ("lora", "lora_scale") if args.lora is None else ()
    return {k: v for k, v in settings.items() if k not in dropped}


def _tempo(stems, stem_names, sample_rate: int) -> dict:
    """``tempo_bpm`` and ``tempo_of`` of a sample (the page's rule); nothing for a short one or without the eval
    extra (scipy, madmom)."""
    try:
        from mslddm.evaluation.beats import TEMPO_MIN_SECONDS, result_tempo
    except ImportError:
        return {}
    if stems.shape[-1] < TEMPO_MIN_SECONDS * sample_rate:
        return {}
    tempo, of = result_tempo(stems, stem_names, sample_rate)
    return {"tempo_bpm": None if tempo is None else round(tempo, 1), "tempo_of": of}


def _write_sample(folder: Path, kind, result, j: int, stems=None, sample_rate=None) -> tuple[float, float]:
    """The sample's stems (a mixture-only model has none; ``stems``: ``(stems, channels, samples)`` in the uploads'
    format) and mix.wav; returns the stems' gain (1 unless one would clip) and the mix's (lower when it would)."""
    from mslddm.audio import write_audio
    from mslddm.delivery import mix_gain, stems_gain

    if not kind.generates_stems:
        gain = stems_gain(result.mixture[j])
        gain = mix_gain(result.mixture[j], gain)
        write_audio(folder / "mix.wav", result.mixture[j] * gain, result.sample_rate)
        return gain, gain
    mix = stems.sum(axis=0)
    gain = stems_gain(stems)
    gain_of_mix = mix_gain(mix, gain)
    for name, audio in zip(result.stem_names, stems):
        write_audio(folder / f"{name}.wav", audio * gain, sample_rate)
    write_audio(folder / "mix.wav", mix * gain_of_mix, sample_rate)
    return gain, gain_of_mix


def _run(args) -> int:
    import torch

    from mslddm.delivery import output_format
    from mslddm.devices import load_pipeline
    from mslddm.kinds import kind_of
    from mslddm.pipelines.pipeline_base import DEFAULT_WINDOW_SECONDS
    from mslddm.records import write_settings
    from mslddm.stems import MAX_STEM_SECONDS
    from mslddm.training.checkpointing import atomic_folder  # complete sample folders only, even on Ctrl-C
    from mslddm.training.storage import StorageError, check_output_dir

    _check_numbers(args)
    given, generate = _parse_stem_arguments(args)
    seeds = _seeds(args)
    pipe, device, dtype_name = load_pipeline(args.pipeline, args.device, args.dtype, args.compile)
    if args.lora:
        load_lora(pipe, args.lora, args.lora_scale)
    kind = kind_of(pipe)
    _check_stem_arguments(pipe, kind, args, given, generate)
    max_seconds = MAX_STEM_SECONDS if args.max_stem_seconds is None else args.max_stem_seconds
    names, given, uploads = _given_audio(pipe, args, given, max_seconds) if kind.generates_stems else ({}, {}, {})
    longest = max((len(a) for a in given.values()), default=0) / pipe.sample_rate
    length = longest + args.extend if args.extend is not None else args.duration or longest
    if length > max_seconds:
        raise SystemExit(f"The result would be {length:g} s long; at most {max_seconds:g} s are made "
                         "(--max-stem-seconds raises the limit).")
    files = len(seeds) * (len(pipe.stem_names) + 1 if kind.generates_stems else 1)  # 16-bit WAVs, 5% headroom
    fmt = output_format(list(uploads.values()), pipe.sample_rate)
    try:
        check_output_dir(args.out, int(files * (length or DEFAULT_WINDOW_SECONDS) * fmt.sample_rate * fmt.channels
                                       * 2 * 1.05),
                         flag="--out", needs="the samples' WAVs need")
    except StorageError as error:
        raise SystemExit(str(error)) from None
    if given:
        import sys

        doing = "continuing them" if args.extend is not None else "sampling the others"
        print(f"Encoding the given stem(s) {', '.join(given)}, then {doing} ...", file=sys.stderr, flush=True)
    stem_arguments = {"stems": given or None, "input_sample_rate": pipe.sample_rate, "generate": generate,
                      "extend_s": args.extend, "match_levels": args.match_levels,
                      "reconstruction_guidance": args.reconstruction_guidance} if kind.generates_stems else {}
    for start in range(0, len(seeds), args.batch_size):
        batch_seeds = seeds[start:start + args.batch_size]
        tic = time.perf_counter()
        result = pipe(
            **stem_arguments, audio_length_in_s=args.duration, window_s=args.window, overlap_s=args.overlap,
            num_inference_steps=args.steps, sampler=args.sampler, s_churn=args.churn,
            num_samples=len(batch_seeds), generator=[torch.Generator().manual_seed(s) for s in batch_seeds],
        )
        seconds = time.perf_counter() - tic
        stems, fmt = _in_upload_format(result, args, uploads) if kind.generates_stems else (None, fmt)
        for j, seed in enumerate(batch_seeds):
            with atomic_folder(Path(args.out) / f"sample_{start + j:03d}_seed{seed}") as folder:
                gains = _write_sample(folder, kind, result, j, None if stems is None else stems[j], fmt.sample_rate)
                write_settings(folder, _settings(args, kind, result, j, seed, names, gains, fmt,
                                                 None if stems is None else stems[j], device, dtype_name, seconds))
            print(f"wrote {Path(args.out) / f'sample_{start + j:03d}_seed{seed}'}")
    return 0
