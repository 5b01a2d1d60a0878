"""Data-parallel runs (``nabi train --replicas N``): real replica processes summing their gradients through
torch.distributed (gloo), compared with one process training on the whole batch."""
import json
import socket
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from nabi import backend, files
from nabi import data as D
from nabi.training import config as C

torch = pytest.importorskip("torch")

# Two replicas of lenet5 on the embedded MNIST sample: 15-image batches split 8 + 7, so the shards' unequal weights count.
BASE = dict(data="embedded:mnist5k", model="lenet5", batch_size=15, iterations=6, epochs=1, optimizer="sgd",
            lr=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine", checkpoint_every=2, progress=False,
            test_ratio=0.05, val_ratio=0.05, replica_timeout=30.0)


def _train(out, **settings):
    from nabi.training.run import train
    cfg = C.TrainConfig(**{**BASE, **settings, "out": str(out)})
    with backend.default_dtype(np.float64):
        return train(cfg, log=lambda *a, **k: None)


def _weights(run):
    return files.load_weights(run / "model.safetensors")[0]


def _assert_same_weights(a, b, rtol, atol=0.0):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """An uninterrupted float64 run of two replicas (the reference of the tests below)."""
    out = tmp_path_factory.mktemp("replicas") / "two"
    finished = _train(out, replicas=2)
    return out, finished


def test_two_replicas_train_the_weights_one_process_trains_on_the_whole_batch(two_replicas, tmp_path):
    """float64: the same weights to rounding (only the order of the gradient sums differs), the same epoch
    figures, and the run folder records the replicas."""
    out, finished = two_replicas
    one = _train(tmp_path / "one")
    _assert_same_weights(_weights(out), _weights(tmp_path / "one"), rtol=1e-10, atol=1e-13)
    a, b = finished.trainer.history[-1], one.trainer.history[-1]
    assert a["iteration"] == b["iteration"] == 6
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-10)
    assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]
    recorded = json.loads((out / "config.json").read_text())
    flat = json.dumps(recorded)
    assert '"replicas": 2' in flat and "7 or 8 of every 15 images" in flat
    assert finished.trainer.replicas == 2 and finished.test is not None and (out / "test.json").is_file()
    assert '"replicas": 1' in json.dumps(json.loads((tmp_path / "one" / "config.json").read_text()))


@pytest.mark.slow
def test_float32_replicas_match_one_process_within_a_stated_tolerance(tmp_path):
    """float32: the sums in another order drift by rounding; after 4 steps every weight is within 1e-5 of one
    process's (relative to the weight's scale)."""
    from nabi.training.run import train
    settings = {**BASE, "iterations": 4, "checkpoint_every": None}
    for name, n in (("two", 2), ("one", 1)):
        train(C.TrainConfig(**settings, replicas=n, out=str(tmp_path / name)), log=lambda *a, **k: None)
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5 * max(1.0, float(np.abs(b[k]).max())), err_msg=k)


def test_a_killed_replica_stops_the_run_and_resume_equals_the_uninterrupted_run(two_replicas, tmp_path,
                                                                                monkeypatch):
    """SIGKILL of replica 1 after its 5th step: replica 0 stops inside the next step's all-reduce, the error
    names replica 1 and the checkpoint to continue from; --resume with 2 replicas gives the uninterrupted run's
    weights bit for bit, and the checkpoint continued by one process gives them to rounding."""
    from nabi.training.replicas import ReplicaError
    from nabi.training.run import train
    ref, _ = two_replicas
    out = tmp_path / "killed"
    monkeypatch.setenv("NABI_FAULT", "step:5@1")
    t0 = time.monotonic()
    with pytest.raises(ReplicaError) as e:
        _train(out, replicas=2)
    assert time.monotonic() - t0 < 60
    message = str(e.value)
    assert "replica 1 (process) was killed by SIGKILL" in message
    assert "ckpt-000000004" in message and "--resume" in message
    monkeypatch.delenv("NABI_FAULT")
    other_n = tmp_path / "resumed-by-one"
    import shutil
    shutil.copytree(out, other_n)
    cfg = C.TrainConfig(**{**BASE, "out": str(out), "replicas": 2})
    with backend.default_dtype(np.float64):
        train(cfg, resume=True, log=lambda *a, **k: None)
    reference = _weights(ref)
    resumed = _weights(out)
    for k in reference:
        assert np.array_equal(reference[k], resumed[k]), k
    with backend.default_dtype(np.float64):
        train(replace(cfg, out=str(other_n), replicas=1), resume=True, log=lambda *a, **k: None)
    _assert_same_weights(_weights(other_n), reference, rtol=1e-10, atol=1e-13)


