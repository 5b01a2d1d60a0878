"""The P×K batch loader: P individuals × K photos per batch, seeded, resumable."""
import numpy as np
import pytest

from nabi.data import ArrayDataset
from nabi.data.pk_sampler import PKDataLoader


def _dataset(counts):
    labels = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    images = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
    return ArrayDataset(images, labels)


def test_batches_hold_p_individuals_times_k_photos():
    ds = _dataset([1, 2, 5, 3, 7, 2, 4])               # few photos each, one individual with a single photo
    loader = PKDataLoader(ds, p=3, k=2, seed=0)
    assert len(loader) == int(np.ceil(24 / 6))
    n = 0
    for x, y in loader:
        assert x.shape == (6, 1, 1, 1)
        ids, counts = np.unique(y, return_counts=True)
        assert len(ids) == 3 and (counts == 2).all()
        assert (ds.labels[x[:, 0, 0, 0].astype(int)] == y).all()   # the photo carries its own label
        n += 1
    assert n == len(loader)


def test_individuals_with_enough_photos_get_distinct_ones():
    ds = _dataset([4, 4, 4, 4])
    for idx in PKDataLoader(ds, p=2, k=4, seed=3).epoch_batches(0):
        assert len(set(idx.tolist())) == 8


def test_seeded_and_resumable():
    ds = _dataset([3] * 10)
    a = PKDataLoader(ds, p=4, k=3, seed=5)
    b = PKDataLoader(ds, p=4, k=3, seed=5)
    assert all((u == v).all() for u, v in zip(a.epoch_batches(0), b.epoch_batches(0)))
    assert not all((u == v).all() for u, v in zip(a.epoch_batches(0), a.epoch_batches(1)))
    it = iter(a)
    next(it)
    state = a.state_dict()
    c = PKDataLoader(ds, p=4, k=3, seed=0)
    c.load_state_dict(state)
    rest_a = [y for _, y in it]
    rest_c = [y for _, y in c]
    assert len(rest_a) == len(rest_c) == len(a) - 1
    assert all((u == v).all() for u, v in zip(rest_a, rest_c))


def test_too_few_individuals():
    with pytest.raises(ValueError, match="only 2"):
        PKDataLoader(_dataset([3, 3]), p=4, k=2)
