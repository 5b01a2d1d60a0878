"""Korean class names in nabi's PNG files: the CJK fallback font of ``nabi.plots``.

Matplotlib reports a glyph its fonts lack twice over: a UserWarning "Glyph … missing
from font(s) …" and, for a family it cannot find, a log line "findfont: Font family
… not found". Each case records both while it draws.
"""
import logging
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib import font_manager  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402

from nabi import plots  # noqa: E402
from nabi.evaluate import plot_confusion_matrix  # noqa: E402

NAMES = ["뾰또", "베찌", "배경"]
FONT_PROBLEMS = ("missing from font", "Glyph", "not found", "findfont")


@contextmanager
def font_complaints(caplog):
    """Collect matplotlib's missing-glyph warnings and font log lines (WARNING and above) of the block."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="matplotlib"):
        warnings.simplefilter("always")
        found = []
        yield found
    found += [str(w.message) for w in caught if any(p in str(w.message) for p in FONT_PROBLEMS)]
    found += [r.getMessage() for r in caplog.records
              if r.name.startswith("matplotlib") and any(p in r.getMessage() for p in FONT_PROBLEMS)]


def has_glyphs(font_file, text):
    font = FT2Font(str(font_file))
    return all(font.get_char_index(ord(c)) != 0 for c in text)


def test_the_registered_font_is_the_packaged_noto_cjk_file():
    path = plots.cjk_font_path()
    assert path is not None, f"{plots.CJK_FONT_PACKAGE} is not installed (it is part of nabi[tools])"
    assert path.suffix == ".otf" and path.parent.name == "fonts"
    family = plots.cjk_font_family()
    assert family == "Noto Sans CJK JP"
    found = font_manager.fontManager.findfont(font_manager.FontProperties(family=family),
                                              fallback_to_default=False)
    assert found == str(path)
    assert has_glyphs(path, "".join(NAMES) + "漢字かなカナ")
    # the default font lacks Hangul: without the fallback these names would be boxes
    default = font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))
    assert not has_glyphs(default, "".join(NAMES))


def test_korean_confusion_matrix_draws_every_glyph(tmp_path, caplog):
    path = tmp_path / "cm.png"
    cm = np.array([[5, 1, 0], [2, 4, 1], [0, 1, 6]])
    with font_complaints(caplog) as complaints:
        plot_confusion_matrix(cm, NAMES, path, title="고양이 세 마리")
        plot_confusion_matrix(cm, NAMES, path, normalize=True)
    assert complaints == []
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.cjk_font_family() in plots.font_families()


def test_the_check_sees_missing_glyphs_without_the_fallback(tmp_path, caplog):
    """The same drawing outside ``plotting()`` (matplotlib's default fonts only) is reported,
    so the empty list above is a real result."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
        fig = Figure()
        FigureCanvasAgg(fig)
        fig.add_subplot(1, 1, 1).set_title(" ".join(NAMES))
        with font_complaints(caplog) as complaints:
            fig.savefig(tmp_path / "boxes.png")
    assert any("missing from font" in c for c in complaints)


def test_plotting_restores_matplotlib_settings(tmp_path):
    before = list(matplotlib.rcParams["font.family"])
    with plots.plotting() as plt:
        assert matplotlib.rcParams["font.family"][-1] == plots.cjk_font_family()
        fig, ax = plt.subplots()
        ax.set_title("배경")
        plots.save_figure(fig, tmp_path / "t.png")
        plt.close(fig)
    assert list(matplotlib.rcParams["font.family"]) == before
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
