"""Real photos: the nyala individuals data set, from $NABI_DATA_DIR (skipped without it).

``NABI_DATA_DIR`` names a folder holding ``nyala_dev/`` (one sub-folder per
individual) or the archive ``nyala_dev.tar.gz``. The photos come from the
``Nyala_Data_Zero`` folder of github.com/tvanzyl/wildlife_reidentification
(Dlamini & van Zyl, 2020), 196 photos of 8 individuals; docs/measured.md says how
to lay them out.
"""
import tarfile

import numpy as np
import pytest

from nabi import data as D

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def nyala(nabi_data_dir, tmp_path_factory):
    folder = nabi_data_dir / "nyala_dev"
    if folder.is_dir():
        return folder
    archive = nabi_data_dir / "nyala_dev.tar.gz"
    if not archive.is_file():
        pytest.skip(f"NABI_DATA_DIR={nabi_data_dir} holds neither nyala_dev/ nor nyala_dev.tar.gz")
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
    assert counts.min() >= 22 and counts.max() <= 26            # 22–26 photos per individual
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    parts = D.stratified_split(ds.targets, (0.8, 0.2), seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(196))
    assert all(len(set(ds.targets[p])) == 8 for p in parts)     # every individual in both parts
