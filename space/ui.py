"""The page: a column per stem (upload or generate, then its player and fader), the sampling settings, the mix,
the spectrogram and the ZIP, and an extend action on the shown result. ``build_demo`` wires the events to a
:class:`~space.handlers.Studio`; the public API endpoints are ``/generate`` and ``/extend`` (see ``docs/space.md``)."""

from __future__ import annotations

import inspect
import json
import keyword
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from mslddm.schedulers.sampler_table import SAMPLER_DEFAULTS

from .handlers import SAMPLERS, Outputs, Studio, variation_label
from .render import MIX, read_settings

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".m4a")
DEFAULT_DURATION_S = 8.0
CSS = ".stem-column {min-width: 220px} #generate-button {min-height: 3.2em}"
USER_EXAMPLES_CACHE = os.environ.get("GRADIO_EXAMPLES_CACHE")  # honoured when set before this module is imported


def api_names(stem_names: list[str]) -> list[str]:
    """The ``/generate`` parameter that carries each stem's upload: the stem name when it is an identifier."""
    names = [n if n.isidentifier() and not keyword.iskeyword(n) else f"stem_{k}" for k, n in enumerate(stem_names)]
    if len(set(names)) != len(names):
        raise ValueError(f"Stem names {stem_names} do not give distinct API parameter names.")
    return names


def find_examples(folder: str | None, stem_names: list[str]) -> list[dict]:
    """Examples from ``folder``: one sub-folder per example holding ``<stem>.<ext>`` files (the uploads) and an
    optional ``example.json`` (``{"label": ..., "duration": ..., "seed": ...}``). Missing folder: no examples."""
    examples = []
    if not folder or not Path(folder).is_dir():
        return examples
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        files = {f.stem: str(f) for f in sub.iterdir() if f.suffix.lower() in AUDIO_EXTENSIONS}
        uploads = {name: files.get(name) for name in stem_names}
        meta_path = sub / "example.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if any(uploads.values()) and not all(uploads.values()):
            examples.append({"uploads": uploads, "label": meta.get("label", sub.name),
                             "duration": float(meta.get("duration", DEFAULT_DURATION_S)),
                             "seed": int(meta.get("seed", 0))})
    return examples


@dataclass
class Page:
    """The page's components; dicts are keyed by stem name (``players`` also by ``"mix"``)."""

    uploads: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)
    players: dict = field(default_factory=dict)
    gains: dict = field(default_factory=dict)
    mutes: dict = field(default_factory=dict)
    settings: list = field(default_factory=list)  # duration, steps, sampler, churn, seed, variations, whole song
    fill_defaults: tuple = ()  # (function, input, outputs) that shows the sampler's default steps and churn
    button: gr.Button | None = None
    extend_s: gr.Number | None = None
    selected: gr.Textbox | None = None  # the shown variation's label, as text (the API's /extend takes any label)
    extend_button: gr.Button | None = None
    mixture: gr.Audio | None = None  # separation (pipelines that can: MSDM)
    method: gr.Radio | None = None
    separate_button: gr.Button | None = None
    info: gr.Markdown | None = None
    variation: gr.Radio | None = None
    zip_file: gr.File | None = None
    spectrogram: gr.Image | None = None

    @property
    def outputs(self) -> list:
        """What every event shows, in ``/generate``'s return order."""
        # The variation shown goes out as its label into a hidden Textbox: the Radio's choices are set after the
        # event (show_variations), and a value written into a Radio that does not list it yet is an error.
        return ([self.players[n] for n in self.uploads] + [self.players[MIX], self.spectrogram, self.zip_file,
                                                            self.info, self.selected])

    @property
    def mixer(self) -> list:
        return [self.gains[n] for n in self.uploads] + [self.mutes[n] for n in self.uploads]


