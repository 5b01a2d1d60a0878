"""``nabi predict``: the top-k classes of a photo, or of every photo in a folder."""
from __future__ import annotations

import json
from pathlib import Path

from .command import EXIT_ERROR, Command


def run(args):
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


def add_arguments(p):
    p.add_argument("run", help="a run folder (or a .safetensors file with its .json sidecar)")
    p.add_argument("image", help="an image, or a folder searched recursively for images")
    p.add_argument("--topk", type=int, default=3, help="classes to list per image")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the network runs")
    p.add_argument("--json", action="store_true", help="print the results as JSON (default: text)")


COMMAND = Command(
    "predict", "top-k classes for an image or a folder of images", add_arguments, run,
    examples=("nabi predict runs/cats cat.jpg", "nabi predict runs/cats new_photos/ --topk 1 --json"))
