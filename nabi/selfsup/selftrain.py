"""``nabi self-train``: self-training with a noisy student (Xie et al., "Self-training with Noisy Student
improves ImageNet classification", CVPR 2020) on labelled and unlabelled photos.

    round 0   teacher  ← nabi train on the labelled photos (one class per sub-folder)
    round k   pseudo-labels ← the round k−1 model, unnoised, on the unlabelled photos
              student  ← nabi train, noised, on labelled + pseudo-labelled photos; it is the next teacher

The labelled folder is split once (``val_ratio``, ``test_ratio``, ``seed``, as ``nabi train``
splits it), and every round uses the same split: the student trains on the labelled training
part plus the pseudo-labelled photos, picks its best epoch on the validation part, and each
round's accuracy is measured on the labelled test part, which no round ever trains on.

Pseudo-labels (``nabi.selfsup.pseudo_labels.select``): the teacher, in eval mode on unaugmented
photos, labels every unlabelled photo; a photo is kept when its confidence max_k p_k ≥
``threshold``; each class keeps at most ``max_per_class`` photos, the most confident first
(default: the size of the largest class of the labelled training part, so pseudo-labels
cannot outnumber the labelled photos of a class more than that class allows the largest to
outnumber it). Hard labels train with cross-entropy; ``soft`` targets (the teacher's
probabilities) with the soft-target cross-entropy (``nabi.functional.soft_target``). When the
labelled classes include ``background``, photos the teacher calls background stay background
(one-hot, even under ``soft``). The photos are never copied: each round writes a manifest.

The student's noise: strong augmentation (``augment``, default ``strong``: random resized crop,
flip, rotation, colour jitter), the dropout of models that have it (active in training; its
rate set with ``dropout`` where the model's builder takes one) and stochastic depth
(``stochastic_depth`` = P, for the models whose builder takes ``drop_path``: the ResNets and
SE-ResNets): in training each residual block drops its branch for a sample with a probability
rising linearly from 0 at the first block to P at the last (Huang et al., 2016;
``nabi.layers.DropPath``); the paper's students keep the last block with probability 0.8,
P = 0.2. Residual blocks frozen by ``cfg.freeze_until`` run in eval mode, so stochastic depth never
drops them: only the blocks that train are noised. Pseudo-labelling runs the teacher in evaluation mode, unnoised. The student must have
at least as many parameters as the teacher (equal or larger, as in the paper).

Pretrained start (``cfg.init``, ``cfg.freeze_until``, ``cfg.layer_lr_decay``, as ``nabi train --init
--freeze-until --layer-lr-decay``): the round-0 teacher and every student start from the same
weights (``nabi.training.init_from.load_matching``: every array matching by name and shape; a
student of another architecture takes what matches), with the same frozen stages and per-stage
learning rates. Each ``round.json`` records what its model loaded, which arrays stayed new and
which were skipped; the summary records the three settings. Before anything trains, the weights
are loaded into the teacher's and the student's architecture and the frozen stage is looked up in
both, so a file that fits neither, or a stage one of them lacks, is refused up front.

Run folder::

    OUT/round-0/train/          the teacher's nabi train run;   OUT/round-0/round.json
    OUT/round-K/pseudo_labels.json   the manifest;               OUT/round-K/round.json
    OUT/round-K/train/          the student's run (config.json says which photos it trained on)
    OUT/summary.json, OUT/summary.md   every round so far (rewritten atomically after each round)

``round.json`` holds the round's model, the pseudo-label counts per class, the test accuracy
and, when the unlabelled photos sit in folders named like the classes, the pseudo-label
accuracy (a diagnostic only: the labels are never used for training).
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import backend, files
from .. import data as D
from ..data.prepare import (Cached, Transformed, augmentation, eval_loader, eval_transforms, folder_classes,
                            load_datasets, normalization_spec)
from ..models import registry
from ..models.registry import model_input_size, set_input_size
from ..runs import image_fit, load_run, model_metadata, write_config
from ..training import fine_tune
from ..training.build import build_model, build_trainer, run_training
from ..training.config import TrainConfig, check
from ..training.init_from import format_report, load_matching, resolve_init_path
from ..training.evaluation import evaluate
from ..training.trainer import Trainer
from . import pseudo_labels as P

BACKGROUND = "background"
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"


def _takes(model, argument):
    return argument in inspect.signature(registry.builder(model)).parameters


def check_arguments(cfg: TrainConfig, unlabelled, rounds, threshold, max_per_class, student_model,
                    student_model_args, dropout, stochastic_depth=None):
    """Every argument checked before any training starts; returns the unlabelled photo paths."""
    if rounds is None or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"--rounds must be a whole number of at least 1, got {rounds}")
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise ValueError(f"--threshold must lie in (0, 1] (a confidence max_k p_k), got {threshold}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"--max-per-class must be at least 1, got {max_per_class}")
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"--dropout must lie in [0, 1), got {dropout}")
    if stochastic_depth is not None and not (isinstance(stochastic_depth, (int, float))
                                             and 0 <= stochastic_depth < 1):
        raise ValueError(f"--stochastic-depth must lie in [0, 1) (the drop probability of the last residual "
                         f"block), got {stochastic_depth}")
    decay = cfg.layer_lr_decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ValueError(f"--layer-lr-decay must be a number in (0, 1], got {decay!r}")
    if cfg.freeze_until is not None and (not isinstance(cfg.freeze_until, str) or not cfg.freeze_until.strip()):
        raise ValueError(f"--freeze-until must be a stage name such as conv1 or layer2, got {cfg.freeze_until!r}")
    if cfg.init:
        resolve_init_path(cfg.init)          # a missing file or run folder: FileNotFoundError naming --init
    if cfg.test_ratio <= 0 and not (Path(cfg.data) / "test").is_dir():
        raise ValueError(f"self-training reports each round's accuracy on the labelled test split: give "
                         f"--test-ratio above 0 or a {Path(cfg.data) / 'test'} folder")
    for name in (cfg.model, student_model):
        registry.builder(name)                                       # unknown name: lists the known ones
    if dropout is not None and not _takes(student_model, "dropout"):
        raise ValueError(f"--dropout: model {student_model} has no dropout layer to set (models with one: "
                         f"alexnet, vgg*, googlenet); leave --dropout out")
    if stochastic_depth is not None and not _takes(student_model, "drop_path"):
        raise ValueError(f"--stochastic-depth: model {student_model} has no residual blocks to drop (models "
                         f"with them: resnet*, se_resnet*); leave --stochastic-depth out or give --student-model "
                         f"a ResNet")
    if Path(cfg.data).resolve() == Path(unlabelled).resolve():
        raise ValueError(f"the labelled and unlabelled folders are the same ({cfg.data})")
    out = Path(cfg.out)
    if (out / SUMMARY_JSON).exists():
        raise ValueError(f"{out} already holds a self-training run ({SUMMARY_JSON}); give another --out")
    return P.list_photos(unlabelled)


def _start_model(cfg: TrainConfig, model_name, model_args, num_classes, seed=None):
    """``model_name`` built as a round builds it (``cfg.image_size``), then ``cfg.init`` loaded into it:
    ``(model, report)``, the report None without ``cfg.init``."""
    model = build_model(model_name, num_classes, dict(model_args), seed=seed)
    C, H, W = model_input_size(model)
    if cfg.image_size and (cfg.image_size, cfg.image_size) != (H, W):
        set_input_size(model, cfg.image_size)
    return model, (load_matching(model, cfg.init) if cfg.init else None)


def check_fine_tuning(cfg: TrainConfig, num_classes, roles) -> None:
    """Load ``cfg.init`` into each of ``roles`` (``[(role, model name, model args)]``, e.g. the teacher and
    the student) and look ``cfg.freeze_until`` up in it: a ``ValueError`` naming the flag and the role
    before any training, for weights that match nothing or a stage the model lacks (or that would freeze
    all of it, or freeze arrays ``cfg.init`` did not load, ``fine_tune.check_frozen_were_loaded``)."""
    if not cfg.init and cfg.freeze_until is None:
        return
    for role, name, args in roles:
        try:
            model, report = _start_model(cfg, name, args, num_classes)
            if cfg.freeze_until is not None:
                fine_tune.frozen_stages(model, cfg.freeze_until)
        except ValueError as e:
            raise ValueError(f"{e} (the {role}, {name})") from None
        if cfg.freeze_until is not None and report is not None:
            fine_tune.check_frozen_were_loaded(model, cfg.freeze_until, report, role=f"{role} ({name})")


def init_record(report) -> dict | None:
    """What a round's ``round.json`` keeps of ``init_from.load_matching``'s report: the file, how many
    arrays were loaded, and the names left new, skipped (shape differs) and unused (not in the model)."""
    if report is None:
        return None
    return {"weights": report["path"], "loaded": len(report["loaded"]), "new": list(report["new"]),
            "skipped": list(report["skipped"]), "unused": list(report["unused"])}


def _student_args(student_model, student_model_args, dropout, stochastic_depth=None):
    args = dict(student_model_args or {})
    if dropout is not None:
        args["dropout"] = float(dropout)
    if stochastic_depth is not None:
        args["drop_path"] = float(stochastic_depth)
    return args


def _test_accuracy(run_dir, parts, cfg):
    model, meta = load_run(run_dir, device=cfg.device)
    C, H, W = meta["input_size"]
    test = load_datasets(cfg.data, image_size=(H, W), channels=C, val_ratio=cfg.val_ratio,
                         test_ratio=cfg.test_ratio, seed=cfg.seed, exclude=cfg.exclude, strict=cfg.strict,
                         fit=image_fit(meta), background_kinds=cfg.background_kinds == "split",
                         encounters=cfg.encounters)["test"]
    ev = evaluate(model, eval_loader(test, meta, batch_size=max(cfg.batch_size, 64), device=cfg.device))
    return model, meta, ev["acc"], ev["n"]


def train_student(cfg: TrainConfig, parts, pseudo_paths, pseudo_labels, pseudo_targets, out_dir, seed, log=print,
                  replicas=None):
    """Train ``cfg.model`` on the labelled training part plus the pseudo-labelled photos (``pseudo_targets``
    (M, K) soft rows, or None for hard labels), noised by ``cfg.augment``; validation on the labelled
    validation part. The model starts from ``cfg.init`` when given (logged, and kept as the trainer's
    ``init_report``). Writes the run to ``out_dir``; returns the trainer. ``replicas``: this process's
    place in a data-parallel run (``nabi.training.replicas``; only replica 0 writes)."""
    classes = parts["classes"]
    first = replicas is None or replicas.rank == 0
    model, report = _start_model(cfg, cfg.model, cfg.model_args, len(classes), seed=seed)
    if report is not None:
        log(format_report(report))
    C, H, W = model_input_size(model)
    channels = cfg.channels or C
    labelled = load_datasets(cfg.data, image_size=(H, W), channels=channels, val_ratio=cfg.val_ratio,
                             test_ratio=cfg.test_ratio, seed=cfg.seed, exclude=cfg.exclude, strict=cfg.strict,
                             fit=cfg.fit, background_kinds=cfg.background_kinds == "split",
                             encounters=cfg.encounters)
    norm = normalization_spec(cfg.normalize, labelled["train"], channels)
    base = eval_transforms((H, W), norm)
    pseudo = P.PhotoList(pseudo_paths, (H, W), channels, labels=pseudo_labels, fit=cfg.fit)
    combined = P.Concat([labelled["train"], pseudo])
    train_targets = combined.targets
    loss = None
    if pseudo_targets is not None:
        n_lab = len(labelled["train"])
        table = np.concatenate([np.eye(len(classes))[train_targets[:n_lab]], pseudo_targets])
        combined = P.RowIndexed(combined)
    if cfg.cache:
        combined = Cached(combined)
    train_ds = Transformed(combined, [base[0]] + augmentation(cfg.augment, (H, W)) + base[1:])
    loader = D.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, seed=seed, num_workers=cfg.workers,
                          device=cfg.device)
    if pseudo_targets is not None:
        from ..layers.soft_target import SoftTargetCrossEntropyLoss
        loss = SoftTargetCrossEntropyLoss()
        loader = P.SoftTargetBatches(loader, table, loss)
    val_loader = None
    if labelled.get("val") is not None:
        val_loader = D.DataLoader(Transformed(labelled["val"], base), batch_size=max(cfg.batch_size, 64),
                                  num_workers=cfg.workers, device=cfg.device)
    model.to(cfg.device)
    if first:
        Trainer._check_writable(Path(out_dir))
    resolved = (write_config if first else _resolved)(out_dir, replace(cfg, out=str(out_dir), seed=seed), {
        "classes": classes, "input_size": [C, H, W], "normalization": norm,
        "num_train": len(train_ds), "num_train_labelled": len(labelled["train"]), "num_train_pseudo": len(pseudo),
        "num_val": len(labelled["val"]) if labelled.get("val") is not None else 0,
        "num_test": len(labelled["test"]) if labelled.get("test") is not None else 0,
        "pseudo_targets": "soft" if pseudo_targets is not None else "hard"})
    meta = model_metadata(model, classes, norm, resolved)
    trainer = build_trainer(replace(cfg, seed=seed), model, loader, val_loader, out_dir=Path(out_dir), metadata=meta,
                            config=resolved, log=log, loss_fn=loss, replicas=replicas)
    trainer.init_report = report
    trainer.fit()
    return trainer


def _resolved(out_dir, cfg, ran):
    """What ``write_config`` records, without writing it (a replica other than 0)."""
    from ..runs import resolved_config
    return resolved_config(cfg, ran)


def student_replica_job(cfg, *, resume, log, replicas, classes, pseudo_paths, pseudo_labels, pseudo_targets,
                        out_dir, seed):
    """One replica of a data-parallel student run (``nabi.training.replicas.replica_main``)."""
    trainer = train_student(cfg, {"classes": classes}, pseudo_paths, pseudo_labels, pseudo_targets, out_dir, seed,
                            log=log, replicas=replicas)
    return trainer, {"train_epochs": trainer.epoch, "init_report": trainer.init_report}


def _train_teacher(cfg, log):
    """Round 0's ``nabi train`` in ``cfg.out``; ``(trainer, parts)``. With ``cfg.replicas`` ≥ 2 the replicas
    train it and this process reads the same parts again (``nabi.training.build.training_parts``)."""
    if cfg.replicas <= 1:
        return run_training(cfg, log=log)
    from ..runs import open_run_folder
    from ..training.build import training_parts
    from ..training.replicas import train_replicated
    with open_run_folder(cfg.out, log=log):
        trainer = train_replicated(cfg, log=log)
    from ..runs import read_json
    ran = read_json(Path(cfg.out) / "config.json")
    return trainer, training_parts(cfg, ran["image_size"], ran["channels"])


def _train_student(cfg, parts, pseudo_paths, pseudo_labels, pseudo_targets, out_dir, seed, log):
    """A round's student (``train_student``), on ``cfg.replicas`` replicas when that is 2 or more."""
    if cfg.replicas <= 1:
        return train_student(cfg, parts, pseudo_paths, pseudo_labels, pseudo_targets, out_dir, seed, log=log)
    from ..runs import open_run_folder
    from ..training.replicas import train_replicated
    args = {"classes": list(parts["classes"]), "pseudo_paths": [str(p) for p in pseudo_paths],
            "pseudo_labels": np.asarray(pseudo_labels), "pseudo_targets": pseudo_targets,
            "out_dir": str(out_dir), "seed": int(seed)}
    with open_run_folder(out_dir, log=log):
        return train_replicated(replace(cfg, out=str(out_dir)), log=log,
                                job={"entry": f"{__name__}:student_replica_job", "args": args})