def build_demo(studio: Studio, examples_dir: str | None = None, title: str = "mslddm") -> gr.Blocks:
    """The Blocks of the page for ``studio``'s pipeline (stems named by its config)."""
    # Cached example outputs belong to this pipeline and this code: keep them with the studio's files (removed at
    # exit) rather than in Gradio's default ./.gradio, where another pipeline would find them and reuse them.
    os.environ["GRADIO_EXAMPLES_CACHE"] = USER_EXAMPLES_CACHE or str(studio.workdir / "cached_examples")
    with gr.Blocks(title=title, delete_cache=(1800, 3600)) as demo:
        page = _layout(studio, title)
        _wire_generate(studio, page)
        if studio.can_separate:
            _wire_separate(studio, page)
        _wire_mixer(studio, page)
        _wire_examples(studio, page, find_examples(examples_dir, studio.stem_names))
        fill, sampler, targets = page.fill_defaults
        demo.load(fill, sampler, targets, api_visibility="private", queue=False)

        def end_session(request: gr.Request = None):
            studio.end_session(_session(request))

        demo.unload(end_session)
    return demo


def _layout(studio: Studio, title: str) -> Page:
    """Places the components: the stems' uploads, the sampling settings, then the results with the mixer."""
    names, lim, page = studio.stem_names, studio.limits, Page()
    gr.Markdown(
        f"# {title}: multi-source music generation\n"
        f"Upload the stems you have and tick the ones to generate: the model writes the missing stems to fit "
        f"(partial generation), or every stem when nothing is uploaded (total generation). "
        f"Pipeline `{_short(studio.pipeline_name)}`, stems {', '.join(names)}, {studio.pipe.sample_rate} Hz. "
        f"Uploads: any format, rate or channel count, up to {lim.max_upload_s:g} s and {lim.max_file_size}; "
        f"music longer than the model's window (whole songs up to {lim.max_song_s:g} s, extensions) is generated "
        f"in overlapping windows.")
    gr.Markdown("### Stems: upload the ones you have, tick the ones to generate")
    with gr.Row(equal_height=False):
        for name in names:
            with gr.Column(elem_classes="stem-column", min_width=220):
                page.uploads[name] = gr.Audio(label=f"{name}: upload to keep it", type="filepath",
                                              sources=["upload"], elem_id=f"upload-{name}")
                page.generate[name] = gr.Checkbox(value=True, label=f"generate {name}", elem_id=f"generate-{name}")
    gr.Markdown("### Sampling")
    start = studio.sampling_defaults()  # the pipeline's sampler and its default steps and churn
    with gr.Row():
        duration = gr.Slider(0.5, lim.max_duration_s, value=min(DEFAULT_DURATION_S, lim.max_duration_s), step=0.5,
                             label="Duration (s)", elem_id="duration")
        sampler = gr.Dropdown([(label, k) for k, label in SAMPLERS.items()], value=start.sampler, label="Sampler",
                              elem_id="sampler")
        # Empty in the page's config (so that an API call that names only a sampler gets that sampler's own
        # defaults, as in Python and the CLI); the page fills in the defaults when it loads and on every change.
        steps = gr.Number(None, minimum=1, maximum=lim.max_steps, precision=0,
                          label="Steps (shown: the sampler's default)", elem_id="steps")
        churn = gr.Number(None, minimum=0, maximum=100, step=0.5, label="Churn (Euler, Heun; shown: the default)",
                          interactive=SAMPLER_DEFAULTS[start.sampler].takes_churn, elem_id="churn")
    with gr.Row():
        # A Textbox, not a Number: an empty Number is sent as 0, and empty must mean "random".
        seed = gr.Textbox(value="", placeholder="random", label="Seed (empty: random)", max_lines=1, elem_id="seed")
        variations = gr.Slider(1, lim.max_variations, value=1, step=1, label="Variations", elem_id="variations")
        whole_song = gr.Checkbox(value=False, label=f"Whole song: as long as the uploads (up to {lim.max_song_s:g} s; "
                                 "the duration is not used)", elem_id="whole-song")
        page.button = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=2)
    page.settings = [duration, steps, sampler, churn, seed, variations, whole_song]
    if studio.can_separate:
        gr.Markdown("### Or separate a mixture: this model samples stems whose sum is the mixture (Euler; the "
                    "steps, churn, seed and variations above apply)")
        with gr.Row():
            page.mixture = gr.Audio(label="mixture to separate", type="filepath", sources=["upload"],
                                    elem_id="upload-mixture")
            page.method = gr.Radio([("Dirac: one stem is the mixture minus the others (MSDM)", "dirac"),
                                    ("Gaussian likelihood on the sum", "gaussian")], value="dirac",
                                   label="Separation", elem_id="separation-method")
            page.separate_button = gr.Button("Separate", variant="primary", elem_id="separate-button")
    def on_sampler(name):
        d = studio.sampling_defaults(name)
        return (gr.Number(value=min(d.num_inference_steps, lim.max_steps)),
                gr.Number(value=d.s_churn, interactive=SAMPLER_DEFAULTS[name].takes_churn))

    sampler.change(on_sampler, sampler, [steps, churn], api_visibility="private", queue=False)
    page.fill_defaults = (on_sampler, sampler, [steps, churn])

    gr.Markdown("### Result and mixer: the faders re-mix without generating again")
    page.info = gr.Markdown("Press **Generate**. The used seed is shown here.", label="summary", elem_id="info")
    page.variation = gr.Radio(choices=[], label="Variation", visible=False, elem_id="variation")
    with gr.Row(equal_height=False):
        for name in names:
            with gr.Column(elem_classes="stem-column", min_width=220):
                page.players[name] = gr.Audio(label=name, type="filepath", format="wav", interactive=False,
                                              elem_id=f"player-{name}")
                page.gains[name] = gr.Slider(-24, 12, value=0, step=0.5, label=f"{name} gain (dB)",
                                             elem_id=f"gain-{name}")
                page.mutes[name] = gr.Checkbox(value=False, label=f"mute {name}", elem_id=f"mute-{name}")
        with gr.Column(elem_classes="stem-column", min_width=220):
            page.players[MIX] = gr.Audio(label="mix", type="filepath", format="wav", interactive=False,
                                         elem_id="player-mix")
    with gr.Row():
        page.extend_s = gr.Number(10.0, minimum=0.5, maximum=lim.max_song_s, step=0.5,
                                  label="Extend by (s): every stem of the shown variation continues", elem_id="extend-s")
        page.extend_button = gr.Button("Extend", elem_id="extend-button")
        # A Radio input only accepts the choices of its config (empty until a generation), so the API would
        # refuse every label: /extend reads this mirror of the selection instead.
        page.selected = gr.Textbox(label="variation", visible=False, elem_id="selected-variation")
    # Its own row: in a stem column the file name is elided to "m.zip".
    page.zip_file = gr.File(label="ZIP: stems, mix, settings", interactive=False, elem_id="zip")
    page.spectrogram = gr.Image(label="spectrogram", show_label=False, type="filepath", format="png",
                                interactive=False, elem_id="spectrogram")
    return page


