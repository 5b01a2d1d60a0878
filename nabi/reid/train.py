"""Train an identity embedding (``nabi train DATA --head arcface --embedding-dim 256``).

DATA has one folder per individual (many individuals, few photos each), and optionally ``background/``
(photos of empty scenes, or sub-folders ``background/<kind>/`` that train as one class each). Individuals are split, not
photos: a ``val_ratio`` fraction of the individuals (at least one) is held out of training entirely.
The network is ``embedding_net`` (the ``--model`` zoo backbone without its classifier, the BN-neck,
and the head's cosine classifier over the training individuals), trained on P×K batches (P
individuals × K photos) with the head's loss:

    arcface, subcenter_arcface   ArcFaceLoss(scale, margin) on the (sub-centre) cosines
    cosface                      CosFaceLoss(scale, margin)
    triplet                      TripletLoss(margin), batch-hard, on the embeddings

Validation after each epoch is retrieval on the held-out individuals: each one's photos are split
in two, the first half enrolled as a gallery (embedded with the current weights), the second half
queried against it (a file repeated byte for byte is kept once, so no query meets its own copy).
The trainer's ``val_acc`` is then rank-1 identification accuracy of these
never-trained-on individuals (``val_top5`` rank-5, with more than five training individuals; both also
written as ``val_rank1`` and ``val_rank5`` in ``metrics.jsonl``) and
``val_loss`` the cross-entropy of the scaled query-to-individual similarities; the best weights are
those with the best rank-1. ``train_acc`` is the arg-max accuracy of the cosine classifier over the
training individuals (not meaningful for ``triplet``, whose training output is the embedding).
The standard ``Trainer`` drives all this: the network returns what the loss takes and the loss returns
the gradient of its input; one extension (``RetrievalColumns``) names the retrieval figures in the rows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import backend
from ..layers import ArcFaceLoss, CosFaceLoss, CrossEntropyLoss, TripletLoss
from ..training.extensions import Extension
from .metrics import leave_individuals_out

DEFAULT_MARGIN = {"arcface": 0.5, "subcenter_arcface": 0.5, "cosface": 0.35, "triplet": 0.3}


def make_loss(head, margin=None, scale=30.0):
    m = DEFAULT_MARGIN[head] if margin is None else float(margin)
    if head in ("arcface", "subcenter_arcface"):
        return ArcFaceLoss(scale=scale, margin=m)
    if head == "cosface":
        return CosFaceLoss(scale=scale, margin=m)
    if head == "triplet":
        return TripletLoss(margin=m)
    raise ValueError(f"--head must be one of softmax, arcface, subcenter_arcface, cosface, triplet; got {head!r}")


class EmbeddingObjective:
    """The head's loss in training; during retrieval validation (a gallery set on the network) the
    cross-entropy of ``scale`` × the query-to-individual similarities."""

    def __init__(self, net, loss, scale=30.0):
        self.net, self.loss, self.scale = net, loss, float(scale)
        self._val = CrossEntropyLoss()
        self._last = None

    @property
    def whole_batch(self) -> bool:
        """True when the training loss is computed over every replica's shard at once
        (``nabi.training.replicas.WholeBatchLoss``: batch-hard mining in a data-parallel run)."""
        return getattr(self.loss, "whole_batch", False)

    def __call__(self, out, labels):
        if getattr(self.net, "_gallery", None) is not None:
            self._last = self._val
            return self._val(out * self.scale, labels)
        self._last = self.loss
        return self.loss(out, labels)

    def backward(self, dloss=1.0):
        if self._last is self._val:
            return self._val.backward(dloss) * self.scale
        return self.loss.backward(dloss)


class RetrievalValidation:
    """Batches of query photos for the trainer's evaluation; before the first it embeds the gallery
    photos with the network's current weights and sets them on the network (``set_gallery``)."""

    def __init__(self, net, gallery_loader, query_loader, num_ids):
        self.net, self.gallery_loader, self.query_loader = net, gallery_loader, query_loader
        self.num_ids = int(num_ids)

    def __len__(self):
        return len(self.query_loader)

    def __iter__(self):
        was_training = self.net.training
        self.net.eval()
        embs, labels = [], []
        for x, y in self.gallery_loader:
            embs.append(self.net.embed(x))
            labels.append(y)
        xp = backend.get_array_module(embs[0])
        self.net.set_gallery(xp.concatenate(embs), xp.concatenate(labels), self.num_ids)
        self.net.train(was_training)
        try:
            yield from self.query_loader
        finally:
            self.net.clear_gallery()


