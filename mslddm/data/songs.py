"""Random songs for the synthetic dataset: the split rule, the plan of one track (groove, tempo, key, chords,
sound font, programs, levels) and its MMA chord chart.

A plan depends only on ``(seed, index)`` and the generator options, never on which worker makes it or on what
was made before: track ``index`` of a dataset is the same whatever ``--hours`` or ``--workers`` are, so a larger
run extends a smaller one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mslddm.data.grooves import SPLITS, families_of_split
from mslddm.stems import DEFAULT_STEMS as STEMS  # the classes the generator renders


# Split shares of tracks (see iter_splits).
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}

# GM programs per stem class with relative weights (Slakh's classes: piano 0-7, guitar 24-31, bass 32-39).
PROGRAMS = {
    "piano": {0: 3, 1: 2, 2: 1, 3: 1, 4: 2, 5: 2, 6: 0.5, 7: 0.5},
    "guitar": {24: 2, 25: 2, 26: 2, 27: 2, 28: 1, 29: 1, 30: 1, 31: 0.2},
    "bass": {32: 2, 33: 3, 34: 2, 35: 1, 36: 0.5, 37: 0.5, 38: 1, 39: 1},
}
# GM drum kits (bank 128): standard, room, power, electronic, TR-808, jazz, brush.
DRUM_KITS = {0: 4, 8: 1, 16: 1, 24: 0.5, 25: 0.5, 32: 1, 40: 1}

NOTE_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")

# Four-bar progressions as (semitones above the tonic, MMA chord suffix); blues ones are twelve bars.
PROGRESSIONS = {
    ("pop", "major"): (
        ((0, ""), (7, ""), (9, "m"), (5, "")),       # I V vi IV
        ((0, ""), (9, "m"), (5, ""), (7, "")),       # I vi IV V
        ((9, "m"), (5, ""), (0, ""), (7, "")),       # vi IV I V
        ((0, ""), (5, ""), (7, ""), (5, "")),        # I IV V IV
        ((0, ""), (4, "m"), (5, ""), (7, "")),       # I iii IV V
        ((0, ""), (10, ""), (5, ""), (0, "")),       # I bVII IV I
        ((2, "m"), (7, "7"), (0, ""), (0, "")),      # ii V7 I I
    ),
    ("pop", "minor"): (
        ((0, "m"), (8, ""), (3, ""), (10, "")),      # i VI III VII
        ((0, "m"), (5, "m"), (7, "m"), (0, "m")),    # i iv v i
        ((0, "m"), (5, "m"), (10, ""), (3, "")),     # i iv VII III
        ((0, "m"), (8, ""), (5, "m"), (7, "")),      # i VI iv V
        ((0, "m"), (10, ""), (8, ""), (7, "")),      # Andalusian cadence
    ),
    ("jazz", "major"): (
        ((0, "maj7"), (9, "m7"), (2, "m7"), (7, "7")),   # I vi ii V
        ((4, "m7"), (9, "m7"), (2, "m7"), (7, "7")),     # iii vi ii V
        ((2, "m7"), (7, "7"), (0, "maj7"), (0, "maj7")),  # ii V I
        ((0, "maj7"), (5, "7"), (4, "m7"), (9, "7")),    # I IV7 iii VI7
        ((0, "6"), (9, "m7"), (2, "m7"), (7, "7")),      # I6 vi ii V
    ),
    ("jazz", "minor"): (
        ((2, "m7b5"), (7, "7"), (0, "m7"), (0, "m7")),   # ii V i
        ((0, "m7"), (5, "m7"), (7, "7"), (0, "m7")),     # i iv V i
        ((0, "m6"), (8, "7"), (2, "m7b5"), (7, "7")),    # i VI7 ii V
    ),
    ("blues", "major"): (
        ((0, "7"),) * 4 + ((5, "7"),) * 2 + ((0, "7"),) * 2 + ((7, "7"), (5, "7"), (0, "7"), (0, "7")),
        ((0, "7"), (5, "7"), (0, "7"), (0, "7"), (5, "7"), (5, "7"), (0, "7"), (0, "7"),
         (7, "7"), (5, "7"), (0, "7"), (7, "7")),  # quick change, turnaround
    ),
    ("blues", "minor"): (
        ((0, "m7"),) * 4 + ((5, "m7"),) * 2 + ((0, "m7"),) * 2 + ((8, "7"), (7, "7"), (0, "m7"), (0, "m7")),
    ),
}
MAJOR_PROBABILITY = {"pop": 0.65, "jazz": 0.7, "blues": 0.75}


@dataclass
class GeneratorOptions:
    """Options that decide a dataset's content (saved in ``OUT/dataset.json``; ``--hours`` is not one)."""

    seed: int = 0
    soundfonts: tuple[str, ...] = ()
    track_seconds: tuple[float, float] = (30.0, 90.0)
    sample_rate: int = 22050
    render_sample_rate: int = 44100
    tail_seconds: float = 2.0


