"""Calibrating a gallery: pairs of known truth, the fitted probabilities, and what they imply.

Pairs (query photo, individual) with their truth come from one of

    a calibration folder   photos of individuals that are neither enrolled nor queried, one sub-folder each
                           (several encounters per individual; ``nabi.data.encounters`` groups them): they are
                           scored among themselves, each encounter as a query against all the others
    the gallery itself     leave-one-encounter-out: each enrolled encounter is a query against the gallery
                           without it (its own individual is then scored by its other encounters)

— never a photo against its own encounter, which would teach the calibration that the place and the light
are the animal. Each scorer (``embedding``: the cosine with the individual's closest photo; ``matcher``:
the keypoint evidence) is calibrated on those pairs and the probabilities fused
(``nabi.reid.calibration``). The summary reports how many pairs there were, each scorer's AUROC on them,
and what the fitted calibration does with those queries: the share of known photos named correctly, and
the share of strangers (each query scored without its own individual) called new.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.background import is_background
from . import metrics as M

DEFAULT_PRIOR_KNOWN = 0.5
ANSWER_FOLDS = 0           # 0: leave one calibration individual out when fitting the answer's calibration
MAX_ANSWER_FOLDS = 25      # more individuals than this are dealt into this many groups instead


def encounter_queries(snap):
    """The gallery's encounters of individuals: ``[(name, key, [entry rows])]`` in entry order."""
    groups = {}
    for j, e in enumerate(snap.entries):
        if is_background(e["name"]):
            continue
        groups.setdefault(snap.encounter_of(j), []).append(j)
    return [(n, k, rows) for (n, k), rows in groups.items()]


def leave_encounter_out_scores(gallery, matcher, snap=None, whole_individual=False, log=None):
    """Scores of every enrolled encounter against the gallery without it (or, with ``whole_individual``, without
    its whole individual: the encounter then stands for a stranger). Returns ``(scores dict over snap.names,
    truth column per query (−1 with whole_individual), query rows)``."""
    snap = snap or gallery.snapshot()
    queries = encounter_queries(snap)
    rows = [j for _, _, rs in queries for j in rs]
    if not rows:
        raise ValueError("calibration needs enrolled individuals (not only background photos)")
    names = np.array([e["name"] for e in snap.entries], dtype=object)
    keys = [snap.encounter_of(j) for j in range(len(snap.entries))]
    skip = np.zeros((len(rows), len(snap.entries)), bool)
    for r, j in enumerate(rows):
        if whole_individual:
            skip[r] = names == names[j]
        else:
            skip[r] = [k == keys[j] for k in keys]
    if log:
        log(f"scoring {len(rows)} gallery photo(s) in {len(queries)} encounter(s) against the rest"
            + (" with the keypoint matcher" if matcher else ""))
    q = snap.embeddings[rows]
    feats = [snap.local[j] for j in rows] if matcher else None
    scored = gallery.scores(q, skip=skip, matcher=matcher, snap=snap, query_features=feats)
    col = {n: i for i, n in enumerate(snap.names)}
    truth = np.full(len(rows), -1) if whole_individual else np.array([col[names[j]] for j in rows])
    return scored, truth, rows


def pairs_from_scores(scored, truth, matcher):
    """Flatten (Q, N) scores into pairs over the individuals (background names left out): ``({scorer: (n,)},
    same (n,) bool, query (n,) int)``; pairs a scorer could not score (NaN) are kept (the fit leaves them out)."""
    people = np.array([not is_background(n) for n in scored["names"]])
    Q, N = scored["similarity"].shape
    cols = np.tile(np.arange(N), (Q, 1))
    have = ~np.isnan(scored["similarity"]) & people[None, :]
    same = (cols == np.asarray(truth)[:, None])[have]
    query = np.tile(np.arange(Q)[:, None], (1, N))[have]
    out = {"embedding": scored["similarity"][have]}
    if matcher:
        out["matcher"] = scored["evidence"][have]
    return out, same, query


