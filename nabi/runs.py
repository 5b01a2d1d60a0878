"""Run folders: what a run wrote and how to rebuild its model.

A run folder always says how to rebuild its model: ``model.json`` (the weights'
sidecar) holds the architecture and its arguments, the class names, the input size,
the normalisation and ``fit`` (how photos are brought to the input size; ``image_fit``),
and ``load_run`` rebuilds the model from it.

``open_run_folder`` guards a run folder for as long as a run writes it: a lock
(``RUN/.lock``, the ``filelock`` library; the holder's process id in
``RUN/.lock-owner.json``) that a second process finds taken at once; an existing
run is continued (``resume``), replaced whole (``overwrite``) or refused.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from . import __version__, files
from .models.registry import model_input_size


def model_metadata(model, classes, norm_spec, config=None) -> dict:
    """The sidecar of a run's weights: architecture, classes, input size, normalisation, ``fit`` (how photos
    are brought to the input size: ``config['fit']``, else ``crop``) and the run's ``config``."""
    arch = getattr(model, "arch", None) or {"name": type(model).__name__, "kwargs": {}}
    return {"format": "nabi-model", "nabi_version": __version__, "arch": arch, "classes": list(classes),
            "input_size": list(model_input_size(model)), "normalization": norm_spec,
            "fit": (config or {}).get("fit") or "crop", "config": config or {}}


def image_fit(meta) -> str:
    """How a run's photos are brought to its input size when read (``crop``, ``squash`` or ``pad``; see
    ``nabi.data.folder.FITS``): the sidecar's ``fit``; runs written before nabi recorded it cropped."""
    from .data.folder import FITS
    fit = meta.get("fit") or (meta.get("config") or {}).get("fit") or "crop"
    if not isinstance(fit, str) or fit not in FITS:
        raise ValueError(f"the run's metadata says fit {fit!r}; nabi knows {', '.join(FITS)} (is the run from a "
                         f"newer nabi?)")
    return fit


# -- loading a run -------------------------------------------------------------------------------------
def find_weights(run) -> Path:
    """A run folder (its best, else final weights) or a ``.safetensors`` file."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise FileNotFoundError(f"run {run} does not exist")
    for name in ("best.safetensors", "model.safetensors"):
        if (run / name).is_file():
            return run / name
    raise FileNotFoundError(f"{run} holds no best.safetensors or model.safetensors: is it a nabi run folder?")


def load_run(run, device="cpu"):
    """Rebuild the model a run saved: ``(model, metadata)``; the model is in eval mode."""
    path = find_weights(run)
    state, meta = files.load_weights(path)
    if meta.get("format") != "nabi-model" or "arch" not in meta:
        raise ValueError(f"{path} has no nabi model sidecar ({files.sidecar_path(path)}) naming its architecture")
    from . import models
    arch = meta["arch"]
    side = files.sidecar_path(path)
    try:
        model = models.get(arch["name"], **arch.get("kwargs", {}))
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{side} describes an architecture nabi cannot build ({arch.get('name')!r} with "
                         f"{arch.get('kwargs', {})}): {e.args[0] if e.args else e}. The sidecar should be the one "
                         f"saved with {path.name}") from None
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as e:
        raise ValueError(f"the weights in {path} do not fit the architecture its sidecar {side} describes "
                         f"({arch['name']}): {e.args[0] if e.args else e}. The sidecar should be the one saved "
                         f"with these weights") from None
    model.to(device)
    model.eval()
    return model, meta


def resolved_config(cfg, extra=None) -> dict:
    """What a run's ``config.json`` holds: the ``TrainConfig`` ``cfg`` and ``extra`` (what the run resolved)."""
    d = cfg.to_dict()
    d.update(extra or {})
    return d


