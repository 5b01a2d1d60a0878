"""Plots written as PNG files (matplotlib, Agg backend), atomically, with a CJK fallback font.

Every nabi figure is built and saved inside :func:`plotting`: the Agg backend, and
a font family list that ends with a CJK font, so Korean (and Chinese, Japanese)
class names and titles render instead of falling back to empty boxes. Matplotlib
(3.6 and later) takes each glyph from the first family in the list that has it:
Latin text keeps matplotlib's default font, Hangul comes from the CJK one.

The CJK font is Noto Sans CJK (SIL Open Font License 1.1), shipped by the PyPI
package ``notojp-matplotlib`` (part of nabi's ``tools`` extra). nabi registers its
font file with matplotlib's font manager itself and never imports that package
(importing it would change matplotlib's global default font). Without the package,
the first CJK font installed on the system from :data:`SYSTEM_CJK_FAMILIES` is used;
without any, CJK text renders as boxes and matplotlib warns about missing glyphs.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

from .files import atomic_write_bytes

CJK_FONT_PACKAGE = "notojp-matplotlib"
SYSTEM_CJK_FAMILIES = ("Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "Noto Sans CJK JP", "Malgun Gothic",
                       "AppleGothic", "Source Han Sans KR", "UnDotum", "Baekmuk Gulim")

_registered: dict = {}


def cjk_font_path() -> Path | None:
    """The font file that ``notojp-matplotlib`` ships (located from its file list, not imported), or None."""
    from importlib import metadata
    try:
        files = metadata.files(CJK_FONT_PACKAGE) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.suffix.lower() in (".otf", ".ttf"):
            path = Path(f.locate())
            if path.is_file():
                return path
    return None


def cjk_font_family() -> str | None:
    """Register the packaged CJK font with matplotlib's font manager (once) and return its family name;
    else the first CJK family installed on the system; else None."""
    if "family" not in _registered:
        from matplotlib import font_manager
        family = None
        path = cjk_font_path()
        if path is not None:
            font_manager.fontManager.addfont(str(path))
            family = font_manager.FontProperties(fname=str(path)).get_name()
        else:
            available = {f.name for f in font_manager.fontManager.ttflist}
            family = next((fam for fam in SYSTEM_CJK_FAMILIES if fam in available), None)
        _registered["family"] = family
    return _registered["family"]


def font_families() -> list[str]:
    """matplotlib's current ``font.family`` list with the CJK family appended as the last fallback."""
    import matplotlib
    families = list(matplotlib.rcParams["font.family"])
    cjk = cjk_font_family()
    if cjk is not None and cjk not in families:
        families.append(cjk)
    return families


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


@contextmanager
def plotting():
    """Build and save a figure inside ``with plotting() as plt:``: pyplot on the Agg backend, and every
    text (titles, tick labels, legends) falls back to the CJK font for glyphs the default font lacks.
    matplotlib's settings are restored on leaving the block."""
    plt = _pyplot()
    import matplotlib
    with matplotlib.rc_context({"font.family": font_families()}):
        yield plt


def save_figure(fig, path) -> Path:
    """Save to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_curves(history, path) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side."""
    with plotting() as plt:
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
