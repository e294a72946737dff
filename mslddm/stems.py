"""The default stems: the paper's four, in its order. Every other stem list of mslddm (pipelines, data loaders,
recipes, the synthetic dataset) starts from this one; a pipeline's own ``stem_names`` may be any names and count."""

DEFAULT_STEMS = ("bass", "drums", "guitar", "piano")

# What a given stem may be, everywhere (Python, CLI, web page, API): the same checks give the same sentences.
MAX_STEM_SECONDS = 600.0  # longest given stem the CLI and the page accept by default (each has an override): 10 min
# The one meaning of "silent" (RMS in dBFS, mslddm.audio.rms_db): a given stem under it is refused, the page does
# not continue a stem under it, and the evaluation counts a stem under it as silent (and leaves it out of the
# coherence metrics). -50 dBFS is 20 dB under the quietest level the accompaniment task gives (-40 dBFS, about 20
# dB under a typical stem's -29): nothing under it is music a listener would use or the model should follow. It was
# -60 for given stems and -50 in the evaluation: -50 kept the published evaluation numbers valid.
SILENCE_DBFS = -50.0


def unknown_stems_message(names, stem_names) -> str | None:
    """The sentence every entry point (Python, CLI, page, evaluation) gives for stem names a pipeline does not have,
    or None when all of ``names`` are among ``stem_names``."""
    unknown = [name for name in dict.fromkeys(names) if name not in stem_names]
    return f"Unknown stem(s) {unknown}; this pipeline's stems are {list(stem_names)}." if unknown else None


class StemError(ValueError):
    """A given stem cannot be used; the message is one sentence that names the stem and the file."""


def describe_source(source) -> str:
    """How a given stem is named in messages: a file's base name (never a temporary folder), else its kind."""
    import os

    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source)) or os.fspath(source)
    if isinstance(source, (bytes, bytearray)):
        return "encoded bytes"
    if isinstance(source, tuple):
        return "an (array, sample_rate) tuple"
    return "an array"


def load_stem(name: str, source, sample_rate: int, *, source_sample_rate: int | None = None,
              use_seconds: float | None = None, max_seconds: float | None = None,
              silence_dbfs: float | None = SILENCE_DBFS, limit_hint: str = ""):
    """A given stem as mono float32 at ``sample_rate``, or :class:`StemError`.

    Refused: a file that does not exist or cannot be decoded, empty or non-finite audio, audio longer than
    ``max_seconds`` (``limit_hint`` says how to raise the limit), and audio whose first ``use_seconds`` (all of it
    when None) are quieter than ``silence_dbfs`` RMS (None: no silence check).
    """
    import math

    import numpy as np

    from mslddm.audio import load_audio, rms_db

    shown = describe_source(source)
    what = f"The {name} stem ({shown})"
    try:
        audio = load_audio(source, sample_rate, source_sample_rate=source_sample_rate)
    except FileNotFoundError:
        raise StemError(f"{what} does not exist: check the path.") from None
    except ValueError as error:  # AudioReadError, empty, NaN, wrong layout
        text = str(error)
        if "NaN" in text:
            raise StemError(f"{what} holds NaN or infinite values.") from None
        if "no samples" in text:
            raise StemError(f"{what} holds no samples.") from None
        if "looks like (samples, channels)" in text:
            raise StemError(f"{what}: {text}") from None
        raise StemError(f"{what} could not be read as audio: give a WAV, FLAC, OGG or MP3 file instead.") from None
    seconds = len(audio) / sample_rate
    if max_seconds is not None and seconds > max_seconds + 1e-6:
        raise StemError(f"{what} is {seconds:.1f} s long; stems may be at most {max_seconds:g} s.{limit_hint}")
    if silence_dbfs is not None:
        used = audio if use_seconds is None else audio[: max(1, math.ceil(use_seconds * sample_rate))]
        level = rms_db(used)
        if not np.isfinite(level) or level < silence_dbfs:
            where = f" in its first {use_seconds:g} s" if use_seconds is not None and use_seconds < seconds else ""
            raise StemError(f"{what} is silent{where} ({max(level, -120):.0f} dBFS RMS): give a stem you can hear, "
                            f"or leave it out to generate {name}.")
    return audio
