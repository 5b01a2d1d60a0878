"""The paired multi-seed background-class experiment (``nabi experiment``).

The protocol comes from the 2019 report "CNN을 이용한 고려대학교 길고양이 분류 및 배경
학습을 통한 성능 개선" (COSE362, Korea University, 2019), which asked whether teaching a
network what the habitat looks like helps it tell individual animals apart. Model A
learns the individuals only; model B learns them plus one ``background`` class of
habitat photos. In each run both start from the same weights and see the training
photos in the same order; both are scored on the whole test set (background photos
included) with :func:`nabi.evaluate.background_statistics`, giving one row of the
report's Table 1: A·P2, B·P1, B·P2, B·P3, B·P4, where

* P1: accuracy on every test photo, background photos included (a background photo is
  right when it is called background);
* P2: accuracy on the animal photos only (an animal called background is wrong);
* P3: accuracy on the animal photos the model did not call background;
* P4: accuracy on the animal photos when the background output is ignored (the best
  individual wins).

Data (``DATA``): ``DATA/train/<class>/…`` and ``DATA/test/<class>/…`` (a ``val/``
folder is ignored), or one class-per-folder ``DATA`` split into train and test by
``test_ratio``, stratified, seeded by the experiment seed (one split for every run
and both models). The background folder's name is ``background`` unless given
(Unicode NFC is compared, so ``'배경'`` works).

Background kinds (``background_classes='kinds'``, ``--background-classes kinds``): the
background folder's sub-folders ``<kind>/`` (trees, pavement, …) become B's classes
``background/<kind>`` (photos directly in it stay ``background``); the split is stratified by
kind, A is B without every background row (``derive_a_state`` with several rows), P1–P4 count
every kind as background, and the experiment lives in ``out_dir/<recipe>-kinds/`` with a
fingerprint of its own. The default ``'one'`` is the 2019 protocol, one background class.

Pairing, run ``r`` (1-based):

* seeds: ``c = SeedSequence(seed).spawn(R)[r-1]``; ``c.spawn(2)`` gives the init
  seed and the order seed (each a 63-bit int from ``generate_state``). Run r's
  seeds do not depend on the number of runs R. All are recorded.
* weights: B is built by the zoo with ``build_model(..., seed=init_seed)``. A is
  the same architecture without the background class(es) and is given B's arrays: every
  array of equal shape is copied; the arrays whose first axis is longer in B by the number
  of background classes (the final classifier's weight and bias) are B's with the
  background rows deleted. A's initial logit for an individual is thus B's for that individual.
* order: B's loader shuffles B's photos with the order seed (``DataLoader``'s
  permutation of epoch e). A's loader takes the same permutation of B's photos,
  drops the background photos, and visits A's photos in the order that remains,
  cut into batches of the same size. Online augmentation randomness is per batch
  and is not paired.
* length: ``iterations_per_class`` gives each model that many iterations per
  class it learns (the 2019 setup: 2,000, so A 8,000 and B 10,000 with 4 individuals); else ``iterations``
  or ``epochs`` as given. B is trained first, then A.

The test set is scored with the final weights (there is no validation split).

The embedding arm (``models`` with ``E``, off by default): model E is the recipe's zoo network as an identity
embedding (``embedding_net``: the classifier replaced by the BN-neck, trained with the ``arcface`` head's loss
unless another is given) built from the run's init seed, trained on B's photos and classes (A's without a
background folder; the kinds with ``'kinds'``) in P×K batches (K = 4 photos of each of P = batch_size // 4
classes, at least 2) seeded by the run's order seed, for as many iterations as B. Its score for test photo
``i`` and class ``j`` is ``s_ij = max over training photos g of class j of <e_i, e_g>`` (unit embeddings
from the final weights: the best cosine similarity), an (N, classes) matrix scored by the same
``background_statistics``: E's answer is its closest class, background when a background class is closest.
The report adds E·P1–E·P4 and the paired comparisons of E with A and B. E is not part of the fingerprint,
so it can be added to a finished A/B experiment (A's and B's models are kept).

Files under ``out_dir/<recipe>/``: ``experiment.json`` (setup, seeds, fingerprint),
``split.json`` (the photo lists), ``cache/`` (offline-expanded training photos),
``runs/run-XX/{A,B,E}/`` (each model's training folder: checkpoints, metrics,
``model.safetensors``, ``eval.json``), ``runs/run-XX/result.json`` (written last),
and ``report.md``, ``report.csv``, ``report.json``, ``report.png``. Running again
with the same setup resumes: a complete ``result.json`` is kept, a model whose
``eval.json`` exists is not retrained, and a half-trained model resumes from its
latest checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import unicodedata
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import __version__
from .. import files
from .. import data as D
from .jobs import (RunLog, as_float, completed_result, plot_history, read_json_or_none, relative_path,
                   run_parallel, run_resumable, run_seeds, sha256_of_json, state_sha256, strict_json,
                   study_trainer_class)
from .ray_executor import add_executor_arguments, check_executor, executor_kwargs, run_on_ray
from ..data.background import is_background
from ..training.config import renamed_value
from .recipes import (EXTRA_KEYS, RECIPES, REPORT2019_TABLE1, fingerprint_config, parse_value, probe_input_size,
                      refuse_embedding_recipe, resolve_recipe, train_keys)

__all__ = ["RECIPES", "REPORT2019_TABLE1", "resolve_recipe", "prepare_data", "run_seeds", "paired_models",
           "derive_a_state", "state_sha256", "PairedOrderLoader", "training_datasets", "training_loaders",
           "embedding_model", "embedding_loader", "gallery_scores",
           "run_experiment", "write_report", "compare_recipes", "add_arguments", "main_from_args"]

MODELS = ("A", "B")
# The optional embedding arm: model E, an identity embedding of the same zoo network scored through a gallery.
EMBEDDING_MODEL = "E"
ALL_MODELS = MODELS + (EMBEDDING_MODEL,)
EMBEDDING_K = 4             # photos per class in E's P×K batches
EMBEDDING_DEFAULTS = {"head": "arcface", "embedding_dim": 128}
# What model B learns of the background: one class, or one class per kind (sub-folder of the background folder).
BACKGROUND_CLASSES = ("one", "kinds")

_COMPARISONS = (("A·P2", "B·P2"), ("A·P2", "B·P3"), ("A·P2", "B·P4"))
# With model E: E against the classifier without (A) and with (B) the background class.
_E_COMPARISONS = (("A·P2", "E·P2"), ("A·P2", "E·P4"), ("B·P1", "E·P1"), ("B·P2", "E·P2"), ("B·P4", "E·P4"))
E_COLUMNS = ("E·P1", "E·P2", "E·P3", "E·P4")


# -- data --------------------------------------------------------------------------------------------------
def _nfc(s) -> str:
    return unicodedata.normalize("NFC", str(s))


def _class_folders(root: Path) -> list:
    return sorted(_nfc(p.name) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in ("__MACOSX", "@eaDir"))


def _listing(root, classes, strict, verify=True, kinds=False, background="background"):
    ds = D.ImageFolder(root, classes=classes, strict=strict, background_kinds=kinds, background=background)
    if verify:  # decode each file once; unreadable ones are dropped with a warning (strict: an error)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            ds.verify()
    return [[p, ds.classes[y]] for p, y in ds.samples]


def prepare_data(data, background="background", seed=0, test_ratio=0.2, models=MODELS, strict=False,
                 background_classes="one", encounters="photo") -> dict:
    """Find the layout, list and check the photos; ``ValueError`` for unusable input.

    ``background_classes``: ``'one'`` (model B learns one background class) or ``'kinds'`` (one
    class ``<background>/<kind>`` per sub-folder of the background folder, photos directly in it
    staying ``<background>``; the split is then stratified by kind).

    Returns a JSON-able dict: ``root``, ``layout`` ('train/test' or 'split'),
    ``background``, ``background_classes``, ``classes_B`` (sorted class names, the background
    class(es) included when present), ``individuals``, ``test_classes``, ``has_background``,
    ``train_root``, ``test_root``, and ``train`` / ``test``: lists of ``[absolute path, class name]``.
    """
    root = Path(data).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    bg = _nfc(background)
    if not bg or "/" in bg or bg in (".", ".."):
        raise ValueError(f"background must be a folder name, got {background!r}")
    if background_classes not in BACKGROUND_CLASSES:
        raise ValueError(f"background_classes must be one of {', '.join(BACKGROUND_CLASSES)}; "
                         f"got {background_classes!r}")
    kinds = background_classes == "kinds"
    splits = D.find_splits(root)
    if splits:
        if "test" not in splits:
            raise ValueError(f"{root} has a train/ folder but no test/ folder; add DATA/test/<class>/... or give "
                             "a folder with one sub-folder per class to be split by ratio")
        layout, train_root, test_root = "train/test", Path(splits["train"]), Path(splits["test"])
        train_folders, test_folders = _class_folders(train_root), _class_folders(test_root)
    else:
        layout, train_root, test_root = "split", root, root
        train_folders = test_folders = _class_folders(root)
    if not train_folders:
        raise ValueError(f"{train_root} has no class sub-folders (expected {train_root}/<individual>/<photos>)")
    has_bg = bg in train_folders
    individuals = [c for c in train_folders if c != bg]
    where = f" in {train_root}" if layout == "train/test" else f" in {root}"
    if len(individuals) < 2:
        raise ValueError(f"need at least two individuals (class folders other than the background {bg!r}){where}; "
                         f"found {individuals}")
    if "B" in models and not has_bg:
        raise ValueError(f"model B learns the background as a class, but there is no {bg!r} folder{where} "
                         f"(class folders: {', '.join(train_folders)}); add one, name it with background=..., "
                         f"or run model A only")
    absent = [c for c in test_folders if c != bg and c not in individuals]
    if absent:
        raise ValueError(f"test set individual(s) {absent} in {test_root} have no training photos{where} "
                         f"(training individuals: {', '.join(individuals)})")
    classes_b = sorted(train_folders)
    test_classes = sorted(set(classes_b) | ({bg} if bg in test_folders else set()))
    if kinds and has_bg:        # the class lists with the background split by kind (no image is read here)
        classes_b = list(D.ImageFolder(train_root, background_kinds=True, background=bg).classes)
        if not any(c.startswith(bg + "/") for c in classes_b):
            raise ValueError(f"background_classes 'kinds' needs sub-folders <kind>/ in {train_root / bg} "
                             f"(e.g. {bg}/trees/, {bg}/pavement/), and it has none; sort the background photos "
                             "by kind or use background_classes 'one'")
        test_classes = classes_b
        if layout == "train/test" and bg in test_folders:
            test_bg = D.ImageFolder(test_root, background_kinds=True, background=bg).classes
            test_classes = sorted(set(classes_b) | {c for c in test_bg if is_background(c, bg)})
    lkw = dict(kinds=kinds, background=bg)
    if layout == "train/test":
        train = _listing(train_root, classes_b, strict, **lkw)
        test = _listing(test_root, test_classes, strict, **lkw)
    else:
        everything = _listing(root, classes_b, strict, **lkw)
        from ..data.encounters import split_photos
        class_dirs = {c: Path(root, *c.split("/")) for c in classes_b}
        idx = split_photos([p for p, _ in everything], [c for _, c in everything],
                           (1.0 - float(test_ratio), float(test_ratio)), int(seed), encounters, class_dirs)
        train, test = [everything[i] for i in idx[0]], [everything[i] for i in idx[1]]
    n_animals = sum(not is_background(c, bg) for _, c in test)
    if n_animals == 0:
        raise ValueError(f"the test set in {test_root} has no animal photos (only {bg!r}); P2-P4 need photos of "
                         "the individuals")
    for c in individuals:
        if not any(k == c for _, k in train):
            raise ValueError(f"individual {c!r} has no readable training photos")
    return {"root": str(root), "layout": layout, "background": bg, "background_classes": background_classes,
            "classes_B": classes_b,
            "individuals": individuals, "test_classes": test_classes, "has_background": has_bg,
            "train_root": str(train_root), "test_root": str(test_root), "train": train, "test": test,
            "test_ratio": float(test_ratio) if layout == "split" else None, "seed": int(seed),
            **({"encounters": encounters} if layout == "split" and encounters != "photo" else {})}


def _expand(spec: dict, exp_dir: Path, variants: int, seed: int, input_size, log, fit="crop") -> dict:
    """Offline ×``variants`` expansion of the training photos, brought to the input size as ``fit`` says,
    into ``exp_dir/cache`` (once, reused)."""
    cache_root = exp_dir / "cache"
    out = cache_root / f"train-x{variants}"
    marker = cache_root / f"train-x{variants}.json"
    H, W = input_size[1:]
    kinds = spec.get("background_classes") == "kinds"
    want = {"variants": int(variants), "seed": int(seed), "image_size": [H, W],
            "source": sha256_of_json([(relative_path(p, spec["root"]), c) for p, c in spec["train"]])}
    if fit != "crop":                  # caches written before photos could be squashed or padded were cropped
        want["fit"] = fit
    if kinds:
        want["background_classes"] = "kinds"
    done = read_json_or_none(marker)
    if not (done and {k: done.get(k) for k in want} == want and out.is_dir()):
        log(f"expanding {len(spec['train'])} training photos ×{variants} into {out} (once per experiment)")
        if out.exists():
            shutil.rmtree(out)
        stage = cache_root / f".train-src-{os.getpid()}"
        if stage.exists():
            shutil.rmtree(stage)
        train_root = Path(spec["train_root"])
        for path, cls in spec["train"]:
            inner = Path(path).relative_to(train_root).parts[1:]  # path inside its class folder
            dst = stage.joinpath(cls.split("/", 1)[0], *inner)    # background/<kind>/…: the kind stays a folder
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(path, dst)
            except OSError:
                shutil.copy2(path, dst)
        try:
            D.expand_offline(stage, out, variants=variants, seed=int(seed), channels=input_size[0],
                             image_size=(H, W), fit=fit, background_kinds=kinds)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        files.atomic_write_json(marker, {**want, "n_source": len(spec["train"])})
    spec = dict(spec)
    spec["train_root"] = str(out)
    spec["train"] = [[p, c] for p, c in _listing(out, spec["classes_B"], False, verify=False, kinds=kinds,
                                                 background=spec["background"])]
    return spec


def _folder_dataset(root, classes, paths, input_size, exclude=(), fit="crop", kinds=False,
                    background="background"):
    ds = D.ImageFolder(root, image_size=tuple(input_size[1:]), channels=input_size[0], classes=classes,
                       exclude=exclude, fit=fit, background_kinds=kinds, background=background)
    keep = set(paths)
    ds.samples = [s for s in ds.samples if s[0] in keep]
    if len(ds.samples) != len(keep):
        raise RuntimeError(f"the photos under {root} changed since this experiment listed them "
                           f"({len(keep)} listed, {len(ds.samples)} found); restore them or use a new out_dir")
    return ds


def training_datasets(spec: dict, input_size, fit="crop") -> dict:
    """``{'B': ImageFolder, 'A': ImageFolder, 'test': ImageFolder, 'parent_to_child': array}``, each photo
    brought to ``input_size`` as ``fit`` says (``crop``, ``squash`` or ``pad``).

    A's folder excludes the background; ``parent_to_child[i]`` is A's index of B's photo
    ``i`` (-1 for a background photo). Without a background folder 'B' is None.
    """
    bg, train_root = spec["background"], spec["train_root"]
    kw = dict(kinds=spec.get("background_classes") == "kinds", background=bg)
    paths = [p for p, _ in spec["train"]]
    b = _folder_dataset(train_root, spec["classes_B"], paths, input_size, fit=fit, **kw) \
        if spec["has_background"] else None
    a = _folder_dataset(train_root, spec["individuals"], [p for p, c in spec["train"] if not is_background(c, bg)],
                        input_size, exclude=(bg,), fit=fit)
    parent = b if b is not None else a
    index_a = {p: i for i, (p, _) in enumerate(a.samples)}
    p2c = np.array([index_a.get(p, -1) for p, _ in parent.samples], dtype=np.int64)
    test = _folder_dataset(spec["test_root"], spec["test_classes"], [p for p, _ in spec["test"]], input_size,
                           fit=fit, **kw)
    return {"A": a, "B": b, "test": test, "parent_to_child": p2c}


class _Count:
    def __init__(self, n):
        self.n = int(n)

    def __len__(self):
        return self.n


class PairedOrderLoader(D.DataLoader):
    """A shuffling ``DataLoader`` over A's photos that follows B's order.

    For epoch ``e`` it takes the permutation a ``DataLoader`` with the same seed
    draws over B's ``parent_size`` photos, maps each to A's index with
    ``parent_to_child`` (-1 = background, dropped) and visits A's photos in that
    order, in batches of ``batch_size``.
    """

    def __init__(self, dataset, parent_size, parent_to_child, **kwargs):
        kwargs["shuffle"] = True
        super().__init__(dataset, **kwargs)
        p2c = np.asarray(parent_to_child, dtype=np.int64)
        if p2c.shape != (int(parent_size),):
            raise ValueError(f"parent_to_child must have {parent_size} entries, got shape {p2c.shape}")
        if not np.array_equal(np.sort(p2c[p2c >= 0]), np.arange(len(dataset))):
            raise ValueError("parent_to_child must map onto every example of the dataset exactly once")
        self.parent_to_child = p2c
        self._parent = D.DataLoader(_Count(parent_size), batch_size=1, shuffle=True, seed=self.seed)

    def order(self, epoch=None):
        epoch = self.epoch if epoch is None else int(epoch)
        self._parent.seed = self.seed
        child = self.parent_to_child[self._parent.order(epoch)]
        return child[child >= 0]


def training_loaders(datasets: dict, cfg: dict, order_seed: int, input_size, norm: dict) -> dict:
    """Training loaders ``{'A': PairedOrderLoader, 'B': DataLoader (or None)}`` with the recipe's transforms."""
    from ..data.prepare import Transformed, augmentation, eval_transforms
    H, W = input_size[1:]
    base = eval_transforms((H, W), norm)
    transforms = [base[0]] + augmentation(cfg["augment"], (H, W)) + base[1:]
    kw = dict(batch_size=int(cfg["batch_size"]), seed=int(order_seed), num_workers=int(cfg["workers"] or 0),
              device=cfg["device"])
    out = {"B": None}
    if datasets["B"] is not None:
        out["B"] = D.DataLoader(Transformed(datasets["B"], transforms), shuffle=True, **kw)
    p2c = datasets["parent_to_child"]
    out["A"] = PairedOrderLoader(Transformed(datasets["A"], transforms), len(p2c), p2c, **kw)
    return out


