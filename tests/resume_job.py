"""A small training run used by the crash/resume test (run as a script, or imported)."""
import sys
import time

import numpy as np


def make_trainer(out_dir, slow=0.0, epochs=3, precision="float32"):
    import nabi
    from nabi import data as D, layers as L
    from nabi import optim
    from nabi.training.trainer import Trainer
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images[:320] / 16.0).astype(np.float32)[:, None]
    y = digits.target[:320].astype(np.int64)

    def slow_down(img, rng):
        if slow:
            time.sleep(slow)
        return img + 0.01 * rng.standard_normal(img.shape).astype(np.float32)   # augmentation uses the rng
    train = D.ArrayDataset(x[:256], y[:256], classes=[str(i) for i in range(10)], transform=slow_down)
    val = D.ArrayDataset(x[256:], y[256:], classes=[str(i) for i in range(10)])
    nabi.seed(0)
    model = L.Sequential(L.Conv2d(1, 8, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Dropout(0.3),
                         L.Linear(8 * 16, 10))
    model.arch = {"name": "resume-test", "kwargs": {}}
    opt = optim.SGD(model.named_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loader = D.DataLoader(train, batch_size=16, shuffle=True, seed=7)
    sched = optim.make_schedule("cosine", opt, total_steps=epochs * len(loader))
    return Trainer(model, opt, loader, D.DataLoader(val, batch_size=64), schedule=sched, epochs=epochs,
                   out_dir=out_dir, checkpoint_every=3, progress=False, metadata={"arch": model.arch},
                   log=lambda *a: None, precision=precision)


if __name__ == "__main__":
    out, slow = sys.argv[1], float(sys.argv[2])
    t = make_trainer(out, slow)
    t.resume()
    t.fit()
