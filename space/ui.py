"""The page: a column per stem (upload or generate, then its player and fader), the sampling settings, the mix,
the spectrogram and the ZIP, and an extend action on the shown result. ``build_demo`` wires the events to a
:class:`~space.handlers.Studio`; the public API endpoints are ``/generate`` and ``/extend`` (see ``docs/space.md``)."""

from __future__ import annotations

import functools
import inspect
import json
import keyword
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from mslddm.schedulers.sampler_table import SAMPLER_DEFAULTS

from .handlers import MAX_LORA_SCALE, NO_LORA, SAMPLERS, Outputs, Studio
from .render import MIX

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".m4a")
DEFAULT_DURATION_S = 8.0
CSS = ".stem-column {min-width: 220px} #generate-button {min-height: 3.2em}"
USER_EXAMPLES_CACHE = os.environ.get("GRADIO_EXAMPLES_CACHE")  # honoured when set before this module is imported
USER_TEMP_DIR = os.environ.get("GRADIO_TEMP_DIR")  # likewise


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
    normalise: gr.Checkbox | None = None  # the mix at -14 LUFS
    settings: list = field(default_factory=list)  # duration, steps, sampler, churn, seed, variations, whole song
    lora: list = field(default_factory=list)  # the adapter menu and its strength; none without adapters
    fill_defaults: tuple = ()  # (function, input, outputs) that shows the sampler's default steps and churn
    button: gr.Button | None = None
    extend_s: gr.Number | None = None
    selected: gr.Textbox | None = None  # the shown variation's label, as text (the API's /extend takes any label)
    extend_button: gr.Button | None = None
    mixture: gr.Audio | None = None  # separation (pipelines that can: MSDM)
    method: gr.Radio | None = None
    separate_button: gr.Button | None = None
    info: gr.Markdown | None = None
    status: gr.Markdown | None = None  # the page's one place for errors and warnings (never over a result)
    variation: gr.Radio | None = None
    zip_file: gr.File | None = None
    spectrogram: gr.Image | None = None

    @property
    def outputs(self) -> list:
        """What every event shows, in ``/generate``'s return order."""
        # The variation shown goes out as its label into a hidden Textbox: the API returns plain values, and a
        # label written into a Radio that does not list it yet is an error. The page's own events set the Radio's
        # choices and value in one update (page_outputs).
        return ([self.players[n] for n in self.uploads] + [self.players[MIX], self.spectrogram, self.zip_file,
                                                            self.info, self.selected])

    @property
    def page_outputs(self) -> list:
        """What the page's own (private) events show: the API's outputs, the variation selector and the status."""
        return self.outputs + [self.variation, self.status]

    @property
    def mixer(self) -> list:
        """The faders, the mutes, then "normalise mix": what every event reads as the mix."""
        return [self.gains[n] for n in self.uploads] + [self.mutes[n] for n in self.uploads] + [self.normalise]


FAST_LABEL = "Consistency: the distilled student, fast (1-8 steps)"


def sampler_label(studio: Studio, sampler: str) -> str:
    """The sampler menu's label: the consistency sampler is the page's fast option when it has a student."""
    return FAST_LABEL if studio.uses_student(sampler) else SAMPLERS[sampler]


