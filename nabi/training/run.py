"""A whole training run, as ``nabi train`` makes it: train, test, say what comes next.

``train(cfg)`` checks the configuration (``config.check``), trains into the run folder ``cfg.out``
(``build.run_training``: locked, continued with ``resume``, replaced with ``overwrite``; the trainer keeps
the newest ``cfg.keep_last`` checkpoints), scores the held-out test part once with the best weights
(``test.json``), and returns a ``FinishedRun`` whose ``next`` is the command to run next. A Python user
calling it gets the same run folder, and the same lines through ``log``, as ``nabi train``.
(``nabi.reid.train.train_embedding`` is the same for an embedding head.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FinishedRun:
    """What a finished run left: its folder, the trainer (``history``, ``best_epoch``, ``best_acc``), the
    data parts it trained and was tested on (None where the run keeps them to itself), the test scores
    written to ``test.json`` (None without a test part), the command to run next, and what else the run
    reports (``info``: an embedding run's training and validation individuals)."""
    out: Path
    trainer: object
    parts: dict | None
    test: dict | None
    next: str
    info: dict = field(default_factory=dict)


def train(cfg, *, resume=False, overwrite=False, keep_checkpoints=False, log=print) -> FinishedRun:
    """Train as ``cfg`` (a ``TrainConfig``) says and test the best weights.

    ``resume``: continue the run in ``cfg.out`` from its latest checkpoint; ``overwrite``: replace the
    run there; ``keep_checkpoints``: as ``--keep-checkpoints``, keep at least the newest
    ``config.KEEP_CHECKPOINTS`` (3) checkpoints (``cfg.keep_last`` says how many otherwise). Refuses a bad
    configuration (``BadArgument``) before anything is read or written. With ``cfg.replicas`` ≥ 2 the run is
    data-parallel (``nabi.training.replicas``): ``trainer`` is then replica 0's report (``ReplicatedRun``: its
    history, best epoch and score) and ``parts`` None.
    """
    from ..runs import open_run_folder
    from .build import run_training
    from .config import check
    check(cfg)
    cfg = checkpoints_kept(cfg, keep_checkpoints)
    with open_run_folder(cfg.out, resume=resume, overwrite=overwrite, log=log):
        if cfg.replicas > 1:                 # replica 0 tests the best weights and writes test.json
            from .replicas import train_replicated
            trainer, parts = train_replicated(cfg, resume=resume, log=log), None
            test = trainer.test
        else:
            trainer, parts = run_training(cfg, resume=resume, log=log)
            test = test_best_weights(trainer, parts, cfg, log=log)
        finish_run(cfg.out, log=log)
    out = Path(cfg.out)
    return FinishedRun(out, trainer, parts, test, next=f"nabi predict {out} IMAGE · nabi eval {out} DATA")


def test_best_weights(trainer, parts, cfg, log=print) -> dict | None:
    """Score the best weights (the final ones without a validation part) on the held-out test part once,
    write ``test.json`` and return what it holds; None when there is no test part."""
    from .. import files
    from ..data.prepare import eval_loader
    from ..runs import load_run
    from .evaluation import evaluate
    if parts.get("test") is None:
        return None
    best = trainer.val_loader is not None and (Path(cfg.out) / "best.safetensors").is_file()
    weights = Path(cfg.out) / ("best.safetensors" if best else "model.safetensors")
    model, meta = load_run(weights, device=cfg.device)
    ev = evaluate(model, eval_loader(parts["test"], meta, device=cfg.device))
    chosen = (f"best weights: epoch {trainer.best_epoch}, chosen by validation accuracy" if best else
              "final weights: no validation part to choose a best epoch by")
    result = {"test_acc": ev["acc"], "test_loss": ev["loss"], "n": ev["n"], "weights": "best" if best else "final",
              "weights_file": weights.name, "weights_chosen": chosen}
    if len(meta["classes"]) > 5:
        result["test_top5"] = ev["topk"]
    files.atomic_write_json(Path(cfg.out) / "test.json", result)
    log(f"test accuracy {ev['acc']:.4f} on {ev['n']} held-out images ({chosen})")
    return result


def checkpoints_kept(cfg, keep_checkpoints=False):
    """``cfg``, keeping at least ``config.KEEP_CHECKPOINTS`` checkpoints when ``keep_checkpoints`` (the library's
    ``--keep-checkpoints``)."""
    from dataclasses import replace
    from .config import KEEP_CHECKPOINTS
    if keep_checkpoints and cfg.keep_last < KEEP_CHECKPOINTS:
        return replace(cfg, keep_last=KEEP_CHECKPOINTS)
    return cfg


def finish_run(out, log=print) -> None:
    """Log the run folder's size (a weight file with several names counted once; the trainer already kept
    its ``keep_last`` newest checkpoints)."""
    from ..runs import folder_size, format_size
    log(f"run folder: {out} ({format_size(folder_size(out))})")