def _start_lines(summary) -> list:
    """The summary's sentence on how every round's model started: ``--init``, ``--freeze-until`` and
    ``--layer-lr-decay`` (each when given; the last two also without ``--init``), then a blank line."""
    parts = []
    if summary.get("freeze_until"):
        parts.append(f"stages up to {summary['freeze_until']} frozen")
    if summary.get("layer_lr_decay", 1) != 1:
        parts.append(f"layer-wise learning-rate decay {summary['layer_lr_decay']:g}")
    if summary.get("init"):
        return [f"Every round's model started from {summary['init']}" + "".join(", " + p for p in parts)
                + " (round.json: what each loaded).", ""]
    if parts:
        return [f"Every round's model started from its own initialisation, {', '.join(parts)}.", ""]
    return []


def _write_summary(out, summary):
    files.atomic_write_json(out / SUMMARY_JSON, summary)
    classes = summary["classes"]
    lines = ["# Self-training (noisy student)", "",
             f"Labelled: {summary['labelled']}; unlabelled: {summary['unlabelled']} "
             f"({summary['num_unlabelled']} photos). Targets: {'soft' if summary['soft'] else 'hard'}; "
             f"threshold {summary['threshold']}; at most {summary['max_per_class']} pseudo-labels per class.", "",
             *_start_lines(summary),
             "Test accuracy is on the labelled test split (never trained on). Pseudo-label accuracy counts only "
             "unlabelled photos whose folder is named like a class (a diagnostic; those names are not used).", "",
             "| round | model | role | pseudo-labelled | " + " | ".join(classes) + " | test acc | pseudo-label acc |",
             "|" + "---|" * (6 + len(classes))]
    for r in summary["rounds"]:
        counts = r.get("pseudo_label_counts") or {}
        pl = r.get("pseudo_label_accuracy")
        lines.append(f"| {r['round']} | {r['model']} | {r['role']} | {r.get('num_pseudo_labelled', 0)} | "
                     + " | ".join(str(counts.get(c, 0)) for c in classes)
                     + f" | {r['test_acc']:.4f} | {'—' if pl is None else f'{pl:.4f}'} |")
    files.atomic_write_text(out / SUMMARY_MD, "\n".join(lines) + "\n")


