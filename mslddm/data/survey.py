"""What a folder of your songs holds, checked against a pipeline's stems before any work (``mslddm finetune``).

One folder per song, one audio file per stem, in any format, rate and channel count, named by the stem::

    DATA/SONG/{stem}.{wav,flac,ogg,mp3,aiff}          songs; a share of them is held out as the validation split
    DATA/{train,validation,test}/SONG/{stem}.{...}    or songs already split (`mslddm make-dataset`'s layout;
                                                      test/ is not read: it is left for the evaluation)

Everything that would stop a run later is found here and named in one sentence (:class:`DataError`): no song, a
stem name the pipeline does not know (with the choice of mapping it, ``--stem-map NAME=KNOWN``, or dropping it,
``--drop-unknown``), two files for one stem, an unreadable file, the stems of a song of different lengths. Missing
stems are allowed (they are silence) and counted; a song's ``mix`` file is not a stem and is left out.
:func:`write_view` lays the songs out in the stem-folder layout the loaders read (links named by the pipeline's
stems, split into train and validation), so that nothing is copied or renamed.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from mslddm.data.tracks import AUDIO_EXTENSIONS

SPLITS = ("train", "validation", "test")
TRAINED = ("train", "validation")  # the splits a fine-tune reads (test is left for the evaluation)
MIX_NAMES = ("mix", "mixture")  # the sum of a song's stems (make-dataset writes one): not a stem
LENGTH_TOLERANCE_S = 0.1  # stems this close in length are one length (an MP3's encoder padding is ~0.05 s)
ON_LENGTH_MISMATCH = ("refuse", "pad", "trim")


class DataError(ValueError):
    """The songs cannot be trained on as they are: one sentence naming the song, the file and what to do."""


@dataclass
class Song:
    """One song: the file of each of the pipeline's stems it has (the others are silence)."""

    name: str
    split: str
    files: dict[str, Path]
    seconds: float


@dataclass
class Survey:
    """The songs found, by split, and what was mapped, dropped, left out or missing."""

    root: str
    stem_names: list[str]
    songs: list[Song] = field(default_factory=list)
    stem_map: dict[str, str] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)  # a stem name left out (--drop-unknown) -> files
    mixes: int = 0  # mix files left out
    empty: list[str] = field(default_factory=list)  # songs without a file of any of the pipeline's stems
    held_out: bool = False  # the validation songs were held out of a folder of unsplit songs

    def split(self, name: str) -> list[Song]:
        return [song for song in self.songs if song.split == name]

    def missing(self) -> dict[str, list[str]]:
        """Each stem's songs without a file (silence there)."""
        return {stem: [s.name for s in self.songs if stem not in s.files] for stem in self.stem_names
                if any(stem not in s.files for s in self.songs)}

    def to_dict(self) -> dict:
        splits = {name: {"songs": [s.name for s in self.split(name)],
                         "minutes": round(sum(s.seconds for s in self.split(name)) / 60, 2)}
                  for name in SPLITS if self.split(name)}
        return {"root": self.root, "stem_names": self.stem_names, "splits": splits,
                "held_out_for_validation": self.held_out, "stem_map": self.stem_map,
                "dropped_stems": dict(self.dropped), "mix_files_left_out": self.mixes,
                "songs_without_any_stem": self.empty, "missing_stems": self.missing()}

    def describe(self) -> str:
        """One paragraph: the songs and minutes per split, the stems present and missing, the mapping."""
        splits = "; ".join(f"{name} {len(songs)} song(s), {_duration(sum(s.seconds for s in songs))}"
                           for name in SPLITS if (songs := self.split(name)))
        found = ", ".join(f"{stem} {sum(stem in s.files for s in self.songs)}" for stem in self.stem_names)
        text = f"{len(self.songs)} song(s) of `{Path(self.root).name}` ({splits}). Songs with each stem: {found}"
        missing = self.missing()
        text += (f" (missing stems are silence: {', '.join(f'{k} in {len(v)}' for k, v in missing.items())})."
                 if missing else ".")
        if self.held_out:
            text += " The validation songs were held out of the folder (never trained on)."
        elif not self.split("validation") or self.split("validation") == self.split("train"):
            text += " No song was held out: validation numbers are on training music."
        if self.stem_map:
            text += " Mapped: " + ", ".join(f"{a} -> {b}" for a, b in self.stem_map.items()) + "."
        if self.dropped:
            text += " Left out: " + ", ".join(f"{k} ({v} file(s))" for k, v in self.dropped.items()) + "."
        return text


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def song_folders(root: Path) -> tuple[dict[str, list[Path]], bool]:
    """``({split: song folders}, split)``: the split folders' songs, or the songs of an unsplit folder under
    ``"train"`` (``split`` False)."""
    if not root.is_dir():
        raise DataError(f"The data folder {str(root)!r} does not exist.")

    def folders(path: Path) -> list[Path]:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))

    if any((root / name).is_dir() for name in SPLITS):
        if not (root / "train").is_dir():
            raise DataError(f"{str(root)!r} has split folders but no train/: put the songs to train on in "
                            f"{root / 'train'}.")
        return {name: folders(root / name) for name in TRAINED if (root / name).is_dir()}, True
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if loose:
        raise DataError(f"{str(root)!r} holds audio files itself ({', '.join(loose[:3])}), not song folders: put "
                        f"each song's stems in a folder of its own, e.g. {root / 'song1' / loose[0]}.")
    return {"train": folders(root)}, False


