"""Start a model from another run's weights: every parameter and buffer that matches by name and shape.

``nabi train DATA --init WEIGHTS``: WEIGHTS is a ``.safetensors`` weight file (e.g. the
``backbone.safetensors`` that ``nabi pretrain`` writes) or a run folder (its
``backbone.safetensors``, else its best or final weights). Names that exist in both with the
same shape are copied; what the model has and the file lacks stays as initialised (typically
the new classifier); names in both with different shapes are skipped and reported (e.g. a
classifier trained for another number of classes); names only in the file are unused. The
weights of an embedding run (``nabi train --head arcface …``: the zoo network under ``backbone.``,
then the embedding head) start a classifier of the same zoo model from that network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import files
from ..runs import find_weights

BACKBONE_FILE = "backbone.safetensors"
EMBEDDING_PREFIX = "backbone."          # where an embedding run's weights keep the zoo network


def resolve_init_path(path) -> Path:
    """A weight file, or the weights of a run folder (its backbone first)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init {path}: it does not exist (give a weight file or a run folder)")
    if path.is_dir() and (path / BACKBONE_FILE).is_file():
        return path / BACKBONE_FILE
    try:
        return find_weights(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(_naming(path, e)) from None


def _naming(path, error, lead="", hint="") -> str:
    """``error``'s message for ``--init path``, the path named once (the messages of ``find_weights`` and
    ``load_weights`` already name it): ``--init X: <lead>it is ...``."""
    text, p = str(error.args[0] if error.args else error), str(path)
    if text.startswith(p + " "):
        return f"--init {p}: {lead}it {text[len(p) + 1:]}{hint}"
    return f"--init {p}: {lead}{text}{hint}"


def load_matching(model, path) -> dict:
    """Copy into ``model`` every array of the weight file ``path`` whose name and shape match.

    Returns ``{'path', 'loaded', 'new', 'skipped', 'unused', 'metadata'}``: ``loaded`` names copied,
    ``new`` the model's names absent from the file, ``skipped`` ``"name: file (a, b), model (c, d)"``
    for a shape mismatch, ``unused`` the file's names the model does not have. A file that is not a
    weight file, or one sharing no name and shape with the model, is a ``ValueError`` naming it.
    """
    path = resolve_init_path(path)
    try:
        state, metadata = files.load_weights(path)
    except ValueError as e:
        raise ValueError(_naming(path, e, "not a readable weight file: ", "; --init takes a .safetensors weight "
                                 "file (nabi's, or any safetensors file) or a run folder")) from None
    own = model.state_dict()
    prefix = ""
    if not any(k in own for k in state) and any(k.startswith(EMBEDDING_PREFIX) for k in state) \
            and not any(k.startswith(EMBEDDING_PREFIX) for k in own):
        # an embedding run (``nabi train --head …``) keeps its network under ``backbone.``: a classifier
        # built from the same zoo model takes those arrays under their plain names
        prefix = EMBEDDING_PREFIX
        head = [k for k in state if not k.startswith(prefix)]        # the embedding head: unused
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    loaded, skipped = [], []
    for name, value in own.items():
        if name in state:
            if tuple(np.shape(state[name])) == tuple(value.shape):
                loaded.append(name)
            else:
                skipped.append(f"{name}: file {tuple(np.shape(state[name]))}, model {tuple(value.shape)}")
    new = [k for k in own if k not in state]
    unused = [prefix + k for k in state if k not in own] + (head if prefix else [])
    if not loaded:
        raise ValueError(f"--init {path}: none of its {len(state)} arrays matches the model by name and shape "
                         f"(file has e.g. {', '.join(list(state)[:3]) or 'nothing'}; model has e.g. "
                         f"{', '.join(list(own)[:3])}); was it saved from another architecture"
                         f"{' (' + str(metadata['arch'].get('name')) + ')' if isinstance(metadata.get('arch'), dict) else ''}?")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return {"path": str(path), "loaded": loaded, "new": new, "skipped": skipped, "unused": unused,
            "metadata": metadata, "prefix": prefix}


def format_report(report: dict) -> str:
    """Lines for the log: how many arrays were loaded, and the names of the new, skipped and unused ones."""
    lines = [f"--init {report['path']}: loaded {len(report['loaded'])} arrays matching by name and shape"
             + (f" (the file's {report['prefix']}* arrays: an embedding run's network)" if report.get("prefix") else "")]
    for label, key in (("new (kept as initialised)", "new"), ("skipped (shape differs)", "skipped"),
                       ("unused (not in this model)", "unused")):
        if report[key]:
            lines.append(f"  {label}: {', '.join(report[key])}")
    return "\n".join(lines)
