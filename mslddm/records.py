"""The ``settings.json`` beside a result's audio (the CLI's result folders, the page's renders): one file name, one
way to write it, and one record of how a pipeline output was made, so that every entry point's file reads alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SETTINGS_FILE = "settings.json"


def sampling_record(output) -> dict[str, Any]:
    """How a pipeline output was made, as every ``settings.json`` records it: the length and the sampler settings
    the pipeline resolved, and for stems (not a mixture-only output, MixLDM's) the stems and the ones generated."""
    sampling = output.sampling
    record = {
        "sample_rate": int(output.sample_rate), "duration_s": output.mixture.shape[-1] / output.sample_rate,
        "steps": sampling["num_inference_steps"], "sampler": sampling["sampler"], "s_churn": sampling["s_churn"],
        "model_evaluations": sampling["model_evaluations"], "windows": sampling["windows"],
    }
    record.update({k: sampling[k] for k in ("guidance_scale", "reconstruction_guidance") if k in sampling})
    if hasattr(output, "stem_names"):
        record = {"stem_names": list(output.stem_names), "generated": list(output.generated), **record}
    return record


def write_settings(folder: str | Path, settings: Mapping[str, Any]) -> Path:
    """Writes ``folder/settings.json`` (indented, one trailing newline); returns its path."""
    path = Path(folder) / SETTINGS_FILE
    path.write_text(json.dumps(dict(settings), indent=2) + "\n")
    return path
