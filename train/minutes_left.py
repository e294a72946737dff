"""Prints the minutes of a budget not yet trained in a run folder (its last checkpoint's accumulated training time):
what the background scripts pass to --time_budget_minutes so that a resumed run stops at the same total.

    python train/minutes_left.py RUN_FOLDER BUDGET_MINUTES
"""

import json
import sys

from mslddm.training.checkpointing import list_checkpoints


def minutes_left(run_folder: str, budget: float) -> float:
    found = list_checkpoints(run_folder)
    done = 0.0
    if found:
        state = json.loads((found[-1] / "training_state.json").read_text())
        done = float(state.get("timing", {}).get("train_minutes_total", 0.0))
    return round(max(0.0, budget - done), 2)


if __name__ == "__main__":
    print(minutes_left(sys.argv[1], float(sys.argv[2])))
