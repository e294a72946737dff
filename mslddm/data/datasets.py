"""PyTorch datasets for training: aligned multi-stem audio segments (the diffusion model on audio, MSDM),
single-stem non-silent clips (the SourceVAE), mixture clips (the MixLDM baseline's MixtureVAE), and segments of pre-encoded latents (the latent diffusion model).

Every random draw comes from ``numpy.random.default_rng([seed, epoch, index])``: an item is the same whatever
DataLoader worker or batch produces it, and :meth:`set_epoch` gives each epoch new draws.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from mslddm.audio import AudioReadError
from mslddm.loudness import stem_levels
from mslddm.data.slakh import DEFAULT_STEM_CLASSES, index_slakh, is_slakh_track
from mslddm.data.tracks import DEFAULT_STEMS, Track, index_stem_folders, require_tracks, split_dir, track_dirs

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "stems", "slakh")
SEGMENT_LENGTH = 327672  # MSLDM's training segments: 14.86 s at 22050 Hz, 1024 latent frames
CLIP_LENGTH = 22050  # SourceVAE training clips: 1 s
SILENCE_THRESHOLD = 1.5e-5  # a clip is silent when ||clip||_2 / num_samples is below this (reference rule)


def load_tracks(
    root,
    split: str | None = None,
    stem_names=DEFAULT_STEMS,
    layout: str = "auto",
    stem_classes: dict[str, tuple[str, ...]] | None = None,
    sample_rate: int = 22050,
    on_length_mismatch: str = "pad",
    return_summary: bool = False,
):
    """The usable tracks of ``ROOT/SPLIT`` in the stem-folder or the original Slakh2100 layout (with
    ``return_summary``: ``(tracks, summary)``, the :class:`IndexSummary` naming every skipped, padded or incomplete
    track).

    ``layout="auto"`` picks Slakh2100 when track folders hold ``metadata.yaml`` and ``stems/``. For Slakh,
    ``stem_classes`` maps stem names to ``inst_class`` values (default: each stem name's own class, e.g.
    ``bass`` -> ``Bass``). ``on_length_mismatch``: ``pad`` shorter stems with silence (default), ``trim`` to the
    shortest stem, or ``skip`` the track (as the MSDM reference loader does). Raises ``ValueError`` when no track
    is usable.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    stem_names = tuple(stem_names)
    if layout == "auto":
        dirs = track_dirs(split_dir(root, split))
        layout = "slakh" if any(is_slakh_track(d) for d in dirs[:20]) else "stems"
    if layout == "slakh":
        if stem_classes is None:
            stem_classes = {s: DEFAULT_STEM_CLASSES.get(s, (s.capitalize(),)) for s in stem_names}
        tracks, summary = index_slakh(root, split, stem_classes, sample_rate, on_length_mismatch)
        expected = "TRACK/metadata.yaml and TRACK/stems/SNN.flac (Slakh2100)"
    else:
        tracks, summary = index_stem_folders(root, split, stem_names, sample_rate, on_length_mismatch)
        expected = f"TRACK/{{{','.join(stem_names)}}}.wav (one folder per track)"
    require_tracks(tracks, summary, expected)
    return (tracks, summary) if return_summary else tracks


def is_silent(audio, threshold: float = SILENCE_THRESHOLD) -> bool:
    """The reference's silence rule for VAE training clips: L2 norm divided by the number of samples."""
    audio = np.asarray(audio, dtype=np.float64)
    return float(np.linalg.norm(audio)) / max(audio.size, 1) < threshold