def write_config(out_dir, cfg, extra=None):
    """Write ``config.json``: the ``TrainConfig`` ``cfg`` and ``extra`` (what the run resolved); returns it.

    A resumed run writes it only once its checkpoint has been accepted (``Trainer.resume``), so a
    refused resume leaves the run's own record as it was."""
    d = resolved_config(cfg, extra)
    files.atomic_write_json(Path(out_dir) / "config.json", d)
    return d


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def scoring_scope(meta, data, strict=False):
    """What ``nabi eval RUN DATA`` should score when DATA has no ``test/`` folder: ``(dataset, note)``.

    When DATA is the folder the run trained on (its ``config['data']``) and the run held a test part out
    by ratio, that part is the dataset — the same photos, split the same way (ratios, seed, exclusions),
    that ``test.json`` scored — and the note says so; scoring every photo there would mostly score
    photos the model trained on. When the run held none out, the dataset is None and the note warns that
    every photo of DATA was trained on or chose the best epoch. Another folder: ``(None, None)``.
    """
    cfg = meta.get("config") or {}
    trained_on = cfg.get("data")
    if not trained_on or str(trained_on).startswith("embedded:") or not Path(trained_on).is_dir() \
            or Path(trained_on).resolve() != Path(data).resolve():
        return None, None
    ratio = cfg.get("test_ratio") or 0
    if ratio <= 0:
        return None, (f"warning: {data} is the folder this run trained on, and the run held no test photos out "
                      f"of it (test ratio 0): every photo here was trained on or chose the best epoch, so these "
                      f"scores overstate how the model does on photos it has never seen")
    from .data.prepare import load_datasets
    C, H, W = meta["input_size"]
    test = load_datasets(str(data), image_size=(H, W), channels=C, val_ratio=cfg.get("val_ratio") or 0,
                         test_ratio=ratio, seed=cfg.get("seed", 0), exclude=cfg.get("exclude") or (), strict=strict,
                         fit=image_fit(meta), background_kinds=cfg.get("background_kinds", "split") == "split",
                         encounters=cfg.get("encounters") or "photo")["test"]
    return test, (f"{data} is the folder this run trained on and has no test/ folder: scoring the {len(test)} "
                  f"photos the run held out for testing ({ratio:g} of each class, seed {cfg.get('seed', 0)}), not "
                  f"the photos it trained on; --all-photos scores every photo")


# -- the run folder while a run writes it ----------------------------------------------------------
LOCK_NAME, OWNER_NAME = ".lock", ".lock-owner.json"
RUN_MARKERS = {"config.json", "checkpoints", "metrics.jsonl", "model.safetensors", "best.safetensors"}
_held: dict[str, int] = {}     # folders this process holds: nested opens share the one lock


class RunFolderBusy(RuntimeError):
    """Another process is writing the run folder."""