@dataclass
class SongPlan:
    """Everything that decides one track's audio; saved (with the render facts) as its ``metadata.json``."""

    index: int
    name: str
    split: str
    seed: list[int]
    family: str
    grooves: dict[str, str]
    beats_per_bar: int
    tempo: int
    key: str
    mode: str
    sections: list[tuple[str, int]]
    chords: list[str]
    num_bars: int
    duration_seconds: float
    soundfont: str
    programs: dict[str, int]
    velocity_scale: dict[str, float]
    level_db: dict[str, float]
    mix_peak_db: float
    mma_seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def iter_splits():
    """The split of each track, in order: independent of the seed, so a track never changes split between runs.

    Track 0 goes to test and track 1 to validation, so that even a tiny dataset has all three splits; every
    later track goes to the split furthest below its share in :data:`SPLIT_FRACTIONS`.
    """
    counts = dict.fromkeys(SPLITS, 0)
    i = 0
    while True:
        if i < 2:
            split = ("test", "validation")[i]
        else:
            split = max(SPLITS, key=lambda s: (SPLIT_FRACTIONS[s] * (i + 1) - counts[s], -SPLITS.index(s)))
        counts[split] += 1
        i += 1
        yield split


def track_name(index: int) -> str:
    return f"Track{index + 1:05d}"


def _weighted(rng: np.random.Generator, table: dict):
    keys = list(table)
    weights = np.array([table[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def chord_name(tonic: int, offset: int, suffix: str) -> str:
    return NOTE_NAMES[(tonic + offset) % 12] + suffix


def plan_song(index: int, split: str, options: GeneratorOptions) -> SongPlan:
    """Draws track ``index`` (of split ``split``, see :func:`iter_splits`) of the dataset made with ``options``."""
    if not options.soundfonts:
        raise ValueError("GeneratorOptions.soundfonts is empty: at least one SoundFont is needed.")
    seed = [int(options.seed), int(index)]
    rng = np.random.default_rng(seed)

    family = families_of_split(split)[int(rng.integers(len(families_of_split(split))))]
    groove_a = family.grooves[int(rng.integers(len(family.grooves)))]
    groove_b = groove_a if rng.random() < 0.5 else family.grooves[int(rng.integers(len(family.grooves)))]
    tempo = int(rng.integers(family.tempo[0], family.tempo[1] + 1))

    mode = "major" if rng.random() < MAJOR_PROBABILITY[family.harmony] else "minor"
    tonic = int(rng.integers(12))
    progressions = PROGRESSIONS[(family.harmony, mode)]
    prog_a = progressions[int(rng.integers(len(progressions)))]
    prog_b = progressions[int(rng.integers(len(progressions)))]

    lo, hi = options.track_seconds
    target = float(rng.uniform(lo, hi))
    seconds_per_bar = family.beats_per_bar * 60.0 / tempo
    num_bars = max(2, round(target / seconds_per_bar))
    sections, chords = _arrange(prog_a, prog_b, tonic, mode, num_bars, rng)

    soundfont = options.soundfonts[int(rng.integers(len(options.soundfonts)))]
    programs = {stem: _weighted(rng, PROGRAMS[stem]) for stem in ("bass", "guitar", "piano")}
    programs["drums"] = _weighted(rng, DRUM_KITS)
    velocity_scale = {stem: round(float(rng.uniform(0.7, 1.1)), 3) for stem in STEMS}
    level_db = {stem: round(float(rng.uniform(-4.0, 2.0)), 2) for stem in STEMS}

    return SongPlan(
        index=index,
        name=track_name(index),
        split=split,
        seed=seed,
        family=family.name,
        grooves={"A": groove_a, "B": groove_b},
        beats_per_bar=family.beats_per_bar,
        tempo=tempo,
        key=NOTE_NAMES[tonic] + ("" if mode == "major" else "m"),
        mode=mode,
        sections=sections,
        chords=chords,
        num_bars=num_bars,
        duration_seconds=round(num_bars * seconds_per_bar + options.tail_seconds, 6),
        soundfont=soundfont,
        programs={stem: programs[stem] for stem in STEMS},
        velocity_scale=velocity_scale,
        level_db=level_db,
        mix_peak_db=round(float(rng.uniform(-6.0, -1.0)), 2),
        mma_seed=int(rng.integers(1, 2**31 - 1)),
    )


def _arrange(prog_a, prog_b, tonic, mode, num_bars, rng) -> tuple[list[tuple[str, int]], list[str]]:
    """Sections of two passes of a progression in an AABA-like form, cut to ``num_bars``; ends on the tonic."""
    forms = ("AABA", "ABAB", "AAB", "ABAC")
    pattern = forms[int(rng.integers(len(forms)))]
    bars = {"A": prog_a * 2 if len(prog_a) < 8 else prog_a, "B": prog_b * 2 if len(prog_b) < 8 else prog_b}
    bars["C"] = bars["B"][::-1]
    sections, chords = [], []
    while len(chords) < num_bars:
        letter = pattern[len(sections) % len(pattern)]
        take = bars[letter][: num_bars - len(chords)]
        sections.append((letter, len(take)))
        chords.extend(chord_name(tonic, *c) for c in take)
    chords[-1] = chord_name(tonic, 0, "" if mode == "major" else "m")
    return sections, chords


def mma_chart(plan: SongPlan) -> str:
    """The MMA source of a plan: seed, tempo, and one chord per bar under the groove of its section."""
    lines = [f"// mslddm {plan.name}", f"RndSeed {plan.mma_seed}", f"Tempo {plan.tempo}"]
    bar = 0
    for letter, length in plan.sections:
        lines.append(f"Groove {plan.grooves['A' if letter == 'A' else 'B']}")
        for chord in plan.chords[bar:bar + length]:
            bar += 1
            lines.append(f"{bar} {chord}")
    return "\n".join(lines) + "\n"
