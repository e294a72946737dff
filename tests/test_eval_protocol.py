"""The evaluation protocol: subsets, chunk choice, seeds, resuming, and the report, with a fake pipeline."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from eval_fixtures import SR, STEMS, song, write_dataset

from mslddm.evaluation.embedders.base import AudioEmbedder
from mslddm.evaluation.protocol import (
    GeneratedClips,
    ProtocolConfig,
    evaluate,
    generate_missing,
    resolve_sampling,
    stem_subsets,
    subset_label,
)
from mslddm.evaluation.reference import Chunk, ReferenceClips, read_stems, select_chunks
from mslddm.evaluation.report import markdown, write_report


class FakePipeline:
    """Test double with MultiSourceLatentPipeline's interface: 'generates' a fixture song seeded by the generator."""

    def __init__(self, stem_names=STEMS, sample_rate=SR, garble=False):
        from mslddm import EDMScheduler

        self.stem_names, self.sample_rate, self.garble = list(stem_names), sample_rate, garble
        self.scheduler = EDMScheduler()  # unset sampler settings resolve against it
        self.calls = []

    def __call__(
        self,
        stems=None,
        generate=None,
        audio_length_in_s=12.0,
        num_inference_steps=150,
        sampler="euler",
        s_churn=20.0,
        num_samples=1,
        generator=None,
        output_type="np",
    ):
        self.calls.append({"num_samples": num_samples, "generate": list(generate or [])})
        length = round(audio_length_in_s * self.sample_rate)
        out = np.zeros((num_samples, len(self.stem_names), length), np.float32)
        for b, g in enumerate(generator):
            seed = g.initial_seed()
            made = song(seed, audio_length_in_s, self.sample_rate)[: len(self.stem_names)]
            if self.garble:  # the stems of one clip from different songs: incoherent
                made = np.stack(
                    [song(seed + 7 * k, audio_length_in_s)[k] for k in range(len(self.stem_names))]
                )
            out[b] = made[:, :length]
        for name, audio in (stems or {}).items():
            out[:, self.stem_names.index(name)] = audio
        return SimpleNamespace(stems=out, mixture=out.sum(1))