def _owner(folder: Path) -> str:
    try:
        owner = read_json(folder / OWNER_NAME)
        return (f"process {owner['pid']} on {owner.get('host', '?')} (started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner['started']))})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its id is not recorded yet)"


def run_contents(folder) -> list[str]:
    """The names in a run folder, less the lock's own files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_NAME, OWNER_NAME))


@contextmanager
def open_run_folder(out, resume: bool = False, overwrite: bool = False, log=print):
    """Create (if need be) and lock the run folder ``out`` for the run inside the ``with``.

    * Another process holding it: ``RunFolderBusy`` at once, naming that process.
    * A folder that already holds files: continued with ``resume``; with ``overwrite``
      its contents are deleted under the lock before the run writes anything (so the
      folder never mixes the old run and the new one); otherwise refused.
    * A failure before the run saved its first checkpoint removes a folder this call
      created, so a rejected run leaves nothing behind.
    """
    out = Path(out)
    key = str(out.resolve())
    if key in _held:                       # already opened by this process (nabi train -> run_training)
        _held[key] += 1
        try:
            yield out
        finally:
            _held[key] -= 1
        return
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run or replace it, not both")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: give a folder for the run")
    created = not out.exists()
    foreign = run_contents(out)
    if foreign and not set(foreign) & RUN_MARKERS:
        raise ValueError(f"--out {out} holds other files ({', '.join(foreign[:6])}"
                         f"{' …' if len(foreign) > 6 else ''}), not a nabi run: nabi writes a run only into a "
                         f"new or empty folder or one holding a run, and never deletes other files; give "
                         f"another --out")
    try:
        files.ensure_writable_folder(out)
    except OSError as e:
        raise PermissionError(f"output folder {out} cannot be written: {e.strerror or e}") from None
    from filelock import FileLock, Timeout
    lock = FileLock(out / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusy(f"run folder {out} is in use by {_owner(out)}; wait for that run to end, "
                            f"or give another --out") from None
    _held[key] = 1
    ok = False
    try:
        files.atomic_write_json(out / OWNER_NAME, {"pid": os.getpid(), "host": socket.gethostname(),
                                                   "started": time.time()})
        existing = run_contents(out)
        if existing and not resume:
            if not overwrite:
                raise ValueError(f"run folder {out} already holds a run ({', '.join(existing[:6])}"
                                 f"{' …' if len(existing) > 6 else ''}): continue it with --resume, replace it "
                                 f"with --overwrite, or give another --out")
            for name in existing:
                p = out / name
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            log(f"--overwrite: deleted the previous run in {out} ({len(existing)} entries)")
        yield out
        ok = True
    finally:
        _held.pop(key, None)
        (out / OWNER_NAME).unlink(missing_ok=True)
        lock.release()
        if not ok and created and not (out / "checkpoints").exists():
            shutil.rmtree(out, ignore_errors=True)


def folder_size(folder) -> int:
    """Bytes of every file under ``folder``, a file with several names (hard links) counted once."""
    seen, total = set(), 0
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def format_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# -- checking a run folder --------------------------------------------------------------------------
def check_run_folder(run) -> list[tuple[Path, str | None]]:
    """Read back every file of a run folder: ``[(path, None if it is sound else what is wrong)]``.

    Weight files (``*.safetensors``, checkpoints included) against their sidecar's size and
    SHA-256 and the checksum in their header; JSON files (sidecars, ``config.json``,
    ``state.json``, ``test.json``, evaluation reports) parse; ``metrics.jsonl`` one JSON
    object a line; each checkpoint holds its three parts and ``checkpoints/latest`` names
    one that exists.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist (give the folder `nabi train --out` wrote)")
    if not (run / "model.json").is_file() and not (run / "best.json").is_file() \
            and not (run / "checkpoints").is_dir():
        raise ValueError(f"{run} does not look like a nabi run folder (no model.json, best.json or checkpoints/)")
    results = []
    for path in sorted(run.rglob("*.safetensors")):
        try:
            files.load_weights(path)
            if not Path(files.sidecar_path(path)).is_file():
                raise ValueError(f"its sidecar {files.sidecar_path(path)} is missing (it describes the weights)")
            results.append((path, None))
        except (OSError, ValueError) as e:
            results.append((path, str(e)))
    for path in sorted(run.rglob("*.json")):
        if path.name == OWNER_NAME:
            continue
        try:
            read_json(path)
            results.append((path, None))
        except ValueError as e:
            results.append((path, f"not valid JSON (damaged or cut short?): {e}"))
        except OSError as e:
            results.append((path, str(e)))
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        problem = None
        for i, line in enumerate(metrics.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            try:
                if not isinstance(json.loads(line), dict):
                    raise ValueError("not an object")
            except ValueError as e:
                problem = f"line {i} is not a JSON object (damaged or cut short?): {e}"
                break
        results.append((metrics, problem))
    root = run / "checkpoints"
    if root.is_dir():
        for ck in sorted(p for p in root.glob("ckpt-*") if p.is_dir()):
            missing = [n for n in ("model.safetensors", "optimizer.safetensors", "state.json") if not (ck / n).is_file()]
            if missing:
                results.append((ck, f"checkpoint is missing {', '.join(missing)}"))
        pointer = root / "latest"
        if pointer.is_file():
            name = pointer.read_text(encoding="utf-8", errors="replace").strip()
            ok = (root / name / "state.json").is_file()
            results.append((pointer, None if ok else f"names {name!r}, which is not a complete checkpoint "
                                                     f"(--resume falls back to the newest complete one)"))
    return results
