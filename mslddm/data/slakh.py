"""The original Slakh2100 layout, read as multi-stem tracks: every rendered instrument of a class is summed into
that class's stem and resampled (44.1 kHz flac -> the model's rate) on the fly::

    ROOT/{train,validation,test}/TrackNNNNN/metadata.yaml
    ROOT/{train,validation,test}/TrackNNNNN/stems/SNN.flac

``metadata.yaml`` lists each instrument under ``stems: {SNN: {inst_class: Bass, audio_rendered: true, ...}}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mslddm.data.tracks import (
    AUDIO_EXTENSIONS,
    AudioFile,
    IndexSummary,
    Track,
    check_length_policy,
    finish_track,
    split_dir,
    track_dirs,
)

logger = logging.getLogger(__name__)

# MSLDM's four stems and the Slakh inst_class each one sums.
DEFAULT_STEM_CLASSES = {"bass": ("Bass",), "drums": ("Drums",), "guitar": ("Guitar",), "piano": ("Piano",)}


def is_slakh_track(track_dir: Path) -> bool:
    return (track_dir / "metadata.yaml").is_file() and (track_dir / "stems").is_dir()


def read_slakh_metadata(path: Path) -> dict[str, dict]:
    """The ``stems`` table of a Slakh ``metadata.yaml``: ``{"S00": {"inst_class": ..., ...}, ...}``."""
    try:
        import yaml
    except ImportError as error:
        raise ImportError("Reading Slakh2100 needs PyYAML: pip install 'mslddm[data]'.") from error
    with open(path) as f:
        meta = yaml.safe_load(f)
    stems = meta.get("stems") if isinstance(meta, dict) else None
    if not isinstance(stems, dict):
        raise ValueError(f"{path} has no 'stems' table.")  # noqa: TRY004 - a malformed file, not a bad argument
    return stems


def index_slakh(
    root,
    split: str | None = None,
    stem_classes: dict[str, tuple[str, ...]] | None = None,
    sample_rate: int = 22050,
    on_length_mismatch: str = "pad",
) -> tuple[list[Track], IndexSummary]:
    """Tracks of an original Slakh2100 copy; ``stem_classes`` maps each stem name to the ``inst_class`` values
    summed into it (default: bass, drums, guitar, piano from Bass, Drums, Guitar, Piano)."""
    check_length_policy(on_length_mismatch)
    stem_classes = {k: tuple(v) for k, v in (stem_classes or DEFAULT_STEM_CLASSES).items()}
    class_to_stem = {c.lower(): stem for stem, classes in stem_classes.items() for c in classes}
    folder = split_dir(root, split)
    summary = IndexSummary(str(folder))
    tracks = []
    for track_dir in track_dirs(folder):
        if not (track_dir / "metadata.yaml").is_file():
            summary.skipped[track_dir.name] = "no metadata.yaml"
            continue
        try:
            stems = {stem: [] for stem in stem_classes}
            for stem_id, info in sorted(read_slakh_metadata(track_dir / "metadata.yaml").items()):
                stem = class_to_stem.get(str(info.get("inst_class", "")).lower())
                if stem is None or not info.get("audio_rendered", True):
                    continue
                path = next((track_dir / "stems" / f"{stem_id}{ext}" for ext in AUDIO_EXTENSIONS
                             if (track_dir / "stems" / f"{stem_id}{ext}").is_file()), None)
                if path is None:
                    raise FileNotFoundError(f"stems/{stem_id}.flac is listed as rendered but missing")
                stems[stem].append(AudioFile.probe(path))
        except Exception as error:  # noqa: BLE001 - any bad track is skipped and logged, never stops a run
            summary.skipped[track_dir.name] = f"unreadable: {error}"
            logger.warning("Skipping %s: %s", track_dir, error)
            continue
        track = finish_track(track_dir.name, track_dir, stems, sample_rate, on_length_mismatch, summary)
        if track is not None:
            tracks.append(track)
    return tracks, summary
