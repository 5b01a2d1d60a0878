"""A whole training run, as ``nabi train`` makes it: train, test, prune, say what comes next.

``train(cfg)`` checks the configuration (``config.check``), trains into the run folder ``cfg.out``
(``build.run_training``: locked, continued with ``resume``, replaced with ``overwrite``), scores the
held-out test part once with the best weights (``test.json``), keeps only the newest checkpoint unless
told otherwise, and returns a ``FinishedRun`` whose ``next`` is the command to run next. A Python user
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
    """Train as ``cfg`` (a ``TrainConfig``) says, test the best weights, prune the checkpoints.

    ``resume``: continue the run in ``cfg.out`` from its latest checkpoint; ``overwrite``: replace the
    run there; ``keep_checkpoints``: keep every checkpoint instead of the newest only. Refuses a bad
    configuration (``BadArgument``) before anything is read or written.
    """
    from ..runs import open_run_folder
    from .build import run_training
    from .config import check
    check(cfg)
    with open_run_folder(cfg.out, resume=resume, overwrite=overwrite, log=log):
        trainer, parts = run_training(cfg, resume=resume, log=log)
        test = test_best_weights(trainer, parts, cfg, log=log)
        finish_run(cfg.out, keep_checkpoints, log=log)
    out = Path(cfg.out)
    return FinishedRun(out, trainer, parts, test, next=f"nabi predict {out} IMAGE · nabi eval {out} DATA")


def test_best_weights(trainer, parts, cfg, log=print) -> dict | None:
    """Score the best weights (the final ones without a validation part) on the held-out test part once,
    write ``test.json`` and return what it holds; None when there is no test part."""
    from .. import files
    from ..data.prepare import eval_loader
    from ..runs import load_run
    from .trainer import evaluate
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


def finish_run(out, keep_checkpoints=False, log=print) -> None:
    """Prune the checkpoints but the newest (unless ``keep_checkpoints``) and log the run folder's size."""
    from ..runs import folder_size, format_size
    from .checkpoint import prune_checkpoints
    if not keep_checkpoints:
        prune_checkpoints(out, keep=1)
    log(f"run folder: {out} ({format_size(folder_size(out))})")