@pytest.mark.slow
def test_synchronised_batch_norm_replicas_train_as_one_process(tmp_path):
    """resnet20 (batch norm everywhere) with --sync-batch-norm: two replicas make one process's run on the whole
    batch, running statistics included (float64, to rounding)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(30):
            pixels = rng.integers(0, 256, (8, 8, 3)) // (2 if c == "a" else 1)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "photos" / c / f"{i}.png")
    settings = dict(data=str(tmp_path / "photos"), model="resnet20", image_size=8, batch_size=12, iterations=3, checkpoint_every=None,
                    momentum=0.0, weight_decay=0.0, schedule="constant")
    _train(tmp_path / "two", replicas=2, sync_batch_norm=True, **settings)
    _train(tmp_path / "one", **settings)
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert any("running_var" in k for k in a)
    _assert_same_weights(a, b, rtol=1e-9, atol=1e-12)


# -- the sharded loader ---------------------------------------------------------------------------------------
def test_shards_of_a_batch_are_the_whole_batch_and_the_state_is_the_unsharded_loaders():
    x = np.arange(23, dtype=np.float32).reshape(23, 1, 1, 1)
    ds = D.ArrayDataset(x, np.arange(23) % 3, classes=["a", "b", "c"])
    whole = list(D.DataLoader(ds, batch_size=5, shuffle=True, seed=3))
    shards = [list(D.DataLoader(ds, batch_size=5, shuffle=True, seed=3).shard(r, 3)) for r in range(3)]
    for b, (xb, _) in enumerate(whole):
        joined = np.concatenate([shards[r][b][0] for r in range(3)])
        assert np.array_equal(joined, xb)
    loader = D.DataLoader(ds, batch_size=5, shuffle=True, seed=3).shard(1, 2)
    it = iter(loader)
    next(it)
    assert loader.global_batch_size == 5
    assert loader.state_dict() == {**D.DataLoader(ds, batch_size=5, shuffle=True, seed=3).state_dict(), "batch": 1}
    with pytest.raises(ValueError, match="rank must be an int in"):
        loader.shard(2, 2)


# -- synchronised batch norm: its backward ---------------------------------------------------------------------
class _ThreadGroup:
    """Replicas as threads of this process: ``reduce(rank, a)`` returns Σ a over the ranks, once all gave theirs."""

    def __init__(self, n):
        self.n, self.parts, self.barrier = n, [None] * n, threading.Barrier(n)

    def reduce(self, rank, a):
        self.parts[rank] = np.array(a, dtype=np.float64)
        self.barrier.wait()
        total = np.sum(self.parts, axis=0)
        self.barrier.wait()
        return total


def _sync_bn_run(shards, gamma, beta, upstream):
    """Outputs, input gradients and (summed) dγ, dβ of synchronised batch norm over ``shards``, one thread each."""
    from nabi.layers import BatchNorm2d
    group = _ThreadGroup(len(shards))
    out = [None] * len(shards)

    def replica(r):
        bn = BatchNorm2d(gamma.size)
        bn.weight.data[...], bn.bias.data[...] = gamma, beta
        bn.sync = lambda a: group.reduce(r, a)
        y = bn(shards[r])
        dx = bn.backward(upstream[r])
        out[r] = (y, dx, bn.weight.grad.copy(), bn.bias.grad.copy(), bn.running_mean.copy(), bn.running_var.copy())
    threads = [threading.Thread(target=replica, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_synchronised_batch_norm_backward_matches_finite_differences_in_float64():
    """f(x) = Σ_r ⟨g_r, SyncBN(x)_r⟩ with random g: the analytic ∂f/∂x of every shard, ∂f/∂γ and ∂f/∂β match
    central differences of the whole forward (both replicas recomputing their statistics each time)."""
    rng = np.random.default_rng(0)
    with backend.default_dtype(np.float64):
        shards = [rng.standard_normal((3, 2, 2, 3)), rng.standard_normal((2, 2, 2, 3)) * 2 + 1]
        gamma, beta = rng.standard_normal(2), rng.standard_normal(2)
        g = [rng.standard_normal(s.shape) for s in shards]

        def f(xs, gm, bt):
            return sum(float((o[0] * gr).sum()) for o, gr in zip(_sync_bn_run(xs, gm, bt, g), g))
        got = _sync_bn_run(shards, gamma, beta, g)
        h = 1e-6
        for r, s in enumerate(shards):
            num = np.zeros_like(s)
            for i in np.ndindex(s.shape):
                plus = [a.copy() for a in shards]
                minus = [a.copy() for a in shards]
                plus[r][i] += h
                minus[r][i] -= h
                num[i] = (f(plus, gamma, beta) - f(minus, gamma, beta)) / (2 * h)
            np.testing.assert_allclose(got[r][1], num, rtol=1e-6, atol=1e-8)
        dgamma = sum(o[2] for o in got)
        dbeta = sum(o[3] for o in got)
        for c in range(2):
            e = np.eye(2)[c] * h
            np.testing.assert_allclose(dgamma[c], (f(shards, gamma + e, beta) - f(shards, gamma - e, beta)) / (2 * h),
                                       rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(dbeta[c], (f(shards, gamma, beta + e) - f(shards, gamma, beta - e)) / (2 * h),
                                       rtol=1e-6, atol=1e-8)


def test_synchronised_batch_norm_equals_pytorch_batch_norm_on_the_whole_batch():
    """The same inputs and weights in PyTorch (CPU, float64): torch.nn.functional.batch_norm over the shards
    together gives each shard's output and input gradient, γ's and β's gradients (the replicas' sums) and the
    running statistics."""
    rng = np.random.default_rng(1)
    with backend.default_dtype(np.float64):
        shards = [rng.standard_normal((4, 3, 5, 5)), rng.standard_normal((3, 3, 5, 5)) * 3 - 1]
        gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
        g = [rng.standard_normal(s.shape) for s in shards]
        got = _sync_bn_run(shards, gamma, beta, g)
    x = torch.tensor(np.concatenate(shards), requires_grad=True)
    w, b = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = torch.nn.functional.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    y.backward(torch.tensor(np.concatenate(g)))
    np.testing.assert_allclose(np.concatenate([o[0] for o in got]), y.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([o[1] for o in got]), x.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sum(o[2] for o in got), w.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(sum(o[3] for o in got), b.grad.numpy(), rtol=1e-10)
    for o in got:
        np.testing.assert_allclose(o[4], rm.numpy(), rtol=1e-10)
        np.testing.assert_allclose(o[5], rv.numpy(), rtol=1e-10)


# -- faults and refusals -------------------------------------------------------------------------------------
def test_a_replica_that_cannot_reach_the_others_stops_within_seconds_naming_the_address():
    from nabi.training.replicas import ReplicaError, Replicas
    with socket.socket() as s:           # a port where nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ReplicaError, match=rf"replica 1 of 2 could not meet the other replicas at 127\.0\.0\.1:{port} "
                                           r"within 2 s"):
        Replicas(1, 2, ("127.0.0.1", port), timeout_s=2)
    assert time.monotonic() - t0 < 15


def test_without_the_transport_the_error_names_the_extra(monkeypatch):
    import sys
    from nabi.training.replicas import require_transport
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(ImportError, match=r'pip install "nabi\[distributed\]"'):
        require_transport()


@pytest.mark.parametrize("settings, message", [
    ({"replicas": 2, "fused_sgd": True, "optimizer": "sgd", "momentum": 0.0},
     "--replicas 2 sums the replicas' gradients .* cannot be combined with --fused-sgd"),
    ({"replicas": 2, "precision": "float16"}, "cannot be combined with --precision float16"),
    ({"sync_batch_norm": True}, "--sync-batch-norm only applies to a run of --replicas 2 or more"),
    ({"replicas": 2, "address": "10.0.0.1:6379"}, "--address 10.0.0.1:6379 needs --executor ray"),
    ({"replicas": 0}, "--replicas"),
])
def test_settings_a_replicated_run_cannot_take_are_refused_naming_the_flag(settings, message):
    with pytest.raises(C.BadArgument, match=message):
        C.check(C.TrainConfig(**settings))


def test_a_batch_that_would_leave_a_replica_without_an_image_is_refused(tmp_path):
    from nabi.training.build import shard_train_loader
    ds = D.ArrayDataset(np.zeros((21, 1, 2, 2), np.float32), np.arange(21) % 2, classes=["a", "b"])
    with pytest.raises(ValueError, match="a batch of 1 image"):
        shard_train_loader(D.DataLoader(ds, batch_size=10), 0, 2)
    shard_train_loader(D.DataLoader(ds, batch_size=10, drop_last=True), 0, 2)


def test_gradients_summed_during_the_backward_pass_train_the_same_weights(two_replicas, tmp_path, monkeypatch):
    """``--overlap-sum`` with 2 KB buckets: lenet5's gradients go out in several buckets while its backward
    pass runs, and the run trains the weights of the replicas that sum after the backward pass."""
    monkeypatch.setenv("NABI_REPLICA_BUCKET_BYTES", "2048")
    _train(tmp_path / "overlap", replicas=2, overlap_sum=True)
    _assert_same_weights(_weights(tmp_path / "overlap"), _weights(two_replicas[0]), rtol=0, atol=0)


def test_a_layer_run_twice_in_one_step_is_refused_by_the_overlapped_sum():
    from nabi.layers import Linear, Sequential
    from nabi.training.replicas import OverlappedSum, ReplicaError

    class One:
        rank, world, bucket_bytes = 0, 1, 1 << 20
    layer = Linear(3, 2)
    model = Sequential(layer)
    overlap = OverlappedSum(One(), model, None)
    x = np.ones((4, 3), np.float32)
    model.backward(np.ones_like(model(x)))
    with pytest.raises(ReplicaError, match="the backward of layer '0' ran twice in one step"):
        model.backward(np.ones_like(model(x)))
    assert len(overlap.layers) == 1


def _quiet(*a, **k):
    pass


def _pretrain(out, photos, method, **settings):
    from nabi.selfsup.pretrain import run_pretraining
    cfg = C.TrainConfig(data=str(photos), model="cifar_cnn", batch_size=7, iterations=3, epochs=1,
                        optimizer="sgd", lr=0.05, momentum=0.9, progress=False, val_ratio=0.0, test_ratio=0.0,
                        seed=3, replica_timeout=30.0, out=str(out), **settings)
    with backend.default_dtype(np.float64):
        return run_pretraining(cfg, method=method, projection_dim=8, temperature=0.3, log=_quiet)


@pytest.mark.parametrize("method", ["simclr", pytest.param("byol", marks=pytest.mark.slow),
                                    pytest.param("simsiam", marks=pytest.mark.slow)])
def test_pretraining_replicas_train_what_one_process_trains_on_the_whole_batch(tmp_path, method):
    """``nabi pretrain --replicas 2``: 7 photos a batch, split 4 + 3, each replica augmenting its photos as
    one process would; the two-view loss is computed over the whole gathered batch (NT-Xent's negatives
    come from both replicas), so float64 weights equal one process's to rounding. SimSiam's and BYOL's
    heads hold batch norms: synchronised, as one process normalises the whole batch."""
    from reid_synth import write_photos
    photos = write_photos(tmp_path / "photos", range(5), 3)
    two, path = _pretrain(tmp_path / "two", photos, method, replicas=2, sync_batch_norm=method != "simclr")
    one, _ = _pretrain(tmp_path / "one", photos, method)
    assert two.replicas == 2 and path == tmp_path / "two" / "backbone.safetensors" and path.is_file()
    _assert_same_weights(_weights(tmp_path / "two"), _weights(tmp_path / "one"), rtol=1e-9, atol=1e-12)
    a, b = two.history[-1], one.history[-1]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9) and a["train_acc"] == b["train_acc"]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["replicas"] == 2


@pytest.mark.parametrize("head", ["triplet", pytest.param("arcface", marks=pytest.mark.slow)])
def test_embedding_replicas_train_what_one_process_trains_on_the_whole_batch(tmp_path, head):
    """``nabi train --head … --replicas 2 --sync-batch-norm``: each replica trains on half of every P×K batch;
    batch-hard triplet mining runs over the whole batch gathered from both (ArcFace is per photo), so the
    float64 weights equal one process's to rounding, and the run's validation and calibration follow."""
    from nabi.reid.train import train_embedding
    from reid_synth import write_photos
    write_photos(tmp_path / "photos", range(8), 4)
    runs = {}
    for name, n in (("two", 2), ("one", 1)):
        cfg = C.TrainConfig(data=str(tmp_path / "photos"), model="cifar_cnn", batch_size=8,
                            iterations=3, epochs=1, optimizer="sgd", lr=0.05, momentum=0.9, progress=False,
                            val_ratio=0.25, seed=1, replica_timeout=30.0, out=str(tmp_path / name), replicas=n,
                            sync_batch_norm=n > 1)
        with backend.default_dtype(np.float64):
            runs[name] = train_embedding(cfg, head=head, embedding_dim=8, k=2, log=_quiet)
    _assert_same_weights(_weights(tmp_path / "two"), _weights(tmp_path / "one"), rtol=1e-9, atol=1e-12)
    a, b = runs["two"].trainer.history[-1], runs["one"].trainer.history[-1]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9) and a["val_acc"] == b["val_acc"]
    assert runs["two"].info["validation_individuals"] == runs["one"].info["validation_individuals"]
    assert runs["two"].trainer.replicas == 2


def test_a_whole_batch_loss_puts_every_replicas_rows_where_one_process_holds_them():
    """The layouts of ``WholeBatchLoss``: P×K shards one after another; two-view shards [v1; v2] of each
    replica's photos interleaved into [all v1; all v2]."""
    from nabi.training.replicas import WholeBatchLoss

    class Rank:
        def __init__(self, rank, world):
            self.rank, self.world = rank, world
    for counts in ([4, 3], [3, 3, 2]):
        rows = WholeBatchLoss(None, Rank(0, len(counts)), "rows")
        place, mine = rows._order(counts)
        np.testing.assert_array_equal(place, np.arange(sum(counts)))
    photos = [2, 1, 3]                           # photos per replica; each holds 2 × as many views
    views = WholeBatchLoss(None, Rank(1, 3), "two_views")
    place, mine = views._order([2 * p for p in photos])
    # replica 0: photos 0, 1; replica 1: photo 2; replica 2: photos 3, 4, 5 (6 photos, 12 views)
    np.testing.assert_array_equal(place, [0, 1, 6, 7, 2, 8, 3, 4, 5, 9, 10, 11])
    np.testing.assert_array_equal(mine, [2, 8])
    with pytest.raises(ValueError, match="layout must be one of rows, two_views"):
        WholeBatchLoss(None, Rank(0, 2), "columns")