def _show(page: Page, out: Outputs) -> list:
    """An event's result as values for ``page.outputs``: plain values (what the public API returns), the variation
    shown as its label."""
    return ([str(out.players[n]) for n in page.uploads] + [str(out.players[MIX]), str(out.spectrogram),
            str(out.zip_path), out.info, out.variation_labels[out.variation]])


def _variation_update(labels: list[str], index: int):
    return gr.update(choices=labels, value=labels[index], visible=len(labels) > 1)


def show_variations(zip_path):
    """After a generation or separation (which shows its first variation): the selector lists the render's
    variations; the API itself returns plain values."""
    if not zip_path:
        return gr.skip()
    labels = [variation_label(i, seed) for i, seed in enumerate(read_settings(zip_path)["seeds"])]
    return _variation_update(labels, 0)


def _mixer_values(names: list[str], values) -> dict:
    """``{stem: (gain_db, muted)}`` from the faders' values followed by the mutes'."""
    return {n: (values[k], values[len(names) + k]) for k, n in enumerate(names)}


def _wire_generate(studio: Studio, page: Page) -> None:
    """The Generate button: the public ``/generate`` endpoint, one sampling at a time."""
    names, k = studio.stem_names, len(studio.stem_names)

    def run_generate(*args):
        *values, progress, request = args
        out = studio.generate(dict(zip(names, values[:k])), dict(zip(names, values[k:2 * k])),
                              *values[2 * k:2 * k + 7], mixer=_mixer_values(names, values[2 * k + 7:]),
                              progress=progress, session=_session(request))
        return _show(page, out)

    # Named parameters (the stems' uploads first), so gradio_client callers can pass keywords. Unset steps and
    # churn (None) mean the chosen sampler's defaults, as in Python and the CLI.
    params = api_names(names)
    settings = dict(zip(("duration", "steps", "sampler", "churn", "seed", "variations", "whole_song"),
                        page.settings))
    defaults = ([(p, None) for p in params] + [(f"generate_{p}", True) for p in params]
                + [(n, c.value) for n, c in settings.items()]
                + [(f"gain_db_{p}", 0.0) for p in params] + [(f"mute_{p}", False) for p in params])
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    run_generate.__signature__ = inspect.Signature(
        [inspect.Parameter(n, positional, default=d) for n, d in defaults]
        + [inspect.Parameter("progress", positional, default=gr.Progress()),
           inspect.Parameter("request", positional, default=None, annotation=gr.Request)])
    run_generate.__annotations__ = {"request": gr.Request}  # how Gradio finds the request parameter
    run_generate.__doc__ = (
        "Generates the stems that have no upload and generate_<stem> true, around the uploaded ones, and the mix "
        "(with whole_song, as long as the uploads). "
        "Returns a WAV per stem, the mix WAV, the spectrogram PNG, the ZIP (stems, mix, settings.json), a "
        "Markdown summary with the seeds, and the variation shown.")
    page.button.click(run_generate, list(page.uploads.values()) + list(page.generate.values()) + page.settings
                      + page.mixer, page.outputs, api_name="generate", concurrency_limit=1,
                      concurrency_id="sampling").success(show_variations, page.zip_file, page.variation,
                                                         api_visibility="private", queue=False)
    def run_extend(*args):
        zip_path, selected, extend_s, steps, sampler, churn, *mixer, progress, request = args
        out = studio.extend(zip_path, selected, extend_s, steps, sampler, churn, mixer=_mixer_values(names, mixer),
                            progress=progress, session=_session(request))
        return _show(page, out)

    extend_defaults = ([("zip_path", None), ("selected", None), ("extend_s", 10.0), ("steps", None),
                        ("sampler", page.settings[2].value), ("churn", None)]
                       + [(f"gain_db_{p}", 0.0) for p in params] + [(f"mute_{p}", False) for p in params])
    run_extend.__signature__ = inspect.Signature(
        [inspect.Parameter(n, positional, default=d) for n, d in extend_defaults]
        + [inspect.Parameter("progress", positional, default=gr.Progress()),
           inspect.Parameter("request", positional, default=None, annotation=gr.Request)])
    run_extend.__annotations__ = {"request": gr.Request}
    run_extend.__doc__ = (
        "Continues variation `selected` (a label such as '1 (seed 42)'; default: the first) of the render ZIP "
        "`zip_path` by `extend_s` seconds: every sounding stem continues, with the variation's seed. Returns what "
        "/generate returns.")

    duration, steps, sampler, churn = page.settings[:4]
    page.variation.change(lambda label: label, page.variation, page.selected, api_visibility="private", queue=False)
    page.extend_button.click(run_extend, [page.zip_file, page.selected, page.extend_s, steps, sampler, churn]
                             + page.mixer, page.outputs, api_name="extend", concurrency_limit=1,
                             concurrency_id="sampling").success(show_variations, page.zip_file, page.variation,
                                                                api_visibility="private", queue=False)
    page.settings[-1].change(lambda whole: gr.Slider(interactive=not whole), page.settings[-1], duration,
                             api_visibility="private", queue=False)
    for name in names:  # an upload makes the stem a condition: its "generate" box no longer applies
        page.uploads[name].change(lambda path: gr.Checkbox(value=not path, interactive=not path),
                                  page.uploads[name], page.generate[name], api_visibility="private", queue=False)


