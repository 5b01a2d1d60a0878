"""Fine-tuning controls: frozen stages (``--freeze-until``) and layer-wise learning-rate decay (``--layer-lr-decay``).

A network's **stages** are its top-level children in forward order, named as their
state-dict keys begin (``conv1``, ``bn1``, ``layer1`` … ``layer4``, ``fc`` for a ResNet).
Two kinds of child are opened one level into their own children: a whole zoo network
inside the model (the ``backbone`` of an embedding model: ``backbone.conv1`` …), and a
plain ``Sequential`` trunk that holds layers with parameters directly and has more than
three children with parameters (the ``features`` of VGG, AlexNet and DenseNet:
``features.0``, ``features.3`` …; a classifier of three ``Linear`` layers stays one stage).
GoogLeNet's auxiliary heads come after ``inception5b``, where torchvision registers them.

``freeze_until(model, LAYER)`` freezes every stage up to and including ``LAYER`` (a stage
name, or the name of an opened child such as ``features``: all of it):

* its parameters are left out of the optimiser: no gradient step, no weight decay, no
  momentum or Adam moments;
* its modules stay in eval mode while the network trains (``Module.frozen``): batch norm
  normalises with, and keeps, the running statistics it was loaded with, and dropout is off;
* backward stops at the frozen prefix: containers do not call a frozen child's backward
  (``Sequential``, GoogLeNet, the embedding network), so no gradient is computed inside
  the frozen stages at all; in a network that is one chain of ``Sequential`` containers the
  first stage with parameters after them also skips its input gradient.

In eval mode a frozen residual block never drops its branch (stochastic depth, ``DropPath``, is off).
GoogLeNet's auxiliary heads run whenever the network trains, so frozen ones still add their 0.3×
loss to the logged ``train_loss`` (they take no step).
With ``--init``, every array of the frozen stages must have been loaded from the file
(``check_frozen_were_loaded``): frozen, a new one would stay as initialised.

``layer_lr_multipliers(stages, D)``: the last stage with parameters (the classifier or head)
steps with ``lr``, the one below it with ``lr·D``, the next with ``lr·D²`` … down to the stem;
stages without parameters are not counted, and a stage of batch norm alone (a ResNet's ``bn1``,
a VGG trunk's ``features.1``) shares the depth of the stage before it: a convolution and its
batch norm are one step. They are the optimiser's ``lr_scale``, so every
schedule (warm-up, cosine, one-cycle) scales every stage's rate alike.
"""
from __future__ import annotations

from ..layers import BatchNorm1d, BatchNorm2d, Sequential
from ..models.registry import Network

NORMALISATION_LAYERS = (BatchNorm1d, BatchNorm2d)
"""Layers that only normalise: a stage holding nothing else shares the learning-rate depth of the one before it."""

TRUNK_MIN_CHILDREN = 4          # a plain Sequential with this many children with parameters is a trunk


def _has_parameters(module) -> bool:
    return next(iter(module.parameters()), None) is not None


def _opens(child) -> bool:
    """Whether a top-level child is opened into stages of its own (see the module docstring)."""
    if isinstance(child, Network):
        return True
    if type(child) is not Sequential:
        return False
    with_params = [m for m in child.children() if _has_parameters(m)]
    direct = any(m._parameters for m in child.children())
    return direct and len(with_params) >= TRUNK_MIN_CHILDREN


def stages(model, prefix: str = "") -> list:
    """``[(name, module), …]``: the network's stages in forward order (see the module docstring)."""
    out = []
    for name, child in model._modules.items():
        full = f"{prefix}{name}"
        if isinstance(child, Network):
            out.extend(stages(child, full + "."))
        elif _opens(child):
            out.extend((f"{full}.{n}", m) for n, m in child._modules.items())
        else:
            out.append((full, child))
    return out


