"""Ablations (``nabi ablate CONFIG.toml``): one factor, several variants, several seeds, paired runs.

Config (TOML)::

    data = "~/.cache/nabi-data/cifar10"   # a folder (class-per-folder, or train/[val/]test) or embedded:NAME
    factor = "se"                         # ONE factor, a key of FACTORS
    seeds = 2                             # or a list of seeds, e.g. [0, 7, 42]
    seed = 0                              # data split, max_* subsets, and the run seeds when seeds is a count
    paired_init = true                    # default
    max_train = 4000                      # optional stratified, seeded subsets (also max_val, max_test)
    [base]                                # TrainConfig fields (not data/out/seed/progress), and
                                          # recipe = "resnet18-160" to start from a recipe's settings
    model = "resnet20"
    epochs = 3
    [[variants]]                          # the first variant is the reference
    name = "plain"
    se = false
    [[variants]]
    name = "se"
    se = true

A variant holds ``name`` and (optionally) the factor's key, nothing else; its config is
``FACTORS[factor].apply(base, value)``, checked by ``FACTORS[factor].check`` before any data
is read. Every check raises ``ValueError`` before anything is trained or written.

Seeds (reusing ``nabi.studies.jobs.run_seeds``): ``seeds = N`` gives run ``r`` the init and
order seeds of ``SeedSequence(seed).spawn(N)[r-1]``; a list gives each listed value ``v``
those of ``SeedSequence(v).spawn(1)[0]``. All variants of a seed share the init seed and
the data order (the training loader's seed). With ``paired_init`` every variant's model is
built with the init seed and then given the reference variant's arrays wherever name and
shape match (parameters and buffers); the others keep their own seeded init.

Files under OUT: ``ablation_setup.json``, ``runs/<variant>/seed-XX/`` (a training folder,
``run.log`` and ``result.json``, written last), ``ablation.md``, ``ablation.csv`` (one row
per run), ``ablation.json`` and ``ablation.png``. Running again resumes: a finished
``result.json`` is kept, a half-trained run resumes from its latest checkpoint
(``checkpoint_every``). A run folder holding results of another setup is an error.

The ``init`` factor compares starting weights: ``init = false`` is the paired random initialisation,
a weight file or run folder (a ``nabi pretrain`` run, another training run) is loaded over it
wherever name and shape match (the classifier usually stays as initialised); the file's SHA-256 is
part of each run's fingerprint, so new weights under the same name are never mixed with old results.

The ``se`` factor maps CIFAR ResNets to the zoo's ``se_resnet20/32/44/56`` and
``se_resnet18_cifar`` (``nabi.models.senet``; ``reduction`` is a model argument).
"""
from __future__ import annotations

import copy
import csv
import inspect
import io as _io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__, backend
from .. import files
from .. import data as D
from .jobs import (RunLog, as_float, completed_result, plot_history, relative_path, run_parallel, run_resumable,
                   run_seeds, sha256_of_json, state_sha256, strict_json, study_trainer_class)
from .ray_executor import add_executor_arguments, check_executor, executor_kwargs, run_on_ray
from ..training.config import check, current_name, setting_named
from .recipes import fingerprint_config, parse_value, resolve_recipe, train_keys

__all__ = ["Factor", "FACTORS", "register_factor", "SE_PAIRS", "load_config", "plan_ablation", "run_ablation",
           "share_initial_weights", "shared_keys", "paired_variant_models", "write_report", "add_arguments",
           "main_from_args"]

_TOP_KEYS = ("data", "base", "factor", "variants", "seeds", "seed", "paired_init", "out", "jobs", "max_train",
             "max_val", "max_test", "keep_checkpoints", "description")
_BASE_FORBIDDEN = {"data": "set data at the top level", "out": "set out at the top level or pass --out",
                   "seed": "set seed (data split) and seeds (runs) at the top level",
                   "progress": "ablation runs never draw progress bars",
                   "init": "the variants start from shared initial weights drawn per seed (compare starting "
                           "weights with factor = \"init\")"}
_NAME = re.compile(r"^[\w][\w.+-]*$")



# plain ↔ squeeze-and-excitation counterparts in the zoo
SE_PAIRS = {"resnet18": "se_resnet18", "resnet50": "se_resnet50", "resnet18_cifar": "se_resnet18_cifar",
            "resnet20": "se_resnet20", "resnet32": "se_resnet32", "resnet44": "se_resnet44",
            "resnet56": "se_resnet56"}


# -- factors ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Factor:
    """``check(base, value)`` raises ValueError if ``value`` cannot apply; ``apply(base, value)`` -> new config."""
    name: str
    apply: Callable[[dict, Any], dict]
    check: Callable[[dict, Any], None]
    doc: str = ""


FACTORS: dict = {}


def register_factor(name, apply, check=None, doc="", replace=False) -> Factor:
    """Add a factor to ``FACTORS`` (``ValueError`` if the name is taken, unless ``replace``)."""
    if name in FACTORS and not replace:
        raise ValueError(f"factor {name!r} is already registered")
    f = Factor(name, apply, check or (lambda base, value: None), doc)
    FACTORS[name] = f
    return f


def _canonical(model) -> str:
    """The zoo's registered name for ``model`` (aliases such as 'ResNet-20' resolved; ValueError if unknown)."""
    from .. import models
    if not isinstance(model, str):
        raise ValueError(f"model must be a zoo name (a string), got {model!r}")
    fn = models.builder(model)
    return next(n for n in models.names() if models.builder(n) is fn)


def _params_of(model) -> dict:
    from .. import models
    return dict(inspect.signature(models.builder(model)).parameters)


def _model_arg(factor, model, keys) -> str:
    params = _params_of(model)
    for k in keys:
        if k in params:
            return k
    from .. import models
    able = [n for n in models.names() if any(k in _params_of(n) for k in keys)]
    raise ValueError(f"factor {factor!r} sets the model argument {' / '.join(keys)}, which model {model!r} does not "
                     f"take (models that do: {', '.join(able) or 'none'})")