# -- pairing -------------------------------------------------------------------------------------------------
def derive_a_state(state_b, template_a, bg_index):
    """A's state from B's: equal shapes copied; arrays ``len(bg_index)`` rows longer in B lose those rows.

    ``bg_index``: B's background class (an int) or classes (a sequence of ints: one per background
    kind). Returns ``(state, changed_keys)``; ``ValueError`` if a shape cannot be paired.
    """
    rows = [int(bg_index)] if np.ndim(bg_index) == 0 else [int(i) for i in bg_index]
    if not rows or len(set(rows)) != len(rows):
        raise ValueError(f"bg_index must name one or more distinct rows of B's classifier, got {bg_index!r}")
    out, changed = OrderedDict(), []
    for k, ta in template_a.items():
        if k not in state_b:
            raise ValueError(f"model B has no array {k!r} to give model A")
        vb = np.asarray(state_b[k])
        shape_a = tuple(np.shape(ta))
        if vb.shape == shape_a:
            out[k] = vb.copy()
        elif vb.ndim >= 1 and vb.shape[0] == shape_a[0] + len(rows) and vb.shape[1:] == shape_a[1:]:
            if max(rows) >= vb.shape[0] or min(rows) < 0:
                raise ValueError(f"background rows {rows} are outside {k!r}'s {vb.shape[0]} rows")
            out[k] = np.delete(vb, rows, axis=0)
            changed.append(k)
        else:
            raise ValueError(f"cannot pair {k!r}: model B has shape {vb.shape}, model A {shape_a}")
    if not changed:
        raise ValueError(f"model A and model B have no array that differs by {len(rows)} class(es): "
                         "no classifier found")
    return out, changed


