"""The registry of model kinds (mslddm/kinds.py): its classes import, each kind's pipeline built from it says it is
that kind, saved folders and checkpoints resolve to their kind, and no other file tells kinds apart by name."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LATENT, STEMS, tiny_vae

from mslddm import EDMScheduler
from mslddm.kinds import KINDS, get_kind, kind_names, kind_of, kind_of_index

ROOT = Path(__file__).resolve().parents[1]
UNET_ARGS = dict(channels=16, patch_factor=2, patch_blocks=1, multipliers=(1, 2, 1), factors=(2, 2),
                 num_blocks=(1, 1), attentions=(False, True), attention_heads=2, attention_features=8,
                 attention_multiplier=2, resnet_groups=4)


def test_kinds_are_the_four_of_the_paper_and_the_default_is_msldm():
    assert kind_names() == ("msldm", "isldm", "mixldm", "msdm")
    assert get_kind(None) is KINDS["msldm"]  # recipes and checkpoints written before kinds were recorded
    with pytest.raises(ValueError, match="model kind must be one of"):
        get_kind("ldm")


@pytest.mark.parametrize("name", list(KINDS))
def test_class_paths_import_and_are_the_saved_format(name):
    import mslddm

    kind = KINDS[name]
    pipeline, unet = kind.pipeline_class(), kind.unet_class()
    assert f"{pipeline.__module__}.{pipeline.__name__}" == kind.pipeline_class_path
    assert f"{unet.__module__}.{unet.__name__}" == kind.unet_class_path
    # model_index.json names classes by these modules (mslddm/__init__.py's _EXPORTS are the public format)
    assert mslddm._EXPORTS[pipeline.__name__] == pipeline.__module__
    assert mslddm._EXPORTS[unet.__name__] == unet.__module__
    assert kind.recipe_key and kind.card.title and kind.card.usage


def tiny_components(kind):
    """A UNet and (for a latent kind) a VAE fitting ``kind``'s sources: the four stems, or their one mix."""
    sources = len(STEMS) if kind.generates_stems else 1
    torch.manual_seed(0)
    vae = tiny_vae() if kind.uses_vae else None
    if vae is not None and not kind.generates_stems:
        from mslddm import SourceVAE

        vae = SourceVAE(encoder_dim=4, latent_channels=len(STEMS) * LATENT, decoder_dim=16)  # a MixtureVAE
    channels = (len(STEMS) * LATENT) if kind.uses_vae else sources
    extra = {"num_sources": sources} if kind.independent_sources else {}
    return vae, kind.unet_class()(in_channels=channels, **extra, **UNET_ARGS)


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_builds_a_pipeline_that_is_that_kind(name, tmp_path):
    kind = KINDS[name]
    vae, unet = tiny_components(kind)
    pipe = kind.build_pipeline(vae=vae, unet=unet, scheduler=EDMScheduler(), stem_names=STEMS, mixture_of=STEMS,
                               stem_levels_dbfs=None, sample_rate=None)
    assert isinstance(pipe, kind.pipeline_class())
    assert pipe.model_kind == name and kind_of(pipe) is kind
    assert pipe.generates_stems == kind.generates_stems
    # saved and loaded, the pipeline is still that kind (what export, the CLI and evaluation read back), and its
    # model_index.json alone names the kind (what encode-latents reads)
    pipe.save_pretrained(tmp_path / name)
    loaded = type(pipe).from_pretrained(tmp_path / name)
    assert kind_of(loaded) is kind
    assert kind_of_index(json.loads((tmp_path / name / "model_index.json").read_text())) is kind


def test_bundled_pipeline_and_training_states_resolve_to_their_kind():
    index = json.loads((ROOT / "pipelines" / "mslddm-synth-small" / "model_index.json").read_text())
    assert kind_of_index(index) is KINDS["msldm"]
    assert kind_of_index({"_class_name": "StableAudioPipeline"}) is None
    for name in KINDS:  # training_state.json records the kind by name
        assert get_kind(json.loads(json.dumps({"kind": name}))["kind"]).name == name


def test_mixture_kind_sums_audio_stems_into_its_one_source():
    audio, latents = torch.ones(2, 4, 8), torch.ones(2, 1, LATENT, 8)
    assert KINDS["mixldm"].training_batch(audio).shape == (2, 1, 8)
    assert torch.equal(KINDS["mixldm"].training_batch(audio)[:, 0], audio.sum(1))
    assert KINDS["mixldm"].training_batch(latents) is latents  # `encode-latents --mix` latents already are one
    assert KINDS["msldm"].training_batch(audio) is audio


KIND_CHAIN = re.compile(r"\bkind\s*(==|!=)|\bkind\s+(not\s+)?in\s*[(\[{]")


def test_no_kind_chains_outside_the_registry():
    """Kinds are told apart by asking mslddm/kinds.py, never by comparing names (issue 25)."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    found = []
    for name in files.stdout.split():
        if name == "mslddm/kinds.py" or name.startswith("tests/"):
            continue
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if KIND_CHAIN.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "kind comparisons outside mslddm/kinds.py:\n" + "\n".join(found)


def test_the_registry_imports_nothing_heavy():
    code = "import sys, mslddm.kinds; print(sorted(m for m in sys.modules if m in ('torch', 'diffusers')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
