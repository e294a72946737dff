"""The pipelines as leaves of one base (issue 25): the dispatch table, leaves that import no other leaf, the kind of
model from the leaf class and the UNet's saved class, outputs with the fields they have, and short functions."""

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

PIPELINES = Path(__file__).resolve().parents[1] / "mslddm" / "pipelines"
LEAVES = ["pipeline_multisource_latent", "pipeline_mixture_latent", "pipeline_multisource_diffusion"]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pipelines"
sys.path.insert(0, str(FIXTURES.parent))  # make_fixtures builds the tiny pipelines of every kind


def imported_modules(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("module", ["pipeline_base", *LEAVES])
def test_no_pipeline_module_imports_a_leaf(module):
    imported = list(imported_modules(PIPELINES / f"{module}.py"))
    assert not [m for m in imported if any(m.endswith(leaf) for leaf in LEAVES)]


def test_the_table_names_every_leaf_at_its_public_path():
    import mslddm
    from mslddm.pipelines.pipeline_base import PIPELINE_CLASSES, MultiSourcePipelineBase, pipeline_class

    for name, module in PIPELINE_CLASSES.items():
        cls = pipeline_class(name)
        assert cls.__module__ == module and cls is getattr(mslddm, name) and issubclass(cls, MultiSourcePipelineBase)
    assert mslddm.MultiSourcePipelineBase is MultiSourcePipelineBase  # the entry for a folder of any kind
    assert mslddm.MultiSourceAudioPipelineOutput.__name__ == "MultiSourceAudioPipelineOutput"
    assert mslddm.MixtureAudioPipelineOutput.__name__ == "MixtureAudioPipelineOutput"
    with pytest.raises(ValueError, match="Unknown pipeline class"):
        pipeline_class("StableAudioPipeline")


def test_the_base_refuses_a_folder_of_another_library(tmp_path):
    from mslddm.hub import PipelineLoadError
    from mslddm.pipelines.pipeline_base import MultiSourcePipelineBase

    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
    with pytest.raises(PipelineLoadError, match="names the pipeline class 'StableAudioPipeline'"):
        MultiSourcePipelineBase.from_pretrained(folder)


def test_a_leaf_other_than_the_latent_one_loads_only_its_own_kind():
    from mslddm import MixtureLatentPipeline, MultiSourceDiffusionPipeline
    from mslddm.hub import PipelineLoadError

    with pytest.raises(PipelineLoadError, match="in the 'vae' slot"):
        MixtureLatentPipeline.from_pretrained(FIXTURES / "msdm")
    with pytest.raises(PipelineLoadError, match="in the 'unet' slot"):
        MultiSourceDiffusionPipeline.from_pretrained(FIXTURES / "isldm")


def test_model_kind_survives_compiling_the_unet():
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(FIXTURES / "isldm")
    pipe.enable_compile(vae=False)  # torch.compile wraps lazily: nothing is compiled until the first call
    assert type(pipe.unet).__name__ != "IndependentSourceUNet1DModel" and pipe.model_kind == "isldm"


def test_fresh_pipelines_know_their_kind_and_the_waveform_one_has_no_vae():
    import make_fixtures

    kinds = {kind: make_fixtures.build(kind) for kind in ("msldm", "isldm", "mixldm", "msdm")}
    assert {kind: pipe.model_kind for kind, pipe in kinds.items()} == {k: k for k in kinds}
    msdm = kinds["msdm"]
    assert msdm.vae is None and "vae" not in msdm.components and msdm.codec.hop_length == 1
    assert list(msdm.modules_with_weights) == ["unet"] and list(kinds["msldm"].modules_with_weights) == ["vae", "unet"]


def test_the_mixture_output_has_a_mixture_and_no_stems():
    import make_fixtures

    out = make_fixtures.build("mixldm")(audio_length_in_s=0.05, num_inference_steps=2,
                                        generator=torch.Generator().manual_seed(0))
    assert list(out) == ["mixture", "sample_rate", "mixture_of", "sampling"] and not hasattr(out, "stems")


def function_lengths():
    """``(where, lines without the docstring)`` of every function in mslddm/pipelines."""
    for path in sorted(PIPELINES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                doc = first.end_lineno - first.lineno + 1 if (
                    isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)) else 0
                yield f"{path.name}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1 - doc


def test_every_pipeline_function_fits_on_a_screen():
    """80 lines at most besides the docstring (``__call__``'s documents every argument, as diffusers' do)."""
    assert [(where, n) for where, n in function_lengths() if n > 80] == []
