#!/usr/bin/env bash
# Issue 24's accumulating run: the bundled pipeline continued with a recipe (RECIPE: small-cpu-fullrate, the UNet
# with a frame-rate path; small-cpu-cond: trained conditioning), in the background, resumable (the budget counts
# minutes already trained in RUNS):
#   1. data      mslddm make-dataset (6 h, the bundle's data: same seed, same bytes)      ~5 min, skipped if there
#   2. latents   mslddm encode-latents with the bundle's VAE                               ~10 min, skipped if there
#   3. UNet      train/train_msldm.py --config RECIPE --init_from the bundle              UNET_MINUTES (480)
#   RUNS=runs/fullrate OMP_NUM_THREADS=1 nohup taskset -c 0 bash train/run_accompaniment.sh > runs/fullrate.log 2>&1 &
#   RECIPE=small-cpu-cond RUNS=runs/cond ...   (the conditioning runs of docs/ablations.md)
# A later session on a machine that kept RUNS resumes its last checkpoint; on a fresh machine it starts again from
# INIT_FROM (the bundle, or a shipped conditioned pipeline). Further arguments go to train_msldm.py (a lever:
#   bash train/run_accompaniment.sh --set msldm.conditioning.total_probability=0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
data=${DATA:-data/synth}
runs=${RUNS:-runs/fullrate}
recipe=${RECIPE:-small-cpu-fullrate}
init=${INIT_FROM:-pipelines/mslddm-synth-small}
latents=${LATENTS:-runs/latents}
unet_minutes=${UNET_MINUTES:-480}
mkdir -p "$runs"
left() {  # minutes of the budget $2 not yet trained in the run folder $1
    "$py" train/minutes_left.py "$1" "$2"
}

echo "== 1. data: $data"
"$py" -m mslddm make-dataset "$data" --hours "${HOURS:-6}" --quiet
echo "== 2. latents of $init's VAE: $latents"
[ -f "$latents/latents.json" ] && [ -d "$latents/test" ] || \
    "$py" -m mslddm encode-latents "$data" --vae "$init" "$latents" --batch-size 16 --quiet
echo "== 3. UNet: $(left "$runs" "$unet_minutes") of $unet_minutes minutes to go"
"$py" -m accelerate.commands.launch --quiet --num_processes 1 --cpu train/train_msldm.py --config "$recipe" \
    --output_dir "$runs" --data_root "$data" --set msldm.vae="$init" --set msldm.latents="$latents" \
    --init_from "$init" --time_budget_minutes "$(left "$runs" "$unet_minutes")" --resume_from_checkpoint latest "$@"
echo "== done: $runs/pipeline"