def audio_files(folder: Path) -> dict[str, list[Path]]:
    """A song folder's audio files by lower-case name without extension (several: the same name twice)."""
    named: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS:
            named.setdefault(path.stem.lower(), []).append(path)
    return named


def check_stem_map(stem_map: dict[str, str], stem_names: list[str]) -> dict[str, str]:
    """The mapping with lower-case source names; a target the pipeline does not have is one sentence."""
    for name, target in stem_map.items():
        if target not in stem_names:
            raise DataError(f"--stem-map {name}={target}: {target!r} is not one of this pipeline's stems "
                            f"{stem_names}.")
    return {name.lower(): target for name, target in stem_map.items()}


def assign_stems(folder: Path, survey: Survey, unknown: dict[str, list[str]], drop_unknown: bool) -> dict:
    """The song's file for each pipeline stem, after the mapping; unknown names are collected in ``unknown``."""
    files: dict[str, Path] = {}
    for name, paths in audio_files(folder).items():
        if name in MIX_NAMES:
            survey.mixes += len(paths)
            continue
        stem = survey.stem_map.get(name, name)
        if stem not in survey.stem_names:
            if drop_unknown:
                survey.dropped[name] += len(paths)
            else:
                unknown.setdefault(name, []).append(str(paths[0].relative_to(Path(survey.root))))
            continue
        for path in paths:
            if stem in files:
                raise DataError(f"{folder.name} has two files for the {stem} stem ({files[stem].name} and "
                                f"{path.name}): keep one, or map one of them to another stem with --stem-map.")
            files[stem] = path
    return files


def unknown_sentence(unknown: dict[str, list[str]], survey: Survey) -> str:
    """The one sentence for stem names the pipeline does not know, with both ways out."""
    names = "; ".join(f"{name!r} in {len(where)} song(s), e.g. {where[0]}" for name, where in sorted(unknown.items()))
    return (f"The songs hold stems this pipeline does not know ({names}); its stems are {survey.stem_names}: map "
            f"each to one of them with --stem-map {min(unknown)}=STEM, or leave them out with --drop-unknown.")


def stem_seconds(song: str, files: dict[str, Path]) -> dict[str, float]:
    """Each stem file's length in seconds, after checking that it decodes; an unreadable one is one sentence."""
    seconds = {}
    for stem, path in files.items():
        try:
            info = sf.info(str(path))
            if info.frames <= 0:
                raise ValueError("it holds no samples")
            sf.read(str(path), frames=min(info.frames, 4096), dtype="float32")
        except Exception as error:  # noqa: BLE001 - libsndfile raises several types; all mean "cannot use it"
            why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"{song}/{path.name} could not be read ({why}): convert it to WAV or FLAC, or remove "
                            "it.") from None
        seconds[stem] = info.frames / info.samplerate
    return seconds