def _wire_separate(studio: Studio, page: Page) -> None:
    """The Separate button: the public ``/separate`` endpoint (same outputs as ``/generate``)."""
    names = studio.stem_names
    params = api_names(names)

    def run_separate(*args):
        mixture, method, steps, churn, seed, variations, *mixer, progress, request = args
        out = studio.separate(mixture, method, steps, churn, seed, variations, mixer=_mixer_values(names, mixer),
                              progress=progress, session=_session(request))
        return _show(page, out)

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    defaults = ([("mixture", None), ("method", "dirac"), ("steps", None), ("churn", None), ("seed", ""),
                 ("variations", 1)] + [(f"gain_db_{p}", 0.0) for p in params] + [(f"mute_{p}", False) for p in params])
    run_separate.__signature__ = inspect.Signature(
        [inspect.Parameter(n, positional, default=d) for n, d in defaults]
        + [inspect.Parameter("progress", positional, default=gr.Progress()),
           inspect.Parameter("request", positional, default=None, annotation=gr.Request)])
    run_separate.__annotations__ = {"request": gr.Request}
    run_separate.__doc__ = ("Separates the uploaded `mixture` into the pipeline's stems (they sum to it) with the "
                            "Dirac or Gaussian separator. Returns what /generate returns.")
    _, steps, _, churn, seed, variations, _ = page.settings

    page.separate_button.click(run_separate, [page.mixture, page.method, steps, churn, seed, variations]
                               + page.mixer, page.outputs, api_name="separate", concurrency_limit=1,
                               concurrency_id="sampling").success(show_variations, page.zip_file, page.variation,
                                                                  api_visibility="private", queue=False)


