#!/usr/bin/env bash
# The VAE head-to-head of docs/vae_comparison.md: the DAC-style `small-dac` SourceVAE and the frame-rate `small`
# SpectralSourceVAE, trained side by side with the same recipe (train/recipes/small-cpu.yaml, discriminator from step
# 200) and the same wall-clock budget, one core each, then compared on the same test chunks.
#   bash scripts/vae_head_to_head.sh [MINUTES] [RUNS]      (default 60 minutes, runs/)
# Resumable: run it again and each side continues from its newest checkpoint up to the same budget in total.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-60}
runs=${2:-runs}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$runs"
for preset in small-dac small; do
    out="$runs/vae-$preset"
    done_min=$("$py" - "$out" <<'PY'
import json, sys, pathlib
from mslddm.training.checkpointing import list_checkpoints
found = list_checkpoints(sys.argv[1])
print(json.loads((found[-1] / "training_state.json").read_text()).get("timing", {}).get("train_minutes_total", 0) if found else 0)
PY
)
    left=$("$py" -c "print(max(0.0, $minutes - $done_min))")
    echo "$preset: $done_min minutes done, $left to go"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup "$py" -m accelerate.commands.launch --num_processes 1 --cpu \
        train/train_vae.py --config small-cpu --set preset="$preset" --output_dir "$out" \
        --time_budget_minutes "$left" --resume_from_checkpoint latest > "$runs/vae-$preset.log" 2>&1 &
done
wait
echo "Both VAEs trained; compare them with:"
echo "  $py benchmarks/compare_vaes.py $runs/vae-small-dac/vae $runs/vae-small/vae --data data/synth"
