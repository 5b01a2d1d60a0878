"""Data-parallel training: one run as N replica processes, on this machine or a Ray cluster.

``nabi train … --replicas N`` starts N worker processes (``executor='local'``) or N Ray actors
(``executor='ray'``). Each builds the same model from the same seed, reads the same data and runs
the same trainer; its loader yields its shard of every global batch (``DataLoader.shard``: the
global batch of ``--batch-size`` images split into N consecutive parts whose sizes differ by at
most one). The step, per replica r holding n_r of the global batch's n images:

    forward and loss on the shard (batch norm over the shard, or over all of them with
    --sync-batch-norm: ``nabi.functional.norm.sync_batch_norm_forward``)
    backward of (n_r / n) · L_r, so that Σ_r of the gradients is the gradient of the
    global batch's mean loss L = Σ_r (n_r / n) L_r
    the parameter gradients summed over the replicas (one all-reduce, in buckets)
    clipping and the optimiser's step, identical on every replica

so every replica holds the same weights after every step, and the run is the run one process
would make on the whole batch (to rounding; exactly the same arithmetic apart from the order of
the sums). A loss that couples the photos of a batch (NT-Xent, SimSiam, BYOL, batch-hard triplet)
is computed over the whole batch instead, gathered from every replica (``WholeBatchLoss``), and
each replica back-propagates its own rows' part of its gradient, unweighted.

The job a replica runs is named by its entry point (``replica_main``): ``nabi train``'s classifier
here, an embedding head (``nabi.reid.train``), pretraining (``nabi.selfsup.pretrain``) or a
self-training round (``nabi.selfsup.selftrain``) — each of those modules names its own. Batch norm's running statistics are averaged over the replicas in the same all-reduce
(with per-replica batch norm each replica's differ), so the replicas' states stay identical.
Each photo is augmented as one process would (``DataLoader``: a generator per place in the global
batch). Dropout and drop-path masks differ between replicas: each replica draws its masks from the
shared generator jumped ``rank`` times, and every replica then moves the shared generator on by
``replicas`` jumps, so a run is reproducible for a given N and a checkpoint (one generator state)
resumes it exactly. The epoch's sums (loss, correct, n) are summed over the replicas every step.

Replica 0 writes the run folder (checkpoints, metrics, weights, test.json) as a one-process run
would; the checkpoint holds nothing of N, so a run with another number of replicas continues it
(exactly the same result needs the same N: the shards' augmentation and dropout streams depend
on it). The others write nothing. A replica that dies (SIGKILL, out of memory, a lost node) makes
the others' next collective fail at once (the transport sees the closed connection), or after
``replica_timeout`` seconds when it hangs; every replica stops without finishing the step, and
the run reports which replica failed and the last checkpoint to continue from with ``--resume``.

The transport is ``torch.distributed``'s gloo backend, used only to sum NumPy buffers (``torch``
never sees the model): ``pip install "nabi[distributed]"``. The README's architecture section says
why it was chosen over MPI (``mpi4py``).
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np

EXTRA = "distributed"
BUCKET_BYTES = 25 * 2**20       # gradients are summed in buckets of this size (DDP's default)


class ReplicaError(RuntimeError):
    """A replica could not meet the others, lost them inside a step, or died."""


def require_transport():
    """``torch.distributed`` with the gloo backend, or an ImportError naming the extra to install."""
    hint = f'--replicas needs the {EXTRA} extra (torch.distributed\'s gloo backend sums the gradients between ' \
           f'the replica processes): pip install "nabi[{EXTRA}]"'
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise ImportError(hint) from e
    if not dist.is_available() or not dist.is_gloo_available():
        raise ImportError(f"{hint} (this torch {torch.__version__} was built without gloo)")
    return dist


def free_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- one replica's side --------------------------------------------------------------------------------------
class Replicas:
    """This process's place in a run of ``world`` replicas: its ``rank`` and the collectives it takes part in.

    ``address``: ``(host, port)`` where replica 0 listens for the others; ``timeout_s``: how long to wait for
    them, at the start and inside every collective. ``ReplicaError`` when they cannot be met in time.
    """

    def __init__(self, rank: int, world: int, address, timeout_s: float = 60.0, bucket_bytes: int | None = None):
        from datetime import timedelta
        dist = require_transport()
        import torch
        self.rank, self.world, self.timeout_s = int(rank), int(world), float(timeout_s)
        self.host, self.port = address[0], int(address[1])
        if bucket_bytes is None:        # NABI_REPLICA_BUCKET_BYTES: another bucket size (the tests use tiny ones)
            bucket_bytes = int(os.environ.get("NABI_REPLICA_BUCKET_BYTES", BUCKET_BYTES))
        self.bucket_bytes = int(bucket_bytes)
        self._dist, self._torch = dist, torch
        self.loader = None              # the sharded train loader (its global batch sizes weigh the shards)
        self.sync_batch_norm = False
        self.comm_seconds = 0.0         # time spent inside gradient all-reduces, for the benchmark
        self._flat = {}
        self._overlap = None
        timeout = timedelta(seconds=self.timeout_s)
        try:
            store = dist.TCPStore(self.host, self.port, self.world, is_master=self.rank == 0, timeout=timeout,
                                  wait_for_workers=False)
            dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, DistStoreError, TimeoutError …
            raise ReplicaError(
                f"replica {self.rank} of {self.world} could not meet the other replicas at {self.host}:{self.port} "
                f"within {self.timeout_s:g} s ({type(e).__name__}: {_first_line(e)}); check that every replica "
                f"can reach that address, or raise --replica-timeout") from None

    def close(self) -> None:
        try:
            self._dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - already gone
            pass

    # -- collectives ---------------------------------------------------------------------------------------
    def _lost(self, e, during):
        return ReplicaError(f"replica {self.rank} of {self.world} lost the other replicas during {during} "
                            f"({type(e).__name__}: {_first_line(e)}): another replica stopped or did not answer "
                            f"within {self.timeout_s:g} s")

    def all_reduce(self, array, during="a collective"):
        """``array`` (a NumPy array) summed over the replicas, in place; returns it."""
        a = np.ascontiguousarray(array)
        try:
            self._dist.all_reduce(self._torch.from_numpy(a))
        except Exception as e:  # noqa: BLE001
            raise self._lost(e, during) from None
        return a

    def sum_batch(self, batch: dict) -> dict:
        """The step's sums ``{"loss", "correct", "n", …}`` summed over the replicas."""
        keys = sorted(batch)
        total = self.all_reduce(np.array([float(batch[k]) for k in keys], dtype=np.float64), "the step's sums")
        return {k: (int(round(v)) if isinstance(batch[k], (int, np.integer)) else float(v))
                for k, v in zip(keys, total)}

    def gather_rows(self, a, during="gathering the batch's outputs"):
        """Every replica's ``a`` (rows × …, NumPy; the replicas' row counts may differ), as a list in rank
        order. Each replica writes its rows into its own slot of a zero array and the slots are summed, so
        the rows arrive exactly (x + 0 = x)."""
        a = np.ascontiguousarray(a)
        counts = self.all_reduce(np.eye(self.world, dtype=np.int64)[self.rank] * a.shape[0], during)
        slots = np.zeros((self.world, int(counts.max())) + a.shape[1:], a.dtype)
        slots[self.rank, :a.shape[0]] = a
        self.all_reduce(slots, during)
        return [slots[r, :int(counts[r])] for r in range(self.world)]

    def whole_batch(self, loss, layout="rows"):
        """``loss`` computed over the whole global batch on every replica (``WholeBatchLoss``)."""
        return WholeBatchLoss(loss, self, layout)

    def loss_share(self, n_local: int) -> float:
        """n_r / n: this replica's part of the global batch, the weight of its mean loss."""
        inner = self.loader
        while inner is not None and not hasattr(inner, "global_batch_size"):
            inner = getattr(inner, "loader", None)          # a view of the loader (soft targets, two views)
        n = getattr(inner, "global_batch_size", None)
        if not n:
            raise ReplicaError(f"replica {self.rank}: the training loader {type(self.loader).__name__} does not "
                               f"say how large the global batch was, so the shard's share of the loss is unknown")
        return n_local / n

    def sum_gradients(self, params, buffers=()) -> None:
        """Sum every parameter's gradient over the replicas (a missing one counts as zeros) and average the
        float ``buffers`` (``(module, name)`` pairs: batch norm's running statistics), in one all-reduce per
        dtype, in buckets of ``bucket_bytes``; each bucket is sent as soon as it is packed. With ``overlap``
        (``attach``) the buckets of the gradients the backward pass finished are already on their way: the
        rest is packed and sent, and every bucket is waited for and unpacked."""
        if self._overlap is not None:
            return self._overlap.finish(params, buffers)
        t0 = time.perf_counter()
        by_dtype = {}
        for p in params:
            by_dtype.setdefault(np.dtype(p.data.dtype), ([], []))[0].append(p)
        for module, name in buffers:
            a = getattr(module, name)
            if a.dtype.kind == "f":
                by_dtype.setdefault(np.dtype(a.dtype), ([], []))[1].append((module, name))
        for dtype, (ps, bufs) in by_dtype.items():
            sizes = [p.data.size for p in ps] + [getattr(m, n).size for m, n in bufs]
            total = int(sum(sizes))
            flat = self._flat.get(dtype)
            if flat is None or flat.size != total:
                flat = self._flat[dtype] = np.empty(total, dtype)
            per_bucket = max(1, self.bucket_bytes // dtype.itemsize)
            works, start, o = [], 0, 0
            items = [(p, None) for p in ps] + [(None, mb) for mb in bufs]
            for (p, mb), n in zip(items, sizes):
                if p is not None:
                    g = p.grad
                    if g is None:
                        flat[o:o + n] = 0
                    else:
                        flat[o:o + n] = g.reshape(-1)
                else:
                    flat[o:o + n] = getattr(*mb).reshape(-1) / self.world
                o += n
                if o - start >= per_bucket:
                    works.append(self._send(flat[start:o]))
                    start = o
            if o > start:
                works.append(self._send(flat[start:o]))
            for w in works:
                try:
                    w.wait()
                except Exception as e:  # noqa: BLE001
                    raise self._lost(e, "the gradients' all-reduce") from None
            o = 0
            for (p, mb), n in zip(items, sizes):
                if p is not None:
                    view = flat[o:o + n].reshape(p.data.shape)
                    g = p.grad
                    if g is None or g.shape != view.shape:
                        p.grad = view.copy()
                    else:
                        g[...] = view
                else:
                    getattr(*mb)[...] = flat[o:o + n].reshape(getattr(*mb).shape)
                o += n
        self.comm_seconds += time.perf_counter() - t0

    def _send(self, part):
        try:
            return self._dist.all_reduce(self._torch.from_numpy(part), async_op=True)
        except Exception as e:  # noqa: BLE001
            raise self._lost(e, "the gradients' all-reduce") from None

    # -- the model's random masks and batch norms ----------------------------------------------------------
    def attach(self, model, sync_batch_norm=False, params=None, overlap=False) -> None:
        """Make ``model``'s batch norms synchronised (``sync_batch_norm``), and remember its mask layers.
        ``overlap``: sum the gradients of ``params`` (the optimiser's) in buckets sent during the backward
        pass, as soon as the layers that own them have run their backward (``OverlappedSum``)."""
        from ..layers import DropPath, Dropout
        from ..layers.norm import _BatchNorm
        self.sync_batch_norm = bool(sync_batch_norm)
        self._overlap = OverlappedSum(self, model, params) if overlap else None
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        if sync_batch_norm:
            reduce = lambda a: self.all_reduce(np.array(a, dtype=np.float64), "synchronised batch norm")  # noqa: E731
            for m in self.norms:
                m.sync = reduce
        self.buffers = [] if sync_batch_norm else [(m, n) for m in self.norms for n in ("running_mean",
                                                                                         "running_var")]
        self.masks = [m for m in model.modules() if isinstance(m, (Dropout, DropPath))]
        self._shared = None

    def before_step(self) -> None:
        """Each mask layer draws from its shared generator jumped ``rank`` times during the step."""
        self._shared = [m.rng for m in self.masks]
        for m, g in zip(self.masks, self._shared):
            m.rng = np.random.Generator(g.bit_generator.jumped(self.rank))

    def after_step(self) -> None:
        """Every replica moves each shared generator on by ``world`` jumps (the same state everywhere)."""
        if self._shared is None:
            return
        for m, g in zip(self.masks, self._shared):
            m.rng = np.random.Generator(g.bit_generator.jumped(self.world))
        self._shared = None


class OverlappedSum:
    """The gradients' sum started during the backward pass (as DistributedDataParallel does).

    Every layer that owns trainable parameters has its ``backward`` wrapped (on the instance) so that, once
    it has run, its parameters' gradients are final for the step: they are copied into the open bucket of
    their dtype, and a bucket of ``bucket_bytes`` or more is sent at once (an asynchronous all-reduce) while
    the backward pass goes on below. ``finish`` packs what is left (parameters no layer reported, the batch
    norms' running statistics) into last buckets, waits for every bucket and writes the sums back.
    Every replica runs the same backward, so the buckets hold the same parameters in the same order
    everywhere. A layer whose backward runs twice in one step (a layer used twice) cannot be summed early:
    that is refused with a ``ReplicaError`` naming it."""

    def __init__(self, replicas, model, params):
        self.replicas = replicas
        trainable = {id(p) for p in (params if params is not None else model.parameters())}
        self.layers = []
        for name, m in model.named_modules():
            own = [p for p in m._parameters.values() if id(p) in trainable]
            if own:
                self.layers.append((name, m, own))
                object.__setattr__(m, "backward", self._reporting(name, m, own, m.backward))
        self._buffers = {}          # bucket number → its float array (reused between steps)
        self._start_step()

    def _start_step(self):
        self.done = set()           # ids of the parameters already packed this step
        self.sent = []              # (flat, [(parameter or (module, name)), …], work)
        self.open = {}              # dtype → [(item, array)]
        self.open_bytes = {}

    def _reporting(self, name, module, own, backward):
        def backward_then_report(*args, **kwargs):
            out = backward(*args, **kwargs)
            for p in own:
                if id(p) in self.done:
                    raise ReplicaError(f"replica {self.replicas.rank}: the backward of layer {name!r} ran twice "
                                       f"in one step, so its gradients cannot be summed before the step ends")
                self.done.add(id(p))
                self._add(p, p.grad)
            return out
        return backward_then_report

    def _add(self, item, array):
        dtype = np.dtype(array.dtype if array is not None else item.data.dtype)
        self.open.setdefault(dtype, []).append((item, array))
        self.open_bytes[dtype] = self.open_bytes.get(dtype, 0) + (item.data.size if array is None else array.size) \
            * dtype.itemsize
        if self.open_bytes[dtype] >= self.replicas.bucket_bytes:
            self._send(dtype)

    def _send(self, dtype):
        items = self.open.pop(dtype, [])
        self.open_bytes.pop(dtype, None)
        if not items:
            return
        sizes = [it.data.size if a is None else a.size for it, a in items]
        total = int(sum(sizes))
        number = len(self.sent)
        flat = self._buffers.get(number)
        if flat is None or flat.size != total or flat.dtype != dtype:
            flat = self._buffers[number] = np.empty(total, dtype)
        o = 0
        for (it, a), n in zip(items, sizes):
            if a is None:
                flat[o:o + n] = 0
            else:
                flat[o:o + n] = a.reshape(-1)
            o += n
        t0 = time.perf_counter()
        work = self.replicas._send(flat)
        self.replicas.comm_seconds += time.perf_counter() - t0
        self.sent.append((flat, [it for it, _ in items], sizes, work))

    def finish(self, params, buffers):
        t0 = time.perf_counter()
        for p in params:                                   # parameters no layer reported (none, usually)
            if id(p) not in self.done:
                self.done.add(id(p))
                self._add(p, p.grad)
        for dtype in list(self.open):
            self._send(dtype)
        world = self.replicas.world
        for module, name in buffers:                       # per-replica batch norm's running statistics
            a = getattr(module, name)
            if a.dtype.kind == "f":
                self.open.setdefault(np.dtype(a.dtype), []).append(((module, name), a / world))
        for dtype in list(self.open):
            self._send(dtype)
        for flat, items, sizes, work in self.sent:
            try:
                work.wait()
            except Exception as e:  # noqa: BLE001
                raise self.replicas._lost(e, "the gradients' all-reduce") from None
            o = 0
            for it, n in zip(items, sizes):
                view = flat[o:o + n]
                if isinstance(it, tuple):
                    target = getattr(*it)
                    target[...] = view.reshape(target.shape)
                else:
                    g = it.grad
                    if g is None or g.shape != it.data.shape:
                        it.grad = view.reshape(it.data.shape).copy()
                    else:
                        g[...] = view.reshape(g.shape)
                o += n
        self.replicas.comm_seconds += time.perf_counter() - t0
        self._start_step()


class WholeBatchLoss:
    """A loss whose value depends on the whole batch at once (NT-Xent's negatives, batch-hard triplet
    mining, the pair losses of SimSiam and BYOL), in a data-parallel run.

    Every replica gathers the outputs (and labels) of all replicas' shards into the global batch, in the
    order one process would hold it, computes the loss L on it — the same number on every replica — and
    hands back ∂L/∂(its own rows). Backward from those rows gives this replica's share of ∂L/∂θ, and the
    replicas' shares summed (the all-reduce) are ∂L/∂θ: the step one process takes on the whole batch.
    The updater therefore does not weigh this loss by the shard's share (``whole_batch`` is True).

    ``layout``: ``"rows"`` — the global batch is the shards one after another (P×K batches);
    ``"two_views"`` — each shard is [first views; second views] of its photos and the global batch is
    [all first views; all second views] (``nabi.selfsup.data.TwoViewBatches``), rows i and i + N a pair.
    ``correct`` (a count over the global batch) is reported by replica 0 only, so the step's sums add up.
    """

    whole_batch = True
    LAYOUTS = ("rows", "two_views")

    def __init__(self, loss, replicas, layout="rows"):
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(self.LAYOUTS)}, got {layout!r}")
        self.loss, self.replicas, self.layout = loss, replicas, layout
        self.correct = 0
        self._mine = None

    def __getattr__(self, name):                # the wrapped loss's settings (margin, temperature, …)
        if name == "loss":
            raise AttributeError(name)
        return getattr(self.loss, name)

    def _order(self, counts):
        """(index of every gathered row in the global batch, this replica's rows in it)."""
        rank = self.replicas.rank
        starts = np.concatenate([[0], np.cumsum(counts)])
        if self.layout == "rows":
            place = np.arange(starts[-1])
            return place, place[starts[rank]:starts[rank + 1]]
        if any(c % 2 for c in counts):
            raise ValueError(f"two-view batches hold an even number of rows per replica, got {list(counts)}")
        halves = np.asarray(counts) // 2
        first = np.concatenate([[0], np.cumsum(halves)])
        n = int(first[-1])
        place = np.concatenate([np.concatenate([np.arange(first[r], first[r + 1]),
                                                n + np.arange(first[r], first[r + 1])]) for r in range(len(counts))])
        return place, place[starts[rank]:starts[rank + 1]]

    def __call__(self, out, labels=None):
        outs = self.replicas.gather_rows(out)
        counts = [len(o) for o in outs]
        place, self._mine = self._order(counts)
        whole = np.empty((sum(counts),) + out.shape[1:], out.dtype)
        whole[place] = np.concatenate(outs)
        whole_labels = None
        if labels is not None:
            ls = self.replicas.gather_rows(np.asarray(labels))
            whole_labels = np.empty(sum(counts), ls[0].dtype)
            whole_labels[place] = np.concatenate(ls)
        value = self.loss(whole, whole_labels)
        self.correct = getattr(self.loss, "correct", 0) if self.replicas.rank == 0 else 0
        return value

    def backward(self, dloss=1.0):
        if self._mine is None:
            raise RuntimeError("WholeBatchLoss: backward called before the loss was computed")
        return np.ascontiguousarray(self.loss.backward(dloss)[self._mine])


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- the launcher ------------------------------------------------------------------------------------------
class ReplicatedRun:
    """What replica 0 reports of a finished run: the history, the best epoch and score, the test scores."""

    def __init__(self, summary: dict):
        self.history = summary["history"]
        self.best_epoch, self.best_acc = summary["best_epoch"], summary["best_acc"]
        self.epoch, self.iteration, self.status = summary["epoch"], summary["iteration"], summary["status"]
        self.test = summary.get("test")
        self.replicas = summary["replicas"]
        self.comm_seconds = summary.get("comm_seconds")
        self.extra = summary.get("extra", {})      # what the job's entry point returned beside its trainer
        self.init_report = self.extra.get("init_report")


