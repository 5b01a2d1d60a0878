"""Training progress: a tqdm bar on a terminal, a plain timed line in a log file.

``Progress`` is made once per training run and opened once per epoch:

    progress = Progress(enabled=True)
    bar = progress.epoch(total=n_batches, initial=done, desc="epoch 1/6")
    for ...:
        bar.update(loss=..., acc=..., img_s=..., lr=...)
    bar.close()

On a terminal (``stream.isatty()``) the bar is tqdm's, redrawn at most every
0.1 s. Anywhere else (``nabi demo > log 2>&1``, a batch job) it writes one line
every ``interval`` seconds (15 s by default) and one at the end of the epoch, so
a log holds a few lines per epoch instead of one redraw per batch.

The first batch of a run is timed apart: it waits for the one-off compilation
of the kernels (numba on the CPU) and can take ten seconds or more where every later
batch takes milliseconds. Before it, a note says so; the ETA and the rate are
measured from the end of the first batch, so that wait does not inflate them.
"""
from __future__ import annotations

import sys
import time

__all__ = ["Progress", "PlainBar", "format_duration", "DEFAULT_INTERVAL"]

DEFAULT_INTERVAL = 15.0      # seconds between two lines in a log file
FIRST_BATCH_NOTE_AFTER = 2.0  # a first batch slower than this gets a line of its own in a log file


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``'1:15'``; ``3725`` -> ``'1:02:05'`` (hours only when needed)."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _stats_text(stats: dict) -> str:
    return ", ".join(f"{k.replace('_', '/')} {v}" for k, v in stats.items())


class PlainBar:
    """One epoch's progress as plain lines: ``desc: done/total batches (pct), stats, ETA m:ss``.

    ``clock`` is the time source (``time.perf_counter``; tests pass a fake one).
    ``timed_from``: the batch count from which rate and ETA are measured (the
    first batch of a run is left out of them).
    """

    def __init__(self, total, initial=0, desc="", stream=None, interval=DEFAULT_INTERVAL, clock=time.perf_counter,
                 skip_first=False):
        self.total, self.n, self.desc = int(total), int(initial), desc
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.clock = float(interval), clock
        self.stats = {}
        self._skip_first = skip_first
        self._start = self._last = clock()
        self._timed_from = self.n
        self._timed_start = self._start
        self.lines = 0

    def _write(self, text):
        print(text, file=self.stream, flush=True)
        self.lines += 1

    def eta(self):
        """Seconds left in this epoch, from the batches after the first; None before two are done."""
        done = self.n - self._timed_from
        if done < 1 or self.n >= self.total:
            return None if done < 1 else 0.0
        per_batch = (self.clock() - self._timed_start) / done
        return per_batch * (self.total - self.n)

    def line(self) -> str:
        pct = 100.0 * self.n / max(self.total, 1)
        text = f"{self.desc}: {self.n}/{self.total} batches ({pct:.0f}%)"
        if self.stats:
            text += ", " + _stats_text(self.stats)
        eta = self.eta()
        if eta is not None and self.n < self.total:
            text += f", ETA {format_duration(eta)}"
        elif self.n >= self.total:
            text += f", {format_duration(self.clock() - self._start)}"
        return text

    def update(self, n=1, **stats):
        now = self.clock()
        self.n += n
        self.stats.update(stats)
        if self._skip_first:                       # the run's first batch: compilation, timed apart
            self._skip_first = False
            took = now - self._start
            self._timed_from, self._timed_start = self.n, now
            if took >= FIRST_BATCH_NOTE_AFTER:
                self._write(f"{self.desc}: first batch took {format_duration(took)} (one-off kernel "
                            f"compilation; the ETA leaves it out)")
            self._last = now
            return
        if now - self._last >= self.interval and self.n < self.total:
            self._write(self.line())
            self._last = now

    def close(self):
        self._write(self.line())


class _TqdmBar:
    """tqdm's bar, started after the run's first batch so its rate and ETA leave the compilation out."""

    def __init__(self, total, initial, desc, stream, skip_first):
        self.total, self.n, self.desc, self.stream = total, initial, desc, stream
        self._bar = None
        self._stats = {}
        if skip_first:
            self.stream.write(f"{desc}: first batch (kernels compile on first use in a process: up to ~15 s)…")
            self.stream.flush()
            self._pending_note = True
        else:
            self._pending_note = False
            self._open()

    def _open(self):
        from tqdm.auto import tqdm
        if self._pending_note:                     # wipe the note; the bar takes its line
            self.stream.write("\r\033[K")
            self._pending_note = False
        self._bar = tqdm(total=self.total, initial=self.n, desc=self.desc, unit="batch", dynamic_ncols=True,
                         leave=True, mininterval=0.1, file=self.stream)

    def update(self, n=1, **stats):
        self._stats.update(stats)
        if self._bar is None:
            self.n += n
            self._open()
        else:
            self._bar.update(n)
            self.n += n
        self._bar.set_postfix(self._stats, refresh=False)

    def close(self):
        if self._bar is None:
            self._open()
        self._bar.set_postfix(self._stats, refresh=False)
        self._bar.close()


class Progress:
    """Progress reporting for one training run (``enabled=False``: silent).

    ``stream`` defaults to ``sys.stderr``; ``terminal`` (default: ``stream.isatty()``)
    picks tqdm's bar over plain lines; ``interval``: seconds between plain lines.
    """

    def __init__(self, enabled=True, stream=None, terminal=None, interval=DEFAULT_INTERVAL):
        self.enabled = bool(enabled)
        self.stream = stream
        self.terminal = terminal
        self.interval = interval
        self._first_batch_done = False

    def epoch(self, total, initial=0, desc=""):
        """A bar for one epoch of ``total`` batches, ``initial`` of them already done (resume); or None."""
        if not self.enabled:
            return None
        stream = self.stream if self.stream is not None else sys.stderr
        terminal = self.terminal
        if terminal is None:
            terminal = bool(getattr(stream, "isatty", lambda: False)())
        skip_first = not self._first_batch_done
        self._first_batch_done = True
        if terminal:
            return _TqdmBar(total, initial, desc, stream, skip_first)
        return PlainBar(total, initial, desc, stream=stream, interval=self.interval, skip_first=skip_first)