def _calibration_gallery(gallery, calibration_dir, log=None):
    """An in-memory gallery of the calibration folder's photos, with ``gallery``'s model and settings."""
    from .folders import individual_folders, unique_photos
    from .gallery import Gallery
    folders, _ = unique_photos(individual_folders(calibration_dir))
    folders = [(n, ps) for n, ps in folders if not is_background(n)]
    if len({n for n, _ in folders}) < 2:
        raise ValueError(f"calibration folder {calibration_dir} needs at least two individuals (one sub-folder each)")
    enrolled = {e["sha256"] for e in gallery.entries}
    from ..files.digest import file_sha256
    overlap = [p for _, ps in folders for p in ps if file_sha256(p) in enrolled]
    if overlap:
        raise ValueError(f"calibration folder {calibration_dir} holds {len(overlap)} photo(s) that are enrolled in the "
                         f"gallery (e.g. {overlap[0]}): calibrate on photos of individuals that are neither enrolled "
                         "nor queried")
    same_names = sorted({n for n, _ in folders} & set(gallery.individuals()))
    if same_names and log:
        log(f"note: calibration individuals named like enrolled ones ({', '.join(same_names[:5])}"
            f"{' …' if len(same_names) > 5 else ''}): they should be other animals")
    cal = Gallery(gallery.embedder, None, local=[] if gallery.has_local_features else None,
                  local_settings=gallery.local_settings, matcher_settings=gallery.matcher_settings,
                  encounter_rule=gallery.encounter_rule, gap_minutes=gallery.gap_minutes)
    if log:
        log(f"embedding {sum(len(ps) for _, ps in folders)} calibration photo(s) of {len(folders)} individuals")
    from ..data.encounters import encounter_keys
    for name, photos in folders:
        cal.add(name, photos, save=False,
                encounters=encounter_keys(photos, gallery.encounter_rule, gallery.gap_minutes,
                                          individual_dir=Path(calibration_dir) / name))
    return cal


def fit_pairs(gallery, calibration_dir=None, matcher=False, log=None):
    """``(pairs {scorer: scores}, same, query of each pair, source facts, (source gallery, scores, truth))``."""
    if calibration_dir is not None:
        source = _calibration_gallery(gallery, calibration_dir, log)
        facts = {"source": "calibration folder", "calibration_folder": str(Path(calibration_dir).resolve())}
    else:
        source = gallery
        facts = {"source": "leave-one-encounter-out over the gallery's own photos"}
    scored, truth, rows = leave_encounter_out_scores(source, matcher, log=log)
    pairs, same, query = pairs_from_scores(scored, truth, matcher)
    snap = source.snapshot()
    facts.update(individuals=len([n for n in snap.names if not is_background(n)]), photos=len(rows),
                 encounters=len(encounter_queries(snap)))
    return pairs, same, query, facts, (source, scored, truth)


def calibrate_gallery(gallery, calibration_dir=None, matcher=None, prior_known=None, kind="isotonic",
                      fusion="logistic", answer="platt", log=None):
    """Calibrate ``gallery`` (see the module docstring), store the calibration in it (saved when it has a folder)
    and return the summary.

    matcher      include the keypoint matcher (None: when the gallery has local features)
    prior_known  the prior probability that a query photo shows an enrolled individual (default: the gallery's
                 current one, else 0.5)
    kind         'isotonic' or 'logistic' per scorer; fusion: 'logistic' (a logistic regression on the scorers'
                 calibrated logits, so an uninformative scorer gets little weight) or 'mean' (WildFusion's average)
    answer       'platt' (the default): the answer's shown probability mapped to how often such answers were right
                 on the same queries, out of individual (``fit_answer``); 'temperature': the posterior's
                 temperature fitted there instead; 'none': the posterior as Bayes' rule gives it
    """
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer calibration {answer!r}; expected one of {', '.join(ANSWERS)}")
    if matcher is None:
        matcher = gallery.has_local_features
    if matcher and not gallery.has_local_features:
        gallery.ensure_local_features(log=log)
    if prior_known is None:
        prior_known = float((gallery.calibration or {}).get("prior_known", DEFAULT_PRIOR_KNOWN))
    if not 0.0 < float(prior_known) < 1.0:
        raise ValueError(f"the prior that a photo shows an enrolled individual must be in (0, 1), got {prior_known}")
    _, _, _, facts, (source, scored, truth) = fit_pairs(gallery, calibration_dir, matcher, log)
    summary = calibration_from_scores(source, scored, truth, matcher, prior_known, kind, fusion, answer, facts,
                                      local_settings=gallery.local_settings, matcher_settings=gallery.matcher_settings)
    with gallery._lock:
        gallery.calibration = summary
        gallery.threshold = None
        if gallery.path is not None:
            gallery.save()
    return summary


