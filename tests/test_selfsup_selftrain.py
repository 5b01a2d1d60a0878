"""Self-training with a noisy student: the soft-target cross-entropy (finite differences and PyTorch), the
pseudo-label selection, soft targets reaching the loss, and ``nabi self-train`` end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nabi.gradcheck import numerical_gradient
from nabi import data as D
from nabi.cli.main import main as nabi_main
from nabi.functional.loss import cross_entropy_backward, cross_entropy_forward
from nabi.functional.soft_target import soft_cross_entropy_backward, soft_cross_entropy_forward
from nabi.layers.soft_target import SoftTargetCrossEntropyLoss
from nabi.selfsup import pseudo_labels as P


def _targets(rng, N, K, dtype=np.float64):
    q = rng.random((N, K)) ** 3
    return (q / q.sum(axis=1, keepdims=True)).astype(dtype)


# -- soft-target cross-entropy ----------------------------------------------------------------------------
@pytest.mark.parametrize("N,K", [(1, 2), (3, 4), (5, 7)])
def test_soft_cross_entropy_gradient_matches_finite_differences(N, K):
    rng = np.random.default_rng(10 * N + K)
    z = rng.standard_normal((N, K)) * 3
    q = _targets(rng, N, K)
    g = float(rng.uniform(0.5, 2.0)) * (1 if rng.random() < 0.5 else -1)     # random upstream scalar
    _, cache = soft_cross_entropy_forward(z, q)
    dz = soft_cross_entropy_backward(cache, g)
    a = z.copy()
    num = numerical_gradient(lambda: g * float(soft_cross_entropy_forward(a, q)[0]), a)
    np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-12, 1e-14), (np.float32, 2e-5, 1e-7)])
@pytest.mark.parametrize("N,K", [(1, 3), (8, 5), (16, 10), (4, 2)])
def test_soft_cross_entropy_equals_pytorch(N, K, dtype, rtol, atol):
    rng = np.random.default_rng(N + 100 * K)
    z = (rng.standard_normal((N, K)) * rng.uniform(0.5, 8.0)).astype(dtype)
    q = _targets(rng, N, K, dtype)
    g = float(rng.uniform(-2.0, 2.0))
    loss, cache = soft_cross_entropy_forward(z, q)
    dz = soft_cross_entropy_backward(cache, g)
    zt = torch.tensor(z, requires_grad=True)
    lt = -(torch.tensor(q) * torch.log_softmax(zt, dim=1)).sum() / N        # the formula in PyTorch ops
    lt.backward(torch.tensor(g, dtype=zt.dtype))
    assert loss.dtype == dtype and dz.dtype == dtype
    np.testing.assert_allclose(float(loss), lt.item(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=rtol, atol=atol)
    ref = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(q))  # PyTorch's probability targets
    np.testing.assert_allclose(float(loss), ref.item(), rtol=rtol, atol=atol)


def test_soft_cross_entropy_with_one_hot_rows_is_the_ordinary_cross_entropy():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    loss, cache = soft_cross_entropy_forward(z, np.eye(4)[y])
    ref, ref_cache = cross_entropy_forward(z, y)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-13)
    np.testing.assert_allclose(soft_cross_entropy_backward(cache, 0.7), cross_entropy_backward(ref_cache, 0.7),
                               rtol=1e-12, atol=1e-15)


def test_soft_cross_entropy_float16_logits_are_computed_in_float32():
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((5, 3)) * 4).astype(np.float16)
    q = _targets(rng, 5, 3, np.float32)
    loss, cache = soft_cross_entropy_forward(z, q)
    dz = soft_cross_entropy_backward(cache, 1.0)
    assert loss.dtype == np.float16 and dz.dtype == np.float16
    ref, ref_cache = soft_cross_entropy_forward(z.astype(np.float32), q)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-3)
    np.testing.assert_allclose(dz.astype(np.float32), soft_cross_entropy_backward(ref_cache), rtol=1e-2, atol=1e-3)


def test_soft_cross_entropy_rejects_bad_targets():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="shape"):
        soft_cross_entropy_forward(z, np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="sum to 1"):
        soft_cross_entropy_forward(z, np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        soft_cross_entropy_forward(z, np.array([[1.5, -0.5, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(TypeError, match="floating"):
        soft_cross_entropy_forward(z, np.eye(3, dtype=np.int64)[:2])
    with pytest.raises(RuntimeError, match="before the loss"):
        SoftTargetCrossEntropyLoss().backward()


def test_loss_layer_uses_registered_soft_targets_only_for_their_own_labels():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 3))
    q = _targets(rng, 4, 3)
    labels = q.argmax(axis=1)
    f = SoftTargetCrossEntropyLoss()
    f.expect(labels, q)
    assert f(z, labels) == pytest.approx(float(soft_cross_entropy_forward(z, q)[0]), rel=1e-12)
    np.testing.assert_allclose(f.backward(2.0), soft_cross_entropy_backward(soft_cross_entropy_forward(z, q)[1], 2.0))
    # the registration is used once; other label arrays (a validation batch) mean one-hot rows
    assert f(z, labels) == pytest.approx(float(cross_entropy_forward(z, labels)[0]), rel=1e-12)
    f.expect(labels, q)
    other = labels.copy()
    assert f(z, other) == pytest.approx(float(cross_entropy_forward(z, other)[0]), rel=1e-12)


def test_soft_target_batches_hand_each_row_its_own_target(tmp_path):
    class Numbers:
        classes = ["a", "b", "c"]

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return np.full((1, 2, 2), i, np.float32), 0

    rng = np.random.default_rng(6)
    table = _targets(rng, 10, 3)
    loss = SoftTargetCrossEntropyLoss()
    batches = P.SoftTargetBatches(D.DataLoader(P.RowIndexed(Numbers()), batch_size=4, shuffle=True, seed=1),
                                  table, loss)
    rows_seen = []
    z = rng.standard_normal((4, 3)).astype(np.float32)
    for x, labels in batches:
        rows = x[:, 0, 0, 0].astype(int)                        # each photo's value is its own index
        assert loss._expected[0] is labels
        np.testing.assert_allclose(loss._expected[1], table[rows].astype(np.float32))
        np.testing.assert_array_equal(labels, table[rows].argmax(axis=1))
        got = loss(z[:len(rows)], labels)                        # the loss the trainer computes for this batch
        want = float(soft_cross_entropy_forward(z[:len(rows)], table[rows].astype(np.float32))[0])
        assert got == pytest.approx(want, rel=1e-6)
        rows_seen.extend(rows.tolist())
    assert sorted(rows_seen) == list(range(10))


# -- choosing the pseudo-labels ---------------------------------------------------------------------------
def test_select_keeps_confident_photos_and_caps_each_class_by_confidence():
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.95, 0.05, 0.0], [0.2, 0.7, 0.1],
                      [0.4, 0.35, 0.25], [0.1, 0.1, 0.8], [0.7, 0.3, 0.0]])
    kept, labels, targets = P.select(probs, threshold=0.5, max_per_class=2)
    # class 0 candidates 0 (0.9), 1 (0.6), 2 (0.95), 6 (0.7): the two most confident are 2 and 0
    # photo 4 (0.4) is below the threshold
    assert kept.tolist() == [0, 2, 3, 5] and labels.tolist() == [0, 0, 1, 2]
    np.testing.assert_array_equal(targets, np.eye(3)[[0, 0, 1, 2]])
    kept_s, _, targets_s = P.select(probs, threshold=0.5, max_per_class=2, soft=True)
    np.testing.assert_array_equal(targets_s, probs[kept_s])
    kept_bg, labels_bg, targets_bg = P.select(probs, threshold=0.5, max_per_class=2, background=2, soft=True)
    assert labels_bg.tolist() == [0, 0, 1, 2]
    np.testing.assert_array_equal(targets_bg[3], [0, 0, 1])          # background stays background, one-hot
    np.testing.assert_array_equal(targets_bg[:3], probs[[0, 2, 3]])
    assert P.select(probs, threshold=1.0, max_per_class=5)[0].size == 0
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match=r"--threshold must lie in \(0, 1\]"):
            P.select(probs, threshold=bad, max_per_class=2)


def test_folder_labels_read_class_named_folders_only(tmp_path):
    photos = [tmp_path / "b" / "1.png", tmp_path / "zzz" / "2.png", tmp_path / "3.png", tmp_path / "a" / "x" / "4.png"]
    assert P.folder_labels(photos, tmp_path, ["a", "b"]).tolist() == [1, -1, -1, 0]


# -- nabi self-train end to end ---------------------------------------------------------------------------
def write_labelled(root, n_per_class, seed, size=20):
    """Two classes that differ in brightness (dark, light), with pixel noise."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c, v in (("dark", 40), ("light", 210)):
        d = Path(root) / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            a = (rng.random((size, size, 3)) * 60 + v - 30).clip(0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{i:02d}.png")
    return Path(root)


def _argv(lab, unl, out, *extra):
    return ["self-train", str(lab), str(unl), "--model", "cifar_cnn", "--image-size", "32", "--rounds", "2",
            "--epochs", "1", "--batch-size", "8", "--val-ratio", "0.2", "--test-ratio", "0.2", "--seed", "3",
            "--threshold", "0.5", "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("soft", [False, True])
def test_self_train_two_rounds_logs_counts_and_trains_students_on_the_pseudo_labels(tmp_path, capsys, soft):
    from nabi.runs import load_run
    lab = write_labelled(tmp_path / "lab", 12, 0)
    unl = write_labelled(tmp_path / "unl", 10, 1)                   # folders named like the classes: diagnostic
    out = tmp_path / "out"
    assert nabi_main(_argv(lab, unl, out, *(["--soft"] if soft else []))) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["soft"] is soft and summary["num_unlabelled"] == 20 and summary["classes"] == ["dark", "light"]
    assert summary["stochastic_depth"] == 0.0                               # cifar_cnn students: none
    cap = summary["max_per_class"]
    assert cap == max(summary["labelled_train_counts"].values()) == 7     # 12 per class: 7 train, 3 val, 2 test
    md = (out / "summary.md").read_text()
    n_train_labelled = summary["rounds"][0]["num_train"]
    for k in (1, 2):
        rec = json.loads((out / f"round-{k}" / "round.json").read_text())
        assert rec == summary["rounds"][k]
        manifest = json.loads((out / f"round-{k}" / "pseudo_labels.json").read_text())
        labels = [e["label"] for e in manifest["photos"]]
        assert rec["pseudo_label_counts"] == {c: labels.count(c) for c in ("dark", "light")}
        assert rec["num_pseudo_labelled"] == len(labels) and all(n <= cap for n in rec["pseudo_label_counts"].values())
        assert all(e["confidence"] >= 0.5 for e in manifest["photos"])
        paths, man_labels, man_targets, man_classes = P.read_manifest(out / f"round-{k}" / "pseudo_labels.json")
        assert [Path(p).resolve() for p in paths] == [(unl / e["path"]).resolve() for e in manifest["photos"]]
        assert man_classes == ["dark", "light"] and [man_classes[i] for i in man_labels] == labels
        assert (man_targets is not None) is soft
        assert ("target" in manifest["photos"][0]) is soft if labels else True
        # the counts are what the previous round's model says about the unlabelled photos
        teacher, meta = load_run(out / f"round-{k - 1}" / "train")
        photos = P.list_photos(unl)
        probs = P.predict(teacher, meta, photos)
        kept, lab_idx, _ = P.select(probs, 0.5, cap)
        assert [str(Path(photos[i]).relative_to(unl)) for i in kept] == [e["path"] for e in manifest["photos"]]
        assert rec["pseudo_label_counts"] == {"dark": int((lab_idx == 0).sum()), "light": int((lab_idx == 1).sum())}
        truth = P.folder_labels(photos, unl, ["dark", "light"])
        assert rec["pseudo_label_accuracy"] == pytest.approx(float((lab_idx == truth[kept]).mean())) if len(kept) \
            else rec["pseudo_label_accuracy"] is None
        # the student trained on labelled + pseudo-labelled photos: its config says so, and it took the steps
        config = json.loads((out / f"round-{k}" / "train" / "config.json").read_text())
        assert config["num_train_labelled"] == n_train_labelled
        assert config["num_train_pseudo"] == len(labels) and config["num_train"] == n_train_labelled + len(labels)
        assert config["augment"] == "strong" and config["pseudo_targets"] == ("soft" if soft else "hard")
        assert rec["train_iterations"] == -(-(n_train_labelled + len(labels)) // 8)
        assert 0 <= rec["test_acc"] <= 1 and f"| {k} | cifar_cnn | student | {len(labels)} |" in md
    assert summary["rounds"][1]["num_pseudo_labelled"] > 0          # the students did see pseudo-labels
    assert "round 2: test accuracy" in capsys.readouterr().out


def test_self_train_stochastic_depth_gives_the_resnet_students_drop_path_and_records_the_rate(tmp_path, capsys):
    from nabi.layers import DropPath
    from nabi.runs import load_run
    lab = write_labelled(tmp_path / "lab", 8, 0)
    unl = write_labelled(tmp_path / "unl", 4, 1)
    out = tmp_path / "out"
    argv = _argv(lab, unl, out, "--stochastic-depth", "0.2")
    argv[argv.index("cifar_cnn")] = "resnet20"
    argv[argv.index("--rounds") + 1] = "1"
    assert nabi_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stochastic_depth"] == 0.2 and summary["student_model_args"] == {"drop_path": 0.2}
    student, meta = load_run(out / "round-1" / "train")
    rates = [m.p for m in student.modules() if isinstance(m, DropPath)]
    np.testing.assert_allclose(rates, [0.2 * i / 8 for i in range(1, 9)])     # resnet20: 9 blocks, 0 → 0.2
    assert meta["arch"]["kwargs"]["drop_path"] == 0.2
    teacher, _ = load_run(out / "round-0" / "train")
    assert not any(isinstance(m, DropPath) for m in teacher.modules())        # only the students are noised


def test_student_args_add_drop_path_only_when_stochastic_depth_is_given():
    from nabi.selfsup.selftrain import _student_args
    assert _student_args("resnet20", {}, None, None) == {}
    assert _student_args("resnet20", {"init": "he_normal"}, None, 0.1) == {"init": "he_normal", "drop_path": 0.1}


def test_self_train_rejects_bad_input_before_training(tmp_path, capsys):
    lab = write_labelled(tmp_path / "lab", 4, 0)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no photos here")
    unl = write_labelled(tmp_path / "unl", 2, 1)
    cases = [
        (_argv(lab, empty, tmp_path / "a"), "unlabelled photo folder .*empty holds no image files"),
        (_argv(lab, tmp_path / "absent", tmp_path / "b"), "unlabelled photo folder .*absent does not exist"),
        (_argv(lab, unl, tmp_path / "c", "--threshold", "0"), r"--threshold must be a finite number in \(0, 1\]"),
        (_argv(lab, unl, tmp_path / "d", "--threshold", "1.5"), r"--threshold must be a finite number in \(0, 1\]"),
        (_argv(lab, unl, tmp_path / "e", "--rounds", "0"), "--rounds must be .*at least 1"),
        (_argv(lab, unl, tmp_path / "f", "--test-ratio", "0"), "--test-ratio above 0"),
        (_argv(lab, unl, tmp_path / "g", "--student-model", "lenet5", "--model", "resnet20"),
         "lenet5 has .* parameters, fewer than the teacher resnet20"),
        (_argv(lab, unl, tmp_path / "h", "--dropout", "0.3"), "model cifar_cnn has no dropout"),
        (_argv(lab, unl, tmp_path / "i", "--max-per-class", "0"), "--max-per-class must be at least 1"),
        (_argv(lab, unl, tmp_path / "j", "--stochastic-depth", "0.2"),
         "--stochastic-depth: model cifar_cnn has no residual blocks to drop"),
        (_argv(lab, unl, tmp_path / "k", "--stochastic-depth", "1", "--model", "resnet20"),
         r"--stochastic-depth must be a finite number in \[0, 1\), got 1"),
        (_argv(lab, unl, tmp_path / "l", "--stochastic-depth", "-0.1", "--model", "resnet20"),
         r"--stochastic-depth must be a finite number in \[0, 1\)"),
    ]
    import re
    for argv, message in cases:
        assert nabi_main(argv) == 1, argv
        err = capsys.readouterr().err
        assert re.search(message, err), (message, err)
        assert not (Path(argv[argv.index("--out") + 1]) / "round-0").exists()      # nothing trained


def test_soft_cross_entropy_on_every_array_module_equals_numpy(xp):
    from nabi import backend
    rng = np.random.default_rng(8)
    z, q = rng.standard_normal((6, 4)), _targets(rng, 6, 4)
    loss, cache = soft_cross_entropy_forward(z, q)
    dz = soft_cross_entropy_backward(cache, 0.5)
    loss_d, cache_d = soft_cross_entropy_forward(xp.asarray(z), xp.asarray(q))
    dz_d = soft_cross_entropy_backward(cache_d, 0.5)
    assert backend.get_array_module(dz_d) is xp
    np.testing.assert_allclose(float(backend.to_numpy(loss_d)), float(loss), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dz_d), dz, rtol=1e-10, atol=1e-13)


def test_read_manifest_rejects_other_files(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"format": "nabi-model"}))
    with pytest.raises(ValueError, match="not a pseudo-label manifest"):
        P.read_manifest(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*broken.json"):
        P.read_manifest(tmp_path / "broken.json")


# -- starting from pretrained weights (--init, --freeze-until, --layer-lr-decay) --------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny ``nabi pretrain`` run of cifar_cnn: its backbone.safetensors has conv1 and conv2, no fc."""
    root = tmp_path_factory.mktemp("pretrain")
    photos = write_labelled(root / "photos", 4, 7)
    assert nabi_main(["pretrain", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--method", "simsiam",
                      "--iterations", "2", "--batch-size", "8", "--out", str(root / "run"), "--no-progress"]) == 0
    from nabi import files
    path = root / "run" / "backbone.safetensors"
    state, _ = files.load_weights(path)
    assert sorted(state) == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight"]
    return path, state


@pytest.fixture
def initial_weights(monkeypatch):
    """The weights every ``Trainer.fit`` starts from, in call order (teacher first, then each student)."""
    from nabi.training.trainer import Trainer
    seen, fit = [], Trainer.fit

    def recording_fit(self, *args, **kwargs):
        seen.append({k: np.array(v) for k, v in self.model.state_dict().items()})
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, "fit", recording_fit)
    return seen


