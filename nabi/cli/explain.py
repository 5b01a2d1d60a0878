"""``nabi explain``: Grad-CAM and occlusion heat-maps of what the network looks at in a photo."""
from __future__ import annotations

import json
from pathlib import Path

from .command import Command, writable_folder


def run(args):
    """Grad-CAM and occlusion heat-maps over a photo: what is the network looking at?"""
    from ..explain import explain_image
    out_dir = Path(args.out) if args.out else (Path(args.run) if Path(args.run).is_dir() else Path(".")) / "explain"
    writable_folder(out_dir, "--out")
    res = explain_image(args.run, args.image, out_dir, method=args.method, layer=args.layer, target=args.target)
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=2, default=str))
    else:
        print(f"{args.image}: predicted {res['predicted']}; explaining {res['class']} "
              f"(p = {res['probability']:.3f}) at layer {res.get('layer')}")
        for f in res["files"]:
            print(f"written: {f}")
    return 0


def add_arguments(p):
    p.add_argument("run", help="a run folder (or a .safetensors file with its .json sidecar)")
    p.add_argument("image", help="the photo to explain")
    p.add_argument("--method", default="both", choices=["both", "gradcam", "occlusion"], help="which heat-maps")
    p.add_argument("--layer", help="the conv layer for Grad-CAM (default: the last spatial one)")
    p.add_argument("--target", help="explain this class (name or index; default: the predicted one)")
    p.add_argument("--out", help="folder for the PNGs (default: RUN/explain)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: text)")


COMMAND = Command(
    "explain", "Grad-CAM and occlusion heat-maps of what the network looks at in a photo", add_arguments, run,
    examples=("nabi explain runs/cats photos/test/tom/0001.jpg",
              "nabi explain runs/cats cat.jpg --method occlusion --target tom"))