ANSWERS = ("temperature", "platt", "none")


def calibration_from_scores(source, scored, truth, matcher, prior_known=DEFAULT_PRIOR_KNOWN, kind="isotonic",
                            fusion="logistic", answer="platt", facts=None, local_settings=None,
                            matcher_settings=None, answer_folds=ANSWER_FOLDS):
    """The calibration summary from the calibration queries' scores (``leave_encounter_out_scores`` over
    ``source``): each scorer calibrated on the pairs and fused, then the answer's calibration (``answer``: 'platt',
    'temperature' or 'none'; ``fit_answer``) fitted on the same queries, each once as a known individual and once
    as a stranger, their pair probabilities from calibrations fitted without their individual (``answer_folds``:
    ``answer_queries``'s ``folds``). Too few queries for it: the answer stays Bayes' rule's, with a note why."""
    from .calibration import Fusion, expected_calibration_error
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer calibration {answer!r}; expected one of {', '.join(ANSWERS)}")
    pairs, same, query = pairs_from_scores(scored, truth, matcher)
    fu = Fusion.fit(pairs, same, kind=kind, method=fusion, groups=query)
    summary = {"version": 2, "fusion": fu.to_dict(), "prior_known": float(prior_known),
               "local_settings": local_settings.to_dict() if matcher and local_settings is not None else None,
               "matcher_settings": matcher_settings.to_dict() if matcher and matcher_settings is not None else None,
               "kind": kind, **(facts or {}),
               "pairs": {"same": int(np.sum(same)), "different": int(np.sum(~np.asarray(same)))}}
    summary["auroc_pairs"] = {n: M.auroc(s[same & ~np.isnan(s)], s[~same & ~np.isnan(s)]) for n, s in pairs.items()}
    fused = fu.probabilities(pairs)
    summary["ece_pairs"] = expected_calibration_error(fused[~np.isnan(fused)], np.asarray(same)[~np.isnan(fused)])
    if answer != "none":
        from .calibration import CalibrationError
        try:
            summary["answer"] = fit_answer(summary, scored, truth, matcher, kind, fusion, answer_folds, answer)
        except CalibrationError as e:           # too few queries: the answer keeps the posterior as it is
            summary["answer"] = {"temperature": 1.0, "note": f"not fitted: {e}"}
    summary["check"] = _check_answers(source, summary, scored, truth, matcher)
    return summary