def _wire_mixer(studio: Studio, page: Page) -> None:
    """Faders, mutes and the variation selector: re-mix or show from the ZIP, without sampling."""
    names = studio.stem_names

    def run_remix(zip_path, selected, *values, request: gr.Request = None):
        if not zip_path:  # nothing generated yet: the faders apply to the next generation
            return [gr.skip()] * len(page.outputs)
        return _show(page, studio.remix(zip_path, selected, _mixer_values(names, values), _session(request)))

    def run_show(zip_path, selected, request: gr.Request = None):
        return _show(page, studio.show(zip_path, selected, _session(request)))

    for control in page.mixer:
        control.change(run_remix, [page.zip_file, page.variation] + page.mixer, page.outputs,
                       api_visibility="private", trigger_mode="always_last", show_progress="minimal")
    page.variation.input(run_show, [page.zip_file, page.variation], page.outputs, api_visibility="private")


def _wire_examples(studio: Studio, page: Page, examples: list[dict]) -> None:
    """Examples generated at first use, then cached (default sampler and steps, one variation, flat mix).

    Gradio's cached examples need a value in every input column and fail on outputs that change a component's
    settings: stems no example gives are left out of the inputs, the variation selector out of the outputs, and a
    separate listener resets both when an example is picked."""
    if not examples:
        return
    names, lim = studio.stem_names, studio.limits
    given = [n for n in names if any(ex["uploads"][n] for ex in examples)]
    others = [n for n in names if n not in given]
    duration, seed = page.settings[0], page.settings[4]

    def run_example(*values, progress=gr.Progress(), request: gr.Request = None):  # noqa: B008 (Gradio's API)
        *ups, duration_s, seed_ = values
        out = studio.generate(dict(zip(given, ups)), dict.fromkeys(names, True), duration_s, None, None, None, seed_,
                              1, progress=progress, session=_session(request))
        return _show(page, out)[:-1]

    with warnings.catch_warnings():  # some examples leave some given stems empty: run_example takes None
        warnings.filterwarnings("ignore", message="Examples will be cached but not all input components")
        gallery = gr.Examples(
            [[ex["uploads"][n] for n in given] + [min(ex["duration"], lim.max_duration_s), str(ex["seed"])]
             for ex in examples],
            [page.uploads[n] for n in given] + [duration, seed], page.outputs[:-1], fn=run_example,
            cache_examples=True, cache_mode="lazy", example_labels=[ex["label"] for ex in examples],
            label="Examples from the synthetic test split (generated at first use, then cached)")
    gallery.dataset.click(lambda: [None] * len(others) + [gr.update(choices=[], value=None, visible=False)],
                          None, [page.uploads[n] for n in others] + [page.variation], queue=False,
                          api_visibility="private")


def _short(pipeline: str) -> str:
    """A local folder by its name (its full path means nothing to a visitor), a Hub repo id as it is."""
    return Path(pipeline).name if Path(pipeline).is_dir() else pipeline


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def launch_kwargs(studio: Studio, host: str, port: int, share: bool, examples_dir: str | None = None) -> dict:
    """What ``Blocks.launch`` needs besides the Blocks: address, sharing, upload limit, files it may serve, style.
    The theme uses system fonts: its default web fonts would be fetched from the internet."""
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return {"server_name": host, "server_port": port, "share": share, "max_file_size": studio.limits.max_file_size,
            "allowed_paths": [str(examples_dir)] if examples_dir else None, "css": CSS, "theme": theme,
            "footer_links": ["api", "gradio", "settings"]}
