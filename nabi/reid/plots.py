"""The FAR/FRR curve of a gallery's calibration, as a PNG."""
from __future__ import annotations

from ..plots import _pyplot, save_figure


def plot_far_frr(curve, point, path):
    """False-accept and false-reject rate (and true-accept rate) against the threshold, the chosen point marked."""
    plt = _pyplot()
    t = [r["threshold"] for r in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, [r["far"] for r in curve], label="false-accept rate (unknowns accepted)")
    ax.plot(t, [r["frr"] for r in curve], label="false-reject rate (known rejected)")
    ax.plot(t, [r["tar"] for r in curve], "--", label="true-accept rate (known, right name)")
    ax.axvline(point["threshold"], color="k", lw=0.8)
    ax.annotate(f"threshold {point['threshold']:.3f}\nFAR {point['far']:.3f} · TAR {point['tar']:.3f}",
                (point["threshold"], 0.5), xytext=(5, 0), textcoords="offset points", fontsize=8)
    ax.set_xlabel("cosine similarity threshold"), ax.set_ylabel("rate"), ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8), ax.grid(alpha=0.3), ax.set_title("unknown-individual threshold")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