def build_demo(studio: Studio, examples_dir: str | None = None, title: str = "mslddm") -> gr.Blocks:
    """The Blocks of the page for ``studio``'s pipeline (stems named by its config)."""
    # Cached example outputs belong to this pipeline and this code: keep them with the studio's files (removed at
    # exit) rather than in Gradio's default ./.gradio, where another pipeline would find them and reuse them.
    os.environ["GRADIO_EXAMPLES_CACHE"] = USER_EXAMPLES_CACHE or str(studio.workdir / "cached_examples")
    # Gradio's own files (uploads, copies of the outputs) too: they go with the studio's folder at exit, however
    # the server stops (delete_cache alone left 285 MB behind after a SIGTERM, issue 26 item 14).
    os.environ["GRADIO_TEMP_DIR"] = USER_TEMP_DIR or str(studio.workdir / "gradio")
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
        f"Pipeline `{_short(studio.pipeline_name)}`, stems {', '.join(names)}. "
        f"Uploads: any format, rate or channel count, up to {lim.max_upload_s:g} s and {lim.max_file_size}; the "
        f"result comes back at their rate and channels, your stems untouched; "
        f"music longer than the model's window (whole songs up to {lim.max_song_s:g} s, extensions) is generated "
        f"in overlapping windows.")
    gr.Markdown("### Stems: upload the ones you have, tick the ones to generate")
    with gr.Row(equal_height=False):
        for name in names:
            with gr.Column(elem_classes="stem-column", min_width=220):
                # The box above the upload: a loaded upload grows into a player, and a box under it would leave the
                # row's line (issue 26 item 13); the short label is not cut in a narrow column.
                page.generate[name] = gr.Checkbox(value=True, label=f"generate {name}", elem_id=f"generate-{name}")
                page.uploads[name] = gr.Audio(label=name, type="filepath", sources=["upload"],
                                              elem_id=f"upload-{name}")
    gr.Markdown("### Sampling")
    start = studio.sampling_defaults()  # the pipeline's sampler and its default steps and churn
    with gr.Row():
        duration = gr.Slider(0.5, lim.max_duration_s, value=min(DEFAULT_DURATION_S, lim.max_duration_s), step=0.5,
                             label="Duration (s)", elem_id="duration")
        sampler = gr.Dropdown([(sampler_label(studio, k), k) for k in SAMPLERS], value=start.sampler,
                              label="Sampler", elem_id="sampler")
        # Empty in the page's config (so that an API call that names only a sampler gets that sampler's own
        # defaults, as in Python and the CLI); the page fills in the defaults when it loads and on every change.
        # No minimum / maximum: Gradio's own check says "Value 0 is less than minimum value 1." without naming the
        # field; the server's says "Steps must be between 1 and N".
        steps = gr.Number(None, precision=0, label=f"Steps (shown: the sampler's default; 1 to {lim.max_steps})",
                          elem_id="steps")
        churn = gr.Number(None, step=0.5, label="Churn (Euler, Heun; shown: the default)",
                          interactive=SAMPLER_DEFAULTS[start.sampler].takes_churn, elem_id="churn")
    with gr.Row():
        # A Textbox, not a Number: an empty Number is sent as 0, and empty must mean "random".
        seed = gr.Textbox(value="", placeholder="random", label="Seed (empty: random)", max_lines=1, elem_id="seed")
        variations = gr.Slider(1, lim.max_variations, value=1, step=1, label="Variations", elem_id="variations")
        # The CLI's and Python's rule: the uploads' length unless a duration is given (here: unticked).
        whole_song = gr.Checkbox(value=True, label=f"As long as the uploads (up to {lim.max_song_s:g} s); "
                                 "unticked, or with no upload: the duration", elem_id="whole-song")
        page.button = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=2)
    page.settings = [duration, steps, sampler, churn, seed, variations, whole_song]
    page.lora = _lora_row(studio)
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

    page.status = gr.Markdown("", elem_id="status", elem_classes="status")
    gr.Markdown("### Result and mixer: the faders re-mix without generating again")
    page.info = gr.Markdown("Press **Generate**. The used seed is shown here.", label="summary", elem_id="info")
    page.variation = gr.Radio(choices=[], label="Variation", visible=False, elem_id="variation")
    with gr.Row(equal_height=False):
        for name in names:
            with gr.Column(elem_classes="stem-column", min_width=220):
                page.players[name] = gr.Audio(label=name, type="filepath", format="wav", interactive=False,
                                              elem_id=f"player-{name}")
                # +-24 dB: generated stems can sit far from an upload's level
                page.gains[name] = gr.Slider(-24, 24, value=0, step=0.5, label=f"{name} gain (dB)",
                                             elem_id=f"gain-{name}")
                page.mutes[name] = gr.Checkbox(value=False, label=f"mute {name}", elem_id=f"mute-{name}")
        with gr.Column(elem_classes="stem-column", min_width=220):
            page.players[MIX] = gr.Audio(label="mix", type="filepath", format="wav", interactive=False,
                                         elem_id="player-mix")
            page.normalise = gr.Checkbox(value=False, label="normalise mix to -14 LUFS", elem_id="normalise")
    with gr.Row():
        page.extend_s = gr.Number(10.0, step=0.5,
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


def status_message(kind: str, text: str) -> str:
    """The status area's Markdown: ``kind`` ("Error", "Warning") in bold, then the sentence (Markdown escaped, so a
    file name such as my_take_2.wav reads as it is)."""
    escaped = "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in text)
    return f"**{kind}:** {escaped}"


def _page_event(page: Page, call: Callable[..., Outputs], variation: bool = True) -> Callable:
    """The page's version of an event: the result, the variation selector and a cleared status; a bad request
    (``gr.Error``) leaves every output as it was and goes to the status area, where it stays until the next
    action (a raised error would be a toast that goes after 10 s and an "Error" badge over every player)."""

    def handler(*args):
        try:
            out = call(*args)
        except gr.Error as error:
            skips = len(page.outputs) + (1 if variation else 0)
            return [gr.skip()] * skips + [status_message("Error", str(error.message))]
        if out is None:
            return [gr.skip()] * (len(page.outputs) + (1 if variation else 0) + 1)
        shown = _show(page, out) + ([_variation_update(out.variation_labels, out.variation)] if variation else [])
        return shown + [""]

    return handler


def _endpoint(page: Page, call: Callable[..., Outputs], defaults: list[tuple[str, object]],
              doc: str) -> tuple[Callable, Callable]:
    """``(api, page)`` functions over ``call(*values, progress, request)`` with the named parameters
    ``defaults`` (what gradio_client shows): the public one returns plain values and raises bad requests (an
    ``AppError`` for the client); the page's one is :func:`_page_event`'s."""

    def api(*args):
        return _show(page, call(*args))

    shown = _page_event(page, call)
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature(
        [inspect.Parameter(n, positional, default=d) for n, d in defaults]
        + [inspect.Parameter("progress", positional, default=gr.Progress()),
           inspect.Parameter("request", positional, default=None, annotation=gr.Request)])
    for fn in (api, shown):
        fn.__signature__ = signature
        fn.__annotations__ = {"request": gr.Request}  # how Gradio finds the request parameter
    api.__doc__ = doc
    return api, shown


def _wire(page: Page, button: gr.Button, fns: tuple[Callable, Callable], inputs: list, api_name: str) -> None:
    """The public endpoint on a hidden button (API only) and the page's button on the page's version, one
    sampling at a time for both."""
    api, shown = fns
    gr.Button(visible=False).click(api, inputs, page.outputs, api_name=api_name, concurrency_limit=1,
                                   concurrency_id="sampling")
    button.click(shown, inputs, page.page_outputs, api_visibility="private", concurrency_limit=1,
                 concurrency_id="sampling")


def _lora_row(studio: Studio) -> list:
    """The adapter menu and its strength slider, in a row of their own; nothing when there is no adapter."""
    if not studio.loras:
        return []
    with gr.Row():
        return [gr.Dropdown([NO_LORA, *studio.loras], value=NO_LORA, label="LoRA adapter (none: the pipeline as "
                            "it is)", elem_id="lora"),
                gr.Slider(0.0, MAX_LORA_SCALE, value=1.0, step=0.05, elem_id="lora-scale",
                          label="LoRA strength (0: the pipeline, 1: the adapter as trained)")]


def _lora_values(values) -> dict:
    """The adapter menu's and strength's values as the handlers' keywords (none on a page without adapters)."""
    return dict(zip(("lora", "lora_scale"), values))


def _lora_defaults(page: Page) -> list:
    """The API parameters of the adapter menu and its strength, when the page has them."""
    return [("lora", NO_LORA), ("lora_scale", 1.0)] if page.lora else []


LORA_DOC = " `lora` names a LoRA adapter of the page's menu ('none': the pipeline), `lora_scale` its strength."


def _mixer_values(names: list[str], values) -> dict:
    """``{stem: (gain_db, muted)}`` from the faders' values followed by the mutes' (and "normalise mix")."""
    return {n: (values[k], values[len(names) + k]) for k, n in enumerate(names)}


def _normalise(names: list[str], values) -> bool:
    """The "normalise mix" box, after the faders and mutes (absent: off)."""
    return bool(values[2 * len(names)]) if len(values) > 2 * len(names) else False


def _wire_generate(studio: Studio, page: Page) -> None:
    """Generate and Extend: the public ``/generate`` and ``/extend`` endpoints and the page's buttons."""
    names, k = studio.stem_names, len(studio.stem_names)

    def generate(*args):
        *values, progress, request = args
        mix, lora = values[2 * k + 7:4 * k + 8], values[4 * k + 8:]
        return studio.generate(dict(zip(names, values[:k])), dict(zip(names, values[k:2 * k])),
                               *values[2 * k:2 * k + 7], mixer=_mixer_values(names, mix),
                               progress=progress, session=_session(request), normalise=_normalise(names, mix),
                               **_lora_values(lora))

    # Named parameters (the stems' uploads first), so gradio_client callers can pass keywords. Unset steps and
    # churn (None) mean the chosen sampler's defaults, as in Python and the CLI.
    params = api_names(names)
    mixer = ([(f"gain_db_{p}", 0.0) for p in params] + [(f"mute_{p}", False) for p in params]
             + [("normalise_mix", False)])
    settings = dict(zip(("duration", "steps", "sampler", "churn", "seed", "variations", "whole_song"),
                        page.settings))
    defaults = ([(p, None) for p in params] + [(f"generate_{p}", True) for p in params]
                + [(n, c.value) for n, c in settings.items()] + mixer + _lora_defaults(page))
    _wire(page, page.button, _endpoint(page, generate, defaults, (
        "Generates the stems that have no upload and generate_<stem> true, around the uploaded ones, and the mix; "
        "as long as the uploads unless whole_song is false (or nothing is uploaded): then `duration` seconds. The "
        "files are at the uploads' sample rate and channels, the uploads untouched. "
        "Returns a WAV per stem, the mix WAV, the spectrogram PNG, the ZIP (stems, mix, settings.json), a "
        "Markdown summary with the seeds, and the variation shown." + (LORA_DOC if page.lora else ""))),
        list(page.uploads.values()) + list(page.generate.values()) + page.settings + page.mixer + page.lora,
        "generate")

    def extend(*args):
        zip_path, selected, extend_s, steps, sampler, churn, *rest, progress, request = args
        gains, lora = rest[:2 * k + 1], rest[2 * k + 1:]
        return studio.extend(zip_path, selected, extend_s, steps, sampler, churn, mixer=_mixer_values(names, gains),
                             progress=progress, session=_session(request), normalise=_normalise(names, gains),
                             **_lora_values(lora))

    defaults = [("zip_path", None), ("selected", None), ("extend_s", 10.0), ("steps", None),
                ("sampler", page.settings[2].value), ("churn", None)] + mixer + _lora_defaults(page)
    steps, sampler, churn = page.settings[1:4]
    page.variation.change(lambda label: label, page.variation, page.selected, api_visibility="private", queue=False)
    _wire(page, page.extend_button, _endpoint(page, extend, defaults, (
        "Continues variation `selected` (a label such as '1 (seed 42)'; default: the first) of the render ZIP "
        "`zip_path` by `extend_s` seconds: every sounding stem continues, with the variation's seed. Returns what "
        "/generate returns." + (LORA_DOC if page.lora else ""))),
        [page.zip_file, page.selected, page.extend_s, steps, sampler, churn] + page.mixer + page.lora, "extend")
    _wire_upload_checks(studio, page)


def _wire_upload_checks(studio: Studio, page: Page) -> None:
    """An upload is checked when it arrives: a file that cannot be used is named in the status area and its slot
    cleared; the same file in two slots is a warning. An upload makes its stem a condition (its "generate" box no
    longer applies); a cleared slot gives the box back."""
    names = studio.stem_names

    def on_change(name, *paths):
        path = paths[names.index(name)]
        if not path:  # cleared (by the visitor, or by a refused upload: keep that message)
            return gr.skip(), gr.Checkbox(value=True, interactive=True), gr.skip()
        try:
            warning = studio.check_upload(name, path, dict(zip(names, paths)))
        except gr.Error as error:
            return None, gr.Checkbox(value=True, interactive=True), status_message("Error", str(error.message))
        status = status_message("Warning", warning) if warning else ""
        return gr.skip(), gr.Checkbox(value=False, interactive=False), status

    for name in names:
        page.uploads[name].change(functools.partial(on_change, name), list(page.uploads.values()),
                                  [page.uploads[name], page.generate[name], page.status], api_visibility="private",
                                  queue=False)


def _wire_separate(studio: Studio, page: Page) -> None:
    """The Separate button: the public ``/separate`` endpoint (same outputs as ``/generate``)."""
    names = studio.stem_names
    params = api_names(names)

    def separate(*args):
        mixture, method, steps, churn, seed, variations, *mixer, progress, request = args
        return studio.separate(mixture, method, steps, churn, seed, variations, mixer=_mixer_values(names, mixer),
                               progress=progress, session=_session(request), normalise=_normalise(names, mixer))

    defaults = ([("mixture", None), ("method", "dirac"), ("steps", None), ("churn", None), ("seed", ""),
                 ("variations", 1)] + [(f"gain_db_{p}", 0.0) for p in params] + [(f"mute_{p}", False) for p in params]
                + [("normalise_mix", False)])
    _, steps, _, churn, seed, variations, _ = page.settings
    _wire(page, page.separate_button, _endpoint(page, separate, defaults, (
        "Separates the uploaded `mixture` into the pipeline's stems (they sum to it) with the Dirac or Gaussian "
        "separator. Returns what /generate returns.")),
        [page.mixture, page.method, steps, churn, seed, variations] + page.mixer, "separate")


def _wire_mixer(studio: Studio, page: Page) -> None:
    """Faders, mutes and the variation selector: re-mix or show from the ZIP, without sampling."""
    names = studio.stem_names

    def remix(zip_path, selected, *values, request: gr.Request = None):
        if not zip_path:  # nothing generated yet: the faders apply to the next generation
            return None
        return studio.remix(zip_path, selected, _mixer_values(names, values), _session(request),
                            normalise=_normalise(names, values))

    def show(zip_path, selected, request: gr.Request = None):
        return studio.show(zip_path, selected, _session(request))

    run_remix, run_show = _page_event(page, remix, variation=False), _page_event(page, show, variation=False)
    run_remix.__signature__, run_show.__signature__ = inspect.signature(remix), inspect.signature(show)
    run_remix.__annotations__ = run_show.__annotations__ = {"request": gr.Request}
    for control in page.mixer:
        control.change(run_remix, [page.zip_file, page.variation] + page.mixer, page.outputs + [page.status],
                       api_visibility="private", trigger_mode="always_last", show_progress="minimal")
    page.variation.input(run_show, [page.zip_file, page.variation], page.outputs + [page.status],
                         api_visibility="private")


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
                              1, whole_song=False, progress=progress, session=_session(request))  # its duration
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