class _Segments(torch.utils.data.Dataset):
    """Segments of items with lengths ``self.lengths``: random (track drawn in proportion to its length, offset
    uniform) or, with ``random_offsets=False``, consecutive windows covering every item (the last zero-padded)."""

    def __init__(self, lengths, segment, random_offsets, segments_per_epoch, seed):
        if segment < 1:
            raise ValueError(f"Segment length must be positive, got {segment}.")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.segment, self.random_offsets, self.seed, self.epoch = int(segment), random_offsets, int(seed), 0
        self.weights = self.lengths / self.lengths.sum()
        if random_offsets:
            self.num_segments = int(segments_per_epoch or max(1, self.lengths.sum() // self.segment))
        else:
            self.windows = [(i, s) for i, n in enumerate(self.lengths) for s in range(0, max(int(n), 1), self.segment)]
            self.num_segments = len(self.windows)
        self.bad: set[int] = set()
        self.bad_reasons: dict[int, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_segments

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        weights = self.weights
        if self.bad:
            weights = weights.copy()
            weights[list(self.bad)] = 0
            if weights.sum() == 0:
                raise RuntimeError("Every track of the dataset failed to read; see the logged errors.")
            weights /= weights.sum()
        item = int(rng.choice(len(weights), p=weights))
        return item, int(rng.integers(0, max(int(self.lengths[item]) - self.segment, 0) + 1))

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.num_segments:
            raise IndexError(f"Index {index} out of range for {self.num_segments} segments.")
        return self.draw(self.rng(index)) if self.random_offsets else self.windows[index]

    def mark_bad(self, item: int, error: Exception) -> None:
        logger.error("Skipping item %d from now on: %s", item, error)
        self.bad.add(item)
        self.bad_reasons[item] = str(error)


class MultiSourceSegmentDataset(_Segments):
    """Aligned multi-stem segments ``(num_stems, segment_length)`` float32 (stems in ``stem_names`` order).

    Args:
        tracks: from :func:`load_tracks`.
        segment_length: samples per segment (default 327672, MSLDM's; MSDM used 262144).
        random_offsets: random track and offset per item (training), or consecutive windows (evaluation).
        segments_per_epoch: dataset length with random offsets (default: total audio / segment_length).
        seed: base of the per-item seeds.
    """

    def __init__(self, tracks: list[Track], segment_length: int = SEGMENT_LENGTH, random_offsets: bool = True,
                 segments_per_epoch: int | None = None, seed: int = 0):
        if not tracks:
            raise ValueError("MultiSourceSegmentDataset needs at least one track.")
        self.tracks = list(tracks)
        self.stem_names = self.tracks[0].stem_names
        super().__init__([t.num_samples for t in self.tracks], segment_length, random_offsets,
                         segments_per_epoch, seed)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = self.rng(index)
        item, start = self.locate(index)
        while True:
            try:
                return torch.from_numpy(self.tracks[item].read(start, self.segment, self.stem_names))
            except AudioReadError as error:  # a file broken after indexing: never stop a long run
                self.mark_bad(item, error)
                if not self.random_offsets:
                    return torch.zeros(len(self.stem_names), self.segment)
                item, start = self.draw(rng)


class SourceClipDataset(_Segments):
    """Non-silent single-stem clips ``(1, clip_length)`` float32 for SourceVAE training, stems pooled.

    A draw picks a track (in proportion to its length), one of its stems that has audio, and an offset; silent
    clips (:func:`is_silent`) are redrawn up to ``max_tries`` times.
    """

    def __init__(self, tracks: list[Track], clip_length: int = CLIP_LENGTH, clips_per_epoch: int | None = None,
                 silence_threshold: float = SILENCE_THRESHOLD, max_tries: int = 200, seed: int = 0):
        if not tracks:
            raise ValueError("SourceClipDataset needs at least one track.")
        self.tracks = list(tracks)
        self.silence_threshold, self.max_tries = float(silence_threshold), int(max_tries)
        self.sounding = [[s for s, files in t.stems.items() if files] for t in self.tracks]
        lengths = [t.num_samples if self.sounding[i] else 0 for i, t in enumerate(self.tracks)]
        if not any(lengths):
            raise ValueError("SourceClipDataset: no track has any stem file.")
        super().__init__(lengths, clip_length, True, clips_per_epoch, seed)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} out of range for {len(self)} clips.")
        rng = self.rng(index)
        for _ in range(self.max_tries):
            item, start = self.draw(rng)
            stem = self.sounding[item][int(rng.integers(len(self.sounding[item])))]
            try:
                clip = self.tracks[item].read_stem(stem, start, self.segment)
            except AudioReadError as error:
                self.mark_bad(item, error)
                continue
            if not is_silent(clip, self.silence_threshold):
                return torch.from_numpy(clip)[None]
        raise RuntimeError(
            f"No non-silent {self.segment}-sample clip found in {self.max_tries} draws (item {index}); the data "
            f"may be (almost) silent, or lower silence_threshold (now {self.silence_threshold})."
        )


class MixtureClipDataset(_Segments):
    """Non-silent clips ``(1, clip_length)`` float32 of mixtures (the sum of a track's stems) for the MixtureVAE
    of the MixLDM baseline: a draw picks a track (in proportion to its length) and an offset; silent clips are
    redrawn up to ``max_tries`` times."""

    def __init__(self, tracks: list[Track], clip_length: int = CLIP_LENGTH, clips_per_epoch: int | None = None,
                 silence_threshold: float = SILENCE_THRESHOLD, max_tries: int = 200, seed: int = 0):
        if not tracks:
            raise ValueError("MixtureClipDataset needs at least one track.")
        self.tracks = list(tracks)
        self.silence_threshold, self.max_tries = float(silence_threshold), int(max_tries)
        super().__init__([t.num_samples for t in self.tracks], clip_length, True, clips_per_epoch, seed)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"Index {index} out of range for {len(self)} clips.")
        rng = self.rng(index)
        for _ in range(self.max_tries):
            item, start = self.draw(rng)
            try:
                clip = self.tracks[item].read(start, self.segment).sum(0)
            except AudioReadError as error:
                self.mark_bad(item, error)
                continue
            if not is_silent(clip, self.silence_threshold):
                return torch.from_numpy(clip.astype(np.float32))[None]
        raise RuntimeError(
            f"No non-silent {self.segment}-sample mixture clip found in {self.max_tries} draws (item {index}); "
            f"the data may be (almost) silent, or lower silence_threshold (now {self.silence_threshold})."
        )


class LatentSegmentDataset(_Segments):
    """Segments ``(num_stems, latent_channels, segment_frames)`` float32 of latents written by
    ``mslddm encode-latents`` (reshape to ``(num_stems * latent_channels, frames)`` for the UNet).

    Args:
        root: the ``encode-latents`` output folder; ``split`` its sub-folder (``None``: files directly in root).
            Tracks shorter than a segment are padded with the latent of silence saved in ``latents.json``.
        segment_frames: latent frames per segment (default 1024 = 327672 samples at hop 320).
        random_offsets, segments_per_epoch, seed: as for :class:`MultiSourceSegmentDataset`.
    """

    def __init__(self, root, split: str | None = "train", segment_frames: int = 1024, random_offsets: bool = True,
                 segments_per_epoch: int | None = None, seed: int = 0):
        from mslddm.data.latents import HEADER_FILE, LATENT_KEY, latent_files, read_latent_header

        self.files = latent_files(root, split)
        if not self.files:
            raise ValueError(f"No latent files (*.safetensors) under {Path(root) / (split or '')}; "
                             "make them with `mslddm encode-latents`.")
        self.key = LATENT_KEY
        headers = [read_latent_header(f) for f in self.files]
        self.stem_names = headers[0]["stems"]
        for f, h in zip(self.files, headers):
            if h["stems"] != self.stem_names or h["shape"][1] != headers[0]["shape"][1]:
                raise ValueError(f"{f} holds stems {h['stems']} x {h['shape'][1]} channels, but "
                                 f"{self.files[0]} holds {self.stem_names} x {headers[0]['shape'][1]}.")
        super().__init__([h["shape"][2] for h in headers], segment_frames, random_offsets, segments_per_epoch, seed)
        # Short tracks are padded with the latent of silence (not zeros, which the VAE does not map to silence).
        header = Path(root) / HEADER_FILE
        silence = json.loads(header.read_text()).get("silence_latent") if header.is_file() else None
        channels = headers[0]["shape"][1]
        self.silence = torch.tensor(silence if silence else [0.0] * channels, dtype=torch.float32)[None, :, None]

    def __getitem__(self, index: int) -> torch.Tensor:
        from safetensors import safe_open

        item, start = self.locate(index)
        with safe_open(str(self.files[item]), framework="pt") as f:
            latents = f.get_slice(self.key)[:, :, start:start + self.segment].float()
        if latents.shape[-1] < self.segment:
            pad = self.silence.expand(latents.shape[0], -1, self.segment - latents.shape[-1])
            latents = torch.cat([latents, pad], dim=-1)
        return latents


def validation_segments(dataset, count: int, what: str = "validation") -> tuple[torch.Tensor, dict]:
    """``count`` fixed, evenly spread segments of an evaluation dataset (``random_offsets=False``) on which
    validation numbers mean something: a segment that cannot be read, or where every stem is silent, is replaced by
    the next usable one. Returns the stacked segments and a report (the indices used, and every unusable segment
    with its track and reason). Raises ``ValueError`` naming the tracks when fewer than ``count`` segments are
    usable (``count`` is capped at the number of segments), so that no run reports numbers computed on audio it
    could not read."""
    n = len(dataset)
    count = min(int(count), n)
    used, unusable = [], {}
    for pick in torch.linspace(0, n - 1, count).long().tolist():
        for i in list(range(pick, n)) + list(range(pick)):  # the next usable segment, wrapping around
            if i in used or i in unusable:
                continue
            problem = _segment_problem(dataset, i)
            if problem is None:
                used.append(i)
                break
            unusable[i] = problem
            logger.warning("%s segment %d is not used: %s", what.capitalize(), i, problem)
    report = {"asked": count, "used": sorted(used), "unusable": {str(k): v for k, v in sorted(unusable.items())}}
    if len(used) < count:
        tracks = sorted(set(unusable.values()))
        raise ValueError(f"Only {len(used)} of the {count} {what} segments asked for can be used: "
                         f"{'; '.join(tracks[:3])}{f'; and {len(tracks) - 3} more' if len(tracks) > 3 else ''}. "
                         f"Repair or remove those tracks, or ask for fewer {what}_segments.")
    return torch.stack([dataset[i] for i in sorted(used)]), report


def _segment_problem(dataset, index: int) -> str | None:
    """Why segment ``index`` cannot serve validation (None when it can): unreadable, or every stem silent."""
    item, start = dataset.locate(index)
    name = dataset.tracks[item].name if hasattr(dataset, "tracks") else Path(dataset.files[item]).name
    try:
        segment = dataset[index]
    except Exception as error:  # noqa: BLE001 - a latent file that fails to open: named, not fatal here
        return f"{name} could not be read ({type(error).__name__}: {error})"
    if item in getattr(dataset, "bad", ()):
        return f"{name} could not be read ({dataset.bad_reasons.get(item, 'see the log')})"
    if segment.ndim == 2 and all(is_silent(stem) for stem in segment.numpy()):
        return f"{name} is silent in every stem from sample {start}"
    return None


def measure_stem_levels(root, split: str = "train", stem_names=DEFAULT_STEMS, sample_rate: int = 22050,
                        clips: int = 64, seconds: float = 12.0) -> dict[str, float]:
    """Each stem's level in the data (the median gated level of :func:`mslddm.loudness.stem_levels` over ``clips``
    consecutive chunks spread over the split's tracks): what a pipeline trained on it records as
    ``stem_levels_dbfs``."""
    tracks = load_tracks(root, split, stem_names, sample_rate=sample_rate)
    if not tracks:
        raise ValueError(f"{root}/{split} holds no usable tracks to measure the stems' levels on.")
    length = int(seconds * sample_rate)
    chunks = [(track, start) for track in tracks for start in range(0, max(1, track.num_samples - length + 1), length)]
    picked = [chunks[i] for i in np.linspace(0, len(chunks) - 1, min(clips, len(chunks))).round().astype(int)]
    return stem_levels([track.read(start, length, list(stem_names)) for track, start in picked], stem_names,
                       sample_rate)
