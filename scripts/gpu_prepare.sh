#!/usr/bin/env bash
# Prepares what scripts/gpu_run.sh carries to the GPU machine (nothing there can be downloaded): .gpu/wheels, the
# Python packages its image lacks (for its Python 3.12, 8 MB), and .gpu/data, 12 minutes of synthetic music as Ogg
# Vorbis (its image has no MMA or FluidSynth to render them; FLAC would take 69 MB, over what a device call carries
# beside the repository: 64 MiB in all). Both are ignored by git (.git/info/exclude).
#   bash scripts/gpu_prepare.sh && device run: bash scripts/gpu_run.sh   (carry: .gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/wheels
# Not in the image's package list (.library/device/KINDS.md): diffusers and what it and mslddm read audio with.
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .gpu/wheels diffusers soundfile soxr cffi pycparser
rm -rf .gpu/data
"$py" -m mslddm make-dataset .gpu/render --hours "${HOURS:-0.2}" --workers 2 --quiet
"$py" - <<'PY'
from pathlib import Path

import soundfile as sf

for wav in sorted(Path(".gpu/render").rglob("*.wav")):
    if wav.stem == "mix":
        continue
    target = Path(".gpu/data") / wav.relative_to(".gpu/render").with_suffix(".ogg")
    target.parent.mkdir(parents=True, exist_ok=True)
    audio, sr = sf.read(wav, dtype="float32")
    sf.write(target, audio, sr, format="OGG", subtype="VORBIS")
PY
rm -rf .gpu/render
du -sh .gpu/wheels .gpu/data
