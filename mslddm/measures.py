"""Measures of one signal against another that training and evaluation share, written once.

Levels of one signal are :func:`mslddm.audio.rms_db` (with :data:`mslddm.stems.SILENCE_DBFS`, what "silent" means).
"""

from __future__ import annotations


def si_sdr(estimate, reference, eps: float = 1e-8):
    """Scale-invariant SDR in dB per item (Le Roux et al., 2019), over the last dim of two tensors; zero-mean signals.

    Differentiable (training's metric); for NumPy signals pass ``torch.from_numpy`` of float64 arrays (evaluation).
    """
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    return 10 * (target.pow(2).sum(-1) / ((estimate - target).pow(2).sum(-1) + eps) + eps).log10()
