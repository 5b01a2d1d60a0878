"""``nabi eval``: a run scored on a folder of photos: accuracy, per-class report, confusion matrix, P1–P4."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .command import Command, writable_folder

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


def run(args):
    from .. import data as D
    from ..data.background import is_background
    from ..runs import image_fit, load_run
    if args.masked:
        return masked_eval(args)
    _, meta = load_run(args.run)
    C, H, W = meta["input_size"]
    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    splits = D.find_splits(root)
    if splits and "test" in splits:
        root = Path(splits["test"])
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
    out_dir = Path(args.out) if args.out else Path(args.run if Path(args.run).is_dir() else ".") / "eval"
    eval_report(args.run, ds, args.device, out_dir, json_out=args.json, background=args.background)
    return 0


def eval_report(run, dataset, device, out_dir, json_out=False, background=None):
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
    out_dir = writable_folder(out_dir, "--out")
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
    if note:
        report["note"] = note
    if ds_classes == classes:
        cm = E.confusion_matrix(ev["probs"], labels, len(classes))
        text = E.classification_report(cm, classes) + "\n\n" + E.confusion_matrix_text(cm, classes)
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


def masked_eval(args):
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


def add_arguments(p):
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


COMMAND = Command(
    "eval", "evaluate a run on a folder: accuracy, per-class report, confusion matrix, P1–P4", add_arguments, run,
    description="Evaluate a run on a folder of photos: accuracy, a per-class report and a confusion matrix; "
                "with a background folder also P1–P4.", definitions=P_DEFINITIONS,
    examples=("nabi eval runs/cats photos/test", "nabi eval runs/cats photos/ --json > eval.json"))