def test_self_train_init_starts_the_teacher_and_every_student_from_the_weights(tmp_path, capsys, pretrained,
                                                                                initial_weights):
    path, state = pretrained
    lab = write_labelled(tmp_path / "lab", 8, 0)
    unl = write_labelled(tmp_path / "unl", 4, 1)
    out = tmp_path / "out"
    assert nabi_main(_argv(lab, unl, out, "--init", str(path.parent))) == 0      # a run folder: its backbone
    log = capsys.readouterr().out
    assert log.count(f"--init {path}: loaded 4 arrays matching by name and shape") == 3
    assert len(initial_weights) == 3                                              # teacher, two students
    for start in initial_weights:
        for name, value in state.items():
            assert np.array_equal(start[name], value), name
        assert set(start) - set(state) == {"fc.weight", "fc.bias"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init"] == str(path) and summary["freeze_until"] is None and summary["layer_lr_decay"] == 1.0
    assert f"started from {path}" in (out / "summary.md").read_text()
    for k in (0, 1, 2):
        rec = json.loads((out / f"round-{k}" / "round.json").read_text())
        assert rec["init"] == {"weights": str(path), "loaded": 4, "new": ["fc.weight", "fc.bias"], "skipped": [],
                               "unused": []}
        assert rec == summary["rounds"][k]
        config = json.loads((out / f"round-{k}" / "train" / "config.json").read_text())
        assert config["init"] == str(path.parent) and config["freeze_until"] is None
        assert config["layer_lr_decay"] == 1.0


def test_self_train_freeze_until_keeps_the_loaded_stage_in_teacher_and_another_architecture_student(
        tmp_path, capsys, pretrained, initial_weights):
    from nabi import files
    path, state = pretrained
    lab = write_labelled(tmp_path / "lab", 8, 0)
    unl = write_labelled(tmp_path / "unl", 4, 1)
    out = tmp_path / "out"
    argv = _argv(lab, unl, out, "--init", str(path), "--freeze-until", "conv1", "--layer-lr-decay", "0.5",
                 "--student-model", "resnet20")
    argv[argv.index("--rounds") + 1] = "1"
    assert nabi_main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("--freeze-until conv1: frozen stages conv1") == 2 and "layer3  0.5" in log
    # the teacher (cifar_cnn) took all four arrays; the student (resnet20) only conv1.weight, the one that fits
    teacher_start, student_start = initial_weights
    assert all(np.array_equal(teacher_start[k], v) for k, v in state.items())
    assert np.array_equal(student_start["conv1.weight"], state["conv1.weight"])
    teacher_rec = json.loads((out / "round-0" / "round.json").read_text())
    student_rec = json.loads((out / "round-1" / "round.json").read_text())
    assert teacher_rec["init"]["loaded"] == 4
    assert student_rec["init"]["loaded"] == 1 and "fc.weight" in student_rec["init"]["new"]
    assert student_rec["init"]["unused"] == ["conv1.bias", "conv2.weight", "conv2.bias"]
    # the frozen stage is bit-identical to the file after training; the stage above it trained
    for k, frozen in ((0, ["conv1.weight", "conv1.bias"]), (1, ["conv1.weight"])):
        for weights in ("best.safetensors", "model.safetensors"):
            final, _ = files.load_weights(out / f"round-{k}" / "train" / weights)
            for name in frozen:
                assert np.array_equal(final[name], state[name]), (k, weights, name)
    teacher_final, _ = files.load_weights(out / "round-0" / "train" / "model.safetensors")
    assert not np.array_equal(teacher_final["conv2.weight"], state["conv2.weight"])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["init"], summary["freeze_until"], summary["layer_lr_decay"]) == (str(path), "conv1", 0.5)
    for k in (0, 1):
        config = json.loads((out / f"round-{k}" / "train" / "config.json").read_text())
        assert (config["init"], config["freeze_until"], config["layer_lr_decay"]) == (str(path), "conv1", 0.5)