def run_self_training(cfg: TrainConfig, unlabelled, rounds=1, student_model=None, student_model_args=None,
                      student_augment="strong", soft=False, threshold=0.5, max_per_class=None, dropout=None,
                      stochastic_depth=None, log=print):
    """Self-train for ``rounds`` rounds; returns the summary dict (also written to ``cfg.out``).

    ``cfg`` is the teacher's ``nabi train`` configuration (``data`` is the labelled folder, ``augment``
    the teacher's augmentation); the students use the same settings with ``student_model``
    (default ``cfg.model``), ``student_model_args``, ``student_augment``, ``dropout`` and
    ``stochastic_depth`` (the students' ``drop_path``; None: the model's default, none).
    ``cfg.init``, ``cfg.freeze_until`` and ``cfg.layer_lr_decay`` apply to the teacher and every student.
    Every argument is checked before anything is read or written (``check_arguments``, then
    ``nabi.training.config.check`` for the rest of the configuration).
    """
    student_model = student_model or cfg.model
    student_args = _student_args(student_model, student_model_args if student_model_args is not None
                                 else (cfg.model_args if student_model == cfg.model else {}), dropout,
                                 stochastic_depth)
    photos = check_arguments(cfg, unlabelled, rounds, threshold, max_per_class, student_model, student_args,
                             dropout, stochastic_depth)
    check(cfg)
    backend.check_device(cfg.device)
    num_classes = len(folder_classes(cfg.data, cfg.exclude, background_kinds=cfg.background_kinds == "split"))
    n_teacher = registry.count_parameters(cfg.model, num_classes=num_classes, **cfg.model_args)
    n_student = registry.count_parameters(student_model, num_classes=num_classes, **student_args)
    if n_student < n_teacher:
        raise ValueError(f"--student-model {student_model} has {n_student:,} parameters, fewer than the teacher "
                         f"{cfg.model} ({n_teacher:,}): a noisy student must be equal or larger")
    check_fine_tuning(cfg, num_classes, [("teacher", cfg.model, cfg.model_args),
                                         ("student", student_model, student_args)])
    out = Path(cfg.out)
    Trainer._check_writable(out)
    log(f"round 0: teacher {cfg.model} on the labelled photos of {cfg.data}")
    r0 = out / "round-0"
    teacher_trainer, parts = _train_teacher(replace(cfg, out=str(r0 / "train")), log)
    classes = list(parts["classes"])
    train_counts = np.bincount(np.asarray(parts["train"].targets), minlength=len(classes))
    cap = int(max_per_class or train_counts.max())
    teacher, meta, acc, n_test = _test_accuracy(r0 / "train", parts, cfg)
    background = classes.index(BACKGROUND) if BACKGROUND in classes else None
    true = P.folder_labels(photos, unlabelled, classes)
    summary = {"format": "nabi-self-training", "labelled": str(cfg.data), "unlabelled": str(unlabelled),
               "num_unlabelled": len(photos), "classes": classes,
               "labelled_train_counts": {c: int(n) for c, n in zip(classes, train_counts)},
               "soft": bool(soft), "threshold": float(threshold), "max_per_class": cap,
               "background_class": BACKGROUND if background is not None else None,
               "teacher_model": cfg.model, "student_model": student_model, "student_model_args": student_args,
               "student_augment": student_augment,
               "stochastic_depth": float(student_args.get("drop_path", 0.0)),
               "init": str(resolve_init_path(cfg.init)) if cfg.init else None, "freeze_until": cfg.freeze_until,
               "layer_lr_decay": float(cfg.layer_lr_decay),
               "num_test": n_test, "rounds_requested": int(rounds), "rounds": []}
    record = {"round": 0, "model": cfg.model, "role": "teacher", "run": str(r0 / "train"),
              "test_acc": acc, "num_train": len(parts["train"]), "num_pseudo_labelled": 0,
              "init": init_record(teacher_trainer.init_report)}
    files.atomic_write_json(r0 / "round.json", record)
    summary["rounds"].append(record)
    _write_summary(out, summary)
    log(f"round 0: test accuracy {acc:.4f} on {n_test} labelled test photos")
    scfg = replace(cfg, model=student_model, model_args=student_args, augment=student_augment)
    for k in range(1, int(rounds) + 1):
        rk = out / f"round-{k}"
        rk.mkdir(parents=True, exist_ok=True)
        probs = P.predict(teacher, meta, photos, batch_size=max(cfg.batch_size, 64), device=cfg.device)
        kept, labels, targets = P.select(probs, threshold, cap, background, soft)
        P.write_manifest(rk / "pseudo_labels.json", unlabelled, photos, kept, labels, targets, probs, classes,
                         soft, threshold, cap)
        counts = np.bincount(labels, minlength=len(classes))
        known_all = true >= 0
        known_kept = true[kept] >= 0
        log(f"round {k}: {len(kept)} of {len(photos)} unlabelled photos pseudo-labelled "
            f"({', '.join(f'{c} {n}' for c, n in zip(classes, counts))})")
        run_dir = rk / "train"
        trainer = _train_student(scfg, parts, [photos[i] for i in kept], labels, targets if soft else None, run_dir,
                                 seed=cfg.seed + k, log=log)
        teacher, meta, acc, _ = _test_accuracy(run_dir, parts, cfg)
        record = {"round": k, "model": student_model, "role": "student", "run": str(run_dir),
                  "teacher_run": summary["rounds"][-1]["run"], "test_acc": acc,
                  "num_train": len(parts["train"]) + len(kept), "num_train_labelled": len(parts["train"]),
                  "num_pseudo_labelled": int(len(kept)),
                  "pseudo_label_counts": {c: int(n) for c, n in zip(classes, counts)},
                  "pseudo_label_mean_confidence": float(probs[kept].max(axis=1).mean()) if len(kept) else None,
                  "pseudo_label_accuracy": (float((labels[known_kept] == true[kept][known_kept]).mean())
                                            if known_kept.any() else None),
                  "pseudo_label_accuracy_n": int(known_kept.sum()),
                  "teacher_accuracy_on_unlabelled": (float((probs.argmax(1)[known_all] == true[known_all]).mean())
                                                     if known_all.any() else None),
                  "train_epochs": trainer.epoch, "train_iterations": trainer.iteration,
                  **({"replicas": cfg.replicas} if cfg.replicas > 1 else {}),
                  "final_train_loss": trainer.history[-1]["train_loss"] if trainer.history else None,
                  "init": init_record(trainer.init_report)}
        files.atomic_write_json(rk / "round.json", record)
        summary["rounds"].append(record)
        _write_summary(out, summary)
        log(f"round {k}: student {student_model} test accuracy {acc:.4f}"
            + (f"; pseudo-label accuracy {record['pseudo_label_accuracy']:.4f} on {record['pseudo_label_accuracy_n']} "
               f"photos with class-named folders" if record["pseudo_label_accuracy"] is not None else ""))
    return summary
