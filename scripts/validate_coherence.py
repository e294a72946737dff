"""Check the coherence metrics on real recordings: aligned stems must score clearly above the same stems shuffled
across songs (a one-off check, the numbers are in docs/evaluation.md).

Uses the Frets on Fire songs from Debian (apt-get install fretsonfire-songs-muldjord fretsonfire-songs-sectoid):
each song folder has an isolated guitar.ogg and a backing track song.ogg (drums, bass, the rest). Cuts each song
into non-overlapping 12-s chunks (both parts sounding), interleaves the songs so that neighbouring chunks come from
different songs, then scores guitar against backing, aligned and shuffled:

    PYTHONPATH=. .venv/bin/python scripts/validate_coherence.py /usr/share/games/fretsonfire/data/songs/*/*/
"""

import sys
from itertools import zip_longest
from pathlib import Path

import numpy as np

from mslddm.audio import load_audio, rms_db
from mslddm.evaluation.coherence import CoherenceConfig, ShuffledAcrossSongs, coherence_metrics

SR, SECONDS, PER_SONG = 22050, 12.0, 6


def chunks(folder: Path):
    backing, guitar = (load_audio(folder / f"{name}.ogg", SR) for name in ("song", "guitar"))
    n, length = min(len(backing), len(guitar)), int(SECONDS * SR)
    out = []
    for start in range(0, n - length + 1, length):
        piece = np.stack([backing[start : start + length], guitar[start : start + length]])
        if all(rms_db(p) > -40 for p in piece):
            out.append(piece)
    return out[:PER_SONG]


def main(folders):
    per_song = [chunks(Path(f)) for f in folders if (Path(f) / "guitar.ogg").is_file()]
    clips = [c for group in zip_longest(*per_song) for c in group if c is not None]
    config = CoherenceConfig(rhythm_reference="backing", harmony_reference="backing", unpitched=())
    names = ["backing", "guitar"]
    aligned = coherence_metrics(clips, names, SR, config)
    shuffled = coherence_metrics(ShuffledAcrossSongs(clips), names, SR, config)
    print(f"{len(per_song)} songs, {len(clips)} chunks of {SECONDS:g} s, guitar against backing:")
    for label, r in (("aligned", aligned), ("shuffled across songs", shuffled)):
        print(
            f"  {label:>22}: rhythm {r['rhythm']['guitar']:.3f}, harmony {r['harmony']['guitar']:.3f}, "
            f"similarity {r['similarity_mean']:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
