#!/usr/bin/env bash
# The one prepared GPU run (issue: fast on the hardware users have). On a machine with one GPU and 16 cores, in
# about 9 minutes:
#   1. setup      the carried wheels (.gpu/wheels, from scripts/gpu_prepare.sh) into /tmp/site
#   2. tests      the CUDA-marked tests (tests/test_cuda.py), then the fast core on the GPU machine's torch
#   3. data       the carried dataset (.gpu/data, Ogg Vorbis) or, where mma and FluidSynth exist, rendered there
#   4. VAE        train/train_vae.py --config small, bf16, VAE_MINUTES (2.5)
#   5. latents    mslddm encode-latents on the GPU
#   6. UNet       train/train_msldm.py --config small, bf16, UNET_MINUTES (2.5)
#   7. export     the pipeline, fp16, tarred and split into files of 16 MiB under $OUT
#   8. benchmark  paper and small configurations, batch 1 and 16, euler x 150 and dpmpp_2m x 20, bf16, with and
#                 without torch.compile, into $OUT/benchmark.md
# Every step logs to $OUT/gpu_run.log; a failing step is reported and the run goes on to the next one.
#   device run:  bash scripts/gpu_run.sh                 (carry .gpu)
#   CPU check:   bash scripts/gpu_run.sh --dry-run       (the tiny recipe, seconds per step; CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
OUT=${OUT:-runs/gpu-run}
work=${WORK:-/tmp/mslddm-gpu-run}
mkdir -p "$OUT" "$work"
log="$OUT/gpu_run.log"
: > "$log"
failed=()
step() {  # step NAME COMMAND...: runs, logs, times; a failure is recorded, not fatal
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name" | tee -a "$log"
    if "$@" >> "$log" 2>&1; then
        echo "   ok in $((SECONDS - t0)) s" | tee -a "$log"
    else
        echo "   FAILED (exit $?) in $((SECONDS - t0)) s: see $log" | tee -a "$log"
        failed+=("$name")
    fi
}

if [ $dry = 1 ]; then
    py=${PYTHON:-.venv/bin/python}
    device=cpu; recipe=tiny; precision=no
    vae_limit=(--max_steps 2); unet_limit=(--max_steps 2)
    sets=(--set vae.validate_every=100 --set msldm.validate_every=100 --set msldm.validation_steps=2
          --set vae.checkpointing_steps=100 --set msldm.checkpointing_steps=100)
    bench=(--presets tiny --device cpu --batch-sizes 1 --samplers euler:2 dpmpp_2m:2 --seconds 1 --dtypes float32
           bfloat16 --snr)
else
    py=${PYTHON:-python3}
    device=cuda; recipe=small; precision=bf16
    vae_limit=(--time_budget_minutes "${VAE_MINUTES:-2.5}"); unet_limit=(--time_budget_minutes "${UNET_MINUTES:-2.5}")
    sets=()
    bench=(--presets msldm small --device cuda --batch-sizes 1 16 --samplers euler:150 dpmpp_2m:20 --dtypes bfloat16
           --compile)
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
launch() { "$py" -m accelerate.commands.launch --quiet --num_processes 1 --num_machines 1 \
    --mixed_precision "$precision" --dynamo_backend no $([ $device = cpu ] && echo --cpu) "$@"; }

setup() {
    if [ -d .gpu/wheels ] && [ $dry = 0 ]; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .gpu/wheels/*.whl || return 1
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    "$py" -c "import torch, diffusers, accelerate, soundfile, soxr, mslddm; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
}
data() {
    if [ $dry = 1 ]; then
        "$py" -m mslddm make-dataset "$work/data" --hours 0.02 --track-seconds 10 12 --workers 2 --quiet
    elif [ -d .gpu/data ]; then
        ln -sfn "$PWD/.gpu/data" "$work/data"
    else
        "$py" -m mslddm make-dataset "$work/data" --hours 0.5 --track-seconds 30 60 --workers 14 --quiet
    fi
}

step setup setup
export PYTHONPATH  # setup may have added /tmp/site
step cuda-tests "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step data data
step vae launch train/train_vae.py --config $recipe --output_dir "$work/vae" --data_root "$work/data" \
    "${vae_limit[@]}" "${sets[@]}"
step latents "$py" -m mslddm encode-latents "$work/data" --vae "$work/vae/vae" "$work/latents" --device $device \
    --batch-size 16 --quiet
step unet launch train/train_msldm.py --config $recipe --output_dir "$work/msldm" --data_root "$work/data" \
    --set msldm.vae="$work/vae/vae" --set msldm.latents="$work/latents" "${unet_limit[@]}" "${sets[@]}"
export_pipeline() {
    "$py" -m mslddm export "$work/msldm" --out "$work/pipeline" --dtype float16 || return 1
    tar -C "$work" -cf - pipeline | split -b 16M -d - "$OUT/pipeline.tar.part"
    ls -l "$OUT"/pipeline.tar.part*
}
step export export_pipeline
step benchmark bash -c "\"$py\" benchmarks/benchmark_generation.py ${bench[*]} > \"$OUT/benchmark.md\""

echo "== done: ${#failed[@]} failed step(s) ${failed[*]:-}; reassemble the pipeline with" \
     "cat $OUT/pipeline.tar.part* | tar -xf -" | tee -a "$log"
[ ${#failed[@]} = 0 ]
