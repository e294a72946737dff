"""Per-step seeding: the batch and the noise of step ``s`` on process ``r`` depend only on ``(seed, s, r)``, so a
run resumed at step ``s`` draws exactly what the uninterrupted run drew, whatever the number of data workers."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

# Streams of randomness within a step, kept apart so that adding a draw to one never shifts another.
STREAMS = {"noise": 1, "sigma": 2, "posterior": 3, "validation": 4, "stems": 5}


def step_generator(seed: int, step: int, process_index: int = 0, stream: str = "noise",
                   device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from ``(seed, step, process, stream)`` (mixed so that nearby tuples are unrelated)."""
    mixed = (int(seed) * 1_000_003 + int(step)) * 1_009 + int(process_index)
    mixed = (mixed * 101 + STREAMS[stream]) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


class StepIndexedDataset(Dataset):
    """Wraps an mslddm dataset (items drawn from ``[seed, epoch, index]``): flat index ``k`` reads item
    ``k % len`` of epoch ``k // len``, so every step's items are fixed by its position in the run."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, flat: int):
        n = len(self.dataset)
        self.dataset.set_epoch(flat // n)
        return self.dataset[flat % n]


class StepBatchSampler(Sampler):
    """Yields the flat indices of steps ``start_step, start_step + 1, ...``: step ``s`` on process ``r`` of
    ``P`` takes ``[(s P + r) B, (s P + r + 1) B)``, a disjoint share of the global batch."""

    def __init__(self, batch_size: int, start_step: int = 0, process_index: int = 0, num_processes: int = 1,
                 max_steps: int | None = None):
        self.batch_size, self.start_step = int(batch_size), int(start_step)
        self.process_index, self.num_processes, self.max_steps = int(process_index), int(num_processes), max_steps

    def __iter__(self):
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            first = (step * self.num_processes + self.process_index) * self.batch_size
            yield list(range(first, first + self.batch_size))
            step += 1

    def __len__(self) -> int:
        return max((self.max_steps or 2**62) - self.start_step, 0)


def step_dataloader(dataset, batch_size: int, start_step: int, max_steps: int, accelerator, num_workers: int = 0):
    """A DataLoader over ``dataset`` for steps ``start_step .. max_steps - 1`` of this process."""
    sampler = StepBatchSampler(batch_size, start_step, accelerator.process_index, accelerator.num_processes,
                               max_steps)
    return torch.utils.data.DataLoader(StepIndexedDataset(dataset), batch_sampler=sampler, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)
