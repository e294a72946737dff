"""The MMA grooves the synthetic dataset draws from, grouped into families, and the fixed family -> split rule.

A *family* is one file of MMA's standard library (``/usr/share/mma/lib/stdlib/8beat.mma`` defines ``8Beat``,
``8BeatSus``, ``8BeatPlus``, ...). Grooves of one family share their drum patterns and voicings, so the split is made
by family: the test and validation splits hold families that the training split never sees, whatever the seed.

Only grooves whose parts cover all four GM classes (bass 32-39, drums on channel 10, guitar 24-31, piano 0-7) are
listed: 153 of the 770 non-intro/ending/fill grooves of MMA 21.09's standard library (found by rendering each).
``beats_per_bar`` is the groove's ``Time`` (MMA counts 6/8 grooves in eighth notes); ``tempo`` is the range of MMA
``Tempo`` values the generator draws from, in those beats per minute; ``harmony`` picks the chord progressions.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class GrooveFamily:
    name: str
    split: str
    beats_per_bar: int
    tempo: tuple[int, int]
    harmony: str  # "pop", "jazz" or "blues"
    grooves: tuple[str, ...]


def _family(name, split, beats_per_bar, tempo, harmony, grooves):
    return GrooveFamily(name, split, beats_per_bar, tempo, harmony, tuple(grooves.split()))


# Held-out families span straight and swung feels, 3/4, 6/8 and a latin groove, so that each held-out split
# exercises the model on more than one style.
GROOVE_FAMILIES: tuple[GrooveFamily, ...] = (
    # ---- test
    _family("fastblues", "test", 4, (130, 170), "blues",
            "FastBlues FastBlues1 FastBlues1Sus FastBluesSus FastBluesWalk FastBluesWalkSus"),
    _family("jazzwaltz", "test", 3, (110, 150), "jazz",
            "JazzWaltz JazzWaltz1 JazzWaltz1Sus JazzWaltz2 JazzWaltz2Sus JazzWaltzSus"),
    _family("popballad", "test", 4, (65, 90), "pop",
            "PopBallad1Plus PopBallad2Plus PopBallad2SusPlus PopBalladPlus PopBalladSusPlus"),
    _family("samba", "test", 4, (95, 125), "pop", "Samba SambaSus"),
    # ---- validation
    _family("68swing", "validation", 6, (180, 240), "jazz",
            "68Swing1Plus 68Swing1SusPlus 68Swing2Plus 68Swing2SusPlus 68SwingPlus 68SwingSusPlus"),
    _family("mellowjazz", "validation", 4, (55, 75), "jazz",
            "MellowJazz MellowJazzPlus MellowJazzSus MellowJazzSusPlus"),
    _family("rhumba", "validation", 4, (100, 130), "pop", "Rhumba3 Rhumba3Sus"),
    _family("softrock", "validation", 4, (90, 120), "pop", "SoftRock2 SoftRock2Sus"),
    # ---- train
    _family("50srock", "train", 4, (150, 180), "pop", "50sRock1Plus 50sRock1SusPlus 50sRockPlus 50sRockSusPlus"),
    _family("8beat", "train", 4, (100, 140), "pop",
            "8Beat 8Beat1 8Beat1Plus 8Beat1Sus 8Beat1SusPlus 8BeatPlus 8BeatSus 8BeatSusPlus 8BeatWalk "
            "8BeatWalkPlus 8BeatWalkSus 8BeatWalkSusPlus"),
    _family("bigband", "train", 4, (110, 150), "jazz", "BigBand1Plus BigBand1SusPlus"),
    _family("blues128", "train", 4, (50, 70), "blues", "Blues128Plus Blues128SusPlus"),
    _family("dsoul", "train", 4, (85, 110), "pop", "DSoul DSoulPlus DSoulSus DSoulSusPlus"),
    _family("fastjazzwaltz", "train", 3, (170, 220), "jazz",
            "FastJazzWaltz FastJazzWaltz1 FastJazzWaltz1Sus FastJazzWaltz2 FastJazzWaltz2Sus FastJazzWaltzSus"),
    _family("fastswing", "train", 4, (180, 230), "jazz", "FastSwing FastSwingSus FastSwingWalk FastSwingWalkSus"),
    _family("folkrock", "train", 4, (100, 130), "pop", "FolkRockPlus FolkRockSusPlus"),
    _family("foxtrot", "train", 4, (110, 140), "jazz",
            "FoxTrot1Plus FoxTrot1Sus FoxTrot1SusPlus FoxTrotPlus FoxTrotSusPlus Foxtrot Foxtrot1 FoxtrotSus"),
    _family("jazzcombo", "train", 4, (110, 160), "jazz",
            "JazzCombo JazzCombo1 JazzCombo1Plus JazzCombo1Sus JazzCombo1SusPlus JazzCombo2 JazzCombo2Plus "
            "JazzCombo2Sus JazzCombo2SusPlus JazzComboPlus JazzComboSus JazzComboSusPlus"),
    _family("latinwaltz", "train", 3, (120, 160), "pop", "LatinWaltzPlus LatinWaltzSusPlus"),
    _family("lighttango", "train", 4, (110, 130), "pop", "LightTango LightTango1 LightTango1Sus LightTangoSus"),
    _family("modernjazz", "train", 4, (120, 170), "jazz",
            "ModernJazz ModernJazz1 ModernJazz1Sus ModernJazz2 ModernJazz2Sus ModernJazzSus"),
    _family("modernjazzwaltz", "train", 3, (110, 160), "jazz",
            "ModernJazzWaltz ModernJazzWaltz1 ModernJazzWaltz1Sus ModernJazzWaltz2 ModernJazzWaltz2Sus "
            "ModernJazzWaltzSus"),
    _family("nitejazz", "train", 4, (60, 80), "jazz", "NiteJazzPlus NiteJazzSusPlus"),
    _family("quickstep", "train", 4, (180, 210), "jazz",
            "QuickStep QuickStepDuh QuickStepDuhSus QuickStepDuhSusWalk QuickStepDuhWalk QuickStepHit "
            "QuickStepHitSus QuickStepHitSusWalk QuickStepHitWalk QuickStepSus QuickStepSusWalk QuickStepWalk"),
    _family("rb", "train", 4, (90, 120), "pop", "R&B R&BPlus R&BSus R&BSusPlus"),
    _family("rb-ballad", "train", 4, (60, 80), "pop", "R&B-BalladPlus R&B-BalladSusPlus"),
    _family("shuffleboggie", "train", 4, (120, 160), "blues", "ShuffleBoggie ShuffleBoggie1 ShuffleBoggieSus"),
    _family("slowbolero", "train", 4, (80, 100), "pop",
            "SlowBolero SlowBolero1 SlowBolero1Sus SlowBoleroPlus SlowBoleroSus SlowBoleroSusPlus"),
    _family("slowjazz", "train", 4, (60, 85), "jazz",
            "SlowJazz1Plus SlowJazz1SusPlus SlowJazzPlus SlowJazzSusPlus"),
    _family("swing", "train", 4, (110, 170), "jazz",
            "Swing1 Swing1Plus Swing1PlusSus Swing1Sus Swing1Triple Swing1Walk Swing1WalkPlus Swing1WalkPlusSus "
            "Swing1WalkSus"),
    _family("twist", "train", 4, (140, 170), "pop", "Twist Twist4 Twist4Sus TwistSus"),
)


def families_of_split(split: str) -> tuple[GrooveFamily, ...]:
    """The groove families of one split (``train``, ``validation`` or ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return tuple(f for f in GROOVE_FAMILIES if f.split == split)
