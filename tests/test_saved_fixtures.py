"""The public format: pipeline folders of every kind saved by the code of 2026-12-07 (before issue 25 made the
pipelines leaves of one base) load as their class, through ``MultiSourceLatentPipeline.from_pretrained`` and
through the base's entry, and generate the numbers the old code stored beside them (tests/fixtures/make_fixtures.py).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from make_fixtures import CALLS, PIPELINES, run

CLASS_OF = {"msldm": "MultiSourceLatentPipeline", "isldm": "MultiSourceLatentPipeline",
            "msldm_conditioned": "MultiSourceLatentPipeline", "msldm_levels": "MultiSourceLatentPipeline",
            "mixldm": "MixtureLatentPipeline", "msdm": "MultiSourceDiffusionPipeline"}
KIND_OF = {"msldm": "msldm", "isldm": "isldm", "msldm_conditioned": "msldm", "msldm_levels": "msldm",
           "mixldm": "mixldm", "msdm": "msdm"}
RELATIVE_TOLERANCE = 1e-4  # of the array's largest magnitude: far above float32 kernel noise, far below one weight


def assert_same(actual: dict, expected: dict, what: str) -> None:
    assert sorted(actual) == sorted(expected), what
    for name, value in actual.items():
        reference = expected[name]
        assert value.shape == reference.shape, f"{what} {name}"
        scale = max(float(np.abs(reference).max()), 1e-3)
        np.testing.assert_allclose(value, reference, rtol=0, atol=RELATIVE_TOLERANCE * scale, err_msg=f"{what} {name}")


def stored(kind: str) -> dict:
    with np.load(PIPELINES / kind / "expected.npz") as arrays:
        return dict(arrays)


def load(entry: str, folder: Path):
    import mslddm
    from mslddm.pipelines.pipeline_base import MultiSourcePipelineBase

    cls = mslddm.MultiSourceLatentPipeline if entry == "MultiSourceLatentPipeline" else MultiSourcePipelineBase
    return cls.from_pretrained(folder)


@pytest.mark.parametrize("entry", ["MultiSourceLatentPipeline", "MultiSourcePipelineBase"])
@pytest.mark.parametrize("kind", sorted(CALLS))
def test_saved_folder_loads_as_its_class_and_generates_what_it_did(kind, entry):
    import mslddm

    pipe = load(entry, PIPELINES / kind)
    assert type(pipe) is getattr(mslddm, CLASS_OF[kind]) and pipe.model_kind == KIND_OF[kind]
    expected = stored(kind)
    actual = {}
    for call, kwargs in CALLS[kind].items():
        actual.update(run(pipe, call, kwargs()))
    assert_same(actual, expected, f"{kind} via {entry}")


def test_the_tolerance_catches_one_wrong_weight():
    """The largest weight of the UNet's output layer 1 % larger: the comparison fails."""
    pipe = load("MultiSourceLatentPipeline", PIPELINES / "msldm")
    expected = stored("msldm")
    kwargs = CALLS["msldm"]["total"]
    assert_same(run(pipe, "total", kwargs()), {k: v for k, v in expected.items() if k.startswith("total/")}, "as is")
    with torch.no_grad():
        weight = [p for p in pipe.unet.parameters() if p.dim() > 1][-1].view(-1)  # the output layer's
        weight[weight.abs().argmax()] *= 1.01
    actual = run(pipe, "total", kwargs())
    with pytest.raises(AssertionError, match="Mismatched elements"):
        assert_same(actual, {k: expected[k] for k in actual}, "perturbed")