def background_rows(classes_b, background="background") -> list:
    """B's output rows that are background classes (``background`` and every ``background/<kind>``)."""
    return [i for i, c in enumerate(classes_b) if is_background(c, _nfc(background))]


def paired_models(model_name, model_args, classes_b, background, init_seed, input_size=None):
    """``(model_A, model_B, classifier_keys)`` with A's weights derived from seeded B's (see module doc)."""
    from ..training.build import build_model
    bg = _nfc(background)
    classes_b = [_nfc(c) for c in classes_b]
    rows = background_rows(classes_b, bg)
    if not rows:
        raise ValueError(f"background {bg!r} is not among B's classes {classes_b}")
    model_b = build_model(model_name, len(classes_b), model_args, seed=int(init_seed))
    model_a = build_model(model_name, len(classes_b) - len(rows), model_args, seed=int(init_seed))
    state, changed = derive_a_state(model_b.state_dict(), model_a.state_dict(), rows)
    model_a.load_state_dict(state)
    if input_size is not None:
        model_a.input_size = model_b.input_size = tuple(int(s) for s in input_size)
    return model_a, model_b, changed


_SCALARS = ("p1", "p2", "p3", "p4", "n_test1", "n_test2", "n_background_photos", "n_called_background", "n_p3",
            "model_has_background", "test_has_background")


def _model_length(cfg, n_classes, steps_per_epoch):
    """``(epochs, iterations)`` for the Trainer."""
    if cfg["iterations_per_class"]:
        return None, int(cfg["iterations_per_class"]) * n_classes
    if cfg["iterations"]:
        return None, int(cfg["iterations"])
    return int(cfg["epochs"]), None


def _train_config(cfg, n_classes, steps_per_epoch, out, seed):
    from ..training.config import TrainConfig
    epochs, iterations = _model_length(cfg, n_classes, steps_per_epoch)
    d = {k: cfg[k] for k in train_keys() if cfg.get(k) is not None}
    d.update(epochs=epochs if epochs is not None else math.ceil(iterations / steps_per_epoch),
             iterations=iterations, out=str(out), seed=int(seed), val_ratio=0.0, test_ratio=0.0, progress=False,
             data="(experiment)")
    total = iterations or d["epochs"] * steps_per_epoch
    if cfg["warmup_epochs"] is not None:
        d["warmup"] = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    if cfg.get("warmup_fraction") is not None and cfg["schedule"] == "warmup_cosine":   # so the clamp applies
        d["warmup"] = int(round(d.pop("warmup_fraction") * total))
    if cfg["schedule"] == "warmup_cosine":
        d["warmup"] = max(1, min(int(d.get("warmup") or 1), max(1, total - 1)))
    return TrainConfig.from_dict(d), epochs, iterations


def embedding_model(cfg, classes, embedding, init_seed, input_size=None):
    """Model E: ``embedding_net`` over the recipe's zoo model (its classifier replaced by the BN-neck and the
    ``embedding['head']``'s cosine classifier over ``classes``), built with the run's init seed.
    ``ValueError`` when the zoo model cannot be an embedding backbone."""
    from ..training.build import build_model
    args = {"backbone": cfg["model"], "embedding_dim": int(embedding["embedding_dim"]), "head": embedding["head"],
            "backbone_args": dict(cfg.get("model_args") or {})}
    try:
        model = build_model("embedding_net", len(classes), args, seed=int(init_seed))
    except ValueError as e:
        raise ValueError(f"model E (the embedding arm) cannot use the recipe's model {cfg['model']!r}: {e}") from None
    if input_size is not None:
        model.input_size = tuple(int(s) for s in input_size)
    return model