def _number(factor, value, lo=None, hi=None, integer=False, lo_open=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value) == int(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi
    if not ok:
        kind = "an integer" if integer else "a number"
        rng = (f" {'>' if lo_open else '>='} {lo}" if lo is not None else "") \
            + (f" and < {hi}" if hi is not None else "")
        raise ValueError(f"factor {factor!r}: value must be {kind}{rng}, got {value!r}")


def _choice(factor, value, choices):
    if value not in choices:
        raise ValueError(f"factor {factor!r}: value must be one of {', '.join(map(str, choices))}; got {value!r}")


def _model_arg_factor(name, keys, validate, doc):
    def check(base, value):
        _model_arg(name, base["model"], keys)
        validate(name, value)

    def apply(base, value):
        cfg = copy.deepcopy(base)
        cfg["model_args"] = {**cfg["model_args"], _model_arg(name, cfg["model"], keys): value}
        return cfg
    register_factor(name, apply, check, doc)


def _setting_value(factor, value):
    """A training factor's value checked by its setting's declared rule (``nabi.training.config``)."""
    problem = setting_named(factor).rule.problem(current_name(factor, value))
    if problem:
        raise ValueError(f"factor {factor!r}: value {problem}")


def _train_factor(name, doc, key=None):
    key = key or name

    def apply(base, value):
        cfg = copy.deepcopy(base)
        cfg[key] = value
        if key in ("iterations", "epochs"):  # the other length bound no longer applies
            cfg["epochs" if key == "iterations" else "iterations"] = None
        if key == "warmup_fraction":         # the warm-up given one way: the share replaces the iterations
            cfg["warmup"] = 0
        return cfg
    register_factor(name, apply, lambda base, value: _setting_value(name, value), doc)


def _model_value(value):
    """``(name, args or None)`` from a factor-'model' value: "name" or {name = ..., args = {...}}."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and set(value) <= {"name", "args"} and "name" in value:
        args = value.get("args", {})
        if not isinstance(args, dict):
            raise ValueError(f"factor 'model': args must be a table, got {args!r}")
        return value["name"], dict(args)
    raise ValueError(f"factor 'model': value must be a model name or a table {{name = ..., args = {{...}}}}, "
                     f"got {value!r}")


def _check_model(base, value):
    name, args = _model_value(value)
    model = _canonical(name)
    args = base["model_args"] if args is None else args
    extra = sorted(set(args) - set(_params_of(model)) - {"num_classes"})
    if extra:
        raise ValueError(f"factor 'model': model {model!r} does not take model_args {extra}; give this variant's "
                         f"arguments as model = {{name = \"{model}\", args = {{...}}}}")


def _apply_model(base, value):
    name, args = _model_value(value)
    cfg = copy.deepcopy(base)
    cfg["model"] = _canonical(name)
    if args is not None:
        cfg["model_args"] = args
    return cfg


def _check_se(base, value):
    if isinstance(value, bool):
        pass
    else:
        _number("se", value, 1, integer=True)
    model = _canonical(base["model"])
    if model not in SE_PAIRS and model not in SE_PAIRS.values():
        pairs = ", ".join(f"{a} ↔ {b}" for a, b in SE_PAIRS.items())
        raise ValueError(f"factor 'se' toggles squeeze-and-excitation, but model {model!r} has no SE counterpart "
                         f"(pairs: {pairs})")


def _apply_se(base, value):
    cfg = copy.deepcopy(base)
    model = _canonical(cfg["model"])
    plain = {v: k for k, v in SE_PAIRS.items()}.get(model, model)
    args = dict(cfg["model_args"])
    if value is False:
        cfg["model"] = plain
        args.pop("reduction", None)
    else:
        cfg["model"] = SE_PAIRS[plain]
        if not isinstance(value, bool):
            args["reduction"] = int(value)
    cfg["model_args"] = args
    return cfg


def _positive_int(f, v):
    _number(f, v, 1, integer=True)


def _fraction(f, v):
    _number(f, v, 0, 1)


register_factor("model", _apply_model, _check_model,
                "another zoo model: \"name\" (base model_args kept) or {name = ..., args = {...}}")
register_factor("se", _apply_se, _check_se, "squeeze-and-excitation off/on: false, true, or the reduction ratio "
                f"(models: {', '.join(SE_PAIRS)})")
_model_arg_factor("growth_rate", ("growth_rate",), _positive_int, "DenseNet growth rate k (densenet_cifar)")
_model_arg_factor("depth", ("depth",), _positive_int, "DenseNet-BC depth 6n + 4 (densenet_cifar)")
_model_arg_factor("compression", ("compression",), lambda f, v: _number(f, v, 0, 1.0000001, lo_open=True),
                  "DenseNet transition compression θ")
_model_arg_factor("bn_size", ("bn_size",), _positive_int, "DenseNet bottleneck width factor")
_model_arg_factor("reduction", ("reduction",), _positive_int, "SE reduction ratio (SE models)")
_model_arg_factor("dropout", ("dropout", "drop_rate"), _fraction,
                  "dropout probability (AlexNet, VGG, GoogLeNet: dropout; DenseNets: drop_rate)")
_model_arg_factor("activation", ("activation",), lambda f, v: _choice(f, v, ("tanh", "relu")),
                  "LeNet-5 activation")
_model_arg_factor("pool", ("pool",), lambda f, v: _choice(f, v, ("avg", "max")), "LeNet-5 pooling")
def _init_value(value):
    """A factor-'init' value as a weight path, or None for "from scratch" (false, "none" or "")."""
    if value is False or value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if not isinstance(value, str):
        raise ValueError(f"init must be a weight file or run folder (a string), or false for the paired random "
                         f"initialisation; got {value!r}")
    return value


def _check_init(base, value):
    from ..training.init_from import resolve_init_path
    path = _init_value(value)
    if path is not None:
        try:
            resolve_init_path(path)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None


def _apply_init(base, value):
    cfg = copy.deepcopy(base)
    cfg["init"] = _init_value(value)
    return cfg


register_factor("init", _apply_init, _check_init,
                "starting weights: false (the paired random initialisation of each run seed) or a weight file / run folder "
                "(e.g. a `nabi pretrain` run) loaded over it wherever name and shape match")
_train_factor("lr", "learning rate")
_train_factor("weight_decay", "weight decay")
_train_factor("momentum", "SGD momentum")
_train_factor("batch_size", "batch size")
_train_factor("label_smoothing", "label smoothing")
_train_factor("epochs", "epochs")
_train_factor("iterations", "iterations (instead of epochs)")
_train_factor("image_size", "input size (models with adaptive pooling)")
_train_factor("optimizer", "optimizer")
_train_factor("augment", "online augmentation")
_train_factor("fit", "how photos are brought to the input size: crop (centre), squash (whole photo) or pad")
_train_factor("warmup_fraction", "warm-up share of the run (warmup_cosine)")
_train_factor("normalize", "normalisation")
_train_factor("schedule", "learning-rate schedule")


# -- configuration --------------------------------------------------------------------------------------------
def load_config(path, overrides=None) -> dict:
    """Read the TOML file; ``overrides`` {dotted key: value} (``base.epochs``) replace its values."""
    from ..training.config import load_toml
    cfg = load_toml(Path(path).expanduser())
    for key, value in (overrides or {}).items():
        parts = key.split(".")
        if parts[0] == "variants":
            raise ValueError("variants cannot be overridden from the command line; edit the config file")
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"cannot set {key!r}: {p!r} is not a table")
        node[parts[-1]] = value
    cfg.setdefault("_source", str(path))
    return cfg


def _base_config(base) -> dict:
    from ..training.config import TrainConfig
    if not isinstance(base, dict):
        raise ValueError(f"[base] must be a table of TrainConfig fields, got {base!r}")
    for k, why in _BASE_FORBIDDEN.items():
        if k in base:
            raise ValueError(f"[base] cannot set {k!r}: {why}")
    base = dict(base)
    recipe = base.pop("recipe", None)
    out = TrainConfig().to_dict()
    for k in _BASE_FORBIDDEN:
        out.pop(k)
    unknown = sorted(set(base) - set(out))
    if unknown:
        raise ValueError(f"[base] has unknown key(s) {unknown}; known: recipe, {', '.join(sorted(out))}")
    if recipe is not None:
        from .recipes import RECIPES, recipe_train_settings, refuse_embedding_recipe
        if not isinstance(recipe, str):
            raise ValueError(f"[base] recipe must be a recipe's name ({', '.join(RECIPES)}), got {recipe!r}")
        try:
            refuse_embedding_recipe(recipe, "an ablation")
            settings = recipe_train_settings(recipe)
        except ValueError as e:
            raise ValueError(f"[base] recipe: {e}") from None
        out.update({k: v for k, v in settings.items() if k in out})
        if base.get("warmup") and "warmup_fraction" not in base:        # a warm-up given in [base] replaces
            out["warmup_fraction"] = None                               # the recipe's, in either form
        if base.get("warmup_fraction") is not None and "warmup" not in base:
            out["warmup"] = 0
    out.update(copy.deepcopy(base))
    if not isinstance(out["model_args"], dict):
        raise ValueError(f"[base] model_args must be a table, got {out['model_args']!r}")
    if "iterations" in base and "epochs" not in base:
        out["epochs"] = None
    return out


def _validate(cfg, where):
    """Check a variant's training config: ``resolve_recipe``'s checks, then ``nabi.training.config.check``
    (ValueError)."""
    try:
        ov = {k: cfg[k] for k in train_keys() if k in cfg and k not in ("epochs", "iterations")}
        length = "iterations" if cfg.get("iterations") is not None else "epochs"
        ov[length] = cfg[length]
        resolve_recipe("tiny", ov)
        if cfg.get("channels") not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or absent, got {cfg['channels']!r}")
        check(cfg, name_of=lambda setting: setting.name)     # the rest of the training settings' rules
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _seed_list(seeds, seed) -> list:
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return [dict(s, seed=None) for s in run_seeds(seed, seeds)]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has duplicates: {seeds}")
    return [dict(run_seeds(s, 1)[0], run=i + 1, seed=s) for i, s in enumerate(seeds)]


def _parse(config: dict) -> dict:
    """Structural checks of the config (no data, no models built): the parsed setup."""
    if not isinstance(config, dict):
        raise ValueError(f"an ablation config is a table, got {type(config).__name__}")
    config = {k: v for k, v in config.items() if k != "_source"}
    unknown = sorted(set(config) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown}; known: {', '.join(_TOP_KEYS)}")
    for k in ("data", "factor", "variants"):
        if k not in config:
            raise ValueError(f"the config needs {k!r}")
    factor = config["factor"]
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; known factors: {', '.join(sorted(FACTORS))}")
    data = config["data"]
    if not isinstance(data, str) or not data:
        raise ValueError(f"data must be a folder or embedded:NAME, got {data!r}")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    paired = config.get("paired_init", True)
    if not isinstance(paired, bool):
        raise ValueError(f"paired_init must be true or false, got {paired!r}")
    jobs = config.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    limits = {}
    for k in ("max_train", "max_val", "max_test"):
        v = config.get(k)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
            limits[k[4:]] = v
    base = _base_config(config.get("base", {}))
    _canonical(base["model"])  # unknown model: ValueError listing the zoo
    variants = config["variants"]
    if not isinstance(variants, list) or len(variants) < 2:
        raise ValueError("give at least two [[variants]] (the first is the reference)")
    f = FACTORS[factor]
    parsed, names = [], set()
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"variant {i + 1} needs a name")
        name = v["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"variant name {name!r} must be letters, digits, '_', '-', '.' or '+' (a folder name)")
        if name in names:
            raise ValueError(f"two variants are named {name!r}")
        names.add(name)
        other = sorted(set(v) - {"name", factor})
        if other:
            raise ValueError(f"variant {name!r} sets {other}, but this ablation's factor is {factor!r}: a variant "
                             f"may set only name and {factor} (put shared settings in [base])")
        if factor in v:
            try:
                f.check(copy.deepcopy(base), v[factor])
                cfg = f.apply(copy.deepcopy(base), v[factor])
            except ValueError as e:
                raise ValueError(f"variant {name!r}: {e}") from None
        else:
            cfg = copy.deepcopy(base)
        try:
            cfg["model"] = _canonical(cfg["model"])
        except ValueError as e:
            raise ValueError(f"variant {name!r}: {e}") from None
        _validate(cfg, f"variant {name!r}")
        parsed.append({"name": name, "value": v.get(factor), "config": cfg})
    for i, a in enumerate(parsed):
        for b in parsed[:i]:
            if a["config"] == b["config"]:
                raise ValueError(f"variants {b['name']!r} and {a['name']!r} give the same configuration")
    return {"data": data, "factor": factor, "seed": seed, "seeds": _seed_list(config.get("seeds", 3), seed),
            "paired_init": paired, "jobs": jobs, "limits": limits, "base": base, "variants": parsed,
            "keep_checkpoints": bool(config.get("keep_checkpoints", False)),
            "description": str(config.get("description", "")), "out": config.get("out")}


# -- data ---------------------------------------------------------------------------------------------------
def _subset(ds, k, seed, what):
    if ds is None or k is None or k >= len(ds):
        return ds
    labels = np.asarray(ds.targets)
    n_classes = len(np.unique(labels))
    if k < n_classes:
        raise ValueError(f"max_{what}={k} is below the number of classes ({n_classes})")
    keep = D.stratified_split(labels, (k / len(ds), 1 - k / len(ds)), seed)[0]
    return D.Subset(ds, keep)


def _part_signature(ds):
    """JSON-able identity of a dataset part: the files (or array bytes) it holds and their labels."""
    if ds is None:
        return None
    idx = np.arange(len(ds))
    while isinstance(ds, D.Subset):
        idx = ds.indices[idx]
        ds = ds.dataset
    if hasattr(ds, "samples"):
        root = Path(ds.root)
        listing = [(relative_path(ds.samples[i][0], root), int(ds.samples[i][1])) for i in idx]
        return {"root": str(root.absolute()), "files": sha256_of_json(listing), "n": len(listing)}
    images = np.ascontiguousarray(ds.images[idx])
    import hashlib
    return {"arrays": hashlib.sha256(images.view(np.uint8).reshape(-1)).hexdigest(),
            "labels": sha256_of_json(np.asarray(ds.labels)[idx].tolist()), "n": int(len(idx))}


class _Data:
    """Datasets loaded once per (channels, size, split settings) and normalisations, shared by variants."""

    def __init__(self, data, seed, limits):
        self.data, self.seed, self.limits = data, seed, limits
        self.embedded = data.startswith("embedded:")
        self.path = data if self.embedded else str(Path(data).expanduser())
        self.parts, self.norms = {}, {}

    def key(self, cfg, channels, size):
        split = (cfg["val_ratio"], cfg["test_ratio"], tuple(cfg["exclude"]), bool(cfg["strict"]),
                 cfg.get("encounters") or "photo")
        return split if self.embedded else (channels, size, cfg["fit"], *split)

    def get(self, cfg, channels, size):
        from ..data.prepare import load_datasets
        key = self.key(cfg, channels, size)
        if key not in self.parts:
            parts = load_datasets(self.path, image_size=(size, size), channels=channels, val_ratio=cfg["val_ratio"],
                                  test_ratio=cfg["test_ratio"], seed=self.seed, exclude=cfg["exclude"],
                                  strict=cfg["strict"], fit=cfg["fit"],
                                  encounters=cfg.get("encounters") or "photo")
            if parts.get("test") is None:
                raise ValueError(f"{self.data} gives no test set: add a test/ folder or set test_ratio > 0 in [base]")
            if len(parts["classes"]) < 2:
                raise ValueError(f"{self.data}: need at least two classes, found {parts['classes']}")
            for what in ("train", "val", "test"):
                parts[what] = _subset(parts.get(what), self.limits.get(what), self.seed, what)
            parts["signature"] = {w: _part_signature(parts.get(w)) for w in ("train", "val", "test")}
            self.parts[key] = parts
        return key, self.parts[key]

    def norm(self, key, kind, channels):
        from ..data.prepare import normalization_spec
        if (key, kind) not in self.norms:
            self.norms[(key, kind)] = normalization_spec(kind, self.parts[key]["train"], channels)
        return self.norms[(key, kind)]


# -- paired initialisation ------------------------------------------------------------------------------------
def shared_keys(reference, model) -> list:
    """Names of ``model``'s state entries (parameters and buffers) with the same name and shape in ``reference``."""
    ref = {k: np.shape(v) for k, v in reference.state_dict().items()}
    return [k for k, v in model.state_dict().items() if ref.get(k) == np.shape(v)]


def share_initial_weights(reference, model) -> list:
    """Copy ``reference``'s arrays into ``model`` wherever name and shape match; returns the copied names."""
    keys = shared_keys(reference, model)
    state = reference.state_dict()
    model.load_state_dict({k: state[k] for k in keys}, strict=False)
    return keys


def _share_counts(model, keys) -> dict:
    keys = set(keys)
    params = list(model.named_parameters())
    shared = [(n, p) for n, p in params if n in keys]
    return {"arrays": len(shared), "params": int(sum(p.size for _, p in shared)), "total_arrays": len(params),
            "total_params": int(sum(p.size for _, p in params))}


def _build(cfg, n_classes, seed, input_size=None):
    from ..training.build import build_model
    model = build_model(cfg["model"], n_classes, cfg["model_args"], seed=seed)
    if input_size is not None:
        model.input_size = tuple(int(s) for s in input_size)
    return model


def _initial_models(variant_cfg, reference_cfg, n_classes, init_seed, paired, input_size=None):
    """``(model, shared names, reference model)`` for one variant and seed (the reference's copy is the model)."""
    model = _build(variant_cfg, n_classes, init_seed, input_size)
    if reference_cfg is None:  # this is the reference
        return model, [k for k in model.state_dict()], model
    reference = _build(reference_cfg, n_classes, init_seed)
    keys = share_initial_weights(reference, model) if paired else shared_keys(reference, model)
    return model, keys, reference


def paired_variant_models(plan, seed_index) -> dict:
    """Every variant's initial model for run ``seed_index`` (1-based), built as the runs build them.

    Returns ``{variant: (model, shared names with the reference)}``.
    """
    s = plan["seeds"][seed_index - 1]
    ref = plan["variants"][0]
    out = {}
    for v in plan["variants"]:
        model, keys, _ = _initial_models(v["config"], None if v is ref else ref["config"], len(plan["classes"]),
                                         s["init_seed"], plan["paired_init"], v["input_size"])
        out[v["name"]] = (model, keys)
    return out


# -- planning -----------------------------------------------------------------------------------------------
def _no_shared(v, ref):
    raise ValueError(f"paired_init: variant {v['name']!r} ({v['config']['model']}) shares no parameter (same name "
                     f"and shape) with the reference {ref['name']!r} ({ref['config']['model']}); set "
                     "paired_init = false to compare them with independent initialisations")


def plan_ablation(config, log=None) -> dict:
    """Check everything and load the data (no training, nothing written): the plan ``run_ablation`` follows.

    ``config``: a dict as read from TOML (see the module doc) or a path to a TOML file.
    """
    from ..data.prepare import Transformed, eval_transforms
    from ..models.registry import model_input_size
    from ..summary import summary
    log = log or (lambda *a, **k: None)
    if not isinstance(config, dict):
        config = load_config(config)
    setup = _parse(config)
    data = _Data(setup["data"], setup["seed"], setup["limits"])
    probes = []
    for v in setup["variants"]:  # every model builds, and pairs with the reference, before any data is read
        cfg = v["config"]
        try:
            probes.append(_build(cfg, 2, 0))
        except (TypeError, ValueError) as e:
            raise ValueError(f"variant {v['name']!r}: model {cfg['model']} cannot be built with model_args "
                             f"{cfg['model_args']}: {e}") from None
        v["_size"] = model_input_size(probes[-1])
        if setup["paired_init"] and len(probes) > 1 and not _share_counts(probes[-1],
                                                                          shared_keys(probes[0], probes[-1]))["arrays"]:
            _no_shared(v, setup["variants"][0])
    del probes
    variants, classes = [], None
    for v in setup["variants"]:
        cfg, where = v.pop("config"), f"variant {v['name']!r}"
        C, H, W = v.pop("_size")
        channels, size = cfg["channels"] or C, cfg["image_size"] or H
        key, parts = data.get(cfg, channels, size)
        classes = classes or list(parts["classes"])
        probe = _build(cfg, len(classes), 0)
        if list(parts["classes"]) != classes:
            raise ValueError(f"{where}: its data has classes {parts['classes']}, the reference's {classes}")
        norm = data.norm(key, cfg["normalize"], channels)
        input_size = [int(C), int(size), int(size)]
        probe.input_size = tuple(input_size)
        x, _ = Transformed(parts["train"], eval_transforms((size, size), norm))[0]
        probe.eval()
        try:
            probe(np.asarray(x)[None].astype(backend.get_default_dtype()))
            s = summary(probe, tuple(input_size), file=False)
        except ValueError as e:
            raise ValueError(f"{where}: model {cfg['model']} cannot take this data's examples (shape "
                             f"{tuple(np.shape(x))}): {e}") from None
        variants.append({**v, "config": cfg, "input_size": input_size, "normalization": norm, "data_key": key,
                         "params": int(s.total_params), "macs": int(s.total_macs), "_probe": probe})
    ref = variants[0]
    for v in variants:
        keys = [k for k in v["_probe"].state_dict()] if v is ref else shared_keys(ref["_probe"], v["_probe"])
        v["shared"] = _share_counts(v["_probe"], keys)
        if setup["paired_init"] and v["shared"]["arrays"] == 0:
            _no_shared(v, ref)
    for v in variants:
        if v["config"].get("init"):  # the weights must fit this model (ValueError naming the file otherwise)
            from ..files.digest import file_sha256
            from ..training.init_from import load_matching, resolve_init_path
            load_matching(v["_probe"], v["config"]["init"])
            v["init_sha256"] = file_sha256(resolve_init_path(v["config"]["init"]))
        del v["_probe"]
    parts_of = {v["name"]: data.parts[v["data_key"]] for v in variants}
    first = parts_of[ref["name"]]
    counts = {w: (len(first[w]) if first.get(w) is not None else 0) for w in ("train", "val", "test")}
    log(f"ablation of {setup['factor']!r}: {len(variants)} variants × {len(setup['seeds'])} seeds on {setup['data']} "
        f"({counts['train']} train, {counts['val']} val, {counts['test']} test images, {len(classes)} classes)")
    return {**setup, "classes": classes, "variants": variants, "counts": counts, "_parts": parts_of}


def _fingerprint(plan, v, s) -> str:
    strip = fingerprint_config              # the execution settings left out
    ref = plan["variants"][0]
    return sha256_of_json({"data": plan["_parts"][v["name"]]["signature"], "data_seed": plan["seed"],
                   "classes": plan["classes"], "config": strip(v["config"]), "input_size": v["input_size"],
                   "normalization": v["normalization"], "paired_init": plan["paired_init"],
                   "reference": None if v is ref else strip(ref["config"]),
                   "seeds": {"init_seed": s["init_seed"], "order_seed": s["order_seed"]},
                   **({"init_sha256": v["init_sha256"]} if v.get("init_sha256") else {})})


def _run_dir(out_dir, variant, s) -> Path:
    return Path(out_dir) / "runs" / variant / f"seed-{s['run']:02d}"


# -- one run ----------------------------------------------------------------------------------------------------
def _run_variant(job, log=None) -> dict:
    """Train and score one (variant, seed) run, writing ``result.json`` last; a finished one is returned as is."""
    return run_resumable(job, f"[{job['variant']} · seed {job['seeds']['run']:02d}]", _train_run, log)


def _train_run(job, run_dir, log):
    import shutil
    from ..training.config import TrainConfig
    from ..data.prepare import Transformed, augmentation, eval_transforms, eval_loader
    from ..training.build import build_trainer
    from ..runs import model_metadata, resolved_config, write_config
    from ..training.evaluation import evaluate
    cfg, seeds, parts, name = job["config"], job["seeds"], job["parts"], job["variant"]
    rlog = RunLog(run_dir / "run.log", f"[{name} · seed {seeds['run']:02d}]", echo=log)
    files.atomic_write_json(run_dir / "run.json", {"fingerprint": job["fingerprint"], "variant": name, "seeds": seeds})
    model, keys, reference = _initial_models(cfg, job["reference_config"], len(job["classes"]), seeds["init_seed"],
                                             job["paired_init"], job["input_size"])
    init_state, ref_state = model.state_dict(), reference.state_dict()
    del reference
    init = {"sha256": state_sha256(init_state), "shared": _share_counts(model, keys),
            "shared_sha256": state_sha256({k: init_state[k] for k in keys}),
            "reference_shared_sha256": state_sha256({k: ref_state[k] for k in keys})}
    del init_state, ref_state
    if cfg.get("init"):  # factor 'init': pretrained arrays over the paired initialisation
        from ..training.init_from import format_report, load_matching
        loaded = load_matching(model, cfg["init"])
        rlog(format_report(loaded))
        init.update(sha256=state_sha256(model.state_dict()),
                    pretrained={"path": loaded["path"], "file_sha256": job["init_sha256"],
                                "loaded": len(loaded["loaded"]), "new": loaded["new"], "skipped": loaded["skipped"]})
    H, W = job["input_size"][1:]
    norm = job["normalization"]
    base = eval_transforms((H, W), norm)
    train_ds = Transformed(parts["train"], [base[0]] + augmentation(cfg["augment"], (H, W)) + base[1:])
    loader = D.DataLoader(train_ds, batch_size=cfg["batch_size"], shuffle=True, seed=seeds["order_seed"],
                          num_workers=cfg["workers"], device=cfg["device"])
    val_loader = None
    if parts.get("val") is not None:
        val_loader = D.DataLoader(Transformed(parts["val"], base), batch_size=max(cfg["batch_size"], 64),
                                  num_workers=cfg["workers"], device=cfg["device"])
    epochs = cfg["epochs"] or math.ceil(cfg["iterations"] / len(loader))
    tc = TrainConfig.from_dict({**cfg, "epochs": epochs, "data": "(ablation)", "out": str(run_dir),
                                "seed": int(seeds["order_seed"]), "progress": False})
    model.to(cfg["device"])
    ran = {"classes": job["classes"], "input_size": job["input_size"], "normalization": norm,
           "num_train": len(parts["train"]), "num_val": len(parts["val"]) if parts.get("val") is not None else 0,
           "num_test": len(parts["test"]), "ablation_variant": name, "factor": job["factor"], "init": init}
    resolved = resolved_config(tc, ran)
    meta = model_metadata(model, job["classes"], norm, resolved)
    trainer = build_trainer(tc, model, loader, val_loader, out_dir=run_dir, metadata=meta, config=resolved,
                            log=rlog, trainer_class=study_trainer_class())
    rlog(f"training {cfg['model']} ({init['shared']['arrays']}/{init['shared']['total_arrays']} arrays from the "
         f"reference) on {len(parts['train'])} images")
    t0 = time.perf_counter()
    trainer.resume()
    write_config(run_dir, tc, ran)       # after the resume: a refused one leaves config.json as it was
    trainer.fit()
    plot_history(trainer.history, run_dir / "curves.png")
    test = evaluate(model, eval_loader(parts["test"], meta, device=cfg["device"]))
    val = evaluate(model, eval_loader(parts["val"], meta, device=cfg["device"])) if parts.get("val") is not None \
        else None
    last = trainer.history[-1] if trainer.history else {}
    metrics = {"test_acc": test["acc"], "test_loss": test["loss"], "n_test": test["n"],
               "val_acc": val["acc"] if val else None, "val_loss": val["loss"] if val else None,
               "n_val": val["n"] if val else 0, "train_seconds": float(sum(r["epoch_time_s"] for r in trainer.history)),
               "wall_seconds_this_session": time.perf_counter() - t0, "iterations": trainer.iteration,
               "epochs": trainer.epoch, "status": trainer.status, "num_train": len(parts["train"]),
               "final_train_loss": last.get("train_loss"), "final_train_acc": last.get("train_acc"),
               "weights": "final"}
    result = strict_json({"format": "nabi-ablation-run", "nabi_version": __version__, "variant": name,
                       "factor": job["factor"], "seeds": seeds, "fingerprint": job["fingerprint"], "init": init,
                       "models": {name: metrics}})
    files.atomic_write_json(run_dir / "result.json", result)
    if not job["keep_checkpoints"]:  # keep the scored (final) weights only
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        for f in ("best.safetensors", "best.json"):
            (run_dir / f).unlink(missing_ok=True)
    rlog(f"done: test acc {test['acc']:.4f}" + (f", val acc {val['acc']:.4f}" if val else "")
         + f", {metrics['train_seconds']:.1f} s training")
    return result


def _run_jobs(jobs_list, jobs, log, executor="local", **ray_options):
    """In this process, in a 'spawn' worker pool, or as Ray tasks, with ``_run_variant`` as the job function."""
    if executor == "ray":
        run_on_ray(jobs_list, _run_variant, log, **ray_options)
        return
    if jobs == 1 or len(jobs_list) <= 1:
        for job in jobs_list:
            _run_variant(job, log=log)
        return
    run_parallel(jobs_list, jobs, log, fn=_run_variant)


def _setup_record(plan) -> dict:
    return strict_json({
        "format": "nabi-ablation", "nabi_version": __version__, "factor": plan["factor"], "data": plan["data"],
        "seed": plan["seed"], "paired_init": plan["paired_init"], "limits": plan["limits"], "base": plan["base"],
        "classes": plan["classes"], "counts": plan["counts"], "description": plan["description"],
        "reference": plan["variants"][0]["name"],
        "seeds": plan["seeds"],
        "variants": [{k: v[k] for k in ("name", "value", "config", "input_size", "normalization", "params", "macs",
                                        "shared")} | {"fingerprints": v["fingerprints"]} for v in plan["variants"]]})


def run_ablation(config, out_dir=None, jobs=None, log=print, plan=None, executor="local", address=None,
                 cpus_per_run=1, gpus_per_run=0) -> dict:
    """Check, run (or resume) every (variant, seed) run, write the report; returns the report dict.

    ``config``: a dict or a TOML path; ``out_dir`` defaults to the config's ``out``, else
    ``runs/ablation``; ``jobs`` (default: the config's, else 1) runs at once in worker processes;
    ``executor='ray'`` runs each run as a Ray task on a local instance or the cluster at
    ``address`` instead (the config's ``jobs`` is then unused), with ``cpus_per_run`` and
    ``gpus_per_run`` each (see ``ray_executor.run_on_ray``).
    """
    log = log or (lambda *a, **k: None)
    if executor == "ray" and jobs not in (None, 1):  # the config's jobs is for the local executor only
        raise ValueError("--jobs is for the local executor; with --executor ray each run is a Ray task "
                         "(share the cores with --cpus-per-run)")
    check_executor(executor, address, cpus_per_run, gpus_per_run)
    plan = plan or plan_ablation(config, log=log)
    out_dir = Path(out_dir or plan["out"] or "runs/ablation").expanduser()
    jobs = plan["jobs"] if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    ref = plan["variants"][0]
    for v in plan["variants"]:
        v["fingerprints"] = [_fingerprint(plan, v, s) for s in plan["seeds"]]
    jobs_list, clashes, k = [], [], 0
    for i, s in enumerate(plan["seeds"]):
        for v in plan["variants"]:
            k += 1
            fp, run_dir = v["fingerprints"][i], _run_dir(out_dir, v["name"], s)
            for f in ("result.json", "run.json"):
                try:
                    old = json.loads((run_dir / f).read_text(encoding="utf-8")).get("fingerprint")
                except (OSError, ValueError):
                    continue
                if old != fp:
                    clashes.append(str(run_dir))
                break
            jobs_list.append({"run": k, "run_dir": str(run_dir), "variant": v["name"], "models": [v["name"]],
                              "fingerprint": fp, "seeds": s, "config": v["config"], "factor": plan["factor"],
                              "reference_config": None if v is ref else ref["config"],
                              "paired_init": plan["paired_init"], "input_size": v["input_size"],
                              "normalization": v["normalization"], "classes": plan["classes"],
                              "parts": {w: plan["_parts"][v["name"]].get(w) for w in ("train", "val", "test")},
                              "keep_checkpoints": plan["keep_checkpoints"], "init_sha256": v.get("init_sha256")})
    if clashes:
        raise ValueError(f"{out_dir} holds runs of a different setup ({', '.join(clashes[:3])}"
                         f"{' …' if len(clashes) > 3 else ''}); use another --out or delete them")
    out_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(out_dir / "ablation_setup.json", _setup_record(plan))
    todo = []
    for job in jobs_list:
        if completed_result(Path(job["run_dir"]), job["models"], job["fingerprint"]) is not None:
            log(f"{job['variant']} seed {job['seeds']['run']:02d}: complete, kept")
        else:
            todo.append(job)
            log(f"run {job['run']:02d} = {job['variant']}, seed {job['seeds']['run']:02d}")
    t0 = time.perf_counter()
    _run_jobs(todo, jobs, log, executor, **({"address": address, "cpus_per_run": cpus_per_run,
                                             "gpus_per_run": gpus_per_run} if executor == "ray" else {}))
    log(f"{len(todo)} run(s) trained in {time.perf_counter() - t0:.1f} s")
    report = write_report(out_dir)
    log(f"report: {report['files']['md']}")
    return report


# -- report ------------------------------------------------------------------------------------------------------
def _ms(values):
    from .stats import mean_std
    m, s = mean_std([as_float(x) for x in values])
    return {"mean": m, "std": s, "values": list(values)}


def _pm(d, digits=4):
    m, s = as_float(d["mean"]), as_float(d["std"])
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def _value_text(v):
    return "(base)" if v is None else (json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)


def write_report(out_dir) -> dict:
    """Write ``ablation.md``, ``.csv``, ``.json`` and ``.png`` from ``ablation_setup.json`` and the runs' results."""
    from .stats import paired_summary, table_markdown
    out_dir = Path(out_dir)
    setup = json.loads((out_dir / "ablation_setup.json").read_text(encoding="utf-8"))
    seeds, variants = setup["seeds"], setup["variants"]
    results = {}
    for v in variants:
        for s, fp in zip(seeds, v["fingerprints"]):
            res = completed_result(_run_dir(out_dir, v["name"], s), [v["name"]], fp)
            if res is None:
                raise RuntimeError(f"run {v['name']} seed {s['run']:02d} in {out_dir} is not complete; run the "
                                   "ablation again to finish it")
            results[(v["name"], s["run"])] = res
    metric = lambda v, key: [results[(v["name"], s["run"])]["models"][v["name"]][key] for s in seeds]  # noqa: E731
    has_val = all(x is not None for v in variants for x in metric(v, "val_acc"))
    ref = variants[0]
    rows = []
    for v in variants:
        row = {"name": v["name"], "value": v["value"], "model": v["config"]["model"],
               "model_args": v["config"]["model_args"], "params": v["params"], "macs": v["macs"],
               "input_size": v["input_size"], "shared": v["shared"], "test_acc": _ms(metric(v, "test_acc")),
               "train_seconds": _ms(metric(v, "train_seconds"))}
        if has_val:
            row["val_acc"] = _ms(metric(v, "val_acc"))
        rows.append(row)
    comparisons = {}
    for v in variants[1:]:
        comp = {"test_acc": {"a": ref["name"], "b": v["name"],
                             **paired_summary(metric(ref, "test_acc"), metric(v, "test_acc")).to_dict()}}
        if has_val:
            comp["val_acc"] = {"a": ref["name"], "b": v["name"],
                               **paired_summary(metric(ref, "val_acc"), metric(v, "val_acc")).to_dict()}
        comparisons[v["name"]] = comp
    seed_labels = [str(s["seed"]) if s.get("seed") is not None else f"{s['run']:02d}" for s in seeds]
    per_run = []
    for v in variants:
        for s, lab in zip(seeds, seed_labels):
            res = results[(v["name"], s["run"])]
            m = res["models"][v["name"]]
            per_run.append({"variant": v["name"], "seed": lab, "run": s["run"], "init_seed": s["init_seed"],
                            "order_seed": s["order_seed"], "test_acc": m["test_acc"], "val_acc": m["val_acc"],
                            "train_seconds": m["train_seconds"], "iterations": m["iterations"],
                            "params": v["params"], "macs": v["macs"], "shared_arrays": res["init"]["shared"]["arrays"],
                            "shared_params": res["init"]["shared"]["params"],
                            "init_sha256": res["init"]["sha256"], "shared_sha256": res["init"]["shared_sha256"]})

    # markdown
    b = setup["base"]
    length = f"{b['iterations']} iterations" if b.get("iterations") else f"{b['epochs']} epochs"
    c = setup["counts"]
    model = f"`{b['model']}`" + (f" {b['model_args']}" if b["model_args"] else "")
    origin = "listed" if seeds[0].get("seed") is not None else f"spawned from seed {setup['seed']}"
    lines = [f"# Ablation of `{setup['factor']}` · {len(variants)} variants × {len(seeds)} seeds", ""]
    if setup.get("description"):
        lines += [setup["description"], ""]
    lines += [f"- Data: `{setup['data']}`: {c['train']} train, {c['val']} val, {c['test']} test images, "
              f"{len(setup['classes'])} classes" + (f" (subsets {setup['limits']}, stratified, seed {setup['seed']})"
                                                    if setup["limits"] else ""),
              f"- Base: {model}, {length}, batch {b['batch_size']}, {b['optimizer']} lr {b['lr']:g}, "
              f"schedule {b['schedule']}, augment {b['augment']}, normalize {b['normalize']}",
              f"- Seeds: {', '.join(seed_labels)} ({origin}); "
              "all variants of a seed see the training images in the same order. "
              + ("Paired initialisation: each variant starts from the reference's weights wherever name and shape "
                 "match." if setup["paired_init"] else "Independent initialisation (same seed, no copying)."),
              f"- Reference: `{ref['name']}`. Final weights are scored. Std: sample standard deviation over seeds.",
              "", "## Variants", "",
              "| Variant | " + setup["factor"] + " | Model | Params | MACs | Shared init (arrays / params) | "
              "Test acc | " + ("Val acc | " if has_val else "") + "Train time (s) |",
              "|---|---|---|---:|---:|---|---:|" + ("---:|" if has_val else "") + "---:|"]
    for r in rows:
        sh = r["shared"]
        lines.append(f"| {r['name']} | {_value_text(r['value'])} | {r['model']} | {r['params']:,} | {r['macs']:,} | "
                     f"{sh['arrays']}/{sh['total_arrays']} / {sh['params']:,} | {_pm(r['test_acc'])} | "
                     + (f"{_pm(r['val_acc'])} | " if has_val else "") + f"{_pm(r['train_seconds'], 1)} |")
    table = table_markdown([[results[(v["name"], s["run"])]["models"][v["name"]]["test_acc"] for v in variants]
                            for s in seeds], [v["name"] for v in variants], row_labels=seed_labels, label="Seed")
    lines += ["", "## Test accuracy per seed", "", table]
    if comparisons:
        lines += ["## Paired differences vs the reference (d = variant − reference, per seed)", "",
                  "| Metric | Variant − reference | n | mean d | 95% CI of d | Wilcoxon p | sign-test p "
                  "| + / − / = |",
                  "|---|---|---:|---:|---|---:|---:|---|"]
        notes = []
        for name, comp in comparisons.items():
            for met, s in comp.items():
                d, lo, hi = as_float(s["mean_diff"]), as_float(s["ci_low"]), as_float(s["ci_high"])
                p = lambda x: "n/a" if math.isnan(as_float(x)) else f"{as_float(x):.4g}"  # noqa: E731
                lines.append(f"| {met} | {name} − {ref['name']} | {s['n']} | "
                             f"{'n/a' if math.isnan(d) else f'{d:+.4f}'} | "
                             f"{'n/a' if math.isnan(lo) else f'[{lo:+.4f}, {hi:+.4f}]'} | {p(s['wilcoxon_p'])} | "
                             f"{p(s['sign_p'])} | {s['n_pos']} / {s['n_neg']} / {s['n_zero']} |")
                notes += [f"{met}, {name}: {n}" for n in s["notes"]]
        lines += ["", "95% CI: Student t over the per-seed differences. Wilcoxon signed-rank (zeros dropped) and "
                  "exact sign test, two-sided."]
        lines += [f"- note: {n}" for n in notes]
    markdown = "\n".join(lines) + "\n"
    outputs = {"md": str(out_dir / "ablation.md"), "csv": str(out_dir / "ablation.csv"),
             "json": str(out_dir / "ablation.json"), "png": None}
    files.atomic_write_text(out_dir / "ablation.md", markdown)
    buf = _io.StringIO()
    cols = list(per_run[0])
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in per_run:
        w.writerow(["" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in cols])
    files.atomic_write_text(out_dir / "ablation.csv", buf.getvalue())
    try:
        outputs["png"] = str(_plot(out_dir / "ablation.png", rows, variants, seeds, seed_labels, metric, has_val,
                                 setup["factor"]))
    except ImportError:  # matplotlib missing: the tables hold every number
        pass
    report = strict_json({"format": "nabi-ablation-report", "nabi_version": __version__, "dir": str(out_dir),
                       "factor": setup["factor"], "reference": ref["name"], "seeds": seeds, "seed_labels": seed_labels,
                       "paired_init": setup["paired_init"], "data": setup["data"], "counts": setup["counts"],
                       "base": setup["base"], "variants": rows, "comparisons": comparisons, "runs": per_run,
                       "markdown": markdown, "files": outputs})
    files.atomic_write_json(out_dir / "ablation.json", report)
    return report


def _plot(path, rows, variants, seeds, seed_labels, metric, has_val, factor):
    from ..plots import plotting, save_figure
    keys = ["test_acc"] + (["val_acc"] if has_val else [])
    x = np.arange(len(variants))
    with plotting() as plt:
        fig, axes = plt.subplots(1, len(keys), figsize=(max(4.5, 1.2 * len(variants) + 2.5) * len(keys), 4),
                                 squeeze=False)
        for ax, key in zip(axes[0], keys):
            values = np.array([[as_float(a) for a in metric(v, key)] for v in variants])  # (variants, seeds)
            for j, lab in enumerate(seed_labels):
                jitter = (j - (len(seeds) - 1) / 2) * 0.06
                ax.plot(x + jitter, values[:, j], "o-", lw=0.8, alpha=0.6, ms=5, label=f"seed {lab}")
            means = [as_float(r[key]["mean"]) for r in rows]
            stds = [0.0 if math.isnan(as_float(r[key]["std"])) else as_float(r[key]["std"]) for r in rows]
            ax.errorbar(x, means, yerr=stds, fmt="s", color="black", ms=8, capsize=6, lw=2, label="mean ± std",
                        zorder=5)
            ax.set_xticks(x)
            ax.set_xticklabels([v["name"] for v in variants], rotation=20 if len(variants) > 4 else 0)
            ax.set_ylabel(key.replace("_", " "))
            ax.set_title(f"{key.replace('_acc', '')} accuracy by {factor}")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8, loc="best")
        try:
            return save_figure(fig, path)
        finally:
            plt.close(fig)


