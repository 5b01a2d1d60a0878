"""How well a gallery answers: figures on labelled query photos.

``evaluate(gallery, QUERIES)``: QUERIES holds one folder per individual. Folders named like an enrolled
individual are *known* queries, the others *unknown* ones (strangers), ``background`` folders expect the
answer background. For each scorer — the embedding alone, the keypoint matcher alone, and the calibrated
fusion (``fused``, what the gallery answers with) —

    rank1, rank5     share of known queries whose individual is ranked first / among the first five
                     (rank-5 only when more than five individuals are enrolled: otherwise it is trivially 1)
    mAP              mean average precision over the gallery photos (embedding and matcher)
    auroc            known against unknown queries, by the best score (fused: by P(known) = 1 − P(unknown))
    tar_at_far_*     true-accept rate at 1 % and 5 % false accepts

and for the answer itself: the three-way accuracy (known named right, strangers called unknown,
background called background), the expected calibration error of the shown probability and its
reliability table.

Honest figures need queries the gallery has not seen: a query photo that is enrolled (same SHA-256) is
left out with a warning, and queries that share an encounter with a gallery photo of their individual
(photos taken together: ``nabi.data.encounters``) are counted and warned about, since they flatter
every figure. With ``groups='encounter'`` the photos of one query encounter are answered together
(multi-photo queries). ``score_queries`` scores a query folder once; ``evaluate(gallery, scored=...)`` answers
from those scores again (per photo and per sighting, or with another calibration) without scoring again.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..data.background import is_background
from ..data.encounters import encounter_keys
from ..files.digest import file_sha256
from . import metrics as M


def _ranking(scores, names_p, labels, known, photo_scores=None, g_labels=None):
    out = {}
    order = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), axis=1, kind="stable")
    if known.any():
        lab = np.asarray(labels, dtype=object)[known]
        hits = names_p[order[known]] == lab[:, None]
        out["rank1"] = float(hits[:, :1].any(axis=1).mean())
        out["rank5"] = float(hits[:, :5].any(axis=1).mean()) if len(names_p) > 5 else None
        if photo_scores is not None:
            ps = np.where(np.isnan(photo_scores), -np.inf, photo_scores)[known]
            out["mAP"] = M.mean_average_precision(ps, lab, g_labels)
    return out, order


def _open_set(best, known, unknown, correct):
    if not (known.any() and unknown.any()):
        return {}
    return {"auroc": M.auroc(best[known], best[unknown]),
            "tar_at_far_1pct": M.tar_at_far(best[known], correct, best[unknown], 0.01)["tar"],
            "tar_at_far_5pct": M.tar_at_far(best[known], correct, best[unknown], 0.05)["tar"]}


def query_items(gallery, queries_dir, log=None):
    """``(items [(name, path)], encounter key per item, facts)``: the query folder's photos, enrolled ones left
    out, and how many share an encounter with the gallery."""
    from .folders import individual_folders
    say = log or (lambda m: warnings.warn(m, stacklevel=3))
    snap = gallery.snapshot()
    enrolled_sha = {e["sha256"] for e in snap.entries}
    items, keys, dropped = [], [], []
    for name, paths in individual_folders(queries_dir):
        ks = [None] * len(paths) if is_background(name) else encounter_keys(
            paths, gallery.encounter_rule, gallery.gap_minutes, individual_dir=Path(queries_dir) / name)
        for p, k in zip(paths, ks):
            if file_sha256(p) in enrolled_sha:
                dropped.append(p)
                continue
            items.append((name, p))
            keys.append(k)
    if dropped:
        say(f"{len(dropped)} query photo(s) are enrolled in the gallery (same SHA-256) and were left out, e.g. "
            f"{dropped[0]}: a gallery's own photos are no test of it")
    gallery_enc = {(e["name"], e.get("encounter")) for e in snap.entries if e.get("encounter")}
    shared = sum((n, k) in gallery_enc for (n, _), k in zip(items, keys) if k and not k.startswith("photo:"))
    if shared:
        say(f"{shared} of {len(items)} query photo(s) share an encounter with gallery photos of their individual "
            f"(grouped by the rule {gallery.encounter_rule!r}): photos taken together flatter every figure; keep each "
            "encounter on one side (gallery or queries)")
    if not items:
        raise ValueError(f"query folder {queries_dir} has no photo that is not already in the gallery")
    return items, keys, {"shared_encounters": int(shared), "left_out_enrolled": len(dropped)}


def score_queries(gallery, queries_dir, matcher=None, log=None) -> dict:
    """The query folder scored once against ``gallery``: ``{items, keys, facts, scored, bg_wins, matcher}``, which
    ``evaluate`` turns into figures (one scoring serves several groupings, priors or calibrations)."""
    matcher = gallery.use_matcher(matcher)
    items, keys, facts = query_items(gallery, queries_dir, log)
    paths = [p for _, p in items]
    q, probs = gallery.embedder.embed(paths, with_probs=True)
    scored = gallery.scores(q, paths, matcher=matcher, snap=gallery.snapshot())
    bg_wins = gallery.embedder.background_wins(probs)
    return {"items": [(n, str(p)) for n, p in items], "keys": list(keys), "facts": facts, "scored": scored,
            "bg_wins": None if bg_wins is None else np.asarray(bg_wins, bool), "matcher": bool(matcher)}


def evaluate(gallery, queries_dir=None, matcher=None, groups="encounter", log=None, prior_known=None,
             scored=None) -> dict:
    """The figures of the module docstring for ``gallery`` on ``queries_dir`` (or on ``scored``, what
    ``score_queries`` returned for the same gallery)."""
    from .calibration import expected_calibration_error, reliability
    if scored is None:
        if queries_dir is None:
            raise ValueError("evaluate needs a query folder or the scores score_queries returned")
        scored = score_queries(gallery, queries_dir, matcher, log)
    bundle = scored
    matcher, items, keys, facts = bundle["matcher"], bundle["items"], bundle["keys"], bundle["facts"]
    scored, bg_wins = bundle["scored"], bundle["bg_wins"]
    snap = gallery.snapshot()
    enrolled = set(gallery.individuals())
    labels = [n for n, _ in items]
    names = np.array(scored["names"], dtype=object)
    people = np.array([not is_background(n) for n in names])
    names_p = names[people]
    known = np.array([n in enrolled for n in labels], bool)
    unknown = np.array([n not in enrolled and not is_background(n) for n in labels], bool)
    g_people = np.array([not is_background(e["name"]) for e in snap.entries])
    g_labels = np.array([e["name"] for e in snap.entries], dtype=object)[g_people]
    out = {"queries": len(items), "known_queries": int(known.sum()), "unknown_queries": int(unknown.sum()),
           "individuals_enrolled": len(enrolled), "uses_matcher": matcher, **facts}
    if len(enrolled) <= 5:
        out["note"] = f"rank-5 is not reported: with {len(enrolled)} individuals enrolled it is trivially 1"
    lab_known = np.asarray(labels, dtype=object)[known]
    per = {}
    sim = scored["similarity"][:, people]
    fig, order = _ranking(sim, names_p, labels, known, scored["photo_similarity"][:, g_people], g_labels)
    best = np.nanmax(np.where(np.isnan(sim), -np.inf, sim), axis=1)
    fig.update(_open_set(best, known, unknown, names_p[order[known, 0]] == lab_known))
    per["embedding"] = fig
    if matcher:
        ev = scored["evidence"][:, people]
        tie = np.nan_to_num(sim, nan=-1.0) * 1e-6                      # equal evidence: the embedding decides
        fig, order = _ranking(ev + tie, names_p, labels, known, scored["verified"][:, g_people], g_labels)
        best = np.nanmax(np.where(np.isnan(ev), -np.inf, ev), axis=1)
        fig.update(_open_set(best, known, unknown, names_p[order[known, 0]] == lab_known))
        per["matcher"] = fig
    grouping = None
    if groups == "encounter":
        grouping = [f"{n}\x00{k}" if k else f"photo\x00{i}" for i, ((n, _), k) in enumerate(zip(items, keys))]
    elif groups is not None:
        raise ValueError(f"groups must be 'encounter' or None, got {groups!r}")
    post = gallery.probabilities(scored, matcher, grouping, prior_known)
    if post is not None:
        P, P0, _, out["prior_known"] = post
        Pp = P[:, people]
        fig, order = _ranking(Pp, names_p, labels, known)
        fig.update(_open_set(1.0 - P0, known, unknown, names_p[order[known, 0]] == lab_known))
        per["fused"] = fig
    out.update(per)
    out["scorers"] = list(per)
    answers = [gallery._answer(scored, post, r, bool(bg_wins[r]) if bg_wins is not None else False, 5, snap, matcher)
               for r in range(len(items))]
    truths = [("background", None) if is_background(n) else ("known", n) if n in enrolled else ("unknown", None)
              for n in labels]
    out["three_way_accuracy"] = M.three_way_accuracy([(a["answer"], a.get("name")) for a in answers], truths)
    out["answered"] = {k: sum(a["answer"] == k for a in answers) for k in ("known", "unknown", "background")}
    out["calibrated"] = post is not None
    if post is not None:
        scope = [i for i, a in enumerate(answers) if a["answer"] in ("known", "unknown")]
        if scope:
            shown = np.array([answers[i]["probability"] for i in scope])
            correct = np.array([(answers[i]["answer"], answers[i].get("name")) == truths[i] for i in scope])
            out["ece"] = expected_calibration_error(shown, correct)
            out["reliability"] = reliability(shown, correct)
    return out
