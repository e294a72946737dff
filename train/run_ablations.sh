#!/usr/bin/env bash
# Issue 24's ablation table at equal CPU time (docs/ablations.md): each row continues the bundled pipeline for the
# same single-core minutes with one lever changed, two rows at once (one per core), then scores every row on the
# model card's protocol (64 clips, the default sampler) and on the accompaniment task, one row per core again.
#   bash train/run_ablations.sh                        # every row below, MINUTES (30) each
#   ROWS="continued sigma-lognormal" bash train/run_ablations.sh
#   OMP_NUM_THREADS=1 nohup bash train/run_ablations.sh > runs/ablations.log 2>&1 &
#   CORES=0 bash train/run_ablations.sh                # one row after the other on core 0 (the other core free)
#   ACCOMPANY=0 ROWS="transformer unet-scratch" bash train/run_ablations.sh   # total generation scored only
# Resumable: a row whose run folder holds its budget's checkpoint trains no further, a scored row is not scored again.
# Needs the data and the bundle VAE's latents of train/run_accompaniment.sh (steps 1-2).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
data=${DATA:-data/synth}
init=${INIT_FROM:-pipelines/mslddm-synth-small}
latents=${LATENTS:-runs/latents}
minutes=${MINUTES:-30}
out=${OUT:-runs/ablations}
# name: the recipe and its --set overrides (on top of the continuation's learning rate, where the bundle's ended)
declare -A ROW=(
    [continued]="small-cpu"
    [sigma-lognormal]="small-cpu --set msldm.scheduler.training_sigma_distribution=log_normal"
    [segment-832]="small-cpu --set msldm.segment_frames=832 --set msldm.batch_size=5"
    [conditioning]="small-cpu-cond"
    [full-rate]="small-cpu --set msldm.model.full_rate_channels=128"
    # noise levels up to 80 (training: log-normal, median 1.6, 5% above 20; sampling from 80): at sigma 3 a song's
    # per-channel latent means still show through the noise, so sampling from pure noise at 3 starts off the data
    # four times the loss on the noise levels 0.5-3, where every model's estimates lose the stems' level
    [sigma-band]="small-cpu --set msldm.sigma_band_weight.low=0.5 --set msldm.sigma_band_weight.high=3.0 --set msldm.sigma_band_weight.weight=4.0"
    # EDM2's post-hoc EMA: power-function averages (sigma_rel 0.05 and 0.10) written every 500 steps, any length
    # exported afterwards (`mslddm export RUN/checkpoint-N --posthoc-ema SIGMA_REL`)
    # (its pipeline-fp16 is the ordinary EMA, 0.999: the control; the lengths are exported from its last checkpoint
    # with `mslddm export ... --posthoc-ema 0.05 / 0.10 / 0.20` and scored with `mslddm evaluate`)
    [posthoc-ema]="small-cpu --set msldm.posthoc_ema.sigma_rels=[0.05,0.10] --set msldm.posthoc_ema.snapshot_steps=500"
    # the second network shape at equal cost: a transformer over 8-frame patches, and the UNet for the same minutes,
    # both from scratch (no pipeline holds the transformer's weights); rows in SCRATCH take no --init_from
    [unet-scratch]="small-cpu"
    [transformer]="small-cpu-transformer"
    [sigma-80]="small-cpu-fullrate --set msldm.scheduler.training_sigma_distribution=log_normal --set msldm.scheduler.training_log_normal_mean=0.5 --set msldm.scheduler.training_log_normal_std=1.5 --set msldm.scheduler.sigma_max=80"
)
declare -A SCRATCH=([unet-scratch]=1 [transformer]=1)  # the recipe's own learning rate and warm-up, init's VAE only
# rows that train on other data: "DATA LATENTS". `augmented`: the training songs and one copy of each with every stem
# through its own effect chain (EQ, drive, compression, room; levels kept), made and encoded first if missing:
#   mslddm augment-dataset data/synth data/synth-aug && mslddm encode-latents data/synth-aug --vae INIT runs/latents-aug
ROW[augmented]="small-cpu"
declare -A ROW_DATA=([augmented]="${AUG_DATA:-data/synth-aug} ${AUG_LATENTS:-runs/latents-aug}")
rows=(${ROWS:-continued sigma-lognormal segment-832 conditioning})
for name in "${rows[@]}"; do [ -n "${ROW[$name]:-}" ] || { echo "unknown row '$name': one of ${!ROW[*]}"; exit 2; }; done
mkdir -p "$out"

