#!/usr/bin/env bash
# The bundled pipeline's whole CPU recipe in one background run (about 150 minutes on 2 cores), resumable:
#   1. data      mslddm make-dataset (6 h of synthetic Slakh-like music)                       ~5 min
#   2. VAE       train/train_vae.py --config small-cpu, discriminator from step 200          VAE_MINUTES (60)
#   3. latents   mslddm encode-latents (posterior means + statistics -> sigma_data)           ~5 min
#   4. UNet      train/train_msldm.py --config small-cpu on the latents                      UNET_MINUTES (75)
# and the pipeline folder RUNS/msldm/pipeline (EMA weights). Run it again after an interruption: every step goes on
# from where it stopped (the time budgets count minutes already trained). Continue from a bundled pipeline's
# weights instead of random ones with INIT_FROM=pipelines/mslddm-synth-small; reuse a trained VAE with VAE=DIR.
#   nohup bash train/run_small_cpu.sh > runs/small-cpu.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
data=${DATA:-data/synth}
runs=${RUNS:-runs/small-cpu}
vae_minutes=${VAE_MINUTES:-60}
unet_minutes=${UNET_MINUTES:-75}
init=${INIT_FROM:-}
mkdir -p "$runs"
launch() { "$py" -m accelerate.commands.launch --quiet --num_processes 1 --cpu "$@"; }
left() {  # minutes of the budget $2 not yet trained in the run folder $1
    "$py" - "$1" "$2" <<'PY'
import json, sys
from mslddm.training.checkpointing import list_checkpoints
found = list_checkpoints(sys.argv[1])
done = json.loads((found[-1] / "training_state.json").read_text()).get("timing", {}).get("train_minutes_total", 0) if found else 0
print(round(max(0.0, float(sys.argv[2]) - done), 2))
PY
}
init_args=()
[ -n "$init" ] && init_args=(--init_from "$init")

echo "== 1. data: $data"
"$py" -m mslddm make-dataset "$data" --hours "${HOURS:-6}" --quiet

vae=${VAE:-$runs/vae/vae}
if [ -z "${VAE:-}" ]; then
    echo "== 2. VAE: $(left "$runs/vae" "$vae_minutes") of $vae_minutes minutes to go"
    launch train/train_vae.py --config small-cpu --output_dir "$runs/vae" --data_root "$data" \
        --time_budget_minutes "$(left "$runs/vae" "$vae_minutes")" --resume_from_checkpoint latest "${init_args[@]}"
fi

echo "== 3. latents of $vae"
"$py" -m mslddm encode-latents "$data" --vae "$vae" "$runs/latents" --batch-size 16 --quiet

echo "== 4. UNet: $(left "$runs/msldm" "$unet_minutes") of $unet_minutes minutes to go"
launch train/train_msldm.py --config small-cpu --output_dir "$runs/msldm" --data_root "$data" \
    --set msldm.vae="$vae" --set msldm.latents="$runs/latents" \
    --time_budget_minutes "$(left "$runs/msldm" "$unet_minutes")" --resume_from_checkpoint latest "${init_args[@]}"
echo "== done: $runs/msldm/pipeline (evaluate it with: mslddm evaluate --pipeline $runs/msldm/pipeline --data $data ...)"