def answer_queries(calibration, scored, truth, matcher, kind="isotonic", fusion="logistic", folds=ANSWER_FOLDS,
                   seed=0):
    """The calibration queries' fused pair probabilities over the individuals, twice: as known queries (their own
    individual scored from its other encounters; truth: its column) and as strangers (their individual left
    out; truth −1). Returns ``(p_same (2Q', U), truth (2Q',), pair prior π)``; queries whose own individual has no
    other encounter are left out of both halves.

    *Out of individual*: the individuals are dealt into groups — one each with ``folds`` 0 (at most
    ``MAX_ANSWER_FOLDS`` groups, dealt at random beyond), else ``folds`` groups — and a query's pair probabilities
    come from scorer calibrations and a fusion fitted without its group (neither its queries nor its columns),
    as they would be for an animal the calibration never saw; ``folds`` 1: the calibration itself (in sample,
    flattering: isotonic steps fitted on a query's own pairs)."""
    from .calibration import Fusion, _logit
    people = np.array([not is_background(n) for n in scored["names"]])
    cols = np.cumsum(people) - 1                        # a column over all names → over the individuals
    truth = np.asarray(truth)
    has_own = np.array([t >= 0 and not np.isnan(scored["similarity"][r, t]) for r, t in enumerate(truth)])
    inputs = {"embedding": scored["similarity"]}
    if matcher:
        inputs["matcher"] = scored["evidence"]
    full = Fusion.from_dict(calibration["fusion"])
    if set(full.calibrations) != set(inputs):
        full = Fusion.from_dict({**calibration["fusion"], "scorers": {n: calibration["fusion"]["scorers"][n]
                                                                       for n in inputs}})
    n_people = int(people.sum())
    if int(folds) == 1:
        p = full.probabilities(inputs)
    else:
        folds = min(n_people, MAX_ANSWER_FOLDS) if int(folds) <= 0 else min(int(folds), n_people)
        fold_of = np.full(len(people), -1)
        fold_of[people] = np.arange(n_people) if folds == n_people else \
            np.random.default_rng(seed).permutation(n_people) % folds
        log_lr = np.full(scored["similarity"].shape, np.nan)
        for f in range(int(folds)):
            rows = has_own & (fold_of[np.maximum(truth, 0)] == f)
            if not rows.any():
                continue
            fit_rows = has_own & ~rows
            kept = {k: np.where((fold_of == f)[None, :], np.nan, v[fit_rows]) for k, v in inputs.items()}
            sub = {"names": scored["names"], "similarity": kept["embedding"]}
            if matcher:
                sub["evidence"] = kept["matcher"]
            pairs, same, query = pairs_from_scores(sub, truth[fit_rows], matcher)
            fu = Fusion.fit(pairs, same, kind=kind, method=fusion, groups=query)
            pf = fu.probabilities({k: v[rows] for k, v in inputs.items()})
            log_lr[rows] = _logit(pf) - _logit(fu.prior)
        p = 1.0 / (1.0 + np.exp(-(log_lr + _logit(full.prior))))
    p = np.where(people[None, :], p, np.nan)
    known = p[has_own][:, people]
    stranger = known.copy()
    stranger[np.arange(len(stranger)), cols[truth[has_own]]] = np.nan
    p_all = np.concatenate([known, stranger])
    t_all = np.concatenate([cols[truth[has_own]], np.full(int(has_own.sum()), -1)])
    return p_all, t_all, full.prior


def fit_answer(calibration, scored, truth, matcher, kind="isotonic", fusion="logistic", folds=ANSWER_FOLDS,
               method="temperature") -> dict:
    """The answer's temperature (``calibration.fit_temperature``) or map of its shown probability
    (``method='platt'``: ``calibration.fit_answer_map``) fitted on the calibration queries, each once as a known
    individual and once as a stranger, at the calibration's prior α, their pair probabilities out of individual
    (``answer_queries``); with what it fitted on."""
    p, t, prior = answer_queries(calibration, scored, truth, matcher, kind, fusion, folds)
    out = _fit_answer_on(p, t, prior, calibration.get("prior_known", DEFAULT_PRIOR_KNOWN), method)
    out["fitted_on"] = "calibration queries, out of individual" if int(folds) != 1 else "calibration queries"
    return out


def _fit_answer_on(p, t, prior, prior_known, method):
    from .calibration import _answers, _hypothesis_logits, _softmax, fit_answer_map, fit_temperature
    if method == "temperature":
        return fit_temperature(p, t, prior, prior_known)
    shown, right = _answers(_softmax(_hypothesis_logits(p, prior, prior_known)), t)
    known = t >= 0
    w = np.where(known, prior_known / max(known.sum(), 1), (1 - prior_known) / max((~known).sum(), 1))
    return fit_answer_map(shown, right, w)