train_row() {  # train_row NAME CORE
    local name=$1 core=$2 recipe extra left row_data=$data row_latents=$latents
    read -r recipe extra <<< "${ROW[$name]}"
    [ -z "${ROW_DATA[$name]:-}" ] || read -r row_data row_latents <<< "${ROW_DATA[$name]}"
    if [ "$row_data" != "$data" ]; then
        OMP_NUM_THREADS=1 taskset -c "$core" "$py" -m mslddm augment-dataset "$data" "$row_data" > "$out/$name.data.log" 2>&1
        [ -f "$row_latents/latents.json" ] || OMP_NUM_THREADS=1 taskset -c "$core" "$py" -m mslddm encode-latents \
            "$row_data" --vae "$init" "$row_latents" --batch-size 16 --quiet >> "$out/$name.data.log" 2>&1
    fi
    local start=(--set msldm.learning_rate=1.2e-4 --set msldm.lr_warmup_steps=0 --init_from "$init")
    [ -z "${SCRATCH[$name]:-}" ] || start=()
    left=$("$py" train/minutes_left.py "$out/$name" "$minutes")
    [ "$left" = 0.0 ] && [ -d "$out/$name/pipeline-fp16" ] && return 0
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=1 taskset -c "$core" "$py" -m accelerate.commands.launch --quiet --num_processes 1 --cpu \
        train/train_msldm.py --config "$recipe" --output_dir "$out/$name" --data_root "$row_data" \
        --set msldm.vae="$init" --set msldm.latents="$row_latents" "${start[@]}" $extra --time_budget_minutes "$left" \
        --resume_from_checkpoint latest > "$out/$name.train.log" 2>&1
    "$py" -m mslddm export "$out/$name" --out "$out/$name/pipeline-fp16" --dtype float16 --overwrite \
        >> "$out/$name.train.log" 2>&1
}
score_row() {  # score_row NAME CORE
    local name=$1 core=$2 pipe="$out/$1/pipeline-fp16"
    [ -f "$out/$name.eval/results.json" ] || OMP_NUM_THREADS=1 taskset -c "$core" "$py" -m mslddm evaluate \
        --pipeline "$pipe" --data "$data" --out "$out/$name.eval" --tasks total --num-clips 64 --batch-size 8 \
        > "$out/$name.eval.log" 2>&1
    [ "${ACCOMPANY:-1}" = 0 ] || [ -f "$out/$name.acc/accompaniment.json" ] || OMP_NUM_THREADS=1 taskset -c "$core" "$py" -m mslddm accompany \
        --pipeline "$pipe" --data "$data" --out "$out/$name.acc" --clips 8 --given guitar --given bass \
        --given piano --level -40 --level -25 --level -10 --augment > "$out/$name.acc.log" 2>&1
}
cores=(${CORES:-0 1})
pairwise() {  # pairwise FUNCTION: runs it on the rows two at a time, one per core (one at a time with CORES=0)
    local fn=$1 i
    if [ "${#cores[@]}" = 1 ]; then
        for ((i = 0; i < ${#rows[@]}; i++)); do "$fn" "${rows[i]}" "${cores[0]}"; done
        return 0
    fi
    for ((i = 0; i < ${#rows[@]}; i += 2)); do
        "$fn" "${rows[i]}" "${cores[0]}" & local first=$!
        [ -z "${rows[i + 1]:-}" ] || "$fn" "${rows[i + 1]}" "${cores[1]}"
        wait "$first"
    done
}
echo "== training ${rows[*]}: $minutes single-core minutes each, from $init (rows from scratch: its VAE only)"
pairwise train_row
echo "== scoring"
pairwise score_row
echo "== done: $out/<row>.eval/results.json and $out/<row>.acc/accompaniment.json (docs/ablations.md)"
