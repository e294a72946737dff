"""Check mslddm's PyTorch musicnn against the TensorFlow original on real audio (a one-off, not a test).

Needs a scratch environment with TensorFlow; never a dependency of mslddm:

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install torch==2.13.0 tensorflow-cpu tf-keras librosa soundfile soxr scipy tqdm
    /tmp/tfvenv/bin/pip install --no-deps musicnn==0.1.0
    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. /tmp/tfvenv/bin/python scripts/compare_musicnn_tf.py FILE...

Three comparisons per file, over every 3-s patch:
  network:    200-d ``penultimate`` embeddings of the same log-mel patches (librosa's, as musicnn.extractor makes
              them) through the TensorFlow graph and through the port;
  end to end: the same embeddings, TensorFlow graph on librosa.load + librosa features against
              MusicnnEmbedder().embed(mslddm.audio.load_audio(file, 16000)) (soundfile + soxr + torch features);
  tags:       the 50 tag probabilities of musicnn.extractor.extractor(file) (the original public API) against
              the port's on the same audio.
The extractor's ``penultimate`` output is not used: after the first patch it repeats the first batch's values
(it concatenates a stale variable), so only its taggram is a per-patch reference. Its one numpy-2
incompatibility is patched: it multiplies a float16 array by 10000, which numpy 2 keeps in float16 (overflow to
inf) and numpy 1 promoted to float32; the patch restores numpy 1's float32.
"""

import sys

import librosa
import numpy as np
import tensorflow as tf
from musicnn import configuration, extractor, models

from mslddm.audio import load_audio
from mslddm.evaluation.embedders.musicnn import MusicnnEmbedder


def batch_data_numpy1(audio_file, n_frames, overlap):
    """musicnn.extractor.batch_data with numpy 1's float32 promotion made explicit."""
    audio, sr = librosa.load(audio_file, sr=configuration.SR)
    rep = librosa.feature.melspectrogram(
        y=audio,
        sr=sr,
        hop_length=configuration.FFT_HOP,
        n_fft=configuration.FFT_SIZE,
        n_mels=configuration.N_MELS,
    ).T
    rep = np.log10(10000 * rep.astype(np.float16).astype(np.float32) + 1)
    starts = range(0, rep.shape[0] - n_frames + 1, overlap)
    return np.stack([rep[s : s + n_frames] for s in starts]), rep


def tf_penultimate(patches, model="MTT_musicnn"):
    tf.compat.v1.reset_default_graph()
    x = tf.compat.v1.placeholder(tf.float32, [None, patches.shape[1], configuration.N_MELS])
    outputs = models.define_model(x, tf.compat.v1.placeholder_with_default(False, []), model, 50)
    with tf.compat.v1.Session() as sess:
        tf.compat.v1.train.Saver().restore(sess, f"{extractor.os.path.dirname(extractor.__file__)}/{model}/")
        return sess.run(outputs[-1], {x: patches})


def main(files):
    extractor.batch_data = batch_data_numpy1
    port = MusicnnEmbedder()
    worst = {"network": 0.0, "end to end": 0.0, "tags": 0.0}
    for path in files:
        patches, _ = batch_data_numpy1(path, 187, 187)
        patches = patches.astype(np.float32)
        reference = tf_penultimate(patches)
        ours = port.embed(load_audio(path, 16000), 16000)
        taggram, _ = extractor.extractor(path, model="MTT_musicnn", extract_features=False)
        port_tags, port_embeddings = port.embed_patches(patches)
        diffs = {
            "network": np.abs(port_embeddings - reference).max(),
            "end to end": np.abs(ours - reference).max() if len(ours) == len(reference) else np.inf,
            "tags": np.abs(port_tags - taggram).max(),
        }
        print(
            f"{path}: {len(patches)} patches, max |embedding| {np.abs(reference).max():.2f}; max abs diff "
            + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        )
        worst = {k: max(worst[k], diffs[k]) for k in worst}
    print("ALL FILES: max abs diff " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
