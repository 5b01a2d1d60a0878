"""Real photos from the steering repository's shared/data (skipped where that folder is absent)."""
import tarfile
from pathlib import Path

import numpy as np
import pytest

from nabi import data as D

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def nyala(tmp_path_factory):
    archive = SHARED / "nyala_dev.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is not here (a user's machine does not have shared/data)")
    root = tmp_path_factory.mktemp("nyala")
    with tarfile.open(archive) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}   # Python ≥ 3.10.12/3.11.4
        tar.extractall(root, **safe)
    return root / "nyala_dev"


def test_nyala_individuals_load_as_an_image_folder(nyala):
    ds = D.ImageFolder(nyala, image_size=(64, 64))
    assert len(ds.classes) == 8 and len(ds) == 196
    assert ds.verify() == []                                   # every real JPEG decodes
    counts = np.bincount(ds.targets, minlength=8)
    assert counts.min() >= 22 and counts.max() <= 26            # as shared/data/README.md says
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    parts = D.stratified_split(ds.targets, (0.8, 0.2), seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(196))
    assert all(len(set(ds.targets[p])) == 8 for p in parts)     # every individual in both parts