def _as_strangers(scored, truth):
    """The same queries' scores with their own individual left out: each query stands for a stranger. (The
    other individuals' scores are kept as they were; with its individual gone from the index a query's LNBNN
    normaliser would shift a little — an approximation that spares a second pass over the gallery.)"""
    out = dict(scored)
    rows = np.arange(len(truth))
    for key in ("similarity", "evidence", "lnbnn"):
        if key in scored:
            a = np.array(scored[key], dtype=np.float64, copy=True)
            a[rows, truth] = np.nan
            out[key] = a
    return out


def _check_answers(source, calibration, scored, truth, matcher):
    """What the new calibration answers for the calibration queries themselves: known photos (their own
    individual scored from its other encounters) and the same photos as strangers (their individual left out)."""
    from .calibration import expected_calibration_error
    saved = source.calibration
    source.calibration = calibration
    try:
        P, P0, _, _ = source.probabilities(scored, matcher)
        people = np.array([not is_background(n) for n in scored["names"]])
        has_own = np.array([t >= 0 and not np.isnan(scored["similarity"][r, t]) for r, t in enumerate(truth)])
        top = np.argmax(np.where(people[None, :], P, -1), axis=1)
        right = (P[np.arange(len(P)), top] >= P0) & (top == truth) & has_own
        called_unknown = (P[np.arange(len(P)), top] < P0) & has_own
        out = {"known_photos": int(has_own.sum()),
               "known_named_correctly": float(right[has_own].mean()) if has_own.any() else None,
               "known_called_unknown": float(called_unknown[has_own].mean()) if has_own.any() else None}
        shown = np.where(P[np.arange(len(P)), top] >= P0, P[np.arange(len(P)), top], P0)
        correct = np.where(P[np.arange(len(P)), top] >= P0, top == truth, False)
        stranger = _as_strangers(scored, truth)
        SP, SP0, _, _ = source.probabilities(stranger, matcher)
        st = np.max(np.where(people[None, :], SP, -1), axis=1)
        out["strangers"] = int(len(SP0))
        out["strangers_called_new"] = float(np.mean(SP0 > st))
        if has_own.any():     # each photo once as a known query and once as a stranger: a half-and-half mix
            from .calibration import reliability
            p_mix = np.concatenate([shown[has_own], np.where(SP0 > st, SP0, st)])
            right = np.concatenate([correct[has_own], SP0 > st])
            from .calibration import answer_map
            amap = answer_map(calibration)
            if amap is not None:
                p_mix = np.array([amap(q) for q in p_mix])
            out["ece_mixed"] = expected_calibration_error(p_mix, right)
            out["reliability"] = reliability(p_mix, right)
        return out
    finally:
        source.calibration = saved


SHIPPED_MATCHER = "matcher-calibration.json"


def shipped_matcher_calibration():
    """The keypoint matcher's calibration shipped with nabi (``nabi/reid/data/matcher-calibration.json``: its
    provenance inside), or None when this nabi ships none."""
    import json
    path = Path(__file__).with_name("data") / SHIPPED_MATCHER
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def run_calibration(run):
    """The embedding's calibration a run folder carries (``calibration.json``, written when an embedding run
    finishes: fitted on its held-out individuals), or None."""
    import json
    folder = Path(run)
    folder = folder if folder.is_dir() else folder.parent
    path = folder / "calibration.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def default_calibration(gallery):
    """A calibration for a gallery that cannot calibrate on itself: the run's embedding calibration and, when the
    gallery's local features and matcher settings match it, nabi's shipped matcher calibration; None when the run
    has none."""
    from .calibration import Fusion, PairCalibration
    from .matcher import MatcherSettings
    emb = run_calibration(gallery.embedder.weights)
    if not emb or "embedding" not in (emb.get("fusion") or {}).get("scorers", {}):
        return None
    cals = {"embedding": PairCalibration.from_dict(emb["fusion"]["scorers"]["embedding"])}
    source = f"the run's own calibration ({emb.get('source', 'its held-out individuals')})"
    shipped = shipped_matcher_calibration()
    local = gallery.local_settings.to_dict() if gallery.has_local_features else None
    if shipped and local is not None and shipped.get("local_settings") == local and \
            MatcherSettings.from_dict(shipped.get("matcher_settings") or {}) == gallery.matcher_settings:
        cals["matcher"] = PairCalibration.from_dict(shipped["fusion"]["scorers"]["matcher"])
        source += f" and nabi's shipped matcher calibration ({shipped.get('provenance', {}).get('data', '')})"
    fu = Fusion(cals, "mean" if len(cals) > 1 else "logistic")
    return {"version": 2, "fusion": fu.to_dict(), "prior_known": DEFAULT_PRIOR_KNOWN, "source": source,
            "local_settings": local if "matcher" in cals else None,
            "matcher_settings": gallery.matcher_settings.to_dict() if "matcher" in cals else None}