def classifier_job(cfg, *, resume, log, replicas):
    """``nabi train``'s classifier as one replica: the run, then (replica 0) the best weights tested."""
    from .build import _train
    from .run import test_best_weights
    trainer, parts = _train(cfg, resume, log, replicas=replicas)
    if replicas.rank != 0:
        return trainer, {}
    return trainer, {"test": test_best_weights(trainer, parts, cfg, log=log), "init_report": trainer.init_report}


CLASSIFIER_JOB = f"{__name__}:classifier_job"


def _job_entry(name: str):
    """The job's entry point from its ``"module:function"`` name. The training that a job runs (a
    classifier, an embedding head, self-supervised pretraining) names its own entry point, so this
    module imports none of them."""
    import importlib
    module, _, function = name.partition(":")
    if not module.startswith("nabi.") or not function:
        raise ValueError(f"a replica job is a nabi function named 'nabi.module:function', got {name!r}")
    return getattr(importlib.import_module(module), function)


def replica_main(payload: dict, rank: int, send=None) -> dict | None:
    """One replica: meet the others and run the job ``payload['job']`` (``{"entry": "module:function",
    "args": {...}}``; default the classifier) as ``payload['cfg']`` says. The entry point is called as
    ``entry(cfg, resume=…, log=…, replicas=…, **args)`` and returns ``(trainer, extra)``, ``extra`` a dict
    of JSON values that replica 0 reports beside the trainer's figures.

    Returns replica 0's summary (``ReplicatedRun``'s fields), None elsewhere. ``send(kind, value)`` carries
    replica 0's log lines (``"log"``) to the launcher."""
    from .. import backend
    from .config import TrainConfig
    os.environ["NABI_REPLICA_RANK"] = str(rank)
    backend.set_default_dtype(np.dtype(payload["dtype"]))
    if payload.get("threads"):
        backend.set_num_threads(payload["threads"], required=False)
    cfg = TrainConfig.from_dict(payload["cfg"])
    if rank == 0:
        log = (lambda *a, **k: send("log", " ".join(str(x) for x in a))) if send else print
    else:
        log = lambda *a, **k: None  # noqa: E731
    replicas = Replicas(rank, cfg.replicas, payload["address"], cfg.replica_timeout)
    job = payload.get("job") or {"entry": CLASSIFIER_JOB}
    try:
        trainer, extra = _job_entry(job["entry"])(cfg, resume=payload["resume"], log=log, replicas=replicas,
                                                  **job.get("args", {}))
        if rank != 0:
            return None
        return {"history": trainer.history, "best_epoch": trainer.best_epoch, "best_acc": trainer.best_acc,
                "epoch": trainer.epoch, "iteration": trainer.iteration, "status": trainer.status,
                "test": extra.get("test"), "extra": extra, "replicas": cfg.replicas,
                "comm_seconds": replicas.comm_seconds}
    finally:
        replicas.close()


