"""embedding_net: the whole network's gradient, the classifier-free backbone, retrieval validation."""
import numpy as np
import pytest

import nabi.models as zoo
from nabi import backend
from nabi.gradcheck import check_module
from nabi.models.embedding import strip_classifier
from nabi.reid import metrics as M
from nabi.reid.train import EmbeddingObjective, split_gallery_queries
from nabi.layers import ArcFaceLoss


@pytest.mark.parametrize("head", ["subcenter_arcface", "triplet"])
def test_embedding_net_gradient(head):
    """backbone (conv, ReLU, flatten; its Linear stripped) → BN-neck → cosine classifier, as one module."""
    from nabi.layers import Conv2d, CosineLinear, EmbeddingHead, Flatten, Linear, ReLU, Sequential
    from nabi.models.embedding import EmbeddingNet
    rng = np.random.default_rng(22)
    with backend.default_dtype(np.float64):
        backbone = Sequential(Conv2d(3, 2, 3, rng=rng), ReLU(), Flatten(), Linear(2 * 4 * 4, 5, rng=rng))
        features = strip_classifier(backbone)
        classifier = CosineLinear(4, 3, subcenters=2, rng=rng) if head != "triplet" else None
        net = EmbeddingNet(backbone, EmbeddingHead(features, 4, rng=rng), classifier, head)
    errs = check_module(net, rng.random((5, 3, 6, 6)), max_coords=60)
    assert max(errs.values()) < 1e-5, errs


def test_strip_classifier_needs_a_final_linear():
    m = zoo.get("resnet20", num_classes=4)
    assert strip_classifier(m) == 64
    with pytest.raises(ValueError, match="does not end with a Linear"):
        strip_classifier(m)


def test_gallery_scores_give_rank1():
    rng = np.random.default_rng(0)
    net = zoo.get("embedding_net", backbone="cifar_cnn", num_classes=4, embedding_dim=8).eval()
    x = rng.random((12, 3, 32, 32)).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    gi, qi = split_gallery_queries(labels, seed=1)
    assert set(labels[gi]) == set(labels[qi]) == set(range(4))
    e = net.embed(x)
    net.set_gallery(e[gi], labels[gi], 4)
    scores = net(x[qi])
    net.clear_gallery()
    sims = e[qi] @ e[gi].T
    assert (scores.argmax(1) == labels[qi]).mean() == M.rank_k(sims, labels[qi], labels[gi], 1)
    for j in range(4):
        np.testing.assert_allclose(scores[:, j], sims[:, labels[gi] == j].max(1), rtol=1e-6)
    assert net(x[:2]).shape == (2, 4)                      # without a gallery: cosines to training centres


def test_objective_switches_to_gallery_cross_entropy():
    net = zoo.get("embedding_net", backbone="cifar_cnn", num_classes=3, embedding_dim=4)
    obj = EmbeddingObjective(net, ArcFaceLoss(scale=10.0), scale=10.0)
    c = np.array([[0.9, 0.1, -0.2]])
    assert obj(c, np.array([0])) == pytest.approx(ArcFaceLoss(scale=10.0)(c, np.array([0])))
    net.set_gallery(np.eye(4, dtype=np.float32)[:3], np.arange(3), 3)
    z = 10.0 * c[0]
    assert obj(c, np.array([0])) == pytest.approx(-(z[0] - np.log(np.exp(z).sum())))


def test_similarity_module_gradient():
    """x ↦ e(x)·t: finite differences of the module Grad-CAM differentiates."""
    from nabi.layers import Conv2d, EmbeddingHead, Flatten, Linear, ReLU, Sequential
    from nabi.models.embedding import EmbeddingNet
    from nabi.reid.explain import SimilarityToEmbedding
    rng = np.random.default_rng(23)
    with backend.default_dtype(np.float64):
        backbone = Sequential(Conv2d(3, 2, 3, rng=rng), ReLU(), Flatten(), Linear(2 * 4 * 4, 5, rng=rng))
        net = EmbeddingNet(backbone, EmbeddingHead(strip_classifier(backbone), 4, rng=rng), None, "triplet")
    t = rng.standard_normal(4)
    t /= np.linalg.norm(t)
    errs = check_module(SimilarityToEmbedding(net, t), rng.random((3, 3, 6, 6)), max_coords=60)
    assert max(errs.values()) < 1e-5, errs


def test_drop_repeated_files(tmp_path):
    import shutil

    from nabi.data import ImageFolder
    from nabi.reid.train import drop_repeated_files
    from reid_synth import write_photos
    write_photos(tmp_path, [1, 2], 2)
    shutil.copy(tmp_path / "ind01" / "000.png", tmp_path / "ind01" / "copy.png")
    folder = ImageFolder(tmp_path)
    assert len(folder) == 5 and drop_repeated_files(folder) == 1 and len(folder) == 4
    assert not any(p.endswith("copy.png") for p, _ in folder.samples)