def _openings(names) -> set:
    """The names of opened children (``features``, ``backbone``): every proper dotted prefix of a stage name."""
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def frozen_stage_count(all_stages, layer: str) -> int:
    """How many stages, from the first, ``--freeze-until layer`` freezes; ``ValueError`` naming the flag
    and listing the valid names for a name that is not a stage (or an opened child)."""
    names = [n for n, _ in all_stages]
    if layer in names:
        return names.index(layer) + 1
    if layer in _openings(names):
        return max(i for i, n in enumerate(names) if n.startswith(layer + ".")) + 1
    with_params = [n for n, m in all_stages if _has_parameters(m)]
    others = sorted(_openings(names))
    raise ValueError(f"--freeze-until {layer}: not a stage of this network; its stages with parameters, in "
                     f"forward order: {', '.join(with_params)}"
                     + (f" (or {', '.join(others)}: all of it)" if others else ""))


def frozen_stages(model, layer: str) -> list:
    """``[(name, module), …]``: the stages ``--freeze-until layer`` freezes, changing nothing. ``ValueError``
    naming the flag for an unknown name, or one that would leave no parameter to train."""
    all_stages = stages(model)
    k = frozen_stage_count(all_stages, layer)
    if not any(_has_parameters(m) for _, m in all_stages[k:]):
        raise ValueError(f"--freeze-until {layer} freezes every stage with parameters: nothing would train; "
                         f"give an earlier stage")
    return all_stages[:k]


def check_frozen_were_loaded(model, layer: str, report: dict, role: str | None = None, prefix: str = "") -> None:
    """``ValueError`` when ``--freeze-until layer`` would freeze an array (parameter or buffer) that ``--init``
    did not load: one ``report`` (``init_from.load_matching``) lists as new (absent from the file) or skipped
    (its shape differs). Such weights would stay as initialised and never train. ``prefix``: what the
    report's names lack before ``model``'s own (``backbone.`` when only the backbone was loaded); ``role``
    (``teacher``, ``student``) is named in the message."""
    not_loaded = {prefix + name: "new" for name in report["new"]}
    not_loaded.update({prefix + entry.split(":")[0]: "shape differs" for entry in report["skipped"]})
    for name, _ in frozen_stages(model, layer):
        hit = [k for k in not_loaded if k.startswith(name + ".")]
        if hit:
            shown = ", ".join(f"{k} ({not_loaded[k]})" for k in hit[:3]) + (f" and {len(hit) - 3} more"
                                                                            if len(hit) > 3 else "")
            raise ValueError(f"--freeze-until {layer} would freeze stage {name}"
                             + (f" of the {role}" if role else "")
                             + f", but --init {report['path']} did not load {shown}: frozen, those weights "
                             f"would stay as initialised and never train; freeze fewer stages or give --init "
                             f"weights that hold them")


def freeze_until(model, layer: str) -> dict:
    """Freeze every stage of ``model`` up to and including ``layer`` (see the module docstring).

    Returns ``{'frozen_stages': [...], 'frozen_parameters': {name: Parameter}, 'frozen_count',
    'trainable_count'}`` (counts of scalars). ``ValueError`` for an unknown name, or one that would
    leave no parameter to train.
    """
    all_stages = stages(model)
    frozen = frozen_stages(model, layer)
    k = len(frozen)
    for _, stage in frozen:
        for m in stage.modules():
            object.__setattr__(m, "frozen", True)
            object.__setattr__(m, "training", False)
    frozen_params = {}
    for name, stage in frozen:
        for pname, p in stage.named_parameters(name):
            frozen_params[pname] = p
    _skip_input_gradient_after(model, all_stages, k)
    ids = {id(p) for p in frozen_params.values()}
    trainable = sum(p.size for p in model.parameters() if id(p) not in ids)
    return {"frozen_stages": [n for n, _ in frozen], "frozen_parameters": frozen_params,
            "frozen_count": sum(p.size for p in frozen_params.values()), "trainable_count": trainable}


def _skip_input_gradient_after(model, all_stages, k):
    """Tell the first stage with parameters after the frozen prefix not to compute ∂L/∂input, when the path
    from the model to it is all ``Sequential`` (which stop at a None gradient); else leave it."""
    for name, stage in all_stages[k:]:
        if not _has_parameters(stage):
            continue
        m = model
        for part in name.split(".")[:-1]:
            if not isinstance(m, Sequential):
                return
            m = m._modules[part]
        if isinstance(m, Sequential):
            stage.set_input_grad(False)
        return


