#!/usr/bin/env bash
# System packages for `mslddm make-dataset` (the synthetic Slakh-like dataset). Idempotent; run as root
# (`make sysdeps` adds sudo). Installs:
#   mma                 Musical MIDI Accompaniment: chord chart + groove -> multi-track MIDI
#   libfluidsynth3      the synthesizer behind the PyPI binding `pyfluidsynth`
#   GM SoundFonts       the three timbre families the generator draws from (all MIT or GPL-2):
#                       fluid-soundfont-gm, musescore-general-soundfont, timgm6mb-soundfont
# and builds MMA's groove database once (`mma -G`), which MMA needs before it can use any groove.
# With --test it also installs what the test suite needs beyond that: Debian's chromium (driven by Playwright
# in the browser tests; Playwright's own browser download does not work offline) and ffmpeg (decoding the
# audio formats libsndfile cannot read, e.g. m4a).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "install_system_deps.sh must run as root (try: sudo bash $0)." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(mma libfluidsynth3 fluid-soundfont-gm musescore-general-soundfont timgm6mb-soundfont)
if [ "${1:-}" = "--test" ]; then
    PACKAGES=(chromium ffmpeg fonts-dejavu-core)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "Installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--test" ]; then
    echo "System dependencies for the mslddm tests are installed."
    exit 0
fi

# MMA looks grooves up in a database under its library folder; without it every `Groove X` fails.
MMA_LIB=/usr/share/mma/lib
if ! find "$MMA_LIB" -name '.mmaDB' -print -quit 2>/dev/null | grep -q .; then
    echo "Building the MMA groove database (mma -G)"
    mma -G >/dev/null
fi
echo "System dependencies for mslddm make-dataset are installed."
