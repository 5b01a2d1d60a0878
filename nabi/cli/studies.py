"""``nabi experiment``, ``nabi ablate`` and ``nabi sweep``: the commands that train many runs.

Their flags and the function each runs are the studies' own (``add_arguments`` and ``main_from_args`` of
``nabi.studies.experiment``, ``ablation`` and ``sweep``), so a study can be run from Python or embedded
in another parser the same way.
"""
from __future__ import annotations

from .command import Command
from .eval import P_DEFINITIONS


def _experiment_arguments(p):
    from ..studies.experiment import add_arguments
    add_arguments(p)


def _experiment(args):
    from ..studies.experiment import main_from_args
    return main_from_args(args)


def _ablate_arguments(p):
    from ..studies.ablation import add_arguments
    add_arguments(p)


def _ablate(args):
    from ..studies.ablation import main_from_args
    return main_from_args(args)


def _sweep_arguments(p):
    from ..studies.sweep import add_arguments
    add_arguments(p)


def _sweep(args):
    from ..studies.sweep import main_from_args
    return main_from_args(args)


EXPERIMENT = Command(
    "experiment", "paired multi-seed experiment: model A (individuals) vs model B (+ background class), P1–P4 with "
                  "statistics", _experiment_arguments, _experiment,
    description="Paired multi-seed experiment: model A learns the individuals only, model B the individuals "
                "and a background class; both are trained over several seeds and scored on the same test "
                "photos, and the report gives A·P2 and B·P1–B·P4 per run, their mean and standard deviation, "
                "and paired tests of B against A. With sub-folders background/<kind>/ (trees, pavement, …), "
                "--background-classes kinds lets B learn one class per kind; every kind counts as background "
                "in P1–P4. --models A,B,E adds model E, the embedding arm: the same network trained as an "
                "identity embedding (ArcFace by default) on B's photos from the same seed, each test photo "
                "answered by the class of its most similar training photo (best cosine similarity); its "
                "E·P1–E·P4 are paired with A's and B's.", definitions=P_DEFINITIONS,
    examples=("nabi experiment photos/ --runs 10 --recipe modern --background-classes kinds   "
              "# B learns background/<kind> classes",
              "nabi experiment photos/ --runs 10 --recipe resnet18-160 --background 배경",
              "nabi experiment photos/ --recipe tiny --runs 2 --jobs 2 --models A,B,E --out /tmp/exp   "
              "# + the embedding arm"))

ABLATE = Command(
    "ablate", "train variants that differ in one factor from shared initial weights, over several seeds: mean ± std "
              "of accuracy, parameters, MACs, time", _ablate_arguments, _ablate,
    examples=("nabi ablate examples/ablation_cifar10.toml --check",
              "nabi ablate examples/ablation_cifar10.toml --jobs 2 --set base.epochs=1"))

SWEEP = Command(
    "sweep", "search training settings (grid, random) on Ray Tune; ASHA stops poor trials early", _sweep_arguments,
    _sweep,
    description="Search training settings (learning rate, augmentation, model, image size, a model's own "
                "arguments, ...) on Ray Tune: each trial trains with nabi's trainer into OUT/trials/<trial id>/, "
                "ASHA stops the trials whose validation accuracy falls behind, and the report OUT/sweep.md names "
                "the best trial by validation accuracy; its test accuracy is computed once, after selection. The "
                "same command with the same OUT resumes an interrupted sweep.",
    examples=("nabi sweep sweep.toml --check", "nabi sweep sweep.toml --cpus-per-trial 2 --out runs/sweep"))