def _process_main():
    """A local replica process (``python -c …``, started by ``_launch_local``): it connects back to the
    launcher, reads its payload and rank, runs ``replica_main`` and sends back its result or its error."""
    from multiprocessing.connection import Client
    conn = Client(("127.0.0.1", int(os.environ["NABI_REPLICA_LAUNCHER"])),
                  authkey=bytes.fromhex(os.environ.pop("NABI_REPLICA_KEY")))
    rank = int(os.environ["NABI_REPLICA_RANK"])
    conn.send(rank)
    payload = conn.recv()
    try:
        result = replica_main(payload, rank, send=lambda kind, value: conn.send((kind, value)))
        conn.send(("done", result))
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, which names the replica
        try:
            conn.send(("error", {"type": type(e).__name__, "message": str(e),
                                 "lost": isinstance(e, ReplicaError) and "lost the other" in str(e),
                                 "traceback": traceback.format_exc()}))
        except Exception:  # noqa: BLE001
            pass
        code = 1
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)     # no interpreter teardown: a transport thread left behind cannot hang the exit


def _signal_name(code) -> str:
    import signal
    try:
        return signal.Signals(-code).name
    except (ValueError, TypeError):
        return f"signal {-code}"


def train_replicated(cfg, *, resume=False, log=print, job=None) -> ReplicatedRun:
    """Run ``cfg`` (``cfg.replicas`` ≥ 2) as replica processes (``cfg.executor``) and wait for them; the run
    folder must already be open (``nabi.runs.open_run_folder``). ``job``: ``{"entry": "module:function",
    "args": {...}}`` (``replica_main``; default ``nabi train``'s classifier). ``ReplicaError`` names the
    replica that failed first and the checkpoint to continue from."""
    from .. import backend
    require_transport()
    if job is not None:
        _job_entry(job["entry"])                  # a wrong name fails here, not in every replica
    payload = {"cfg": cfg.to_dict(), "resume": bool(resume), "dtype": backend.get_default_dtype().name,
               "job": job,
               "threads": max(1, backend.usable_cores() // cfg.replicas)
               if os.environ.get("NABI_REPLICA_THREADS") is None else int(os.environ["NABI_REPLICA_THREADS"])}
    log(f"{cfg.replicas} replicas ({cfg.executor}), each with about {cfg.batch_size / cfg.replicas:g} of every "
        f"{cfg.batch_size}-image batch; gradients summed by torch.distributed (gloo)")
    if cfg.executor == "ray":
        summary = _launch_on_ray(cfg, payload, log)
    else:
        summary = _launch_local(cfg, payload, log)
    return ReplicatedRun(summary)


def _failure(cfg, errors: dict, exits: dict) -> ReplicaError:
    """The error that stops the run: the first replica that failed by itself (not by losing the others)."""
    from .checkpoint import latest_checkpoint
    lines = []
    for rank in sorted(set(errors) | set(exits)):
        e = errors.get(rank)
        if e is not None and not e["lost"]:
            lines.insert(0, f"replica {rank}: {e['type']}: {e['message']}")
        elif e is None and exits.get(rank) not in (None, 0):
            code = exits[rank]
            how = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with status {code}"
            lines.insert(0, f"replica {rank} (process) {how}")
        elif e is not None:
            lines.append(f"replica {rank}: {e['message']}")
    ck = latest_checkpoint(cfg.out)
    after = (f"the last checkpoint, {ck}, is intact: continue with --resume (with any number of replicas)"
             if ck is not None else "no checkpoint was written yet: start the run again")
    return ReplicaError(f"the run of {cfg.replicas} replicas stopped: " + "; ".join(lines) + f". {after}")


def _launch_local(cfg, payload, log) -> dict:
    """The replicas as child processes of this one (``python -c``, so no script is imported again); each
    connects back through a local authenticated socket that carries its payload, log lines and result."""
    import subprocess
    import sys
    from multiprocessing.connection import Listener
    import nabi
    payload = dict(payload, address=("127.0.0.1", free_port()))
    key = os.urandom(16)
    listener = Listener(("127.0.0.1", 0), authkey=key)
    env = dict(os.environ, NABI_REPLICA_LAUNCHER=str(listener.address[1]), NABI_REPLICA_KEY=key.hex())
    home = str(Path(nabi.__file__).resolve().parents[1])       # the nabi this process runs
    env["PYTHONPATH"] = os.pathsep.join([home] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    procs, conns = [], [None] * cfg.replicas
    try:
        for rank in range(cfg.replicas):
            procs.append(subprocess.Popen([sys.executable, "-c", "from nabi.training.replicas import "
                                           "_process_main; _process_main()"],
                                          env=dict(env, NABI_REPLICA_RANK=str(rank))))
        listener._listener._socket.settimeout(cfg.replica_timeout)
        for _ in range(cfg.replicas):
            try:
                conn = listener.accept()
                rank = conn.recv()                 # the processes connect in any order
            except (OSError, EOFError) as e:
                raise ReplicaError(f"the replica processes did not start within {cfg.replica_timeout:g} s "
                                   f"({e}); see the lines above") from None
            conn.send(payload)
            conns[rank] = conn
    except BaseException:
        for p in procs:
            p.kill()
        listener.close()
        raise
    listener.close()
    return _wait_local(cfg, procs, conns, log)


def _wait_local(cfg, procs, conns, log) -> dict:
    """Relay replica 0's log lines, collect the result, and when a replica fails, give the others
    ``replica_timeout`` (and some) to notice before stopping them."""
    errors, exits, result, failed_at = {}, {}, None, None
    ranks_of = {id(c): r for r, c in enumerate(conns)}
    open_conns = list(conns)
    try:
        while len(exits) < len(procs) or open_conns:
            from multiprocessing.connection import wait
            for conn in wait(open_conns, timeout=0.05) if open_conns else []:
                rank = ranks_of[id(conn)]
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    open_conns.remove(conn)
                    continue
                if kind == "log":
                    log(value)
                elif kind == "done":
                    result = value if rank == 0 else result
                elif kind == "error":
                    errors[rank] = value
            for rank, p in enumerate(procs):
                if rank not in exits and p.poll() is not None:
                    exits[rank] = p.returncode
                    if p.returncode != 0 and failed_at is None:
                        failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > cfg.replica_timeout + 10:
                for rank, p in enumerate(procs):       # a replica that did not notice: stop it
                    if rank not in exits:
                        p.kill()
            if not open_conns and len(exits) < len(procs):
                time.sleep(0.05)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except Exception:  # noqa: BLE001
                p.kill()
        raise
    finally:
        for c in conns:
            c.close()
    if any(code != 0 for code in exits.values()) or result is None:
        raise _failure(cfg, errors, exits)
    return result


class _RayReplica:
    """A replica as a Ray actor."""

    def address(self):
        import ray
        host = ray.util.get_node_ip_address()
        return host, free_port(host)

    def run(self, payload, rank):
        try:
            return replica_main(payload, rank, send=None)
        except ReplicaError as e:
            raise ReplicaError(str(e)) from None


def _launch_on_ray(cfg, payload, log) -> dict:
    from .ray_cluster import _connect, _failure_text, require_ray
    ray = require_ray()
    started = _connect(ray, cfg.address, log)
    actors = []
    try:
        actor = ray.remote(num_cpus=payload["threads"])(_RayReplica)
        actors = [actor.options(scheduling_strategy="SPREAD").remote() for _ in range(cfg.replicas)]
        address = ray.get(actors[0].address.remote(), timeout=cfg.replica_timeout)
        payload = dict(payload, address=tuple(address))
        refs = {a.run.remote(payload, rank): rank for rank, a in enumerate(actors)}
        result, errors, exits = None, {}, {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                rank = refs[ref]
                try:
                    value = ray.get(ref)
                    exits[rank] = 0
                    if rank == 0:
                        result = value
                except Exception as e:  # noqa: BLE001 - the replica's error, or its actor's death
                    exc, text = _failure_text(e)
                    errors[rank] = {"type": type(exc).__name__, "message": text,
                                    "lost": isinstance(exc, ReplicaError) and "lost the other" in str(exc)}
                    exits[rank] = 1
        if errors or result is None:
            raise _failure(cfg, errors, exits)
        return result
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        if started:
            ray.shutdown()