# -- command line -------------------------------------------------------------------------------------------------
def add_arguments(parser):
    """Add ``nabi ablate``'s arguments to an argparse parser."""
    parser.add_argument("config", help="the ablation's TOML file (data, factor, seeds, [base], [[variants]])")
    parser.add_argument("--out", help="output folder (default: the config's out, else runs/ablation)")
    parser.add_argument("--jobs", type=int, help="runs trained at once in worker processes (default: the config's, "
                                                 "else 1)")
    add_executor_arguments(parser)
    from ..training.flags import setting_keys_help
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set base.epochs=1 --set max_train=200; base.KEY takes "
                             f"the training settings {setting_keys_help(leave_out=_BASE_FORBIDDEN)} and recipe "
                             "(`nabi train --help` describes each) (repeatable; default: none)")
    parser.add_argument("--check", action="store_true", help="check the config, data and models; train nothing "
                                                             "(default: off)")
    return parser


def main_from_args(args, log=print) -> int:
    """Run ``nabi ablate`` from parsed arguments; prints the report. Returns 0."""
    overrides = {}
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = parse_value(v.strip())
    config = load_config(args.config, overrides)
    plan = plan_ablation(config, log=log)
    if getattr(args, "check", False):
        for v in plan["variants"]:
            sh = v["shared"]
            log(f"{v['name']}: {v['config']['model']} {v['config']['model_args']} · {v['params']:,} params · "
                f"{v['macs']:,} MACs at {v['input_size']} · shares {sh['arrays']}/{sh['total_arrays']} arrays "
                f"({sh['params']:,} params) with the reference")
        log("config OK (nothing trained)")
        return 0
    report = run_ablation(config, out_dir=args.out, jobs=args.jobs, log=log, plan=plan, **executor_kwargs(args))
    log(report["markdown"])
    log("written: " + ", ".join(v for v in report["files"].values() if v))
    return 0
