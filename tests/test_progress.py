"""Training progress: plain timed lines in a log file, tqdm on a terminal, an ETA without the first batch."""
import io

import numpy as np

from nabi.training.progress import PlainBar, Progress, format_duration


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(75.2) == "1:15"
    assert format_duration(3725) == "1:02:05"


def test_plain_bar_writes_a_line_per_interval_not_per_batch():
    clock, out = FakeClock(), io.StringIO()
    bar = PlainBar(1000, desc="epoch 1/2", stream=out, interval=15.0, clock=clock)
    for _ in range(999):                      # 999 batches, 0.125 s each
        clock.t += 0.125
        bar.update(loss="0.5")
    lines = out.getvalue().splitlines()
    assert len(lines) == 8                    # at 15, 30, ..., 120 s
    assert lines[0] == "epoch 1/2: 120/1000 batches (12%), loss 0.5, ETA 1:50"   # 880 left at 0.125 s
    clock.t += 0.125
    bar.update()
    bar.close()
    last = out.getvalue().splitlines()[-1]
    assert last == "epoch 1/2: 1000/1000 batches (100%), loss 0.5, 2:05"


def test_first_batch_is_left_out_of_the_eta_and_explained():
    clock, out = FakeClock(), io.StringIO()
    bar = PlainBar(101, desc="epoch 1/1", stream=out, interval=15.0, clock=clock, skip_first=True)
    clock.t += 14.0                           # the first batch waits for compilation
    bar.update()
    assert out.getvalue().splitlines() == [
        "epoch 1/1: first batch took 0:14 (one-off kernel compilation; the ETA leaves it out)"]
    for _ in range(10):                       # then 0.5 s a batch
        clock.t += 0.5
        bar.update()
    assert bar.eta() == 0.5 * 90              # 90 batches left at 0.5 s; the 14 s batch counts for nothing


def test_a_fast_first_batch_gets_no_note():
    clock, out = FakeClock(), io.StringIO()
    bar = PlainBar(10, desc="e", stream=out, clock=clock, skip_first=True)
    clock.t += 0.2
    bar.update()
    assert out.getvalue() == ""


def test_progress_picks_plain_lines_off_a_terminal_and_skips_only_the_runs_first_batch():
    out = io.StringIO()                       # StringIO.isatty() is False: a log file
    p = Progress(stream=out)
    first = p.epoch(5, 0, "epoch 1/2")
    second = p.epoch(5, 0, "epoch 2/2")
    assert isinstance(first, PlainBar) and first._skip_first and not second._skip_first
    assert Progress(enabled=False).epoch(5) is None


def test_progress_on_a_terminal_uses_tqdm_started_after_the_first_batch():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    bar = Progress(stream=out).epoch(4, 0, "epoch 1/1")
    assert "first batch" in out.getvalue() and bar._bar is None
    bar.update(loss="1.0")
    assert bar._bar is not None and bar._bar.n == 1 and bar._bar.initial == 1   # its timer starts here
    for _ in range(3):
        bar.update(loss="0.9")
    bar.close()
    assert "4/4" in out.getvalue() and "loss=0.9" in out.getvalue()


def test_training_into_a_log_writes_a_few_lines_per_epoch(tmp_path, capsys):
    from nabi import data as D, layers as L
    from nabi import optim
    from nabi.training.trainer import Trainer
    rng = np.random.default_rng(0)
    x = rng.random((256, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 256)
    model = L.Sequential(L.Flatten(), L.Linear(64, 4))
    opt = optim.SGD(model.named_parameters(), lr=0.1)
    t = Trainer(model, opt, D.DataLoader(D.ArrayDataset(x, y), batch_size=4), epochs=3, progress=True,
                log=lambda *a: None)
    t.fit()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert 3 <= len(lines) <= 3 * 3           # 64 batches an epoch: an end line each, at most two more
    assert lines[-1].startswith("epoch 3/3: 64/64 batches (100%), loss ")
