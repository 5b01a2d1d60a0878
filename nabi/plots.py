"""Plots written as PNG files (matplotlib, Agg backend), atomically."""
from __future__ import annotations

import io
from pathlib import Path

from .files import atomic_write_bytes


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path) -> Path:
    """Save to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_curves(history, path) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    if any("val_loss" in r for r in history):
        a.plot(epochs, [r.get("val_loss") for r in history], "s-", label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.set_title("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(epochs, [r["train_acc"] for r in history], "o-", label="train")
    if any("val_acc" in r for r in history):
        b.plot(epochs, [r.get("val_acc") for r in history], "s-", label="validation")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.set_title("accuracy"), b.legend(), b.grid(alpha=0.3)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