def describe(summary) -> list:
    """Plain-text lines saying what a calibration was made from and what it does on those photos."""
    c = summary.get("check") or {}
    pairs = summary.get("pairs") or {}
    lines = []
    if pairs:
        auroc = ", ".join(f"{k} {v:.3f}" for k, v in (summary.get("auroc_pairs") or {}).items())
        lines.append(f"calibrated on {summary.get('source')}: {summary.get('individuals')} individuals, "
                     f"{summary.get('photos')} photos in {summary.get('encounters')} encounters; {pairs.get('same')} "
                     f"same-individual and {pairs.get('different')} other pairs (AUROC of the pairs: {auroc})")
    else:
        lines.append(f"calibrated from {summary.get('source')}")
    if c.get("known_photos"):
        lines.append(f"on those photos: {100 * c['known_named_correctly']:.0f} % of known photos named correctly, "
                     f"{100 * c['known_called_unknown']:.0f} % called unknown; {100 * c['strangers_called_new']:.0f} % "
                     f"of strangers called new; expected calibration error {c.get('ece_mixed', float('nan')):.3f}")
    ans = summary.get("answer") or {}
    e = ans.get("ece") or {}
    if ans.get("note"):
        lines.append(f"the answer's probability as Bayes' rule gives it ({ans['note']})")
    elif ans.get("method") == "platt":
        before, after = e.get("before", float("nan")), e.get("after", float("nan"))
        lines.append(f"the answer's probability mapped to how often such answers were right: "
                     f"σ({ans['a']:.2f}·logit(p) + {ans['b']:.2f}), fitted on {ans['answers']['right']} right and "
                     f"{ans['answers']['wrong']} wrong answers for calibration individuals left out (their "
                     f"calibration error {before:.3f} before, {after:.3f} after)")
    elif ans:
        before, after = e.get("before", float("nan")), e.get("after", float("nan"))
        lines.append(f"the answer's temperature {ans['temperature']:.2f} (temperature scaling on "
                     f"{ans['queries']['known']} known and {ans['queries']['strangers']} stranger queries; their "
                     f"calibration error {before:.3f} at temperature 1, {after:.3f} after)")
    lines.append(f"prior that a photo shows an enrolled individual: {summary.get('prior_known')}")
    return lines


def calibrate_new_gallery(gallery, calibration_dir=None, log=None):
    """Calibrate a freshly built gallery: from ``calibration_dir`` photos, else leave-one-encounter-out over the
    gallery, else ``default_calibration``. Returns ``(summary or None, note or None)``: the note says why a
    fallback (or nothing) was used."""
    from .calibration import CalibrationError
    try:
        return gallery.calibrate(calibration_dir, log=log), None
    except CalibrationError as e:
        if calibration_dir is not None:
            raise
        fallback = default_calibration(gallery)
        if fallback is not None:
            with gallery._lock:
                gallery.calibration = fallback
                if gallery.path is not None:
                    gallery.save()
            return fallback, f"too few photos to calibrate on the gallery itself ({e}); using {fallback['source']}"
        return None, (f"the gallery is not calibrated: {e}. It answers with the closest individual until it is "
                      "(nabi gallery calibrate GALLERY [CALIBRATION_PHOTOS])")
