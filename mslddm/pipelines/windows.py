"""Windowed generation: music longer than the model's window as overlapping windows, each generated with its
overlap with the previous window imputed (the mechanism partial generation uses for given stems).

A plan for ``frames`` latent frames with windows of ``window`` frames and ``overlap`` frames of overlap:

- ``frames <= window``: one window of ``frames`` frames (exactly the one-pass generation).
- otherwise windows of ``window`` frames start every ``window - overlap`` frames; the last one is moved back to end
  at ``frames`` (it overlaps its predecessor more), so no frame beyond the request is generated.

Window ``j > 0`` takes its first ``overlap - crossfade`` frames from what is already generated (imputed, so its
stems continue them), generates the rest freely, and its first ``crossfade`` free frames are blended linearly from
the previous window's latents into its own: the seam is spread over ``crossfade`` frames instead of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one request lie, in latent frames."""

    frames: int
    window: int
    overlap: int
    crossfade: int
    starts: List[int]

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def imputed(self, j: int) -> int:
        """Frames at the start of window ``j`` taken from the windows before it (0 for the first)."""
        if j == 0:
            return 0
        previous_end = self.starts[j - 1] + self.window
        return max(0, previous_end - self.starts[j] - self.crossfade)

    def blended(self, j: int) -> int:
        """Frames after the imputed ones where window ``j`` is blended with its predecessor."""
        if j == 0:
            return 0
        return self.starts[j - 1] + self.window - self.starts[j] - self.imputed(j)

    def boundaries(self) -> List[int]:
        """Latent frames where a window's free part begins (the possible seams)."""
        return [s + self.imputed(j) for j, s in enumerate(self.starts) if j > 0]


def plan_windows(frames: int, window: int, overlap: int, crossfade: int, multiple: int = 1) -> WindowPlan:
    """Plans overlapping windows over ``frames`` frames (see the module docstring); ``window`` is rounded down to a
    multiple of ``multiple`` (the UNet's length multiple, which ``frames`` already is)."""
    for name, value in (("frames", frames), ("window", window), ("overlap", overlap), ("crossfade", crossfade)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a whole number of frames >= 0, got {value!r}.")
    window = window // multiple * multiple
    if window < multiple or window < 1:
        raise ValueError(f"The window must hold at least {max(multiple, 1)} latent frames, got {window}.")
    if frames <= window:
        return WindowPlan(frames, frames, 0, 0, [0])
    if not 0 < overlap < window:
        raise ValueError(f"The overlap ({overlap} frames) must be more than 0 and less than the window "
                         f"({window} frames): windows must share frames to continue each other.")
    if crossfade > overlap:
        raise ValueError(f"The crossfade ({crossfade} frames) must not exceed the overlap ({overlap} frames).")
    hop = window - overlap
    starts = list(range(0, frames - window, hop)) + [frames - window]
    return WindowPlan(frames, window, overlap, crossfade, starts)


def crossfade_weights(length: int, device=None) -> torch.Tensor:
    """Weights of the new window over ``length`` blended frames: linear, strictly between 0 and 1."""
    return (torch.arange(length, device=device, dtype=torch.float32) + 1) / (length + 1)


def sampled_windows(plan: WindowPlan, known: Optional[torch.Tensor], mask: torch.Tensor) -> List[int]:
    """The windows to sample: a window whose free frames are all known (the given part of a continuation) is
    copied, not sampled."""
    return [j for j, start in enumerate(plan.starts)
            if known is None or not bool(mask[..., start + plan.imputed(j):start + plan.window].all())]


def window_constraint(plan: WindowPlan, j: int, out: torch.Tensor, known: Optional[torch.Tensor],
                      mask: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """What window ``j`` imputes: the known latents in it, and its first frames from what is generated (``out``)."""
    start, imputed = plan.starts[j], plan.imputed(j)
    span = slice(start, start + plan.window)
    window_known, window_mask = (None if known is None else known[..., span]), mask[..., span]
    if imputed:
        window_known = (out[..., span] if window_known is None else window_known).clone()
        window_known[..., :imputed] = out[..., start:start + imputed]
        window_mask = window_mask.clone()
        window_mask[..., :imputed] = True
    return window_known, window_mask


def sample_in_windows(plan: WindowPlan, noise: torch.Tensor, known: Optional[torch.Tensor], mask: torch.Tensor,
                      sampled: Sequence[int], sample_window: Callable) -> torch.Tensor:
    """Generates ``plan``'s windows in order: ``sample_window(noise, known, mask, index)`` samples one (``index``:
    its rank among the sampled windows); its first free frames are then blended from the previous window's."""
    out = torch.zeros_like(noise)  # what the windows have generated so far
    for j, start in enumerate(plan.starts):
        span = slice(start, start + plan.window)
        window_known, window_mask = window_constraint(plan, j, out, known, mask)
        if j not in sampled:
            out[..., span] = window_known
            continue
        x = sample_window(noise[..., span], window_known, window_mask, sampled.index(j))
        imputed, blended = plan.imputed(j), plan.blended(j)
        if blended:
            part = slice(imputed, imputed + blended)
            weight = crossfade_weights(blended, device=x.device)
            previous = out[..., start + imputed:start + imputed + blended]
            blend = previous + weight * (x[..., part] - previous)
            x[..., part] = torch.where(window_mask[..., part], x[..., part], blend)
        out[..., span] = x
    return out