def embedding_loader(dataset, cfg, order_seed, input_size, norm, n_classes):
    """E's training loader: P×K batches (``EMBEDDING_K`` photos of each of P classes, P = batch_size // K, at
    least 2, at most the number of classes) with the recipe's transforms, seeded by the run's order seed."""
    from ..data.pk_sampler import PKDataLoader
    from ..data.prepare import Transformed, augmentation, eval_transforms
    H, W = input_size[1:]
    base = eval_transforms((H, W), norm)
    p = min(max(2, int(cfg["batch_size"]) // EMBEDDING_K), int(n_classes))
    return PKDataLoader(Transformed(dataset, [base[0]] + augmentation(cfg["augment"], (H, W)) + base[1:]),
                        p=p, k=EMBEDDING_K, seed=int(order_seed), num_workers=int(cfg["workers"] or 0),
                        device=cfg["device"])


def gallery_scores(model, gallery_loader, query_loader, n_classes):
    """Per query photo and class, the best cosine similarity to that class's gallery photos: (N, n_classes).

    The gallery photos are embedded with the model's final weights and set on the network
    (``EmbeddingNet.set_gallery``, the scoring reid's retrieval validation uses); an eval-mode forward of a query
    then returns ``max_{g in class j} <e_q, e_g>`` per class j (-2, below any cosine, for a class with no photo)."""
    from .. import backend
    model.eval()
    embs, labels = [], []
    for x, y in gallery_loader:
        embs.append(model.embed(x))
        labels.append(backend.to_numpy(y))
    xp = backend.get_array_module(embs[0])
    model.set_gallery(xp.concatenate(embs), xp.asarray(np.concatenate(labels)), int(n_classes))
    try:
        scores, truth = [], []
        for x, y in query_loader:
            scores.append(backend.to_numpy(model(x)))
            truth.append(backend.to_numpy(y))
    finally:
        model.clear_gallery()
    return np.concatenate(scores).astype(np.float64), np.concatenate(truth).astype(np.int64)


def _train_model(key, model, classes, datasets, loader, cfg, norm, spec, out, seed, log, embedding=None,
                 train_dataset=None) -> dict:
    """Train one model (resuming from its checkpoint) and score it on the test set: the ``eval.json`` dict.

    With ``embedding`` (model E: ``{'head', 'embedding_dim'}``) the head's loss trains it, and the test photos are
    scored against a gallery of ``train_dataset`` (the training photos, evaluation transforms)."""
    from .. import evaluate as E
    from ..training.build import build_trainer
    from ..runs import model_metadata, resolved_config, write_config
    from ..data.prepare import eval_loader
    from ..training.evaluation import evaluate
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tc, epochs, iterations = _train_config(cfg, len(classes), len(loader), out, seed)
    model.to(cfg["device"])
    ran = {"classes": list(classes), "input_size": list(model.input_size), "normalization": norm,
           "num_train": len(loader.dataset), "num_val": 0, "num_test": len(datasets["test"]), "experiment_model": key}
    resolved = resolved_config(tc, ran)
    meta = model_metadata(model, classes, norm, resolved)
    if embedding is not None:
        meta["embedding"] = dict(embedding)
    loss_fn = None
    if embedding is not None:
        from ..reid.train import make_loss
        from ..training.updater import skip_input_gradient
        skip_input_gradient(model.backbone)
        loss_fn = make_loss(embedding["head"])      # the head's loss instead of cross-entropy
    trainer = build_trainer(tc, model, loader, None, out_dir=out, metadata=meta, config=resolved, log=log,
                            trainer_class=study_trainer_class(), loss_fn=loss_fn)
    t0 = time.perf_counter()
    trainer.resume()
    write_config(out, tc, ran)                  # after the resume: a refused one leaves config.json as it was
    trainer.fit()
    seconds = time.perf_counter() - t0
    plot_history(trainer.history, out / "curves.png")
    test_loader = eval_loader(datasets["test"], meta, device=cfg["device"])
    if embedding is None:
        # Test labels index the test classes (background included), not A's outputs: no loss here.
        ev = evaluate(model, test_loader, loss_fn=_no_loss, return_outputs=True)
        scores, truth, key_scores = ev["probs"], ev["labels"], "probs"
    else:
        scores, truth = gallery_scores(model, eval_loader(train_dataset, meta, device=cfg["device"]), test_loader,
                                       len(classes))
        key_scores = "scores"
    stats = E.background_statistics(scores, truth, spec["test_classes"], background=spec["background"],
                                    model_classes=classes)
    preds = []
    for i, (path, label) in enumerate(datasets["test"].samples):
        preds.append({"file": relative_path(path, spec["root"]), "true": spec["test_classes"][label],
                      "pred": classes[int(stats["pred"][i])],
                      "pred_individual": classes[int(stats["pred_individual"][i])],
                      key_scores: [float(p) for p in scores[i]]})
    last = trainer.history[-1] if trainer.history else {}
    return {"model": key, "classes": list(classes), "statistics": {k: stats[k] for k in _SCALARS},
            "training": {"iterations": trainer.iteration, "epochs": trainer.epoch, "status": trainer.status,
                         "num_train": len(loader.dataset), "final_train_loss": last.get("train_loss"),
                         "final_train_acc": last.get("train_acc"), "seconds_this_session": seconds},
            "weights": "final", "predictions": preds}


def _no_loss(logits, labels):
    return 0.0


def _run_one(job: dict, log=None) -> dict:
    """Run ``job['run']`` (both models), writing ``result.json`` last; returns the result dict."""
    return run_resumable(job, f"[run {job['run']:02d}]", _run_one_inner, log)


def _run_one_inner(job, run_dir, log):
    spec, cfg, seeds, models = job["data"], job["config"], job["seeds"], job["models"]
    input_size, norm = job["input_size"], job["normalization"]
    rlog = RunLog(run_dir / "run.log", f"[run {job['run']:02d}]", echo=log)
    datasets = training_datasets(spec, input_size, cfg.get("fit", "crop"))
    loaders = training_loaders(datasets, cfg, seeds["order_seed"], input_size, norm)
    bg = spec["background"]
    if spec["has_background"]:
        model_a, model_b, changed = paired_models(cfg["model"], cfg["model_args"], spec["classes_B"], bg,
                                                  seeds["init_seed"], input_size)
        init = {"A": {"sha256": state_sha256(model_a.state_dict())},
                "B": {"sha256": state_sha256(model_b.state_dict()),
                      "shared_sha256": state_sha256(derive_a_state(model_b.state_dict(), model_a.state_dict(),
                                                                   background_rows(spec["classes_B"], bg))[0]),
                      "classifier_keys": changed}}
    else:
        from ..training.build import build_model
        model_b, changed = None, []
        model_a = build_model(cfg["model"], len(spec["individuals"]), cfg["model_args"], seed=seeds["init_seed"])
        model_a.input_size = tuple(input_size)
        init = {"A": {"sha256": state_sha256(model_a.state_dict())}}
    built = {"A": (model_a, spec["individuals"]), "B": (model_b, spec["classes_B"])}
    del model_a, model_b  # held by ``built`` only, so each is freed once trained
    embedding = job.get("embedding") or dict(EMBEDDING_DEFAULTS)
    if EMBEDDING_MODEL in models:   # E learns what B learns (A's classes when there is no background)
        e_data = "B" if spec["has_background"] else "A"
        e_classes = spec["classes_B"] if spec["has_background"] else spec["individuals"]
        model_e = embedding_model(cfg, e_classes, embedding, seeds["init_seed"], input_size)
        init["E"] = {"sha256": state_sha256(model_e.state_dict()), "embedding": dict(embedding)}
        built["E"] = (model_e, e_classes)
        loaders["E"] = embedding_loader(datasets[e_data], cfg, seeds["order_seed"], input_size, norm,
                                        len(e_classes))
        del model_e
    results = {}
    for key in [m for m in ("B", "A", EMBEDDING_MODEL) if m in models]:
        out = run_dir / key
        eval_path = out / "eval.json"
        res = read_json_or_none(eval_path)
        if res is not None and res.get("init", {}).get("sha256") != init[key]["sha256"]:
            res = None
        if res is not None and key == EMBEDDING_MODEL and res.get("init", {}).get("embedding") != embedding:
            res = None
        if res is None:
            model, classes = built[key]
            built[key] = (None, classes)
            mlog = RunLog(run_dir / "run.log", f"[run {job['run']:02d} · {key}]", echo=log)
            mlog(f"training model {key} ({len(classes)} classes, {len(loaders[key].dataset)} photos)")
            extra = {}
            if key == EMBEDDING_MODEL:
                extra = {"embedding": embedding, "train_dataset": datasets[e_data]}
            res = _train_model(key, model, classes, datasets, loaders[key], cfg, norm, spec, out,
                               seeds["order_seed"], mlog, **extra)
            del model
            res["init"] = init[key]
            res = strict_json(res)
            files.atomic_write_json(eval_path, res)
            if not cfg.get("keep_checkpoints"):  # keep the scored (final) weights only
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
                for name in ("best.safetensors", "best.json"):
                    (out / name).unlink(missing_ok=True)
            st = res["statistics"]
            mlog(f"done: P1 {_fmt(st['p1'])} P2 {_fmt(st['p2'])} P3 {_fmt(st['p3'])} P4 {_fmt(st['p4'])}")
        results[key] = res
        built[key] = (None, built[key][1])
    result = {"format": "nabi-experiment-run", "nabi_version": __version__, "run": job["run"], "seeds": seeds,
              "fingerprint": job["fingerprint"], "process": os.getpid(), "models": results}
    if "A" in results and "B" in results:
        from .stats import table1_row
        result["row"] = table1_row(_stats(results["A"]), _stats(results["B"]))
    result = strict_json(result)
    files.atomic_write_json(run_dir / "result.json", result)
    rlog("result.json written")
    return result


def _stats(model_result) -> dict:
    return {k: (as_float(v) if k.startswith("p") and k[1:].isdigit() else v)
            for k, v in model_result["statistics"].items()}


def _fmt(x, digits=4) -> str:
    x = as_float(x)
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


# -- the experiment -------------------------------------------------------------------------------------------
def _check_args(runs, models, jobs, seed):
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(models, str):
        models = models.split(",")
    models = [str(m).strip().upper() for m in models]
    bad = [m for m in models if m not in ALL_MODELS]
    if bad or not models:
        raise ValueError(f"models must be some of A, B, E; got {bad or 'none'}")
    return tuple(m for m in ALL_MODELS if m in models)


def _check_embedding(embedding) -> dict:
    """E's settings ``{'head', 'embedding_dim'}`` (defaults filled in); ``ValueError`` for a bad one."""
    from ..models.embedding import HEADS
    out = dict(EMBEDDING_DEFAULTS, **(embedding or {}))
    unknown = sorted(set(out) - set(EMBEDDING_DEFAULTS))
    if unknown:
        raise ValueError(f"embedding settings are {', '.join(EMBEDDING_DEFAULTS)}; got unknown {unknown}")
    if out["head"] not in HEADS:
        raise ValueError(f"--embedding-head must be one of {', '.join(HEADS)}; got {out['head']!r}")
    dim = out["embedding_dim"]
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"--embedding-dim must be a positive integer, got {dim!r}")
    return {"head": str(out["head"]), "embedding_dim": int(dim)}


def _fingerprint(spec, cfg, seed) -> str:
    listing = lambda lst: [(relative_path(p, spec["root"]), c) for p, c in lst]  # noqa: E731
    what = {"root": spec["root"], "layout": spec["layout"], "background": spec["background"],
            "train": listing(spec["train"]), "test": listing(spec["test"]), "seed": int(seed),
            "config": fingerprint_config(cfg)}
    if spec.get("background_classes", "one") != "one":  # 'one' adds nothing: older experiments keep their print
        what["background_classes"] = spec["background_classes"]
    return sha256_of_json(what)


def experiment_folder(out_dir, recipe, background_classes="one") -> Path:
    """``out_dir/<recipe>/``, or ``out_dir/<recipe>-kinds/`` when B learns the background kinds: the two
    designs keep their own runs side by side (and ``recipes.md`` compares them)."""
    return Path(out_dir) / (recipe if background_classes == "one" else f"{recipe}-{background_classes}")


def _normalization(cfg, spec, input_size):
    from ..data.prepare import normalization_spec
    if cfg["normalize"] != "dataset":
        return normalization_spec(cfg["normalize"], None, input_size[0])
    ds = training_datasets(spec, input_size, cfg.get("fit", "crop"))
    return normalization_spec("dataset", ds["B"] if ds["B"] is not None else ds["A"], input_size[0])


def run_experiment(data, out_dir, runs=10, models=("A", "B"), recipe="modern", jobs=1, background="background",
                   seed=0, overrides=None, log=print, executor="local", address=None, cpus_per_run=1,
                   gpus_per_run=0, background_classes="one", embedding=None) -> dict:
    """Run (or resume) the paired experiment into ``out_dir/<recipe>/``; returns the report dict.

    ``background_classes``: ``'one'`` (model B learns one background class, the 2019 protocol) or
    ``'kinds'`` (B learns one class per ``background/<kind>/`` folder; A is B without all of those
    output rows; the results go to ``out_dir/<recipe>-kinds/``). P1–P4 count every kind as background.

    ``models`` may add ``'E'``, the embedding arm: the recipe's zoo model as an identity embedding
    (``embedding_net``, ``embedding = {'head': 'arcface', 'embedding_dim': 128}`` by default) trained from
    the run's init seed on B's training photos and classes (A's without a background folder) in P×K batches
    (K = 4) for as long as B, then scored by a gallery of those training photos: a test photo's score for
    a class is its best cosine similarity to that class's training photos, and these scores go through
    the same P1–P4 (its answer is the closest class; background when a background class is closest). E
    does not enter the fingerprint: adding it to an A/B experiment keeps A's and B's finished models.

    ``jobs`` > 1 runs that many runs at once in 'spawn' worker processes (each limits
    BLAS to ``max(1, cores // jobs)`` threads with threadpoolctl when installed);
    ``jobs=1`` runs them one after another in this process. ``executor='ray'`` runs each run as a
    Ray task instead (``jobs`` must then stay 1): on a local Ray instance, or on the cluster at
    ``address``, with ``cpus_per_run``/``gpus_per_run`` each (see ``ray_executor.run_on_ray``).
    ``overrides`` replaces recipe settings (e.g. ``{'epochs': 5, 'image_size': 112}``). Every
    input check raises ``ValueError`` before anything is trained or written.
    """
    log = log or (lambda *a, **k: None)
    models = _check_args(runs, models, jobs, seed)
    embedding = _check_embedding(embedding)
    if executor == "ray" and jobs != 1:
        raise ValueError("--jobs is for the local executor; with --executor ray each run is a Ray task "
                         "(share the cores with --cpus-per-run)")
    check_executor(executor, address, cpus_per_run, gpus_per_run)
    cfg = resolve_recipe(recipe, overrides)
    recipe = cfg["recipe"]                  # an old name resolves to the current one
    refuse_embedding_recipe(recipe, "the paired experiment")
    if EMBEDDING_MODEL in models:           # fail before any photo is read if the model cannot embed
        embedding_model(cfg, ["x", "y"], embedding, 0)
    spec = prepare_data(data, background, seed, cfg["test_ratio"], models, strict=bool(cfg["strict"]),
                        background_classes=background_classes, encounters=cfg.get("encounters") or "photo")
    input_size = probe_input_size(cfg)
    counts = {"B": len(spec["train"]), "A": sum(not is_background(c, spec["background"]) for _, c in spec["train"])}
    n_classes = {"A": len(spec["individuals"]), "B": len(spec["classes_B"])}
    counts["E"], n_classes["E"] = (counts["B"], n_classes["B"]) if spec["has_background"] else \
        (counts["A"], n_classes["A"])
    for m in models:
        steps = math.ceil(counts[m] * cfg["offline_variants"] / cfg["batch_size"])
        epochs, iterations = _model_length(cfg, n_classes[m], steps)
        total = iterations or epochs * steps
        if cfg["schedule"] == "linear_step" and (cfg["schedule_unit"] == "iteration" and total < 11
                                              or cfg["schedule_unit"] == "epoch" and (epochs or 0) < 11):
            raise ValueError(f"schedule 'linear_step' lowers the rate 10 times and needs at least 11 steps; "
                             f"model {m} would get {total} iterations")
    fingerprint = _fingerprint(spec, cfg, seed)
    exp_dir = experiment_folder(out_dir, recipe, spec["background_classes"])
    exp_file = exp_dir / "experiment.json"
    if exp_file.is_file():
        old = json.loads(exp_file.read_text(encoding="utf-8"))
        if old.get("fingerprint") != fingerprint:
            now = {"root": spec["root"], "layout": spec["layout"], "background": spec["background"],
                   "background_classes": spec["background_classes"], "seed": int(seed)}
            diff = [k for k in now if old.get("data", {}).get(k, "one" if k == "background_classes" else None)
                    != now[k]]
            old_cfg = fingerprint_config(old.get("config", {}))
            diff += [f"config.{k}" for k, v in fingerprint_config(cfg).items() if old_cfg.get(k) != strict_json(v)]
            raise ValueError(f"{exp_dir} holds an experiment with a different setup "
                             f"(differs in: {', '.join(diff) or 'the photo lists'}); use another out_dir or "
                             "delete that folder")
        if EMBEDDING_MODEL in models and old.get("embedding", embedding) != embedding:   # kept by A/B reruns
            raise ValueError(f"{exp_dir} holds model E runs with embedding {old.get('embedding')}, not {embedding}; "
                             "use another out_dir, or the same --embedding-head and --embedding-dim")
    norm = _normalization(cfg, spec, input_size) if cfg["normalize"] != "dataset" else None
    seeds_all = run_seeds(seed, runs)
    exp_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(exp_dir / "split.json", strict_json({k: spec[k] for k in ("root", "layout", "background",
                                                                             "train", "test", "test_ratio")}))
    experiment = {"format": "nabi-experiment", "nabi_version": __version__, "recipe": recipe,
                  "description": cfg.get("description", ""), "models": list(models), "seed": int(seed),
                  "runs": int(runs), "fingerprint": fingerprint, "input_size": input_size,
                  "config": strict_json(cfg),
                  "data": {k: spec[k] for k in ("root", "layout", "background", "background_classes", "classes_B",
                                                "individuals", "test_classes", "has_background", "test_ratio")}
                  | {"seed": int(seed)},
                  "counts": {"train_B": counts["B"], "train_A": counts["A"], "test": len(spec["test"]),
                             "test_background": sum(is_background(c, spec["background"]) for _, c in spec["test"]),
                             "train_per_class": {c: sum(k == c for _, k in spec["train"]) for c in spec["classes_B"]},
                             "test_per_class": {c: sum(k == c for _, k in spec["test"]) for c in spec["test_classes"]}},
                  "run_seeds": seeds_all}
    if EMBEDDING_MODEL in models:
        experiment["embedding"] = embedding
    if exp_file.is_file():
        old = json.loads(exp_file.read_text(encoding="utf-8"))
        if "embedding" in old and "embedding" not in experiment:   # an A/B rerun keeps E's record
            experiment["embedding"] = old["embedding"]
        experiment["runs"] = max(int(runs), int(old.get("runs", 0)))
        experiment["run_seeds"] = run_seeds(seed, experiment["runs"])
    files.atomic_write_json(exp_file, experiment)
    log(f"experiment {exp_dir}: recipe {recipe} ({cfg['model']} at {input_size[1]}×{input_size[2]}), "
        f"models {', '.join(models)}, {runs} run(s), seed {seed}")

    if cfg["offline_variants"] > 1:
        spec = _expand(spec, exp_dir, int(cfg["offline_variants"]), int(seed), input_size, log,
                       cfg.get("fit", "crop"))
    if norm is None:  # mean/std of B's training photos (after any expansion), shared by A and B
        norm = _normalization(cfg, spec, input_size)
    jobs_list = []
    for s in seeds_all:
        run_dir = exp_dir / "runs" / f"run-{s['run']:02d}"
        if completed_result(run_dir, models, fingerprint) is not None:
            log(f"run {s['run']:02d}: complete, kept ({run_dir / 'result.json'})")
            continue
        jobs_list.append({"run": s["run"], "run_dir": str(run_dir), "seeds": s, "models": list(models),
                          "fingerprint": fingerprint, "data": spec, "config": cfg, "input_size": input_size,
                          "normalization": norm, "embedding": embedding})
    t0 = time.perf_counter()
    if executor == "ray":
        run_on_ray(jobs_list, _run_one, log, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
    elif jobs == 1 or len(jobs_list) <= 1:
        for job in jobs_list:
            log(f"run {job['run']:02d}: starting")
            _run_one(job, log=log)
            log(f"run {job['run']:02d}: done")
    else:
        run_parallel(jobs_list, jobs, log, _run_one)
    log(f"{len(jobs_list)} run(s) trained in {time.perf_counter() - t0:.1f} s")
    report = write_report(exp_dir, runs=runs)
    recipes = [p for p in Path(out_dir).iterdir() if (p / "report.json").is_file()]
    if len(recipes) >= 2:
        files.atomic_write_text(Path(out_dir) / "recipes.md", compare_recipes(out_dir))
        report["files"]["recipes_md"] = str(Path(out_dir) / "recipes.md")
    log(f"report: {report['files']['report_md']}")
    return report


# -- reports ------------------------------------------------------------------------------------------------
def _load_results(exp_dir: Path, runs: int, models, fingerprint) -> list:
    out = []
    for r in range(1, runs + 1):
        res = completed_result(exp_dir / "runs" / f"run-{r:02d}", models, fingerprint)
        if res is None:
            raise RuntimeError(f"run {r:02d} in {exp_dir} is not complete; run the experiment again to finish it")
        out.append(res)
    return out


def _columns(models) -> list:
    from .stats import TABLE1_COLUMNS
    return [c for c in TABLE1_COLUMNS if c[0] in models] + (list(E_COLUMNS) if EMBEDDING_MODEL in models else [])


def _comparison_pairs(models) -> list:
    """The paired comparisons ``(first, second)`` the report makes for these models (d = second − first)."""
    pairs = list(_COMPARISONS) if "A" in models and "B" in models else []
    return pairs + [(a, b) for a, b in _E_COMPARISONS if a[0] in models and b[0] in models]


def _row(res, columns) -> dict:
    row = {}
    for c in columns:
        m, p = c.split("·")
        row[c] = as_float(res["models"][m]["statistics"][p.lower()])
    return row


def write_report(exp_dir, runs=None) -> dict:
    """Write ``report.md``, ``report.csv``, ``report.json`` and ``report.png`` from the runs' ``result.json``."""
    from .stats import mean_std, paired_summary, table_csv, table_markdown
    exp_dir = Path(exp_dir)
    exp = json.loads((exp_dir / "experiment.json").read_text(encoding="utf-8"))
    runs = int(runs or exp["runs"])
    models = exp["models"]
    results = _load_results(exp_dir, runs, models, exp["fingerprint"])
    columns = _columns(models)
    rows = [_row(res, columns) for res in results]
    labels = [str(res["run"]) for res in results]
    md_table = table_markdown(rows, columns, row_labels=labels, ignore_nan=True)
    csv_path = exp_dir / "report.csv"
    table_csv(rows, columns, path=csv_path, row_labels=labels, ignore_nan=True)
    summary = {c: dict(zip(("mean", "std"), mean_std([r[c] for r in rows], ignore_nan=True))) for c in columns}
    comparisons = {}
    for a, b in _comparison_pairs(models):
        s = paired_summary([r[a] for r in rows], [r[b] for r in rows])
        comparisons[f"{a} vs {b}"] = {"a": a, "b": b, **s.to_dict()}
    called = []
    if "B" in models:
        for res in results:
            st = res["models"]["B"]["statistics"]
            called.append({"run": res["run"], "n_called_background": st["n_called_background"],
                           "n_animal_photos": st["n_test2"], "n_p3": st["n_p3"]})
    cfg, counts = exp["config"], exp["counts"]
    bg = exp["data"]["background"]
    design = exp["data"].get("background_classes", "one")
    bg_classes = [c for c in exp["data"]["classes_B"] if is_background(c, bg)]
    C, H, W = exp["input_size"]
    if design == "kinds":
        learns = (f"{len(bg_classes)} background classes, one per kind: " + ", ".join(f"`{c}`" for c in bg_classes))
    else:
        learns = f"one background class `{bg}`"

    def length(m):
        n = len(exp["data"]["individuals"]) + (len(exp["data"]["classes_B"]) - len(exp["data"]["individuals"])
                                               if m in ("B", EMBEDDING_MODEL) else 0)
        if cfg.get("iterations_per_class"):
            return f"{cfg['iterations_per_class'] * n:,} iterations"
        if cfg.get("iterations"):
            return f"{cfg['iterations']:,} iterations"
        return f"{cfg['epochs']} epochs"

    lines = [f"# Background-class experiment · recipe `{exp['recipe']}` · "
             f"B learns {'the background kinds' if design == 'kinds' else 'one background class'} · {runs} run(s)", ""]
    if exp.get("description"):
        lines += [f"Recipe: {exp['description']}.", ""]
    lines += [
        f"- Data: `{exp['data']['root']}` ({exp['data']['layout']} layout); individuals: "
        f"{', '.join(exp['data']['individuals'])}; model B learns {learns}",
        f"- Training photos: B {counts['train_B']} ({counts['train_B'] - counts['train_A']} background), "
        f"A {counts['train_A']}" + (f"; offline ×{cfg['offline_variants']} expansion" if cfg["offline_variants"] > 1
                                    else ""),
        f"- Test photos: {counts['test']} (Testset 1), of which {counts['test'] - counts['test_background']} "
        f"animal photos (Testset 2) and {counts['test_background']} background",
        f"- Model `{cfg['model']}` at {H}×{W}, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']:g}, "
        f"schedule {cfg['schedule']}, normalise {cfg['normalize']}, augment {cfg['augment']}; "
        + ", ".join(f"{m}: {length(m)}" for m in models),
        f"- Experiment seed {exp['seed']}; each run's init and order seeds are in `experiment.json`. "
        "A and B start from the same weights (A = B without the background output "
        + ("rows" if design == "kinds" else "row") + ") and see the photos in "
        "the same order (A: B's order without the background photos). Final weights are scored."]
    if EMBEDDING_MODEL in models:
        emb = exp.get("embedding", EMBEDDING_DEFAULTS)
        lines += [f"- Model E (embedding arm): `{cfg['model']}` as an identity embedding (`embedding_net`, head "
                  f"{emb['head']}, {emb['embedding_dim']}-d), initialised from the run's init seed, trained on "
                  + ("B's photos and classes" if exp["data"]["has_background"] else "A's photos and classes")
                  + f" in P×K batches (K = {EMBEDDING_K}) seeded by the run's order seed; each test photo's score "
                  "for a class is its best cosine similarity to that class's training photos (a gallery of "
                  "them, embedded with the final weights), and the closest class is E's answer."]
    lines += [
        "", "## Table 1" + (f" (B learns {len(bg_classes)} background kinds)" if design == "kinds" else ""), "",
        md_table,
        "A·P2: A's accuracy on the animal photos. B·P1: B's accuracy on all test photos (background photos right "
        "when called background). B·P2: on the animal photos. B·P3: on the animal photos B did not call "
        "background. B·P4: on the animal photos, taking B's most likely individual. "
        + ("Every background kind counts as background: a photo B gives any kind is called background, and a "
           "background photo given another kind is right. " if design == "kinds" else "")
        + ("E·P1–E·P4: the same four figures for model E, its answer being the class of the most similar "
           "training photo. " if EMBEDDING_MODEL in models else "")
        + "Std: sample standard deviation; n/a: undefined (Avg and Std then use the defined runs)."]
    if called:
        lines += ["", "## Animal photos model B called background", "",
                  "| Run | called background | animal photos | used by B·P3 |", "|---|---:|---:|---:|"]
        lines += [f"| {c['run']} | {c['n_called_background']} | {c['n_animal_photos']} | {c['n_p3']} |"
                  for c in called]
    if comparisons:
        lines += ["", "## Paired comparisons (d = " + ("B − A" if EMBEDDING_MODEL not in models else
                                                       "the second − the first") + " per run)", "",
                  ("| Comparison | n | mean A | mean B | " if EMBEDDING_MODEL not in models else
                   "| Comparison | n | mean first | mean second | ")
                  + "mean d | 95% CI of d | Wilcoxon p | sign-test p | + / − / = |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---|"]
        notes = []
        for name, s in comparisons.items():
            lines.append(_comparison_line(s))
            notes += [f"{s['b']} − {s['a']}: {n}" for n in s["notes"]]
        lines += ["", "95% CI: Student t over the per-run differences. Wilcoxon: signed-rank test (zero "
                  "differences dropped); sign test: exact, two-sided."]
        if notes:
            lines += [""] + [f"- note: {n}" for n in notes]
    ref_columns = [c for c in columns if c in REPORT2019_TABLE1]     # the 2019 report had no model E
    ref = [mean_std(REPORT2019_TABLE1[c])[0] for c in ref_columns]
    lines += ["", "## For reference: Table 1 of the 2019 report (alexnet336, 10 runs)", "",
              "| | " + " | ".join(ref_columns) + " |", "|---|" + "---:|" * len(ref_columns),
              "| 2019 Avg | " + " | ".join(f"{v:.4f}" for v in ref) + " |", ""]
    markdown = "\n".join(lines) + "\n"
    files.atomic_write_text(exp_dir / "report.md", markdown)
    outputs = {"report_md": str(exp_dir / "report.md"), "report_csv": str(csv_path),
             "report_json": str(exp_dir / "report.json"), "report_png": None}
    try:
        outputs["report_png"] = str(_plot(exp_dir / "report.png", rows, labels, comparisons, exp["recipe"]))
    except ImportError:  # matplotlib missing: the tables have every number
        pass
    report = {"format": "nabi-experiment-report", "nabi_version": __version__, "recipe": exp["recipe"],
              "background_classes": design, "dir": str(exp_dir), "runs": runs, "models": models, "seed": exp["seed"], "config": cfg,
              "data": exp["data"], "counts": counts, "input_size": exp["input_size"], "columns": columns,
              "rows": [{"run": int(l), **r} for l, r in zip(labels, rows)], "summary": summary,
              "comparisons": comparisons, "called_background": called,
              "per_run": [{"run": res["run"], "seeds": res["seeds"],
                           **{m: {"statistics": res["models"][m]["statistics"], "init": res["models"][m].get("init"),
                                  "training": res["models"][m].get("training")} for m in models}}
                          for res in results],
              "reference_2019": {"table": REPORT2019_TABLE1, "avg": dict(zip(ref_columns, ref))},
              "markdown": markdown, "files": outputs}
    files.atomic_write_json(exp_dir / "report.json", strict_json(report))
    return report


def _comparison_line(s) -> str:
    d = as_float(s["mean_diff"])
    lo, hi = as_float(s["ci_low"]), as_float(s["ci_high"])
    ci = "n/a" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]"
    dd = "n/a" if math.isnan(d) else f"{d:+.4f}"
    p = lambda x: "n/a" if math.isnan(as_float(x)) else f"{as_float(x):.4g}"  # noqa: E731
    return (f"| {s['b']} − {s['a']} | {s['n']} | {_fmt(s['mean_a'])} | {_fmt(s['mean_b'])} | {dd} | {ci} | "
            f"{p(s['wilcoxon_p'])} | {p(s['sign_p'])} | {s['n_pos']} / {s['n_neg']} / {s['n_zero']} |")


def _plot(path, rows, labels, comparisons, recipe):
    from ..plots import plotting, save_figure
    pairs = [(s["a"], s["b"]) for s in comparisons.values()]
    cols = list(rows[0]) if rows else []
    with plotting() as plt:
        if not pairs:  # one model: its columns per run
            fig, ax = plt.subplots(figsize=(6, 3.8))
            for c in cols:
                ax.plot(range(1, len(rows) + 1), [r[c] for r in rows], "o-", label=c)
            ax.set_xlabel("run"), ax.set_ylabel("accuracy"), ax.legend(), ax.grid(alpha=0.3)
            ax.set_title(f"recipe {recipe}")
        else:
            fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 4), sharey=True, squeeze=False)
            axes = axes[0]
            for ax, (a, b) in zip(axes, pairs):
                for r in rows:
                    ya, yb = r[a], r[b]
                    colour = "tab:green" if yb > ya else ("tab:red" if yb < ya else "tab:gray")
                    ax.plot([0, 1], [ya, yb], "o-", color=colour, alpha=0.6, lw=1)
                s = comparisons[f"{a} vs {b}"]
                ax.plot([0, 1], [as_float(s["mean_a"]), as_float(s["mean_b"])], "s-", color="black", lw=2.5, label="mean")
                ax.set_xticks([0, 1])
                ax.set_xticklabels([a, b])
                ax.set_xlim(-0.3, 1.3)
                d, p = as_float(s["mean_diff"]), as_float(s["sign_p"])
                ax.set_title(f"{b} − {a}: {d:+.3f}" + ("" if math.isnan(p) else f" (sign p={p:.3g})"), fontsize=10)
                ax.grid(alpha=0.3)
            axes[0].set_ylabel("accuracy")
            axes[0].legend(loc="lower left", fontsize=8)
            fig.suptitle(f"paired runs, recipe {recipe} (green: the right-hand one higher, red: the left-hand one "
                         "higher)", fontsize=11)
        try:
            return save_figure(fig, path)
        finally:
            plt.close(fig)


