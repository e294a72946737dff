"""Rules written once and used by every entry point: unknown stems, silence, settings.json, SI-SDR."""

import json

import numpy as np
import pytest
import torch

from mslddm.measures import si_sdr
from mslddm.records import SETTINGS_FILE, sampling_record, write_settings
from mslddm.stems import SILENCE_DBFS, StemError, load_stem, unknown_stems_message

SR = 8000
SAMPLING = {"num_inference_steps": 2, "sampler": "euler", "s_churn": 0.0, "model_evaluations": 2, "windows": 1}


class StemsOutput:
    stems, mixture = np.zeros((1, 2, SR)), np.zeros((1, SR))
    stem_names, generated, sample_rate, sampling = ["bass", "drums"], ["drums"], SR, SAMPLING


class MixtureOutput:
    mixture, mixture_of, sample_rate, sampling = np.zeros((1, SR // 2)), ["bass", "drums"], SR, SAMPLING


def test_unknown_stems_are_named_once_in_order():
    assert unknown_stems_message(["bass", "drums"], ["bass", "drums"]) is None
    message = unknown_stems_message(["flute", "bass", "flute", "oboe"], ("bass", "drums"))
    assert message == "Unknown stem(s) ['flute', 'oboe']; this pipeline's stems are ['bass', 'drums']."


def test_silence_is_one_threshold_for_given_stems():
    tone = np.sin(2 * np.pi * 220 * np.arange(SR) / SR) * np.sqrt(2)  # 0 dBFS RMS
    assert load_stem("bass", (tone * 10 ** ((SILENCE_DBFS + 1) / 20), SR), SR) is not None
    with pytest.raises(StemError, match="is silent"):
        load_stem("bass", (tone * 10 ** ((SILENCE_DBFS - 1) / 20), SR), SR)


def test_settings_record_of_stems_and_of_mixtures(tmp_path):
    stems = sampling_record(StemsOutput())
    assert stems == {"stem_names": ["bass", "drums"], "generated": ["drums"], "sample_rate": SR, "duration_s": 1.0,
                     "steps": 2, "sampler": "euler", "s_churn": 0.0, "model_evaluations": 2, "windows": 1}
    mixture = sampling_record(MixtureOutput())
    assert "stem_names" not in mixture and mixture["duration_s"] == 0.5
    path = write_settings(tmp_path, {"seed": 3, **mixture})
    assert path == tmp_path / SETTINGS_FILE and path.read_text().endswith("}\n")
    assert json.loads(path.read_text())["seed"] == 3


def test_si_sdr_of_tensors_and_of_numpy_signals_agree():
    from mslddm.evaluation.protocol import si_sdr_db

    rng = np.random.default_rng(0)
    reference = rng.standard_normal(1000)
    noisy = reference + 0.1 * rng.standard_normal(1000)
    expected = 10 * np.log10(np.sum(reference**2) / np.sum((noisy - reference) ** 2))
    assert si_sdr_db(noisy, reference) == pytest.approx(expected, abs=0.1)
    batch = torch.from_numpy(np.stack([noisy, 3 * reference]))
    values = si_sdr(batch, torch.from_numpy(np.stack([reference, reference])))
    assert values[0].item() == pytest.approx(si_sdr_db(noisy, reference), abs=1e-9) and values[1] > 60
