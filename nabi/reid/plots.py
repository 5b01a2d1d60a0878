"""The reliability diagram of a gallery's calibration, as a PNG."""
from __future__ import annotations

from ..plots import _pyplot, save_figure


def plot_reliability(rows, path, title="shown probability against how often the answer was right"):
    """Bars of the share of right answers per bin of the shown probability (``nabi.reid.calibration.reliability``
    rows), the diagonal of perfect calibration, and each bin's count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    used = [r for r in rows if r["count"]]
    ax.bar([(r["lo"] + r["hi"]) / 2 for r in used], [r["accuracy"] for r in used],
           width=[0.9 * (r["hi"] - r["lo"]) for r in used], alpha=0.7, label="share of right answers")
    for r in used:
        ax.annotate(str(r["count"]), ((r["lo"] + r["hi"]) / 2, r["accuracy"]), ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.05)
    ax.set_xlabel("probability shown with the answer"), ax.set_ylabel("share right")
    ax.legend(fontsize=8, loc="upper left"), ax.grid(alpha=0.3), ax.set_title(title, fontsize=9)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