def compare_recipes(out_dir) -> str:
    """Markdown table of every ``out_dir/<recipe>/report.json`` side by side (mean ± std per column)."""
    from .stats import TABLE1_COLUMNS
    out_dir = Path(out_dir)
    reports = []
    for p in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        f = p / "report.json"
        if f.is_file():
            reports.append(json.loads(f.read_text(encoding="utf-8")))
    if not reports:
        raise ValueError(f"{out_dir} holds no <recipe>/report.json; run an experiment into it first")
    key = "A·P2 vs B·P4"
    lines = ["# Recipes side by side", "",
             "| Recipe | Model | B's background | Runs | " + " | ".join(TABLE1_COLUMNS)
             + " | B·P4 − A·P2 (95% CI) | sign-test p |",
             "|---|---|---|---:|" + "---:|" * len(TABLE1_COLUMNS) + "---|---:|"]
    for r in reports:
        cells = []
        for c in TABLE1_COLUMNS:
            s = r["summary"].get(c)
            cells.append("–" if s is None else f"{_fmt(s['mean'])} ± {_fmt(s['std'])}")
        comp = r.get("comparisons", {}).get(key)
        if comp:
            d, lo, hi = as_float(comp["mean_diff"]), as_float(comp["ci_low"]), as_float(comp["ci_high"])
            diff = "n/a" if math.isnan(d) else (f"{d:+.4f}" + ("" if math.isnan(lo) else f" [{lo:+.4f}, {hi:+.4f}]"))
            p = _fmt(comp["sign_p"])
        else:
            diff, p = "–", "–"
        C, H, W = r["input_size"]
        design = r.get("background_classes", "one")
        learns = "one class" if design == "one" else \
            f"{sum(is_background(c, r['data']['background']) for c in r['data']['classes_B'])} kinds"
        lines.append(f"| {r['recipe']} | {r['config']['model']} {H}×{W} | {learns} | {r['runs']} | "
                     + " | ".join(cells)
                     + f" | {diff} | {p} |")
    ref = " | ".join(f"{float(np.mean(REPORT2019_TABLE1[c])):.4f}" for c in TABLE1_COLUMNS)
    lines.append(f"| 2019 report | alexnet336 336×336 | one class | 10 | {ref} | "
                 f"{np.mean(REPORT2019_TABLE1['B·P4']) - np.mean(REPORT2019_TABLE1['A·P2']):+.4f} | – |")
    return "\n".join(lines) + "\n"


