"""The ``nabi`` command line: train, eval, predict, summary, export, demo (``nabi COMMAND --help``).

Exit codes: 0 success; 1 an error in the input (its message names the file or
argument); 2 a usage error (argparse); 3 training diverged (NaN/Inf loss);
130 interrupted (state saved, ``--resume`` continues).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

EXIT_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 3, 130
DEMO_OUT = "runs/demo"
KEEP_CHECKPOINTS = 3                  # --keep-checkpoints: the checkpoints kept before --keep-last existed


P_DEFINITIONS = """\
With a background class (photos of the places the animals are seen in, without
an animal), four accuracies are reported, after the background-class protocol
of the report "CNN을 이용한 고려대학교 길고양이 분류 및 배경 학습을 통한 성능
개선" (COSE362, Korea University, 2019):
  P1  accuracy on every test photo, background photos included (a background
      photo is right when called background)
  P2  accuracy on the animal photos (an animal called background is wrong)
  P3  accuracy on the animal photos the model did not call background
  P4  accuracy on the animal photos, taking the most likely individual
      (the background output ignored)
A model without a background output has P3 = P4 = P2. A model that learnt
background kinds (background/trees, background/pavement, ...) is scored with
every kind counted as background: any kind is "called background", a background
photo given another kind is right, and P4 ignores every background output."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and example epilogs keep their line breaks; every flag's help ends with its default.

    A default of None, False (an off switch) or [] says nothing and is left out;
    help that already names its default is left as it is.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is argparse.SUPPRESS or default is None or default is False \
                or default == [] or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _examples(*lines):
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_train_args(p, defaults):
    from ..data.folder import FITS
    from ..studies.recipes import RECIPES
    from ..training.config import AUGMENTS, BACKGROUND_KINDS, NORMALIZATIONS, SCHEDULES, renamed_value
    d = defaults

    def dflt(value, none="none"):
        return f"(default: {none if value is None else value})"
    p.add_argument("data", nargs="?", help="a folder with one sub-folder per class (or train/ val/ test/), "
                                           f"or embedded:mnist5k / embedded:digits8x8 {dflt(d.data)}")
    p.add_argument("--config", help="a TOML file whose keys stand in for these flags; flags given win "
                                    "(default: none)")
    p.add_argument("--recipe", choices=sorted(RECIPES), type=renamed_value("recipe"),
                   help="start from a named recipe's settings (nabi experiment --help describes them; resnet18-160 "
                        "is the strong from-scratch baseline; alexnet336-2019 and tiny need the experiment's "
                        "offline variants or iterations per class); --config and the flags given win (default: none)")
    p.add_argument("--model", help=f"a zoo model name; `nabi summary --list` lists them {dflt(d.model)}")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", dest="model_arg",
                   help="an argument of the model's builder, e.g. --model-arg activation=relu (repeatable; "
                        "default: none)")
    p.add_argument("--init", metavar="WEIGHTS", help="start from these weights (e.g. a pretrain run's "
                   "backbone.safetensors): every array matching by name and shape is loaded (default: none: "
                   "the model's own initialisation)")
    p.add_argument("--freeze-until", metavar="LAYER", dest="freeze_until",
                   help="do not train the network's stages up to and including LAYER, a stage name as its weights' "
                        "names begin (conv1, layer2, features.6, backbone.layer3 …; an unknown name lists them): "
                        "their weights get no step, no weight decay and no momentum, they run in eval mode while "
                        "the rest trains (batch norm uses and keeps the running statistics it was loaded with, "
                        "dropout is off), and backward stops above them; the run prints the frozen stages and "
                        "the trainable and frozen parameter counts; GoogLeNet's auxiliary heads, even when frozen, still "
                        "run in training and add their 0.3× loss to train_loss; with --init, a frozen stage whose "
                        "arrays it did not all load is refused; meant for --init (default: none: every "
                        "stage trains)")
    p.add_argument("--layer-lr-decay", type=float, metavar="D", dest="layer_lr_decay",
                   help="layer-wise learning-rate decay, D in (0, 1]: the last stage (the classifier) trains at "
                        "--lr, the stage below it at --lr·D, the next at --lr·D² … down to the first (stages "
                        "without parameters do not count, and a stage of batch norm alone, such as a ResNet's "
                        "bn1, shares the rate of the stage before it); the --schedule scales every stage's rate alike "
                        f"(default: {d.layer_lr_decay}: one rate for every stage)")
    p.add_argument("--epochs", type=int, help=f"passes over the training images {dflt(d.epochs)}")
    p.add_argument("--iterations", type=int, help="stop after this many optimiser steps instead of --epochs "
                                                  f"{dflt(d.iterations, 'none: --epochs decides')}")
    p.add_argument("--batch-size", type=int, help=f"images per optimiser step {dflt(d.batch_size)}")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help=f"the update rule {dflt(d.optimizer)}")
    p.add_argument("--lr", type=float, help=f"learning rate (the schedule's starting value) {dflt(d.lr)}")
    p.add_argument("--momentum", type=float, help=f"SGD momentum {dflt(d.momentum)}")
    p.add_argument("--weight-decay", type=float, help=f"L2 weight decay (decoupled for adamw) "
                                                      f"{dflt(d.weight_decay)}")
    p.add_argument("--schedule", choices=SCHEDULES, type=renamed_value("schedule"),
                   help="how the learning rate changes: step multiplies it by gamma (0.1) every step_size (10) "
                        "steps (TOML keys step_size, gamma, schedule_unit), cosine anneals it to 0, warmup_cosine ramps up for --warmup steps "
                        "(or --warmup-fraction of the run) first, linear_step lowers it from 1.5e-5 to 5e-6 in 10 "
                        "equal steps (the 2019 report's schedule), one_cycle (Smith & Topin 2019) rises from "
                        "--lr/25 to --lr over --warmup-fraction of the run (0.3 if not given) and falls by cosine "
                        f"to --lr/250000 {dflt(d.schedule)}")
    p.add_argument("--warmup", type=int, help=f"warm-up steps for warmup_cosine {dflt(d.warmup)}")
    p.add_argument("--warmup-fraction", type=float, dest="warmup_fraction",
                   help="or the warm-up of warmup_cosine (the rise of one_cycle) as a share of the whole run, "
                        "in [0, 1), e.g. 0.3 "
                        f"{dflt(d.warmup_fraction, 'none: --warmup decides')}")
    p.add_argument("--label-smoothing", type=float, help="spread this much of each target's probability over "
                                                         f"the other classes {dflt(d.label_smoothing)}")
    p.add_argument("--clip-norm", type=float, help="clip the gradient's global L2 norm to this value "
                                                   f"{dflt(d.clip_norm, 'none: no clipping')}")
    p.add_argument("--fused-sgd", action="store_true", default=None,
                   help="plain SGD only: update each layer inside backward, never storing weight gradients "
                        "(default: off)")
    p.add_argument("--precision", choices=["float32", "float16"],
                   help="float16: mixed precision (float16 compute, float32 master weights, dynamic loss "
                        f"scaling); meant for --device gpu, slow on the CPU {dflt(d.precision)}")
    p.add_argument("--image-size", type=int, help="bring photos to this size (see --fit) "
                                                  f"{dflt(d.image_size, 'the model’s input size')}")
    p.add_argument("--fit", choices=list(FITS),
                   help="how a photo is brought to the square --image-size when read: crop = resize the shorter "
                        "side and keep the centre (the sides of a wide photo are lost), squash = resize the whole "
                        "photo (aspect ratio distorted, nothing lost), pad = resize the longer side and pad with "
                        "black; recorded in the run, so eval, predict, the gallery and the web app read photos the "
                        f"same way {dflt(d.fit)}")
    p.add_argument("--normalize", choices=NORMALIZATIONS, type=renamed_value("normalize"),
                   help="input scaling: unit = pixel/255, pixel256 = pixel/256 (the 2019 report's), dataset = the training images' per-channel mean and std, imagenet = "
                        f"ImageNet's mean and std {dflt(d.normalize)}")
    p.add_argument("--augment", choices=AUGMENTS,
                   help="online augmentation: flip = horizontal flips, standard = flips and padded random "
                        "crops, strong = random resized crops (area 0.5–1), flips, rotation ±10° and colour "
                        "jitter 0.3, crop_flip_jitter = random resized crops (area 0.5–1), flips and colour "
                        f"jitter 0.2 {dflt(d.augment)}")
    p.add_argument("--val-ratio", type=float, help="share of each class held out for validation (ignored when "
                                                   f"DATA has val/) {dflt(d.val_ratio)}")
    p.add_argument("--test-ratio", type=float, help="share of each class held out for the final test (ignored "
                                                    f"when DATA has test/) {dflt(d.test_ratio)}")
    p.add_argument("--exclude", action="append", help="leave out a class folder, or one background kind as "
                                                      "background/<kind> (repeatable; default: none)")
    p.add_argument("--background-kinds", choices=BACKGROUND_KINDS,
                   help="split: each sub-folder <kind>/ of DATA/background/ is a class background/<kind> of its own "
                        "(photos directly in background/ stay 'background'), as re-identification and the gallery "
                        "already read it, so a user who sorted the empty scenes by kind gets the kinds; merge: the "
                        "whole folder is one class 'background', as before kinds existed (a background folder "
                        f"without sub-folders is one class either way) {dflt(d.background_kinds)}")
    p.add_argument("--strict", action="store_true", default=None,
                   help="a corrupt image is an error, not a warning (default: off)")
    p.add_argument("--seed", type=int, help=f"seeds the split, the initial weights and the batch order "
                                            f"{dflt(d.seed)}")
    p.add_argument("--device", choices=["cpu", "gpu"], help=f"gpu needs the gpu extra {dflt(d.device)}")
    p.add_argument("--workers", type=int, help=f"background threads decoding images {dflt(d.workers)}")
    p.add_argument("--cache", action="store_true", default=None,
                   help="keep decoded images in memory after the first epoch (uint8; CIFAR-10 needs ~150 MB) "
                        "(default: off)")
    p.add_argument("--out", help=f"the run folder to write {dflt(d.out)}")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N iterations "
                                                        f"{dflt(d.checkpoint_every, 'at each epoch end only')}")
    p.add_argument("--keep-last", type=int, help="checkpoints a finished run keeps, the newest ones (while it "
                                                 "runs, at least 2, so a damaged newest one has a fallback) "
                                                 f"{dflt(d.keep_last)}")
    p.add_argument("--early-stopping", type=int, help="stop after N epochs without a better validation accuracy "
                                                      f"{dflt(d.early_stopping, 'none: never stop early')}")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint "
                                                         "(default: off)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (default: off)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help=f"the same as --keep-last {KEEP_CHECKPOINTS} (kept for older scripts) (default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (default: a bar on a terminal, a line every 15 s in a log)")


def _config_from_args(args, base=None):
    """The ``TrainConfig`` of a train command: ``base``, then ``--recipe``'s settings, then the ``--config``
    TOML file, then the flags given, each winning over the ones before. A warm-up given later in one form
    (``warmup`` iterations or ``warmup_fraction``) replaces one given earlier in the other."""
    from ..training.config import TrainConfig, load_toml
    cfg = dict(base or {})
    later = {}
    if getattr(args, "recipe", None):
        from ..studies.recipes import recipe_train_settings
        cfg.update(recipe_train_settings(args.recipe))
    if getattr(args, "config", None):
        later.update(load_toml(args.config))
    for key in TrainConfig.__dataclass_fields__:
        value = getattr(args, key, None)
        if value is not None:
            later[key] = value
    if getattr(args, "keep_checkpoints", False) and "keep_last" not in later:
        later["keep_last"] = KEEP_CHECKPOINTS
    if later.get("warmup") and "warmup_fraction" not in later:
        cfg.pop("warmup_fraction", None)
    if later.get("warmup_fraction") is not None and "warmup" not in later:
        cfg.pop("warmup", None)
    cfg.update(later)
    for item in getattr(args, "model_arg", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg must look like KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value                       # a bare word: a string
        cfg["model_args"] = {**cfg.get("model_args", {}), key: parsed}
    return TrainConfig.from_dict(cfg)


def cmd_train(args):
    from ..training.build import run_training
    from .checks import check_train_config
    cfg = _config_from_args(args)
    if cfg.data is None:
        raise ValueError("give a data folder (or embedded:mnist5k)")
    check_train_config(cfg)
    from ..runs import open_run_folder
    with open_run_folder(cfg.out, resume=args.resume, overwrite=args.overwrite):
        trainer, parts = run_training(cfg, resume=args.resume)
        _final_test(trainer, parts, cfg)
        _finish_run(cfg.out, args.keep_checkpoints)
    return 0


def _finish_run(out, keep_checkpoints=False):
    """Print the run folder's size (the trainer already kept its --keep-last newest checkpoints;
    ``keep_checkpoints`` is read by ``_config_from_args``)."""
    from ..runs import folder_size, format_size
    print(f"run folder: {out} ({format_size(folder_size(out))})")


def _final_test(trainer, parts, cfg):
    """Evaluate the best weights on the held-out test part, and write test.json."""
    from .. import files
    from ..runs import load_run
    from ..data.prepare import eval_loader
    from ..training.trainer import evaluate
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
    print(f"test accuracy {ev['acc']:.4f} on {ev['n']} held-out images ({chosen})")
    return result


def cmd_demo(args):
    """Train LeNet-5 on the embedded 5,000-image MNIST sample, evaluate it, and keep the run folder."""
    from ..training.config import TrainConfig
    from ..training.build import run_training
    cfg = TrainConfig(data="embedded:mnist5k", model="lenet5", model_args={"activation": "relu", "pool": "max"},
                      epochs=args.epochs, batch_size=32, optimizer="adam", lr=2e-3, schedule="cosine",
                      val_ratio=0.1, test_ratio=0.2, seed=args.seed, out=args.out, progress=not args.no_progress)
    print("nabi demo: LeNet-5 on the 5,000-digit MNIST sample stored in nabi (70% train, 10% validation, 20% test)")
    from ..runs import open_run_folder
    # The demo's own folder is replaced on every run; any other --out is replaced only with --overwrite.
    overwrite = args.overwrite or Path(args.out) == Path(DEMO_OUT)
    with open_run_folder(cfg.out, overwrite=overwrite):
        trainer, parts = run_training(cfg)
        result = _final_test(trainer, parts, cfg)
        _eval_report(cfg.out, parts["test"], cfg.device, Path(cfg.out) / "eval")
        _finish_run(cfg.out)
    print(f"(nabi predict {cfg.out} IMAGE · nabi eval {cfg.out} DATA)")
    return 0 if result is not None else EXIT_ERROR


def _eval_report(run, dataset, device, out_dir, json_out=False, background=None, scope=None):
    """Accuracy, per-class report, confusion matrix (text and PNG), and P1–P4 with a background class."""
    from .. import evaluate as E
    from .. import files
    from ..runs import load_run
    from ..data.background import is_background
    from ..data.prepare import eval_loader
    from ..training.trainer import evaluate
    model, meta = load_run(run, device=device)
    ev = evaluate(model, eval_loader(dataset, meta, device=device), return_outputs=True)
    classes = meta["classes"]
    ds_classes = list(getattr(dataset, "classes", None) or classes)
    labels = ev["labels"]
    out_dir = _writable_folder(out_dir, "--out")
    note = None
    if ds_classes != classes and set(ds_classes) <= set(classes):    # a folder with some of the model's classes
        import numpy as np
        labels = np.asarray([classes.index(ds_classes[i]) for i in labels], dtype=np.int64)
        ev["acc"] = float((ev["probs"].argmax(1) == labels).mean()) if len(labels) else 0.0
        top = np.argsort(-ev["probs"], axis=1, kind="stable")[:, :5]
        ev["topk"] = float((top == labels[:, None]).any(1).mean()) if len(labels) else 0.0
        missing = [c for c in classes if c not in ds_classes]
        note = (f"the folder holds {len(ds_classes)} of the model's {len(classes)} classes: "
                f"{', '.join(missing)} have no photos here (support 0, recall undefined), though the model may "
                f"still predict them")
        ds_classes = classes
    report = {"accuracy": ev["acc"], "n": ev["n"], "classes": classes}
    if scope:
        report["scored"] = scope
    if note:
        report["note"] = note
    if ds_classes == classes:
        cm = E.confusion_matrix(ev["probs"], labels, len(classes))
        text = E.classification_report(cm, classes) + "\n\n" + E.confusion_matrix_text(cm, classes)
        report["per_class"] = E.per_class_scores(cm, classes)        # an undefined 0/0 is null (n/a in the text)
        report["confusion_matrix"] = cm.tolist()
        merged, merged_names = E.merge_background_classes(cm, classes, background or "background")
        if merged_names != classes:     # background kinds: the same counts with every kind called background
            report["confusion_matrix_background_merged"] = {"classes": merged_names, "counts": merged.tolist()}
            text += ("\n\nwith every background kind counted as background:\n"
                     + E.confusion_matrix_text(merged, merged_names))
        try:
            E.plot_confusion_matrix(cm, classes, out_dir / "confusion_matrix.png")
            plotted = True
        except ModuleNotFoundError as e:   # matplotlib is an extra: the numbers are all in eval.json/eval.txt
            from ..extras import missing_module_message
            print(f"confusion_matrix.png not drawn: {missing_module_message(e) or e}", file=sys.stderr)
            plotted = False
        if len(classes) > 5:
            report["top5"] = ev["topk"]
    else:
        text, plotted = "", False
    bg = background or ("background" if any(is_background(c) for c in ds_classes) else None)
    if bg is not None and any(is_background(c, bg) for c in ds_classes):
        stats = E.background_statistics(ev["probs"], labels, ds_classes, background=bg, model_classes=classes)
        text += "\n\n" + E.format_report(stats)
        report["background_statistics"] = {k: v for k, v in stats.items()
                                           if isinstance(v, (int, float, str, list)) and k not in
                                           ("pred", "pred_individual", "pred_name", "pred_answer", "target",
                                            "correct", "is_background_photo", "called_background")}
    report = E.json_ready(report)                          # NaN (an undefined P3, ...) as null: valid JSON
    files.atomic_write_json(out_dir / "eval.json", report)
    files.atomic_write_text(out_dir / "eval.txt", text + "\n")
    if json_out:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        if note:
            print(f"note: {note}")
        print(f"accuracy {ev['acc']:.4f} on {ev['n']} images")
        print(text)
        print(f"written: {out_dir}/eval.json, eval.txt" + (", confusion_matrix.png" if plotted else ""))
    return report


def _writable_folder(path, flag):
    """``path`` as a folder that exists and can be written, or a ValueError naming ``flag``."""
    from ..files import ensure_writable_folder
    path = Path(path)
    try:
        ensure_writable_folder(path)
    except OSError as e:
        raise ValueError(f"{flag} {path} cannot be used: {e.strerror or e} (give a folder that can be created "
                         f"and written)") from None
    return path


def cmd_eval(args):
    from .. import data as D
    from ..data.background import is_background
    from ..runs import image_fit, load_run, scoring_scope
    if args.masked:
        return _masked_eval(args)
    _, meta = load_run(args.run)
    C, H, W = meta["input_size"]
    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    out_dir = Path(args.out) if args.out else Path(args.run if Path(args.run).is_dir() else ".") / "eval"
    splits = D.find_splits(root)
    held_out = scope = None
    if splits and "test" in splits:
        root = Path(splits["test"])
    else:                                  # the folder the run trained on: its held-out test part, or a warning
        held_out, scope = scoring_scope(meta, root, args.strict)
        if args.all_photos and held_out is not None:
            held_out, scope = None, (f"warning: --all-photos: scoring every photo of {root}, the folder this run "
                                     f"trained on; most were trained on, so the scores overstate new photos")
        if scope:
            print(scope, file=sys.stderr)
    if held_out is not None:
        _eval_report(args.run, held_out, args.device, out_dir, json_out=args.json, background=args.background,
                     scope=scope)
        return 0
    classes = meta["classes"]
    folder_classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in folder_classes if c not in classes and c != (args.background or "background")]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not among the model's classes {classes}")
    # a model that learnt background kinds reads the background folder's <kind>/ sub-folders as its kinds
    kinds = any(is_background(c, args.background or "background") and c != (args.background or "background")
                for c in classes)
    ds = D.ImageFolder(root, image_size=(H, W), channels=C, classes=None, strict=args.strict, fit=image_fit(meta),
                       background_kinds=kinds, background=args.background or "background")
    ds.verify()
    _eval_report(args.run, ds, args.device, out_dir, json_out=args.json, background=args.background, scope=scope)
    return 0


def cmd_predict(args):
    import numpy as np

    from .. import data as D
    from ..functional.activation import softmax
    from ..data.background import BACKGROUND, is_background
    from ..data.prepare import eval_transforms
    from ..runs import image_fit, load_run
    from .. import backend
    model, meta = load_run(args.run, device=args.device)
    C, H, W = meta["input_size"]
    fit = image_fit(meta)
    target = Path(args.image)
    if target.is_dir():
        paths = sorted(p for p in target.rglob("*") if p.suffix.lower().lstrip(".") in
                       {e.lstrip(".").lower() for e in D.IMG_EXTENSIONS})
        if not paths:
            raise ValueError(f"{target} holds no images ({', '.join(sorted(D.IMG_EXTENSIONS))})")
    elif target.is_file():
        paths = [target]
    else:
        raise FileNotFoundError(f"{target} does not exist")
    transforms = [t for t in eval_transforms((H, W), meta["normalization"]) if t is not None]
    classes = meta["classes"]
    k = min(args.topk, len(classes))
    results = []
    for path in paths:
        try:
            x = D.load_image(path, channels=C, image_size=(H, W), fit=fit)
        except Exception as e:  # a corrupt file: report it and go on
            results.append({"file": str(path), "error": str(e)})
            continue
        for t in transforms:
            x = t(x, None)
        p = backend.to_numpy(softmax(model(backend.to_device(x[None], args.device)), axis=1))[0]
        top = np.argsort(-p, kind="stable")[:k]
        best = classes[int(top[0])]     # a background kind shows as itself in "top"; the answer says background
        results.append({"file": str(path), "answer": BACKGROUND if is_background(best) else best,
                        "top": [{"class": classes[i], "probability": float(p[i])} for i in top]})
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: ERROR {r['error']}")
            else:
                kind = r["top"][0]["class"]
                note = f" → {BACKGROUND}" if r["answer"] != kind else ""
                print(f"{r['file']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]) + note)
    return 0 if all("error" not in r for r in results) else EXIT_ERROR


def _parse_shape(text):
    try:
        parts = tuple(int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"--input must look like 3x224x224, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"--input must be CxHxW with positive sizes, got {text!r}")
    return parts


def cmd_summary(args):
    from .. import models
    if args.list or not args.model:
        print("\n".join(models.names()))
        return 0
    kwargs = {}
    if args.classes:
        kwargs["num_classes"] = args.classes
    model = models.get(args.model, **kwargs)
    shape = _parse_shape(args.input) if args.input else tuple(model.input_size)
    result = model.summary(shape, batch_size=args.batch_size, file=False if args.markdown else None)
    if args.markdown:
        print(result.to_markdown())
    return 0


def cmd_export(args):
    from ..files.onnx import export_onnx, verify_onnx
    from ..runs import load_run
    from .. import models
    import numpy as np
    src = Path(args.source)
    if src.exists():
        model, meta = load_run(src)
        shape, classes = tuple(meta["input_size"]), meta["classes"]
    else:
        model = models.get(args.source, **({"num_classes": args.classes} if args.classes else {}))
        model.eval()
        shape, classes = tuple(model.input_size), None
    if not args.onnx:
        raise ValueError("give --onnx OUT.onnx")
    export_onnx(model, args.onnx, shape, class_names=classes)
    x = np.random.default_rng(0).random((2,) + shape, dtype=np.float32)
    diff = verify_onnx(model, args.onnx, x)
    print(f"wrote {args.onnx}; onnxruntime vs nabi max |Δlogit| = {diff:.2e}")
    return 0


def cmd_explain(args):
    """Grad-CAM and occlusion heat-maps over a photo: what is the network looking at?"""
    from ..explain import explain_image
    out_dir = Path(args.out) if args.out else (Path(args.run) if Path(args.run).is_dir() else Path(".")) / "explain"
    _writable_folder(out_dir, "--out")
    res = explain_image(args.run, args.image, out_dir, method=args.method, layer=args.layer, target=args.target)
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=2, default=str))
    else:
        print(f"{args.image}: predicted {res['predicted']}; explaining {res['class']} "
              f"(p = {res['probability']:.3f}) at layer {res.get('layer')}")
        for f in res["files"]:
            print(f"written: {f}")
    return 0


def _masked_eval(args):
    from ..explain import masked_evaluation
    res = masked_evaluation(args.run, args.data, masks_dir=None if args.masked == "-" else args.masked)
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=2, default=str))
        return 0
    if res.get("accuracy_original") is not None:
        print(f"accuracy on the photos as they are:        {res['accuracy_original']:.4f}")
    print(f"accuracy with the background blanked out:  {res['accuracy_masked']:.4f}")
    if res.get("change") is not None:
        print(f"change:                                    {res['change']:+.4f}  ({res['n']} photos)")
    if res.get("missing_masks"):
        print(f"{len(res['missing_masks'])} photos had no mask and were left out: "
              + ", ".join(map(str, res["missing_masks"][:5])) + (" …" if len(res["missing_masks"]) > 5 else ""))
    for name, row in res.get("per_class", {}).items():
        orig = row.get("accuracy_original")
        print(f"  {name}: {'' if orig is None else f'{orig:.3f} → '}{row['accuracy_masked']:.3f} (n={row['n']})")
    return 0