def test_self_train_refuses_bad_init_freeze_and_decay_before_writing_anything(tmp_path, capsys, pretrained):
    import re
    from nabi import files
    path, _ = pretrained
    lab = write_labelled(tmp_path / "lab", 4, 0)
    unl = write_labelled(tmp_path / "unl", 2, 1)
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights")
    other = tmp_path / "lenet.safetensors"
    files.save_weights(other, {"lenet_only": np.zeros(3, np.float32)}, {})
    cases = [
        (["--init", str(tmp_path / "absent.safetensors")], r"--init .*absent\.safetensors"),
        (["--init", str(tmp_path / "no-run")], r"--init .*no-run.* does not exist"),
        (["--init", str(text)], r"--init .*notes\.safetensors: not a readable weight file"),
        (["--init", str(other)], r"--init .*lenet\.safetensors: none of its 1 arrays matches .*\(the teacher, "
                                 r"cifar_cnn\)"),
        (["--init", str(path), "--freeze-until", "conv2", "--student-model", "resnet20"],
         r"--freeze-until conv2: not a stage .*\(the student, resnet20\)"),
        (["--init", str(path), "--freeze-until", "fc"], r"--freeze-until fc freezes every stage .*\(the teacher"),
        (["--layer-lr-decay", "0"], r"--layer-lr-decay must be a finite number in \(0, 1\]"),
        (["--layer-lr-decay", "1.5"], r"--layer-lr-decay must be a finite number in \(0, 1\]"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert nabi_main(_argv(lab, unl, out, *extra)) == 1, extra
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err, (message, err)
        assert not out.exists(), extra                                            # nothing written
    from nabi.selfsup.selftrain import run_self_training
    from nabi.training.config import TrainConfig
    with pytest.raises(ValueError, match=r"--layer-lr-decay must be a number in \(0, 1\], got 0"):
        run_self_training(TrainConfig(data=str(lab), model="cifar_cnn", layer_lr_decay=0, out=str(tmp_path / "api")),
                          unl)
    assert not (tmp_path / "api").exists()


def test_self_train_refuses_freezing_what_init_did_not_load_naming_the_role(tmp_path, capsys):
    """A resnet20 file loads whole into the resnet20 teacher, but the deeper resnet32 student's layer1 has two
    blocks more: freezing layer1 would keep them as initialised, so it is refused naming the student."""
    import nabi
    from nabi import files, models
    lab = write_labelled(tmp_path / "lab", 4, 0)
    unl = write_labelled(tmp_path / "unl", 2, 1)
    nabi.seed(1)
    teacher = models.get("resnet20", num_classes=2)
    path = tmp_path / "resnet20.safetensors"
    files.save_weights(path, teacher.state_dict(), {"arch": teacher.arch})
    out = tmp_path / "out"
    argv = _argv(lab, unl, out, "--init", str(path), "--freeze-until", "layer1", "--student-model", "resnet32")
    argv[argv.index("--model") + 1] = "resnet20"
    assert nabi_main(argv) == 1
    err = capsys.readouterr().err
    assert "--freeze-until layer1 would freeze stage layer1 of the student (resnet32), but --init" in err, err
    assert "layer1.3." in err and "(new)" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("init", [None, "runs/ssl/backbone.safetensors"])
def test_summary_md_names_freeze_until_and_layer_lr_decay_with_or_without_init(tmp_path, init):
    from nabi.selfsup.selftrain import _write_summary
    summary = {"labelled": "lab", "unlabelled": "unl", "num_unlabelled": 4, "soft": False, "threshold": 0.5,
               "max_per_class": 3, "classes": ["a", "b"], "init": init, "freeze_until": "conv1",
               "layer_lr_decay": 0.5,
               "rounds": [{"round": 0, "model": "cifar_cnn", "role": "teacher", "test_acc": 0.5}]}
    _write_summary(tmp_path, summary)
    md = (tmp_path / "summary.md").read_text()
    assert "stages up to conv1 frozen, layer-wise learning-rate decay 0.5" in md
    assert (f"started from {init}" if init else "started from its own initialisation") in md
    summary.update(freeze_until=None, layer_lr_decay=1.0, init=None)
    _write_summary(tmp_path, summary)
    assert "started from" not in (tmp_path / "summary.md").read_text()
