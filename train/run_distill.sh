#!/usr/bin/env bash
# Issue 29's distillation run: a 4-step consistency student of the bundled pipeline (recipe distill-small-cpu), in
# the background, resumable (the budget counts minutes already trained in RUNS); docs/distillation.md:
#   1. data      mslddm make-dataset (6 h, the bundle's data: same seed, same bytes)      ~5 min, skipped if there
#   2. latents   mslddm encode-latents with the teacher's VAE                              ~10 min, skipped if there
#   3. student   train/distill.py --config distill-small-cpu --teacher TEACHER              DISTILL_MINUTES (240)
#   OMP_NUM_THREADS=1 nohup taskset -c 0 bash train/run_distill.sh > runs/distill.log 2>&1 &
# The result is RUNS/pipeline: the teacher's pipeline with the student as its UNet (sampler consistency, 4 steps);
# the teacher's folder is only read. The latents are shared with train/run_accompaniment.sh (the same VAE). Further
# arguments go to distill.py (a lever: bash train/run_distill.sh --set distill.learning_rate=1e-5).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
data=${DATA:-data/synth}
runs=${RUNS:-runs/distill}
teacher=${TEACHER:-pipelines/mslddm-synth-small}
latents=${LATENTS:-runs/latents}
minutes=${DISTILL_MINUTES:-240}
mkdir -p "$runs"
left() {  # minutes of the budget $2 not yet trained in the run folder $1
    "$py" - "$1" "$2" <<'PY'
import json, sys
from mslddm.training.checkpointing import list_checkpoints
found = list_checkpoints(sys.argv[1])
done = json.loads((found[-1] / "training_state.json").read_text()).get("timing", {}).get("train_minutes_total", 0) if found else 0
print(round(max(0.0, float(sys.argv[2]) - done), 2))
PY
}

echo "== 1. data: $data"
"$py" -m mslddm make-dataset "$data" --hours "${HOURS:-6}" --quiet
echo "== 2. latents of $teacher's VAE: $latents"
[ -f "$latents/latents.json" ] && [ -d "$latents/test" ] || \
    "$py" -m mslddm encode-latents "$data" --vae "$teacher" "$latents" --batch-size 16 --quiet
echo "== 3. student: $(left "$runs" "$minutes") of $minutes minutes to go"
"$py" -m accelerate.commands.launch --quiet --num_processes 1 --cpu train/distill.py --config distill-small-cpu \
    --output_dir "$runs" --teacher "$teacher" --latents "$latents" \
    --time_budget_minutes "$(left "$runs" "$minutes")" --resume_from_checkpoint latest "$@"
echo "== done: $runs/pipeline (compare it with its teacher: mslddm compare / benchmarks/benchmark_generation.py)"
