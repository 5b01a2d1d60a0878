"""Scoring a classifier on a loader: mean loss, accuracy and top-k accuracy (the trainer's validation, ``nabi eval``)."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..layers import CrossEntropyLoss


def evaluate(model, loader, loss_fn=None, topk=5, return_outputs=False):
    """Loss, accuracy and top-k accuracy of ``model`` (in eval mode) over ``loader``.

    Returns ``{'loss', 'acc', 'topk', 'n'}`` and, with ``return_outputs``, also
    ``'probs'`` (N, K) and ``'labels'`` (N,) as NumPy arrays.
    """
    from ..functional.activation import softmax
    loss_fn = loss_fn or CrossEntropyLoss()
    was_training = model.training
    model.eval()
    total_loss = correct = correct_k = n = 0
    probs, labels = [], []
    try:
        for x, y in loader:
            logits = model(x)
            bs = int(y.shape[0])
            total_loss += loss_fn(logits, y) * bs
            p = backend.to_numpy(softmax(logits, axis=1))
            t = backend.to_numpy(y)
            correct += int((p.argmax(1) == t).sum())
            k = min(topk, p.shape[1])
            top = np.argsort(-p, axis=1, kind="stable")[:, :k]
            correct_k += int((top == t[:, None]).any(1).sum())
            n += bs
            if return_outputs:
                probs.append(p)
                labels.append(t)
    finally:
        model.train(was_training)
    out = {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "topk": correct_k / max(n, 1), "n": n}
    if return_outputs:
        out["probs"] = np.concatenate(probs) if probs else np.zeros((0, 0))
        out["labels"] = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return out
