"""The musicnn port: weights read from the installed package without TensorFlow, outputs equal to the original's."""

import importlib.util

import numpy as np
import pytest
from eval_fixtures import SR, song

from mslddm.evaluation.embedders.tf_checkpoint import CheckpointFormatError, read_tf_checkpoint

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("musicnn") is None,
    reason="musicnn is not installed: pip install --no-deps musicnn==0.1.0",
)


@pytest.fixture(scope="module")
def embedder():
    from mslddm.evaluation.embedders.musicnn import MusicnnEmbedder

    return MusicnnEmbedder()


def _test_signal(sr=16000):
    t = np.arange(6 * sr) / sr
    return (
        0.3 * np.sin(2 * np.pi * 220 * t)
        + 0.2 * np.sin(2 * np.pi * 330 * t) * (t % 0.5 < 0.25)
        + 0.05 * np.random.default_rng(0).normal(size=t.size)
    ).astype(np.float32)


def test_checkpoint_reader_finds_every_variable():
    from mslddm.evaluation.embedders.musicnn import musicnn_checkpoint_dir

    variables = read_tf_checkpoint(str(musicnn_checkpoint_dir()) + "/")
    assert variables["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert variables["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert variables["dense/kernel"].shape == (1506, 200)
    assert variables["batch_normalization_10/moving_variance"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in variables.values())


def test_checkpoint_reader_rejects_other_files(tmp_path):
    (tmp_path / "x.index").write_bytes(b"not an sstable" * 10)
    with pytest.raises(CheckpointFormatError, match="magic"):
        read_tf_checkpoint(tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        read_tf_checkpoint(tmp_path / "missing")


def test_embeddings_match_the_tensorflow_original(embedder):
    # Reference: the TensorFlow graph of musicnn.models with the package's checkpoint, on librosa's features of
    # the same signal (scripts/compare_musicnn_tf.py's pipeline); first 8 dimensions of both 3-s patches.
    tensorflow = np.array(
        [
            [-0.079952, 1.138639, 0.961345, 0.574835, -0.078703, -0.170036, -0.105751, 1.114346],
            [-0.079952, 1.043569, 1.129010, 0.374336, -0.078703, -0.170036, -0.105751, 1.226037],
        ]
    )
    ours = embedder.embed(_test_signal(), 16000)
    assert ours.shape == (2, 200)
    np.testing.assert_allclose(ours[:, :8], tensorflow, atol=2e-4)


def test_mel_filterbank_matches_librosa_values():
    from mslddm.evaluation.embedders.musicnn import slaney_mel_filterbank

    bank = slaney_mel_filterbank(16000, 512, 96)
    assert bank.shape == (96, 257)
    # librosa.filters.mel(sr=16000, n_fft=512, n_mels=96): row sums and the support of band 40
    np.testing.assert_allclose(bank[[0, 40, 95]].sum(1), [0.031999, 0.029732, 0.031985], atol=2e-6)
    assert list(bank[40].nonzero()[0]) == [42, 43]


def test_finite_200d_embeddings_one_per_3s_window(embedder):
    stems = song(0, seconds=12.0)
    emb = embedder.embed(stems.sum(0), SR)
    assert emb.shape == (4, 200) and emb.dtype == np.float32 and np.isfinite(emb).all()
    # silence and very short audio still give finite embeddings (short audio is zero-padded to one window)
    assert np.isfinite(embedder.embed(np.zeros(SR * 3, np.float32), SR)).all()
    assert embedder.embed(np.zeros(100, np.float32), SR).shape == (1, 200)
    # stereo is averaged to mono, as load_audio does
    np.testing.assert_allclose(
        embedder.embed(np.stack([stems[0], stems[0]]), SR), embedder.embed(stems[0], SR), atol=1e-5
    )


@pytest.mark.slow
def test_music_fad_ranks_degradations(embedder):
    from mslddm.evaluation.fad import EmbeddingStatistics, fad

    def stats(clips):
        return EmbeddingStatistics.from_embeddings(np.concatenate([embedder.embed(c, SR) for c in clips]))

    rng = np.random.default_rng(0)
    reference = [song(s, 6.0).sum(0) for s in range(8)]
    other_songs = stats([song(s, 6.0).sum(0) for s in range(8, 16)])
    base = stats(reference)
    noisy = [
        stats([c + level * rng.normal(size=c.shape).astype(np.float32) for c in reference])
        for level in (0.01, 0.05, 0.2)
    ]
    distances = [fad(base, base), fad(other_songs, base)] + [fad(n, base) for n in noisy]
    assert distances[0] == pytest.approx(0.0, abs=1e-6)
    assert distances[2] < distances[3] < distances[4], distances
    assert distances[1] < distances[4], distances


def test_identity_names_the_weights(embedder):
    identity = embedder.identity()
    assert identity["model"] == "MTT_musicnn" and len(identity["weights_sha256"]) == 64