@pytest.mark.slow
def test_replicas_as_ray_actors_train_what_replica_processes_train(two_replicas, tmp_path):
    """``--executor ray``: the replicas are Ray actors on a local Ray instance; the run is the same run."""
    ray = pytest.importorskip("ray")
    try:
        finished = _train(tmp_path / "ray", replicas=2, executor="ray")
    finally:
        ray.shutdown()
    _assert_same_weights(_weights(tmp_path / "ray"), _weights(two_replicas[0]), rtol=0, atol=0)
    config = json.loads((tmp_path / "ray" / "config.json").read_text())
    assert config["replicas"] == 2 and config["executor"] == "ray"
    assert finished.trainer.iteration == BASE["iterations"]


@pytest.mark.slow
def test_replicas_on_two_ray_nodes_train_what_one_machine_trains(two_replicas, tmp_path):
    """Two Ray nodes of one CPU each on this machine (Ray's own multi-node test cluster), one replica on each,
    reached through ``--address``: the same weights as two replica processes."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        _train(tmp_path / "nodes", replicas=2, executor="ray", address=cluster.address)
    finally:
        import ray
        ray.shutdown()
        cluster.shutdown()
    _assert_same_weights(_weights(tmp_path / "nodes"), _weights(two_replicas[0]), rtol=0, atol=0)


@pytest.mark.slow
def test_self_training_replicas_train_the_teacher_and_students_one_process_trains(tmp_path):
    """``nabi self-train --replicas 2``: round 0's teacher and round 1's student (soft pseudo-labels) each
    trained by two replicas; float64 weights equal one process's, and so the pseudo-labels and the summary."""
    from nabi.selfsup.selftrain import run_self_training
    from test_selfsup_selftrain import write_labelled
    lab, unl = write_labelled(tmp_path / "lab", 8, 0), write_labelled(tmp_path / "unl", 4, 1)
    summaries = {}
    for name, n in (("two", 2), ("one", 1)):
        cfg = C.TrainConfig(data=str(lab), model="cifar_cnn", epochs=1, batch_size=5, optimizer="sgd", lr=0.05,
                            val_ratio=0.25, test_ratio=0.25, seed=3, progress=False, replicas=n,
                            replica_timeout=30.0, out=str(tmp_path / name))
        with backend.default_dtype(np.float64):
            summaries[name] = run_self_training(cfg, str(unl), rounds=1, soft=True, threshold=0.5, log=_quiet)
    for run in ("round-0/train", "round-1/train"):
        _assert_same_weights(_weights(tmp_path / "two" / run), _weights(tmp_path / "one" / run), rtol=1e-9,
                             atol=1e-12)
    two, one = summaries["two"]["rounds"], summaries["one"]["rounds"]
    assert [r["test_acc"] for r in two] == [r["test_acc"] for r in one]
    assert two[1]["num_pseudo_labelled"] == one[1]["num_pseudo_labelled"] > 0 and two[1]["replicas"] == 2
    assert json.loads((tmp_path / "two" / "round-0" / "train" / "config.json").read_text())["replicas"] == 2