def _normalisation_only(module) -> bool:
    """Whether every layer of ``module`` that holds parameters is a normalisation layer (batch norm)."""
    owners = [m for m in module.modules() if m._parameters]
    return bool(owners) and all(isinstance(m, NORMALISATION_LAYERS) for m in owners)


def check_decay(decay) -> float:
    """``decay`` as a float, or a ``ValueError`` naming ``--layer-lr-decay`` unless it lies in (0, 1]."""
    decay = float(decay)
    if not 0 < decay <= 1:
        raise ValueError(f"--layer-lr-decay must be in (0, 1], got {decay}")
    return decay


def layer_lr_multipliers(all_stages, decay: float) -> dict:
    """``{stage name: decay**depth}`` for the stages with parameters, depth 0 for the last (the head), 1 for
    the one below it, … Stages without parameters are not counted, and a stage holding only normalisation
    parameters (a ResNet's ``bn1``, a VGG trunk's ``features.1``) takes the depth of the stage before it,
    so a convolution and its batch norm are one step."""
    decay = check_decay(decay)
    steps = _lr_steps(all_stages)
    last = steps[-1][1] if steps else 0
    return {name: decay ** (last - step) for name, step, _ in steps}


def _lr_steps(all_stages) -> list:
    """``[(stage name, step, the stage it joins or None)]`` for the stages with parameters, steps counted
    from 0 at the first; a normalisation-only stage joins the step of the stage before it."""
    steps = []
    for name, m in all_stages:
        if _has_parameters(m):
            if steps and _normalisation_only(m):
                steps.append((name, steps[-1][1], steps[-1][2] or steps[-1][0]))
            else:
                steps.append((name, steps[-1][1] + 1 if steps else 0, None))
    return steps


def parameter_lr_scale(all_stages, multipliers: dict) -> dict:
    """``{parameter name: multiplier}``: every parameter of a stage gets its stage's multiplier."""
    out = {}
    for name, stage in all_stages:
        if name in multipliers:
            for pname, _ in stage.named_parameters(name):
                out[pname] = multipliers[name]
    return out


def prepare(model, freeze: str | None = None, decay: float = 1.0) -> dict:
    """Apply ``--freeze-until`` and work out ``--layer-lr-decay`` for ``model``.

    Returns ``{'params': [(name, Parameter)] to optimise, 'lr_scale': {name: multiplier},
    'lines': [str] for the log}``. With neither option: every parameter, no multipliers, no lines.
    """
    decay = 1.0 if decay is None else check_decay(decay)
    if freeze is None and decay == 1.0:
        return {"params": list(model.named_parameters()), "lr_scale": {}, "lines": []}
    all_stages = stages(model)
    lines, frozen_names = [], []
    report = None
    if freeze is not None:
        report = freeze_until(model, freeze)
        frozen_names = report["frozen_stages"]
        total = report["frozen_count"] + report["trainable_count"]
        lines.append(f"--freeze-until {freeze}: frozen stages {', '.join(frozen_names)} (eval mode: batch norm "
                     f"keeps its running statistics; no backward below them)")
        lines.append(f"  parameters: {report['trainable_count']:,} trainable, {report['frozen_count']:,} frozen "
                     f"of {total:,}")
    frozen_ids = {id(p) for p in report["frozen_parameters"].values()} if report else set()
    params = [(n, p) for n, p in model.named_parameters() if id(p) not in frozen_ids]
    lr_scale = {}
    if decay != 1.0:
        multipliers = layer_lr_multipliers(all_stages, decay)
        lr_scale = {n: s for n, s in parameter_lr_scale(all_stages, multipliers).items()
                    if n in dict(params)}
        width = max(len(n) for n in multipliers)
        lines.append(f"--layer-lr-decay {decay:g}: learning rate per stage (× the schedule's lr)")
        joins = {name: joined for name, _, joined in _lr_steps(all_stages) if joined}
        for name, s in multipliers.items():
            lines.append(f"  {name:<{width}}  " + ("frozen" if name in frozen_names else f"{s:.6g}")
                         + (f"  (normalisation: with {joins[name]})" if name in joins else ""))
    return {"params": params, "lr_scale": lr_scale, "lines": lines}