class BandEnergyEmbedder(AudioEmbedder):
    """Cheap deterministic embedder: log energies of 8 bands per 0.25-s window (test double)."""

    name, sample_rate, dim, min_samples = "bands", 8000, 8, 2000

    def embed_resampled(self, audio):
        windows = audio[: len(audio) // 2000 * 2000].reshape(-1, 2000)
        spectrum = np.abs(np.fft.rfft(windows, axis=1)) ** 2
        return np.log(np.stack([b.sum(1) for b in np.array_split(spectrum, 8, axis=1)], 1) + 1e-6)

    def identity(self):
        return {"embedder": "bands", "weights_sha256": "0" * 64}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 6 tracks of 6 s; track 2 has no guitar file, track 4 no piano file (silence)
    return write_dataset(
        tmp_path_factory.mktemp("data"), num_tracks=6, seconds=6.0, drop={2: ["guitar"], 4: ["piano"]}
    )


def small(**kw):
    """The paper's two generation tasks at a small size, two sampler steps."""
    return ProtocolConfig(**{"num_clips": 5, "num_chunks": 4, "clip_seconds": 2.0, "batch_size": 2,
                             "num_inference_steps": 2, "tasks": ("total", "partial"), **kw})


class RecordingPipeline:
    """The real tiny pipeline (random weights), recording what the protocol asks of it."""

    def __init__(self):
        from conftest import tiny_pipeline

        self.pipe, self.calls, self.windows = tiny_pipeline(), [], []
        self.stem_names, self.sample_rate = self.pipe.stem_names, self.pipe.sample_rate
        self.scheduler = self.pipe.scheduler

    def set_progress_bar_config(self, **kwargs):
        self.pipe.set_progress_bar_config(**kwargs)

    def __call__(self, **kwargs):
        out = self.pipe(**kwargs)
        self.calls.append({"num_samples": kwargs["num_samples"], "generate": list(kwargs.get("generate") or [])})
        self.windows.append(out.sampling["windows"])
        return out


def test_fourteen_subsets_for_four_stems_in_the_papers_order():
    labels = [subset_label(s, STEMS) for s in stem_subsets(STEMS)]
    assert labels == ["B", "D", "G", "P", "BD", "BG", "BP", "DG", "DP", "GP", "BDG", "BDP", "BGP", "DGP"]
    assert len(stem_subsets(["a", "b", "c"])) == 6 and len(stem_subsets(list("abcde"))) == 30
    assert subset_label(("bass", "bells"), ["bass", "bells", "drums"]) == "bass+bells"  # initials clash


def test_reading_a_missing_stem_gives_silence(data):
    stems = read_stems(data / "test" / "Track00003", STEMS, SR, start=SR, length=SR)
    assert stems.shape == (4, SR) and (stems[2] == 0).all() and np.abs(stems[0]).max() > 0.01
    np.testing.assert_allclose(stems[0], song(1002, 6.0)[0, SR : 2 * SR], atol=1e-4)  # 16-bit file


def test_chunk_choice_is_seeded_and_requires_all_stems_when_asked(data):
    kw = {"split": "test", "num_chunks": 8, "chunk_length": 2 * SR, "silence_db": -50.0}
    a = select_chunks(data, STEMS, SR, seed=0, require_all_stems=True, **kw)
    assert a == select_chunks(data, STEMS, SR, seed=0, require_all_stems=True, **kw)
    assert a != select_chunks(data, STEMS, SR, seed=1, require_all_stems=True, **kw)
    assert len(a) == 8 and a == sorted(a, key=lambda c: (c.track, c.start))
    assert not {c.track for c in a} & {"Track00003", "Track00005"}  # the tracks missing a stem
    every = select_chunks(data, STEMS, SR, seed=0, require_all_stems=False, **{**kw, "num_chunks": 100})
    assert len(every) == 18  # 6 tracks x 3 non-overlapping 2-s chunks, all with sound


@pytest.mark.slow
def test_per_item_seeds_make_results_independent_of_batch_size(tmp_path):
    clips = {}
    for batch_size in (1, 3):
        generated = GeneratedClips(tmp_path / f"b{batch_size}", 4, STEMS, SR, STEMS)
        generate_missing(RecordingPipeline(), generated, small(batch_size=batch_size))
        clips[batch_size] = np.stack([generated[i] for i in range(4)])
    np.testing.assert_allclose(clips[1], clips[3], atol=1e-5, rtol=0)  # batched convs round differently
    assert not np.allclose(clips[1][0], clips[1][1], atol=1e-3)


@pytest.mark.slow
def test_total_and_partial_protocol_end_to_end_and_resume(tmp_path, data):
    pipe = RecordingPipeline()
    out = tmp_path / "eval"
    logs = []
    result = evaluate(
        pipe,
        data,
        out,
        BandEnergyEmbedder(),
        small(),
        cache_dir=tmp_path / "cache",
        log=logs.append,
        pipeline_name="fake",
    ).to_dict()
    assert set(result["total"]["fad"]) == {"bass", "drums", "guitar", "piano", "mix"}
    assert all(np.isfinite(v) and v > 0 for v in result["total"]["fad"].values())  # a random model is not the data
    # partial generation kept the given stems of every chunk exactly (drums + guitar + piano given for "B")
    reference = ReferenceClips(data, "test", [Chunk(**c) for c in json.loads(
        (out / "state" / "chunks-partial.json").read_text())["chunks"]], STEMS, SR)
    clips = GeneratedClips(out / "audio" / "partial" / "B", len(reference), STEMS, SR, ["bass"], given=reference)
    np.testing.assert_array_equal(clips[0][1:], reference[0][1:])
    assert not np.array_equal(clips[0][0], reference[0][0])
    assert len(result["partial"]["sub_fad"]) == 14
    assert result["partial"]["overall"] == pytest.approx(np.mean(list(result["partial"]["sub_fad"].values())))
    coherence = result["total"]["coherence"]
    assert coherence["reference"]["rhythm_mean"] > coherence["reference_shuffled"]["rhythm_mean"]
    assert result["protocol"]["seed"] == 0 and "soxr" in result["protocol"]["audio"]
    assert any("Protocol" in line for line in logs)
    # partial generation: given stems are the reference's, generated ones are saved on their own
    first = json.loads((out / "state" / "chunks-partial.json").read_text())["chunks"][0]
    b_clip = GeneratedClips(
        out / "audio" / "partial" / "B",
        4,
        STEMS,
        SR,
        ["bass"],
        given=ReferenceClips(data, "test", [Chunk(**first)], STEMS, SR),
    )
    assert sorted(p.name for p in (out / "audio" / "partial" / "B" / "00000").iterdir()) == ["bass.wav"]
    given = read_stems(data / "test" / first["track"], STEMS, SR, first["start"], first["length"])
    np.testing.assert_array_equal(b_clip[0][1:], given[1:])
    calls = len(pipe.calls)
    assert calls == 3 + 14 * 2  # 5 clips in batches of 2; 4 chunks per subset in batches of 2

    # a rerun resumes: nothing regenerated, reference statistics from the cache, same numbers
    again = evaluate(
        pipe,
        data,
        out,
        BandEnergyEmbedder(),
        small(),
        cache_dir=tmp_path / "cache",
        log=logs.append,
        pipeline_name="fake",
    ).to_dict()
    assert len(pipe.calls) == calls
    assert again["total"]["fad"] == result["total"]["fad"] and again["partial"] == result["partial"]
    # an interrupted run: delete one generated clip, only that one is made again
    (out / "audio" / "total" / "00003" / "drums.wav").unlink()
    evaluate(pipe, data, out, BandEnergyEmbedder(), small(tasks=("total",)), cache_dir=None, log=logs.append)
    assert pipe.calls[calls:] == [{"num_samples": 1, "generate": STEMS}]
    # without a pipeline, complete audio can still be evaluated
    evaluate(None, data, out, BandEnergyEmbedder(), small(tasks=("total",)), log=logs.append)
    # other generation settings are refused instead of mixing audio from two settings
    with pytest.raises(ValueError, match="generated with"):
        evaluate(pipe, data, out, BandEnergyEmbedder(), small(num_inference_steps=3), log=logs.append)

    paths = write_report(result, out)
    names = {p.name for p in paths}
    assert {"results.json", "results.md"} <= names
    text = markdown(result)
    assert "| B | D | G | P | BD |" in text and "sub-FAD" in text
    assert (
        json.loads((out / "results.json").read_text())["partial"]["sub_fad"].keys()
        == result["partial"]["sub_fad"].keys()
    )


def test_fad_separates_a_coherent_model_from_a_garbled_one(tmp_path, data):
    """The mix FAD and coherence see stems drawn from different songs; the per-stem FADs do not."""
    runs = {}
    for garble in (False, True):
        runs[garble] = evaluate(
            FakePipeline(garble=garble),
            data,
            tmp_path / str(garble),
            BandEnergyEmbedder(),
            small(num_clips=6, tasks=("total",)),
            log=lambda m: None,
        ).to_dict()["total"]
    good, bad = runs[False]["coherence"]["generated"], runs[True]["coherence"]["generated"]
    assert good["rhythm_mean"] > bad["rhythm_mean"] + 0.1
    assert good["harmony_mean"] > bad["harmony_mean"] + 0.1


@pytest.mark.slow
def test_subset_selection_and_unknown_labels(tmp_path, data):
    pipe = RecordingPipeline()
    result = evaluate(
        pipe,
        data,
        tmp_path / "o",
        BandEnergyEmbedder(),
        small(tasks=("partial",), subsets=("DG",)),
        log=lambda m: None,
    ).to_dict()
    assert list(result["partial"]["sub_fad"]) == ["DG"]
    assert all(c["generate"] == ["drums", "guitar"] for c in pipe.calls)
    with pytest.raises(ValueError, match="Unknown subset"):
        evaluate(
            pipe,
            data,
            tmp_path / "o",
            BandEnergyEmbedder(),
            small(tasks=("partial",), subsets=("XY",)),
            log=lambda m: None,
        )


def test_unset_sampler_settings_are_the_pipelines_own_and_explicit_ones_win(tmp_path):
    from mslddm import EDMScheduler

    own = EDMScheduler(sampler="heun", num_inference_steps=7, s_churn=1.5)
    config = ProtocolConfig().resolved(own)
    assert (config.sampler, config.num_inference_steps, config.s_churn) == ("heun", 7, 1.5)
    assert (config.separation_steps, config.separation_churn) == (150, 20.0)  # Euler's own: the pipeline's is Heun
    assert ProtocolConfig(sampler="dpmpp_2m").resolved(own).s_churn == 0.0  # another sampler: its own defaults
    assert ProtocolConfig(sampler="heun", s_churn=5.0).resolved(own).generation()["s_churn"] == 5.0
    explicit = ProtocolConfig(sampler="euler", num_inference_steps=3, s_churn=0.0, separation_steps=4,
                              separation_churn=0.0)
    assert explicit.resolved(own) == explicit and resolve_sampling(explicit, own) is explicit
    # Without a pipeline: what the audio already there was made with (an earlier run's manifest); else unset.
    assert resolve_sampling(ProtocolConfig(), None, tmp_path) == ProtocolConfig()
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "manifest.json").write_text(json.dumps(
        {"pipeline": "p", "stem_names": STEMS, "sample_rate": SR,
         "generation": {**config.generation(), "sampler": "euler", "num_inference_steps": 150, "s_churn": 20.0}}))
    found = resolve_sampling(ProtocolConfig(s_churn=3.0), None, tmp_path)
    assert (found.sampler, found.num_inference_steps, found.s_churn) == ("euler", 150, 3.0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        ProtocolConfig(sampler="ddim")


def test_the_window_option_makes_every_clip_one_window(tmp_path):
    """Models with different windows are compared on clips of one window each: ``window_s`` = the clip length."""
    recording = RecordingPipeline()
    recording.pipe.unet.register_to_config(window_frames=32)  # 0.46 s: a 1-s clip is several windows by default
    for window_s, windows in ((None, 3), (1.0, 1)):
        config = small(clip_seconds=1.0, num_clips=1, window_s=window_s)
        generate_missing(recording, GeneratedClips(tmp_path / str(window_s), 1, STEMS, SR, STEMS), config)
        assert recording.windows[-1] == windows
        assert ("window_s" in config.generation()) == (window_s is not None)  # unset: old audio stays valid
        assert config.describe()["window_s"] == window_s
    for bad in (0.0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="window_s"):
            small(window_s=bad)