def cmd_check(args):
    """Read back every file of a run folder (weights, checkpoints, sidecars, records); exit 1 if any is damaged."""
    from ..runs import check_run_folder
    results = check_run_folder(args.run)
    bad = [(p, why) for p, why in results if why]
    for path, why in results:
        rel = path.relative_to(args.run) if path.is_relative_to(args.run) else path
        print(f"{'OK ' if why is None else 'BAD'}  {rel}" + (f": {why}" if why else ""))
    print(f"{len(results)} checked, {len(bad)} damaged" + (": restore them from a backup, or train again "
                                                           "(a damaged checkpoint only: --resume uses the "
                                                           "previous one)" if bad else ""))
    return EXIT_ERROR if bad else 0


def build_parser():
    from ..training.config import TrainConfig
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="nabi", formatter_class=HelpFormatter,
        description="Convolutional networks written from scratch: train, evaluate and inspect image classifiers.\n"
                    "P1–P4 below are the four background-class accuracies that `nabi eval --help` defines.",
        epilog=_examples("nabi demo                                  # a first run, under a minute on 2 cores",
                         "nabi train photos/ --model resnet18 --epochs 20 --out runs/cats",
                         "nabi COMMAND --help                        # each command's flags"))
    parser.add_argument("--version", action="version", version=f"nabi {__import__('nabi').__version__}",
                        help="print nabi's version and exit")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for BLAS and nabi's compiled kernels; goes before the command: "
                             "nabi --threads 1 train … (default: all cores)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help, description=None, examples=(), definitions=None):
        text = textwrap.fill(description or help[0].upper() + help[1:] + ".", 79)
        if definitions:
            text += "\n\n" + definitions
        return sub.add_parser(name, help=help, description=text, epilog=_examples(*examples) if examples else None,
                              formatter_class=HelpFormatter)

    p = command("train", "train a zoo model on an image folder",
                "Train a zoo model on a folder of photos (one sub-folder per class) and keep the run folder: "
                "weights, checkpoints, metrics.jsonl, test.json. Settings come from the flags, then a --config "
                "TOML file, then the defaults shown.",
                ["nabi train photos/ --model resnet18 --epochs 20 --augment standard --background-kinds merge "
                 "--out runs/cats   # photos/background/{trees,pavement}/ as one class",
                 "nabi train photos/ --model resnet18 --image-size 160 --fit squash --augment crop_flip_jitter "
                 "--normalize imagenet --epochs 60 --batch-size 16 --optimizer adamw --lr 2e-3 --weight-decay 0.05 "
                 "--schedule warmup_cosine --warmup-fraction 0.3 --label-smoothing 0.1 --out runs/individuals"
                 "    # the strong baseline (recipe resnet18-160)",
                 "nabi train --config cats.toml --resume"])
    _add_train_args(p, defaults)
    p.set_defaults(func=cmd_train)

    p = command("demo", "train LeNet-5 on the embedded MNIST sample (under a minute on 2 cores)",
                "Train LeNet-5 on the 5,000-digit MNIST sample stored in nabi (70% train, 10% validation, 20% "
                "test), evaluate it, and keep the run folder.",
                ["nabi demo", "nabi demo --epochs 2 --out /tmp/demo > demo.log 2>&1"])
    p.add_argument("--out", default=DEMO_OUT, help="the run folder to write (runs/demo is replaced on every run)")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training digits")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the initial weights and the batch order")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: off)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (default: off)")
    p.set_defaults(func=cmd_demo)

    p = command("eval", "evaluate a run on a folder: accuracy, per-class report, confusion matrix, P1–P4",
                "Evaluate a run on a folder of photos: accuracy, a per-class report and a confusion matrix; "
                "with a background folder also P1–P4.", definitions=P_DEFINITIONS,
                examples=["nabi eval runs/cats photos/test", "nabi eval runs/cats photos/ --json > eval.json"])
    p.add_argument("run", help="a run folder (or a .safetensors file with its .json sidecar)")
    p.add_argument("data", help="a folder with one sub-folder per class (or with test/)")
    p.add_argument("--background", help="the background class's folder name (default: background)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the network runs")
    p.add_argument("--out", help="where to write eval.json, eval.txt and confusion_matrix.png (default: RUN/eval)")
    p.add_argument("--strict", action="store_true", help="a corrupt image is an error, not a warning "
                                                         "(default: off)")
    p.add_argument("--masked", metavar="MASKS", help="also evaluate with the background blanked out by the masks in "
                   "MASKS (same class/file layout; white = animal); '-' when DATA already holds masked photos "
                   "(default: none)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (default: text)")
    p.add_argument("--all-photos", action="store_true", help="DATA is the folder the run trained on: score every "
                   "photo, not only the ones the run held out for testing (default: off)")
    p.set_defaults(func=cmd_eval)

    from ..studies.experiment import add_arguments as _experiment_arguments, main_from_args as _experiment_main
    p = command("experiment", "paired multi-seed experiment: model A (individuals) vs model B "
                              "(+ background class), P1–P4 with statistics",
                "Paired multi-seed experiment: model A learns the individuals only, model B the individuals "
                "and a background class; both are trained over several seeds and scored on the same test "
                "photos, and the report gives A·P2 and B·P1–B·P4 per run, their mean and standard deviation, "
                "and paired tests of B against A. With sub-folders background/<kind>/ (trees, pavement, …), "
                "--background-classes kinds lets B learn one class per kind; every kind counts as background "
                "in P1–P4. --models A,B,E adds model E, the embedding arm: the same network trained as an "
                "identity embedding (ArcFace by default) on B's photos from the same seed, each test photo "
                "answered by the class of its most similar training photo (best cosine similarity); its "
                "E·P1–E·P4 are paired with A's and B's.", definitions=P_DEFINITIONS,
                examples=["nabi experiment photos/ --runs 10 --recipe modern --background-classes kinds   "
                          "# B learns background/<kind> classes",
                 "nabi experiment photos/ --runs 10 --recipe resnet18-160 --background 배경",
                 "nabi experiment photos/ --recipe tiny --runs 2 --jobs 2 --models A,B,E --out /tmp/exp   "
                 "# + the embedding arm"])
    _experiment_arguments(p)
    p.set_defaults(func=_experiment_main)

    from ..studies.ablation import add_arguments as _ablation_arguments, main_from_args as _ablation_main
    p = command("ablate", "train variants that differ in one factor from shared initial weights, "
                          "over several seeds: mean ± std of accuracy, parameters, MACs, time",
                examples=["nabi ablate examples/ablation_cifar10.toml --check",
                          "nabi ablate examples/ablation_cifar10.toml --jobs 2 --set base.epochs=1"])
    _ablation_arguments(p)
    p.set_defaults(func=_ablation_main)

    from ..studies.sweep import add_arguments as _sweep_arguments, main_from_args as _sweep_main
    p = command("sweep", "search training settings (grid, random) on Ray Tune; ASHA stops poor trials early",
                "Search training settings (learning rate, augmentation, model, image size, a model's own "
                "arguments, ...) on Ray Tune: each trial trains with nabi's trainer into OUT/trials/<trial id>/, "
                "ASHA stops the trials whose validation accuracy falls behind, and the report OUT/sweep.md names "
                "the best trial by validation accuracy; its test accuracy is computed once, after selection. The "
                "same command with the same OUT resumes an interrupted sweep.",
                ["nabi sweep sweep.toml --check", "nabi sweep sweep.toml --cpus-per-trial 2 --out runs/sweep"])
    _sweep_arguments(p)
    p.set_defaults(func=_sweep_main)

    p = command("explain", "Grad-CAM and occlusion heat-maps of what the network looks at in a photo",
                examples=["nabi explain runs/cats photos/test/tom/0001.jpg",
                          "nabi explain runs/cats cat.jpg --method occlusion --target tom"])
    p.add_argument("run", help="a run folder (or a .safetensors file with its .json sidecar)")
    p.add_argument("image", help="the photo to explain")
    p.add_argument("--method", default="both", choices=["both", "gradcam", "occlusion"], help="which heat-maps")
    p.add_argument("--layer", help="the conv layer for Grad-CAM (default: the last spatial one)")
    p.add_argument("--target", help="explain this class (name or index; default: the predicted one)")
    p.add_argument("--out", help="folder for the PNGs (default: RUN/explain)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: text)")
    p.set_defaults(func=cmd_explain)

    p = command("predict", "top-k classes for an image or a folder of images",
                examples=["nabi predict runs/cats cat.jpg", "nabi predict runs/cats new_photos/ --topk 1 --json"])
    p.add_argument("run", help="a run folder (or a .safetensors file with its .json sidecar)")
    p.add_argument("image", help="an image, or a folder searched recursively for images")
    p.add_argument("--topk", type=int, default=3, help="classes to list per image")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the network runs")
    p.add_argument("--json", action="store_true", help="print the results as JSON (default: text)")
    p.set_defaults(func=cmd_predict)

    p = command("summary", "per-layer table: shapes, parameters, MACs, memory",
                examples=["nabi summary resnet18 --input 3x224x224", "nabi summary --list"])
    p.add_argument("model", nargs="?", help="a zoo model name (default: list the names)")
    p.add_argument("--input", help="CxHxW, e.g. 3x336x336 (default: the model's)")
    p.add_argument("--classes", type=int, help="output classes (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the memory column")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (default: text)")
    p.add_argument("--list", action="store_true", help="list the zoo's model names (default: off)")
    p.set_defaults(func=cmd_summary)

    p = command("check", "verify every file of a run folder: weights, checkpoints, sidecars",
                "Read back every weight file, checkpoint, sidecar and record of a run folder and check each "
                "against the SHA-256 and size its sidecar recorded: OK or BAD per file, exit status 1 if any is "
                "damaged.", ["nabi check runs/cats"])
    p.add_argument("run", help="the run folder to verify")
    p.set_defaults(func=cmd_check)

    p = command("export", "export a run or a zoo model to ONNX (checked with onnxruntime; needs the onnx extra)",
                examples=["nabi export runs/cats --onnx cats.onnx", "nabi export resnet18 --onnx resnet18.onnx"])
    p.add_argument("source", help="a run folder, a .safetensors file, or a zoo model name")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--classes", type=int, help="output classes of a zoo model (default: the model's)")
    p.set_defaults(func=cmd_export)
    from ..selfsup.cli import add_commands as add_selfsup_commands
    add_selfsup_commands(sub)                                          # nabi pretrain
    __import__("nabi.serve.cli", fromlist=["add_commands"]).add_commands(sub)     # nabi serve
    sub.choices["pretrain"].epilog = _examples(
        "nabi pretrain nyala_more/ --model resnet18_cifar --image-size 64 --epochs 50 --out runs/pretrain",
        "nabi pretrain nyala_more/ --method byol --model resnet20 --image-size 64 --batch-size 64 --out runs/byol",
        "nabi train photos/ --model resnet18_cifar --image-size 64 --init runs/pretrain/backbone.safetensors")
    sub.choices["serve"].epilog = _examples(
        "nabi serve runs/cats                                # http://127.0.0.1:8000 on this machine",
        "nabi serve runs/cats --host 0.0.0.0 --token SECRET  # reachable from the network")
    from ..reid.cli import add_commands; add_commands(sub)  # noqa: E702  (gallery, identify, train --head)
    def use_formatter(parsers):                                        # commands added outside this module too,
        for command_parser in parsers:                                 # and their own sub-commands
            command_parser.formatter_class = HelpFormatter
            for action in command_parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    use_formatter(action.choices.values())
    use_formatter(sub.choices.values())
    return parser


def _plain_warning(message, category, filename, lineno, line=None):
    """A warning as one line (``nabi: warning: …``), without Python's source-line echo."""
    return f"nabi: warning: {message}\n"


def main(argv=None):
    import warnings
    before, warnings.formatwarning = warnings.formatwarning, _plain_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = before


def _main(argv=None):
    from ..training.trainer import TrainingDiverged, TrainingInterrupted
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .checks import BadArgument, check_args
    try:
        check_args(args)
    except BadArgument as e:
        print(f"nabi {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.threads is not None:
            from ..backend import set_num_threads
            set_num_threads(args.threads)
        return args.func(args)
    except BrokenPipeError:  # `nabi summary vgg16 | head`: the reader left; not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrainingDiverged as e:
        print(f"nabi {args.command}: training diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        print(f"nabi {args.command}: interrupted. {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, KeyError, TypeError, RuntimeError, ImportError, NotImplementedError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, ImportError):
            from ..extras import missing_module_message
            msg = missing_module_message(e) or msg
        if isinstance(e, OSError) and e.filename:                 # e.g. [Errno 20] Not a directory: '/x/y'
            msg = f"{e.filename}: {e.strerror or msg}"
        print(f"nabi {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:       # a fault of nabi's own: one line for the user, the traceback on request
        import os
        if os.environ.get("NABI_DEBUG"):
            raise
        print(f"nabi {args.command}: unexpected error: {type(e).__name__}: {e} (set NABI_DEBUG=1 to see where; "
              f"please report it)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
