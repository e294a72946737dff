#!/usr/bin/env bash
# Prepares what scripts/gpu_run.sh carries to the GPU machine (nothing there can be downloaded): .gpu/wheels, the
# Python packages its image lacks (for its Python 3.12), and .gpu/data, 20 minutes of synthetic music as FLAC
# (about 35 MB; its image has no MMA or FluidSynth to render them). Both are ignored by git (.git/info/exclude).
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
"$py" -m mslddm make-dataset .gpu/render --hours "${HOURS:-0.33}" --workers 2 --quiet
"$py" - <<'PY'
from pathlib import Path

import soundfile as sf

for wav in sorted(Path(".gpu/render").rglob("*.wav")):
    if wav.stem == "mix":
        continue
    target = Path(".gpu/data") / wav.relative_to(".gpu/render").with_suffix(".flac")
    target.parent.mkdir(parents=True, exist_ok=True)
    audio, sr = sf.read(wav, dtype="int16")
    sf.write(target, audio, sr, subtype="PCM_16")
PY
rm -rf .gpu/render
du -sh .gpu/wheels .gpu/data
