"""Gallery search time at 100k enrolled embeddings: one matrix product over unit embeddings, then the
best photo per individual (``Gallery.rank_embeddings``), against the matrix product alone.

    python -m benchmarks.gallery_search [--rows 100000] [--dim 256] [--photos-per-individual 10]
                                        [--queries 1,16] [--repeats 7] [--threads 2]

Prints the median time per call and per query. The embeddings are random unit vectors (search time
does not depend on their values).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--photos-per-individual", type=int, default=10)
    ap.add_argument("--queries", default="1,16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from nabi.reid.gallery import Gallery
    rng = np.random.default_rng(0)
    E = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    entries = [{"name": f"n{i // args.photos_per_individual:06d}", "photo": f"p{i}.jpg", "sha256": ""}
               for i in range(args.rows)]
    g = Gallery(None, None, entries, E)
    print(f"gallery: {args.rows:,} embeddings × {args.dim} float32 ({E.nbytes / 2**20:.0f} MB), "
          f"{args.rows // args.photos_per_individual:,} individuals; {args.threads} BLAS thread(s)")
    with threadpool_limits(args.threads):
        for nq in (int(v) for v in args.queries.split(",")):
            q = rng.standard_normal((nq, args.dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            t_mm = _median_time(lambda: q @ E.T, args.repeats)
            t_all = _median_time(lambda: g.rank_embeddings(q, E, entries, None, 5), args.repeats)
            print(f"{nq:3d} queries: matrix product {t_mm * 1e3:8.2f} ms, full search (best per individual, "
                  f"top-5) {t_all * 1e3:8.2f} ms = {t_all / nq * 1e3:.2f} ms per query")


if __name__ == "__main__":
    main()
