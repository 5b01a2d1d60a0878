"""P×K batches for metric learning: each batch holds P individuals with K photos each.

Batch-hard triplet mining needs positives (another photo of the anchor's individual) and
negatives in every batch; a shuffled loader over many individuals with few photos each
rarely gives either. ``PKDataLoader`` is a ``DataLoader`` whose batches are drawn so:

    epoch e, generator seeded by (seed, e):
      each individual's photos are shuffled into a queue (refilled, reshuffled, when it runs out,
      so an individual with fewer than K photos repeats some — augmentation makes them differ);
      the individuals are shuffled into a queue too;
      batch b takes the next P individuals of that queue (refilled when it runs out, never twice
      in one batch) and the next K photos of each.

An epoch has ceil(N / (P·K)) batches for N photos, so it shows about as many photos as a plain
pass. Everything else (augmentation seeds, threads, resuming mid-epoch) is ``DataLoader``'s.
"""
from __future__ import annotations

import math

import numpy as np

from .loader import DataLoader, _seed_seq


def _labels_of(dataset):
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(targets, dtype=np.int64)


class PKDataLoader(DataLoader):
    """Batches of ``p`` individuals × ``k`` photos (``batch_size`` = p·k); see the module docstring."""

    def __init__(self, dataset, p: int = 8, k: int = 4, seed=None, **kwargs):
        if int(p) < 2 or int(k) < 1:
            raise ValueError(f"a P×K batch needs P >= 2 individuals and K >= 1 photos each, got P={p}, K={k}")
        labels = _labels_of(dataset)
        ids = np.unique(labels)
        if len(ids) < int(p):
            raise ValueError(f"a P×K batch needs P = {p} individuals but the data has only {len(ids)}; "
                             f"lower P (the batch size is P·K)")
        self.p, self.k = int(p), int(k)
        self.labels = labels
        self.groups = [np.nonzero(labels == i)[0].astype(np.int64) for i in ids]
        kwargs.pop("shuffle", None)
        kwargs.pop("drop_last", None)
        super().__init__(dataset, batch_size=self.p * self.k, shuffle=True, seed=seed, **kwargs)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / (self.p * self.k))

    def epoch_batches(self, epoch: int | None = None) -> list:
        """The index arrays of every batch of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng(_seed_seq(self.seed, epoch, 2))
        photo_queues = [list(rng.permutation(g)) for g in self.groups]
        id_queue = []
        batches = []
        for _ in range(len(self)):
            chosen = []
            while len(chosen) < self.p:
                if not id_queue:
                    id_queue = [int(i) for i in rng.permutation(len(self.groups)) if i not in chosen]
                i = id_queue.pop()
                if i in chosen:
                    continue
                chosen.append(i)
            idx = []
            for i in chosen:
                for _ in range(self.k):
                    if not photo_queues[i]:
                        photo_queues[i] = list(rng.permutation(self.groups[i]))
                    idx.append(photo_queues[i].pop())
            batches.append(np.asarray(idx, dtype=np.int64))
        return batches

    def order(self, epoch: int | None = None) -> np.ndarray:
        return np.concatenate(self.epoch_batches(epoch))

    def _batches_from(self, order, start):
        batches = self.epoch_batches()
        for b in range(start, len(batches)):
            yield b, batches[b]

    def __repr__(self) -> str:
        return (f"PKDataLoader(n={len(self.dataset)}, individuals={len(self.groups)}, P={self.p}, K={self.k}, "
                f"seed={self.seed}, epoch={self.epoch})")
