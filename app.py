"""Serves the mslddm demo, locally (`make demo`, `python app.py`) or as the Hugging Face Space.

Every flag has an environment variable, so a Space is configured in its settings. Nothing is fetched from the
network when the pipeline is a local folder (the default: the bundled pipeline, else $MSLDDM_PIPELINE).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings

try:  # ZeroGPU needs `spaces` imported before torch touches CUDA
    import spaces  # noqa: F401
except ImportError:
    pass


def _env(name, default, kind=str):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if kind is bool:
        return value.strip().lower() in ("1", "true", "yes", "on")
    return kind(value)


def build_parser() -> argparse.ArgumentParser:
    from mslddm.hub import default_pipeline
    from space.handlers import Limits

    lim = Limits()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pipeline", default=default_pipeline(),
                   help="pipeline folder or Hub repo id [env MSLDDM_PIPELINE]")
    p.add_argument("--device", default=_env("MSLDDM_DEVICE", "auto"),
                   help="cpu, cuda, cuda:1, ... (auto: cuda when available) [env MSLDDM_DEVICE]")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default=_env("MSLDDM_DTYPE", "auto"),
                   help="model weights' precision; auto: bfloat16 on a GPU and, on a CPU with native bf16, for "
                        "paper-size models (where it is faster), else float32 [env MSLDDM_DTYPE]")
    p.add_argument("--compile", choices=("auto", "on", "off"), default=_env("MSLDDM_COMPILE", "auto"),
                   help="generation compiled: the VAE's fused Snake activations (and the UNet on a GPU); auto: on "
                        "for paper-size pipelines, where decoding gains 13-18%%, off for small ones [env MSLDDM_COMPILE]")
    p.add_argument("--host", default=_env("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on; 0.0.0.0 for every interface [env GRADIO_SERVER_NAME]")
    p.add_argument("--port", type=int, default=_env("GRADIO_SERVER_PORT", 7860, int),
                   help="port [env GRADIO_SERVER_PORT]")
    p.add_argument("--share", action="store_true", default=_env("MSLDDM_SHARE", False, bool),
                   help="also serve through a temporary public gradio.live link (needs internet) [env MSLDDM_SHARE]")
    p.add_argument("--examples", default=_env("MSLDDM_EXAMPLES", str(HERE / "space" / "examples")),
                   help="folder of examples, one sub-folder of stems each; none when missing [env MSLDDM_EXAMPLES]")
    p.add_argument("--max-duration", type=float, default=_env("MSLDDM_MAX_DURATION", lim.max_duration_s, float),
                   help="longest generation in seconds [env MSLDDM_MAX_DURATION]")
    p.add_argument("--max-upload", type=float, default=_env("MSLDDM_MAX_UPLOAD", lim.max_upload_s, float),
                   help="longest upload in seconds [env MSLDDM_MAX_UPLOAD]")
    p.add_argument("--max-song", type=float, default=_env("MSLDDM_MAX_SONG", lim.max_song_s, float),
                   help="longest whole-song accompaniment or extended result in seconds, generated in windows "
                        "[env MSLDDM_MAX_SONG]")
    p.add_argument("--max-file-size", default=_env("MSLDDM_MAX_FILE_SIZE", lim.max_file_size),
                   help="largest upload, e.g. 50mb [env MSLDDM_MAX_FILE_SIZE]")
    p.add_argument("--max-steps", type=int, default=_env("MSLDDM_MAX_STEPS", lim.max_steps, int),
                   help="most sampler steps [env MSLDDM_MAX_STEPS]")
    p.add_argument("--max-variations", type=int, default=_env("MSLDDM_MAX_VARIATIONS", lim.max_variations, int),
                   help="most variations per request [env MSLDDM_MAX_VARIATIONS]")
    p.add_argument("--max-queue", type=int, default=_env("MSLDDM_MAX_QUEUE", 16, int),
                   help="requests that may wait in the queue; one samples at a time [env MSLDDM_MAX_QUEUE]")
    p.add_argument("--student", default=_env("MSLDDM_STUDENT", None),
                   help="a consistency-distilled student of the pipeline (a pipeline folder from train/distill.py), "
                        "the page's fast option: the consistency sampler runs it; default: the folder NAME-consistency "
                        "beside a local pipeline folder NAME, if there is one; 'none': no student [env MSLDDM_STUDENT]")
    p.add_argument("--lora-dir", default=_env("MSLDDM_LORA_DIR", None),
                   help="folder of LoRA adapter folders (mslddm finetune's OUT/lora) offered in a menu, those that "
                        "fit the pipeline; default: a loras/ folder beside a local pipeline folder, if there is one "
                        "[env MSLDDM_LORA_DIR]")
    p.add_argument("--workdir", default=_env("MSLDDM_WORKDIR", None),
                   help="where a temporary folder for the generated files is made (removed at exit; default: the "
                        "system's temporary folder) [env MSLDDM_WORKDIR]")
    return p


def _port_in_use(host: str, port: int) -> str:
    """Why ``host:port`` cannot be served ("" when it can)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return ""


