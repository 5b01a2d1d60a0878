"""Batches from a dataset: shuffled, reproducible, resumable, optionally threaded."""
from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend


def collate(items):
    """List of ``(x (C, H, W), y)`` -> ``(images float32 (N, C, H, W), labels int64 (N,))``.

    Raises ValueError naming two different shapes when images differ in size.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    xs = [np.asarray(x) for x, _ in items]
    first = xs[0].shape
    for j, x in enumerate(xs):
        if x.shape != first:
            raise ValueError(f"cannot batch images of different shapes {first} (batch item 0) and "
                             f"{x.shape} (batch item {j}); give ImageFolder an image_size=... or add a "
                             "Resize/CenterCrop transform so every image has the same size")
    images = np.stack(xs).astype(np.float32, copy=False)
    labels = np.asarray([int(y) for _, y in items], dtype=np.int64)
    return images, labels


def _seed_seq(*parts):
    return np.random.SeedSequence([int(p) for p in parts])


class DataLoader:
    """Iterate ``(images (N, C, H, W) float32, labels (N,) int64)`` batches on ``device``.

    Every example is visited exactly once per epoch. With ``shuffle`` the order
    of epoch ``e`` is a permutation drawn from a generator seeded by
    ``(seed, e)``, and the augmentation generator of the example at place ``j``
    of batch ``b`` by ``(seed, e, b, j)``, so the batches depend only on the
    seed and the epoch (not on ``num_workers``, nor on how a batch is sharded). The epoch advances by one after each complete
    pass; ``set_epoch``, ``skip_batches`` and ``state_dict``/``load_state_dict``
    let a resumed run continue from the same epoch and batch.

    ``dataset``: ``len()`` and ``ds[i] -> (x, y)`` (``ds.get(i, rng)`` is used
    when present). ``transform``: an extra ``t(x, rng)`` applied per example.
    ``num_workers > 0`` loads batches in background threads with prefetch
    (Pillow releases the GIL while decoding); batch order stays the same.

    ``shard(rank, replicas)`` makes the loader one replica's view of a data-parallel run: the
    order and the batches are the unsharded loader's (same seed, same global batches, same length
    and resumable state), and each global batch is split into ``replicas`` consecutive shards
    whose sizes differ by at most one (``np.array_split``); this loader yields shard ``rank``.
    ``global_batch_size`` is then the size of the global batch the last shard came from and
    ``shard_size`` the size of the shard. Each example keeps its place ``j`` in the global batch,
    so it is augmented as the unsharded loader would: the shards of N replicas together are the
    unsharded batch, for any N.
    """

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = False, seed=None, drop_last: bool = False,
                 num_workers: int = 0, device: str = "cpu", transform=None, start_batch: int = 0,
                 prefetch: int = 2):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if not isinstance(prefetch, (int, np.integer)) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable t(x, rng), got {transform!r}")
        backend.check_device(device)
        if device == "gpu":
            backend.array_module("gpu")  # fails early with a clear message when there is no GPU
        if seed is None:
            seed = int(backend.new_rng(None).integers(0, 2**63 - 1))
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty: nothing to load")
        self.dataset = dataset
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.num_workers, self.device = bool(drop_last), int(num_workers), device
        self.transform, self.prefetch = transform, int(prefetch)
        self.epoch = 0
        self._position = 0  # batches handed out in the current epoch
        self._start = 0
        self.rank, self.replicas = 0, 1
        self.global_batch_size = None   # size of the global batch the last batch came from
        self.shard_size = None          # size of the last batch (this replica's shard of the global batch)
        self.skip_batches(start_batch)

    def shard(self, rank: int, replicas: int) -> "DataLoader":
        """Yield only shard ``rank`` of ``replicas`` of every batch (see the class docstring); returns self."""
        if not isinstance(replicas, (int, np.integer)) or replicas < 1:
            raise ValueError(f"replicas must be a positive int, got {replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < replicas:
            raise ValueError(f"rank must be an int in [0, {replicas}), got {rank!r}")
        self.rank, self.replicas = int(rank), int(replicas)
        return self

    # -- sizes and order ---------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def classes(self):
        return getattr(self.dataset, "classes", None)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Example indices of ``epoch`` (default: the current one), in visiting order."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng(_seed_seq(self.seed, epoch, 0)).permutation(n).astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch`` (from its first batch)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch, self._start, self._position = int(epoch), 0, 0

    def skip_batches(self, k: int) -> None:
        """Start the next iteration ``k`` batches into the current epoch (to resume mid-epoch)."""
        if not 0 <= int(k) <= len(self):
            raise ValueError(f"can skip 0..{len(self)} batches, got {k}")
        self._start = int(k)

    def state_dict(self) -> dict:
        """``{'seed', 'epoch', 'batch', ...}``: ``batch`` counts batches already handed out this epoch."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self._position, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "num_examples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        """Restore seed and position; the next iteration continues at ``state['batch']`` of ``state['epoch']``."""
        missing = [k for k in ("seed", "epoch") if k not in state]
        if missing:
            raise ValueError(f"DataLoader state is missing {missing}")
        for key, mine in (("batch_size", self.batch_size), ("num_examples", len(self.dataset)),
                          ("shuffle", self.shuffle), ("drop_last", self.drop_last)):
            if key in state and state[key] != mine:
                raise ValueError(f"DataLoader state has {key}={state[key]!r} but this loader has {mine!r}; "
                                 "the batch order would not match")
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))
        batch = int(state.get("batch", 0))
        if batch >= len(self):  # the saved epoch was complete
            self.set_epoch(self.epoch + 1)
        else:
            self.skip_batches(batch)
            self._position = batch

    # -- loading -------------------------------------------------------------------
    def _needs_rng(self) -> bool:
        return self.transform is not None or getattr(self.dataset, "transform", None) is not None

    def _load(self, indices: np.ndarray, epoch: int, batch: int, first: int = 0):
        """The examples ``indices``, places ``first``, ``first + 1``, … of batch ``batch`` of ``epoch``."""
        ds = self.dataset
        if self.transform is None and getattr(ds, "transform", None) is None and hasattr(ds, "get_batch"):
            x, y = ds.get_batch(indices)
            return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
        needs_rng = self._needs_rng()
        get = getattr(ds, "get", None)
        items = []
        for j, i in enumerate(indices, start=first):
            i = int(i)
            rng = np.random.default_rng(_seed_seq(self.seed, epoch, 1, batch, j)) if needs_rng else None
            x, y = get(i, rng) if get is not None else ds[i]
            if self.transform is not None:
                x = self.transform(x, rng)
            items.append((x, y))
        return collate(items)

    def __iter__(self):
        epoch, order = self.epoch, self.order()
        start = self._start
        self._start, self._position = 0, start
        sizes = {}
        chunks = self._sharded(self._batches_from(order, start), sizes)
        if self.num_workers == 0:
            for b, idx, first in chunks:
                batch = self._load(idx, epoch, b, first)
                self._position += 1
                self.global_batch_size, self.shard_size = sizes.pop(b), len(idx)
                yield self._to_device(batch)
        else:
            pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="nabi-data")
            pending = deque()
            try:
                for b, idx, first in chunks:
                    pending.append(pool.submit(self._load, idx, epoch, b, first))
                    if len(pending) >= self.num_workers * self.prefetch:
                        batch = pending.popleft().result()
                        self.global_batch_size = sizes.pop(self._position)
                        self.shard_size = len(batch[1])
                        self._position += 1
                        yield self._to_device(batch)
                while pending:
                    batch = pending.popleft().result()
                    self.global_batch_size = sizes.pop(self._position)
                    self.shard_size = len(batch[1])
                    self._position += 1
                    yield self._to_device(batch)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        self.epoch, self._position = epoch + 1, 0

    def _batches_from(self, order, start):
        n = len(order)
        for b in range(start, len(self)):
            yield b, order[b * self.batch_size: min(n, (b + 1) * self.batch_size)]

    def _sharded(self, chunks, sizes):
        """This replica's shard of each global batch ``(b, indices, place of the first in the batch)``;
        ``sizes[b]``: the global batch's size."""
        for b, idx in chunks:
            sizes[b] = len(idx)
            if self.replicas == 1:
                yield b, idx, 0
            else:
                parts = np.array_split(idx, self.replicas)
                yield b, parts[self.rank], sum(len(p) for p in parts[:self.rank])

    def _to_device(self, batch):
        x, y = batch
        if self.device == "cpu":
            return x, y
        return backend.to_device(x, self.device), backend.to_device(y, self.device)

    def __repr__(self) -> str:
        return (f"DataLoader(n={len(self.dataset)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, epoch={self.epoch}, num_workers={self.num_workers}, device={self.device!r})")


class LoaderView:
    """The batches of ``loader``, changed on their way out by a subclass's ``__iter__``; the length, the
    resumable state and the dataset are the loader's, so a trainer checkpoints and resumes a view as it
    would the loader itself."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        raise NotImplementedError

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)

    @property
    def dataset(self):
        return self.loader.dataset