def add_arguments(parser):
    """Add ``nabi experiment``'s arguments to an argparse parser (the training settings it takes as flags come
    from their declaration, ``nabi.training.config``)."""
    from ..models.embedding import HEADS as EMBEDDING_HEADS
    from ..training.config import EXPERIMENT
    from ..training.flags import add_setting_flags, setting_keys_help
    parser.add_argument("data", help="DATA/train/<class>/… + DATA/test/<class>/…, or one folder per class "
                                     "(split by --set test_ratio=…)")
    parser.add_argument("--runs", type=int, default=10, help="paired runs (seeds) (default 10)")
    parser.add_argument("--models", default="A,B",
                        help="which models to train, comma-separated: A, B, and E, the embedding arm (the recipe's "
                             "model as an identity embedding scored by a gallery of the training photos), e.g. "
                             "A,B,E (default: A,B)")
    parser.add_argument("--embedding-head", default=EMBEDDING_DEFAULTS["head"],
                        choices=list(EMBEDDING_HEADS),
                        help="model E's training head and loss (default: arcface)")
    parser.add_argument("--embedding-dim", type=int, default=EMBEDDING_DEFAULTS["embedding_dim"],
                        help="model E's embedding size (default: 128)")
    parser.add_argument("--recipe", default="modern", choices=sorted(RECIPES), type=renamed_value("recipe"),
                        help="alexnet336-2019 (the 2019 campus-cat report's setup), resnet18-160 (the strong "
                             "from-scratch baseline: ResNet-18 at 160 px on whole photos, 60 epochs), modern (an "
                             "earlier, shorter ResNet-18 recipe: 128 px centre crops, 30 epochs) or tiny (for tests)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once in worker processes")
    add_executor_arguments(parser)
    parser.add_argument("--background", default="background", help="the background folder's name "
                                                                    "(default: background)")
    parser.add_argument("--background-classes", choices=BACKGROUND_CLASSES, default="one",
                        help="what model B learns of the background: one = one background class (the 2019 "
                             "report's protocol); kinds = one class per sub-folder BACKGROUND/<kind>/ (photos "
                             "directly in BACKGROUND/ stay one class of their own), results in OUT/<recipe>-kinds/; "
                             "A is B without every background row, and P1–P4 count every kind as background "
                             "(default: one)")
    parser.add_argument("--seed", type=int, default=0, help="experiment seed: the split and every run's seeds")
    parser.add_argument("--out", default="runs/experiment", help="results go to OUT/<recipe>/ (OUT/<recipe>-kinds/ "
                                                                 "with --background-classes kinds)")
    parser.add_argument("--iterations-per-class", type=int,
                        help="train each model this many iterations per class it learns; the 2019 report used "
                             "2,000 (default: the recipe's length)")
    add_setting_flags(parser, EXPERIMENT, layered=True, shown="the recipe's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe setting, e.g. --set lr=0.01 --set augment=flip: KEY is one of "
                             f"{setting_keys_help(train_keys())} (`nabi train --help` describes each), or "
                             f"{', '.join(EXTRA_KEYS[1:])} (repeatable; default: none)")
    return parser


def main_from_args(args, log=print) -> int:
    """Run ``nabi experiment`` from parsed arguments; prints the report. Returns 0."""
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip().replace("-", "_")] = parse_value(v.strip())
    from ..training.config import EXPERIMENT
    from ..training.flags import given_settings
    overrides.update(given_settings(args, EXPERIMENT))
    if getattr(args, "iterations_per_class", None) is not None:
        overrides["iterations_per_class"] = args.iterations_per_class
    report = run_experiment(args.data, args.out, runs=args.runs, models=args.models, recipe=args.recipe,
                            jobs=args.jobs, background=args.background, seed=args.seed, overrides=overrides,
                            log=log, background_classes=getattr(args, "background_classes", "one"),
                            embedding={"head": getattr(args, "embedding_head", EMBEDDING_DEFAULTS["head"]),
                                       "embedding_dim": getattr(args, "embedding_dim",
                                                                EMBEDDING_DEFAULTS["embedding_dim"])},
                            **executor_kwargs(args))
    log(report["markdown"])
    log("written: " + ", ".join(v for v in report["files"].values() if v))
    return 0