class RetrievalColumns(Extension):
    """A trainer extension: each metrics row also names the retrieval figures, ``val_rank1`` (= ``val_acc``)
    and ``val_rank5`` (= ``val_top5``, when reported)."""

    name = "retrieval_columns"
    priority = 650                       # after validation and the best model, before the metrics file

    def __call__(self, trainer):
        row = trainer.history[-1]
        if "val_acc" in row:
            row["val_rank1"] = row["val_acc"]
            if "val_top5" in row:
                row["val_rank5"] = row["val_top5"]


MIN_HELD_OUT = 2
"""Individuals retrieval validation holds out at least: rank-1 among one held-out individual is always 1.0."""


def hold_out_individuals(data, individuals, val_ratio, seed=0, log=print):
    """``(training individuals, held-out individuals)`` for retrieval validation: ``val_ratio`` of the
    individuals (background folders always train), but never one alone — each query would then match its
    own individual, rank-1 would be 1.0 every epoch and the "best" epoch the first. So at least
    ``MIN_HELD_OUT`` are held out (a note says so when the ratio gave fewer), and with fewer than
    ``2 + MIN_HELD_OUT`` individuals (two must train) the run trains on all of them without validation,
    with a warning: its final weights are the run's."""
    from ..data.background import is_background
    if val_ratio <= 0:
        return list(individuals), []
    background = [n for n in individuals if is_background(n)]
    pool = [n for n in individuals if n not in background]
    if len(pool) < 2 + MIN_HELD_OUT:
        log(f"warning: {data} has {len(pool)} individuals, too few to validate on held-out ones (that needs "
            f"{2 + MIN_HELD_OUT}: two to train on, {MIN_HELD_OUT} to hold out; rank-1 among one held-out "
            f"individual is always 1.0, so every epoch would look best). Training on all {len(pool)} without "
            f"validation: the final weights are the run's (--val-ratio 0 says so without this warning)")
        return list(individuals), []
    asked = int(round(val_ratio * len(pool)))
    train_ids, val_ids = leave_individuals_out(individuals, val_ratio, seed, keep=background, at_least=MIN_HELD_OUT)
    if asked < MIN_HELD_OUT:
        log(f"note: holding out {len(val_ids)} of the {len(pool)} individuals for validation, not {max(asked, 1)} "
            f"(--val-ratio {val_ratio:g}): rank-1 among one held-out individual is always 1.0")
    return train_ids, val_ids


def drop_repeated_files(folder):
    """Leave out of an ``ImageFolder`` every file whose bytes (SHA-256) already appeared: a copy on both the
    gallery and the query side would be a free match. Returns the number left out."""
    from ..files.digest import file_sha256
    seen, kept = set(), []
    for path, label in folder.samples:
        h = file_sha256(path)
        if h not in seen:
            seen.add(h)
            kept.append((path, label))
    dropped = len(folder.samples) - len(kept)
    folder.samples = kept
    return dropped