def _adapters(args, pipe) -> dict:
    """The LoRA adapters of ``--lora-dir`` (default: ``loras/`` beside a local pipeline folder) that fit the pipeline,
    by name."""
    from mslddm.pipelines.lora import find_adapters

    folder = args.lora_dir
    if folder is None and Path(str(args.pipeline)).is_dir():
        folder = Path(str(args.pipeline)).resolve().parent / "loras"
    elif folder is not None and not Path(folder).is_dir():
        print(f"--lora-dir {folder} is not a folder: the page offers no LoRA adapter.", file=sys.stderr)
    found = find_adapters(folder, pipe.stem_names, pipe.unet.config.in_channels)
    if found:
        print(f"LoRA adapters from {folder}: {', '.join(found)}", file=sys.stderr)
    return found


def _student(args, pipe):
    """``(pipeline, folder)`` of the distilled student (``--student``, default: ``NAME-consistency`` beside a local
    pipeline folder; its UNet and its scheduler's plan are what the page runs), or ``(None, "")``; a student of
    other stems, latents or VAE is left out with a sentence."""
    from mslddm.devices import load_pipeline

    folder = args.student
    if folder is None and Path(str(args.pipeline)).is_dir():
        sibling = Path(str(args.pipeline)).resolve()
        sibling = sibling.parent / f"{sibling.name}-consistency"
        folder = str(sibling) if (sibling / "model_index.json").is_file() else None
    if folder in (None, "", "none"):
        return None, ""
    try:
        student, _, _ = load_pipeline(folder, args.device, args.dtype, args.compile)
    except Exception as error:  # noqa: BLE001 - the page still serves the pipeline without its fast option
        print(f"--student {folder}: could not be loaded ({error}); the page has no fast option.", file=sys.stderr)
        return None, ""
    def settings(config):  # a model's configuration as saved, without the loader's bookkeeping (_name_or_path)
        return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))

    fits = (list(student.stem_names) == list(pipe.stem_names)
            and student.unet.config.in_channels == pipe.unet.config.in_channels
            and settings(student.vae.config) == settings(pipe.vae.config))
    if not fits:
        print(f"--student {folder}: its stems, latents or VAE differ from the pipeline's; the page has no fast "
              "option.", file=sys.stderr)
        return None, ""
    print(f"Distilled student (the consistency sampler): {folder}", file=sys.stderr)
    return student, folder


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))  # `space` is a folder next to this file, here and on the Space
    args = build_parser().parse_args(argv)

    from mslddm.devices import load_pipeline
    from space.handlers import Limits, Studio
    from space.ui import build_demo, launch_kwargs

    busy = _port_in_use(args.host, args.port)
    if busy:
        print(f"Port {args.port} on {args.host} is in use ({busy}): pass another one with --port N "
              "(make demo PORT=N).", file=sys.stderr)
        return 2
    try:
        pipe, _, _ = load_pipeline(args.pipeline, args.device, args.dtype, args.compile)
    except Exception as error:  # noqa: BLE001 - a missing folder, no network for a Hub id, a broken download
        print(f"Could not load the pipeline {args.pipeline!r}: {error}\nPass --pipeline with a pipeline folder "
              "(e.g. one written by save_pretrained) or a Hub repo id.", file=sys.stderr)
        return 2
    if not getattr(pipe, "generates_stems", True):
        print(f"{args.pipeline!r} is a MixLDM pipeline (mixtures only, the paper's baseline): the page mixes and "
              "downloads stems, so it needs an MSLDM or ISLDM pipeline. Generate its mixtures with `mslddm "
              "generate --pipeline ...`.", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=True)
    loras = _adapters(args, pipe)
    limits = Limits(max_duration_s=args.max_duration, max_upload_s=args.max_upload, max_song_s=args.max_song,
                    max_steps=args.max_steps,
                    max_variations=args.max_variations, max_file_size=args.max_file_size)
    student, student_folder = _student(args, pipe)
    studio = Studio(pipe, str(args.pipeline), limits, workdir=args.workdir, loras=loras, student=student,
                    student_name=student_folder)
    demo = build_demo(studio, examples_dir=args.examples)
    demo.queue(max_size=args.max_queue, default_concurrency_limit=1)
    # SIGTERM (container stop, CI teardown) ends the server as Ctrl-C does: Gradio closes it, and its shutdown
    # deletes the files it made (uploads, copies of outputs: delete_cache); the studio's go at exit.
    signal.signal(signal.SIGTERM, _interrupt)
    demo.launch(**launch_kwargs(studio, args.host, args.port, args.share, args.examples))
    return 0


def _interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