def check_lengths(song: str, seconds: dict[str, float], on_length_mismatch: str) -> None:
    """Stems of one song must be one length (within :data:`LENGTH_TOLERANCE_S`) unless padding or trimming is
    asked for."""
    if on_length_mismatch != "refuse" or max(seconds.values()) - min(seconds.values()) <= LENGTH_TOLERANCE_S:
        return
    lengths = ", ".join(f"{stem} {s:.2f} s" for stem, s in sorted(seconds.items(), key=lambda kv: kv[1]))
    raise DataError(f"The stems of {song} differ in length ({lengths}): export them at one length, or pass "
                    "--on-length-mismatch pad (silence after the short ones) or trim (to the shortest).")


def hold_out(songs: list[Song], share: float) -> bool:
    """Moves an evenly spread ``share`` of the songs (at least one, never all) to the validation split."""
    n = len(songs)
    if n < 2 or share <= 0:
        return False
    k = min(max(1, round(n * share)), n - 1)
    for i in sorted({min(n - 1, int((i + 0.5) * n / k)) for i in range(k)}):
        songs[i].split = "validation"
    return True


def survey_songs(root, stem_names, stem_map: dict[str, str] | None = None, drop_unknown: bool = False,
                 holdout: float = 0.1, on_length_mismatch: str = "refuse") -> Survey:
    """The songs of ``root`` matched to ``stem_names``, checked (see the module), split into train and validation
    (a folder without split folders: ``holdout`` of its songs are validation)."""
    if on_length_mismatch not in ON_LENGTH_MISMATCH:
        raise ValueError(f"on_length_mismatch must be one of {ON_LENGTH_MISMATCH}, got {on_length_mismatch!r}.")
    root = Path(root)
    survey = Survey(str(root), list(stem_names), stem_map=check_stem_map(dict(stem_map or {}), list(stem_names)))
    splits, already_split = song_folders(root)
    unknown: dict[str, list[str]] = {}
    found = [(split, folder, assign_stems(folder, survey, unknown, drop_unknown))
             for split, folders in splits.items() for folder in folders]
    if unknown:
        raise DataError(unknown_sentence(unknown, survey))
    for split, folder, files in found:
        if not files:
            survey.empty.append(f"{split}/{folder.name}" if already_split else folder.name)
            continue
        seconds = stem_seconds(folder.name, files)
        check_lengths(folder.name, seconds, on_length_mismatch)
        survey.songs.append(Song(folder.name, split, files, max(seconds.values())))
    if not survey.split("train"):
        left = (f" ({len(survey.empty)} folder(s) hold none of its stems, e.g. {survey.empty[0]})"
                if survey.empty else "")
        raise DataError(f"No song to train on in {str(root)!r}{left}: a song is a folder of stem files named by "
                        f"the pipeline's stems, e.g. {root / 'song1' / (stem_names[0] + '.wav')}.")
    if not survey.split("validation"):
        survey.held_out = hold_out(survey.split("train"), holdout)
    return survey


def write_view(survey: Survey, folder) -> Path:
    """The songs as the stem-folder layout (``FOLDER/{train,validation,test}/SONG/{stem}.ext``, links to the
    files): what ``encode-latents`` and the training read. With a single song, validation is that song."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    songs = [(song.split, song) for song in survey.songs]
    if not survey.split("validation"):
        songs += [("validation", song) for song in survey.split("train")]
    for split, song in songs:
        target = tmp / split / song.name
        target.mkdir(parents=True, exist_ok=True)
        for stem, path in song.files.items():
            (target / f"{stem}{path.suffix.lower()}").symlink_to(path.resolve())
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