def split_gallery_queries(targets, seed=0, paths=None, encounters="photo", class_dirs=None):
    """Per individual, the first half of its photos (shuffled, seeded; at least one) as gallery and the
    rest as queries: ``(gallery indices, query indices)``. With ``paths`` and an ``encounters`` rule other
    than ``photo``, half of each individual's *encounters* instead (``nabi.data.encounters``), so no query
    meets a photo taken with it."""
    targets = np.asarray(targets)
    if encounters != "photo" and paths is not None:
        from ..data.encounters import split_photos
        gal, qry = split_photos(paths, targets, (0.5, 0.5), seed, encounters, class_dirs)
        return gal, qry
    rng = np.random.default_rng(seed)
    gal, qry = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.nonzero(targets == c)[0])
        half = max(1, len(idx) // 2)
        gal.extend(idx[:half])
        qry.extend(idx[half:])
    return np.sort(np.asarray(gal, np.int64)), np.sort(np.asarray(qry, np.int64))


def run_embedding_training(cfg, head="arcface", embedding_dim=128, margin=None, scale=30.0, k=4,
                           subcenters=3, resume=False, log=print, replicas=None):
    """Train as ``cfg`` (a ``TrainConfig``; ``cfg.model`` is the backbone) says with an embedding head.
    Writes the run folder; returns ``(trainer, info)`` with the individuals used for training and validation.
    ``replicas``: this process's place in a data-parallel run (``nabi.training.replicas``): each replica
    trains on its part of every P×K batch (the head's loss per photo weighed by the shard's share; the
    batch-hard triplet loss mined over the whole batch, gathered from every replica), and only replica 0
    writes the run folder."""
    from .. import data as D
    from ..data.pk_sampler import PKDataLoader
    from ..data.prepare import (Cached, Transformed, augmentation, eval_transforms, folder_classes,
                                normalization_spec)
    from ..models.registry import model_input_size, set_input_size
    from ..runs import model_metadata, resolved_config, write_config
    from ..training.build import build_model, build_trainer
    from ..training.trainer import Trainer
    from ..training.updater import skip_input_gradient

    backend.check_device(cfg.device)
    if cfg.data.startswith("embedded:"):
        raise ValueError("an embedding head trains on a folder with one sub-folder per individual, "
                         f"not {cfg.data}")
    out = Path(cfg.out)
    first = replicas is None or replicas.rank == 0          # the process that writes the run folder
    if first:
        Trainer._check_writable(out)
    individuals = folder_classes(cfg.data, cfg.exclude)
    train_ids, val_ids = hold_out_individuals(cfg.data, individuals, cfg.val_ratio, cfg.seed, log)
    if len(train_ids) < 2:
        raise ValueError(f"{cfg.data}: need at least two individuals to train on, found {train_ids}")
    k = int(k)
    p = cfg.batch_size // k
    if p < 2:
        raise ValueError(f"--batch-size {cfg.batch_size} holds fewer than two individuals of K = {k} photos; "
                         f"give at least {2 * k}")
    model_args = {"backbone": cfg.model, "embedding_dim": int(embedding_dim), "head": head,
                  "subcenters": int(subcenters), "backbone_args": dict(cfg.model_args)}
    exclude = tuple(cfg.exclude) + tuple(val_ids)
    train_classes = D.ImageFolder(cfg.data, exclude=exclude, background_kinds=True).classes   # listing only
    model = build_model("embedding_net", len(train_classes), model_args, seed=cfg.seed)
    C, H, W = model_input_size(model)
    if cfg.image_size and (cfg.image_size, cfg.image_size) != (H, W):
        H = W = set_input_size(model, cfg.image_size)
    init_report = None
    if getattr(cfg, "init", None):        # e.g. a self-supervised backbone: its names are the backbone's
        from ..training.init_from import format_report, load_matching
        init_report = load_matching(model.backbone, cfg.init)
        log(format_report(init_report))
    if getattr(cfg, "freeze_until", None) is not None:     # refused before the photos are read
        from ..training.fine_tune import check_frozen_were_loaded, frozen_stages
        frozen_stages(model, cfg.freeze_until)
        if init_report is not None:
            check_frozen_were_loaded(model, cfg.freeze_until, init_report, prefix="backbone.")
    channels = cfg.channels or C
    kw = dict(image_size=(H, W), channels=channels, strict=cfg.strict, fit=cfg.fit)
    train_full = D.ImageFolder(cfg.data, exclude=exclude, background_kinds=True, **kw)
    train_full.verify()
    train_ids = list(train_full.classes)          # background/<kind> folders are classes of their own
    norm = normalization_spec(cfg.normalize, train_full, channels)
    base = eval_transforms((H, W), norm)
    train_src = Cached(train_full) if cfg.cache else train_full
    train_ds = Transformed(train_src, [base[0]] + augmentation(cfg.augment, (H, W)) + base[1:])
    train_loader = PKDataLoader(train_ds, p=min(p, len(train_ids)), k=k, seed=cfg.seed,
                                num_workers=cfg.workers, device=cfg.device)
    val_loader, val_info = None, {}
    if val_ids:
        # held-out individuals only: every other folder (the background one included) stays out
        val_full = D.ImageFolder(cfg.data, exclude=tuple(e for e in cfg.exclude if "/" not in e)
                                 + tuple(n for n in individuals if n not in val_ids), **kw)
        val_full.verify()
        repeated = drop_repeated_files(val_full)
        gi, qi = split_gallery_queries(val_full.targets, cfg.seed, [p for p, _ in val_full.samples], cfg.encounters,
                                       {i: Path(val_full.root, *c.split("/")) for i, c in enumerate(val_full.classes)})
        if len(qi) == 0:
            raise ValueError(f"{cfg.data}: the held-out individuals {val_ids} have one photo each; retrieval "
                             "validation needs two or more photos of some (or --val-ratio 0)")
        val_src = Cached(val_full) if cfg.cache else val_full
        vb = max(cfg.batch_size, 64)
        gallery_loader = D.DataLoader(Transformed(D.Subset(val_src, gi), base), batch_size=vb,
                                      num_workers=cfg.workers, device=cfg.device)
        query_loader = D.DataLoader(Transformed(D.Subset(val_src, qi), base), batch_size=vb,
                                    num_workers=cfg.workers, device=cfg.device)
        val_loader = RetrievalValidation(model, gallery_loader, query_loader, len(val_full.classes))
        val_info = {"gallery_photos": int(len(gi)), "query_photos": int(len(qi)), "repeated_files_left_out": repeated,
                    **({"encounters": cfg.encounters} if cfg.encounters != "photo" else {})}
    model.to(cfg.device)
    skip_input_gradient(model.backbone)
    embedding_info = {"head": head, "embedding_dim": int(embedding_dim), "margin": make_loss(head, margin).margin,
                      "scale": float(scale), "p": train_loader.p, "k": k, "train_individuals": train_ids,
                      "validation_individuals": val_ids,
                      "validation": "rank-1 of held-out individuals (half their photos as gallery)", **val_info}
    ran = {"classes": train_ids, "input_size": [C, H, W], "normalization": norm, "num_train": len(train_full),
           "embedding": embedding_info}
    resolved = resolved_config(cfg, ran)
    meta = model_metadata(model, train_ids, norm, resolved)
    meta["embedding"] = embedding_info
    head_loss = make_loss(head, margin, scale)
    if replicas is not None and head == "triplet":         # batch-hard mining needs every replica's photos
        head_loss = replicas.whole_batch(head_loss, "rows")
    loss = EmbeddingObjective(model, head_loss, scale)
    if val_ids:
        log(f"embedding head {head} ({embedding_dim}-d) on {len(train_ids)} individuals, P×K = "
            f"{train_loader.p}×{k}; validation: {len(val_ids)} held-out individuals, {val_info['gallery_photos']} "
            f"gallery and {val_info['query_photos']} query photos — val_acc is rank-1, val_top5 rank-5")
    trainer = build_trainer(cfg, model, train_loader, val_loader, out_dir=out, metadata=meta, config=resolved,
                            log=log, loss_fn=loss, extensions=[RetrievalColumns()] if val_loader is not None else (),
                            replicas=replicas)
    if resume and trainer.resume() is None:
        log(f"no checkpoint in {out}: starting from the beginning")
    if first:
        write_config(out, cfg, ran)             # after the resume: a refused one leaves config.json as it was
    trainer.fit()
    return trainer, {"train_individuals": train_ids, "validation_individuals": val_ids, **val_info}


def embedding_replica_job(cfg, *, resume, log, replicas, **head):
    """One replica of a data-parallel embedding run (``nabi.training.replicas.replica_main``)."""
    return run_embedding_training(cfg, resume=resume, log=log, replicas=replicas, **head)


def write_run_calibration(cfg, individuals, log=print):
    """``calibration.json`` in the run folder: the embedding's cosine similarity calibrated to P(same
    individual) on the held-out ``individuals`` (never trained on), leave-one-encounter-out. A gallery too
    small to calibrate on itself falls back on it (``nabi.reid.calibrate.default_calibration``). Returns its
    path, or None (with a line saying why) when those photos are too few to calibrate on."""
    from ..files import atomic_write_json
    from .calibration import CalibrationError
    from .folders import list_photos, unique_photos
    from .gallery import Gallery
    rule = cfg.encounters if cfg.encounters != "photo" else "auto"
    gallery = Gallery.create(cfg.out, None, device=cfg.device, local=False, encounters=rule)
    root = Path(cfg.data)
    try:
        folders, _ = unique_photos([(name, list_photos(root / name, recursive=True)) for name in individuals])
        for name, photos in folders:
            if photos:
                gallery.add(name, photos, save=False)
    except ValueError as e:                      # the same file under two individuals' names
        log(f"no calibration.json: {e}")
        return None
    try:
        summary = gallery.calibrate(None, matcher=False, log=None)
    except CalibrationError as e:
        log(f"no calibration.json: the {len(individuals)} held-out individuals are too few to calibrate on ({e})")
        return None
    summary = {**summary, "source": f"the run's {len(individuals)} held-out individuals (leave one encounter "
                                    f"out, encounters by {rule})"}
    path = Path(cfg.out) / "calibration.json"
    atomic_write_json(path, summary)
    log(f"wrote {path}: the embedding's similarity as P(same individual), from {summary['pairs']['same']} same and "
        f"{summary['pairs']['different']} other pairs of held-out individuals")
    return path


def train_embedding(cfg, head="arcface", embedding_dim=128, margin=None, scale=30.0, k=4, *, resume=False,
                    overwrite=False, keep_checkpoints=False, log=print):
    """The whole of ``nabi train --head HEAD``: check ``cfg`` (``nabi.training.config.check``), train in the
    locked run folder ``cfg.out`` (``run_embedding_training``; continued with ``resume``, replaced with
    ``overwrite``; the newest ``cfg.keep_last`` checkpoints kept, at least 3 with ``keep_checkpoints``, as in
    ``nabi.training.run.train``), and log the best rank-1 on the held-out individuals. Returns a ``nabi.training.run.FinishedRun`` (``info``: the individuals) whose
    ``next`` builds a gallery with the run."""
    from ..runs import open_run_folder
    from ..training.config import check
    from ..training.run import FinishedRun, checkpoints_kept, finish_run
    check(cfg)
    cfg = checkpoints_kept(cfg, keep_checkpoints)
    if cfg.data is None:
        raise ValueError("give a data folder with one sub-folder per individual")
    args = dict(head=head, embedding_dim=embedding_dim, margin=margin, scale=scale, k=k)
    with open_run_folder(cfg.out, resume=resume, overwrite=overwrite, log=log):
        if cfg.replicas > 1:
            from ..training.replicas import train_replicated
            trainer = train_replicated(cfg, resume=resume, log=log,
                                       job={"entry": f"{__name__}:embedding_replica_job", "args": args})
            info = trainer.extra
        else:
            trainer, info = run_embedding_training(cfg, **args, resume=resume, log=log)
        finish_run(cfg.out, log=log)
    if trainer.best_epoch is not None and info["validation_individuals"]:
        log(f"best rank-1 on {len(info['validation_individuals'])} held-out individuals: "
            f"{trainer.best_acc:.4f} (epoch {trainer.best_epoch})")
    if info["validation_individuals"] and trainer.status == "finished":
        write_run_calibration(cfg, info["validation_individuals"], log=log)
    return FinishedRun(Path(cfg.out), trainer, None, None, next=f"nabi gallery build {cfg.out} PHOTOS --out GALLERY",
                       info=info)
