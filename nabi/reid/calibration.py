"""From scores to probabilities: how likely a query shows an enrolled individual, and how likely none.

A scorer (the embedding's cosine similarity, the keypoint matcher's evidence, …) gives every pair
(query photo, enrolled individual) a number. A *pair calibration* maps that number to the probability
that the pair is the same individual,

    p = g(s),   g monotone non-decreasing, fitted on pairs whose truth is known

from individuals that are neither enrolled nor queried (or, lacking those, leave-one-encounter-out over
the gallery's own photos). ``g`` is isotonic regression (scikit-learn's ``IsotonicRegression``: the
best-fitting monotone step function, kept as its knots and evaluated by linear interpolation) or,
for few pairs, logistic regression on the score (Platt scaling). Probabilities are kept inside
[ε, 1 − ε], ε = 1/(2·pairs), so no finite score is ever certain.

Several scorers are fused into one probability (WildFusion, Čermák et al. 2024, average calibrated
probabilities): ``mean`` averages them; ``logistic`` fits a logistic regression on their logits.

A query shows at most one of the U enrolled individuals, or none. With the fused pair probabilities
p_u, the prior share π of same-individual pairs among the calibration pairs, and the prior α that a
query shows an enrolled individual at all, Bayes' rule gives (each individual's score taken as
independent evidence)

    LR_u = p_u / (1 − p_u) · (1 − π) / π                  the likelihood ratio "u" against "not u"
    P(u | scores)       = (α/U) · LR_u / Z
    P(unknown | scores) = (1 − α) / Z,      Z = (α/U) · Σ_v LR_v + (1 − α)

``posterior`` computes these; ``nabi.reid.gallery`` answers with the most probable hypothesis and
shows its probability. ``expected_calibration_error`` and ``reliability`` check that shown
probabilities mean what they say.

The answer itself can be calibrated on queries of known truth (``nabi.reid.calibrate`` makes them: each
calibration photo once as a known individual, once as a stranger, out of individual), either way monotone,
so the answer given never changes:

    temperature   P ∝ exp(z / T) over the hypotheses' log-odds z (temperature scaling, Guo et al. 2017;
                  ``fit_temperature``, T by likelihood), applied inside ``posterior``
    platt         the shown probability q → σ(a·logit(q) + b), a ≥ 0 (Platt 1999; ``fit_answer_map``): how
                  often answers shown at q were right

A calibration without either (files written before) reads as temperature 1 (``answer_temperature``).
"""
from __future__ import annotations

import math

import numpy as np

KINDS = ("isotonic", "logistic")
FUSIONS = ("mean", "logistic")
MIN_PAIRS = 20            # same-individual pairs (and as many others) needed to fit a calibration
DEFAULT_PRIOR_KNOWN = 0.5


class CalibrationError(ValueError):
    """A calibration that cannot be fitted or used (too few pairs, a damaged file)."""


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError('calibrating scores needs scikit-learn: pip install "nabi[reid]"') from None


def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


class PairCalibration:
    """``p = g(score)``, monotone; see the module docstring. Build with ``fit`` or ``from_dict``.

    kind      'isotonic' (knots x, y; linear interpolation, flat outside) or 'logistic' (p = σ(a·s + b))
    eps       probabilities are clipped to [eps, 1 − eps]
    prior     π, the share of same-individual pairs among the pairs it was fitted on
    """

    def __init__(self, kind, params, eps, prior, pairs=None, scorer=None):
        if kind not in KINDS:
            raise CalibrationError(f"unknown calibration kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind, self.params, self.eps, self.prior = kind, dict(params), float(eps), float(prior)
        self.pairs, self.scorer = pairs, scorer
        if not 0.0 < self.prior < 1.0 or not 0.0 < self.eps < 0.5:
            raise CalibrationError(f"a calibration needs 0 < prior < 1 and 0 < eps < 0.5, got prior {prior}, eps {eps}")
        if kind == "isotonic":
            x, y = np.asarray(self.params.get("x"), np.float64), np.asarray(self.params.get("y"), np.float64)
            if x.ndim != 1 or x.shape != y.shape or x.size < 1 or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) \
                    or not np.all(np.isfinite(x)) or not np.all((y >= 0) & (y <= 1)):
                raise CalibrationError("an isotonic calibration needs increasing knots x and non-decreasing "
                                       "probabilities y in [0, 1] of the same length")
            self._x, self._y = x, y
        else:
            a, b = self.params.get("a"), self.params.get("b")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)) or a < 0:
                raise CalibrationError("a logistic calibration needs finite a ≥ 0 and b")

    @classmethod
    def fit(cls, scores, same, kind="isotonic", scorer=None):
        """Fit on pair scores (n,) and their truth ``same`` (n,) bool; NaN scores are left out.

        Needs at least ``MIN_PAIRS`` same-individual pairs and as many others (a ``CalibrationError`` says how
        many there were)."""
        _sklearn()
        s = np.asarray(scores, np.float64).ravel()
        y = np.asarray(same, bool).ravel()
        if s.shape != y.shape:
            raise CalibrationError(f"scores and truths must have the same length, got {s.size} and {y.size}")
        keep = np.isfinite(s)
        s, y = s[keep], y[keep]
        n_same, n_diff = int(y.sum()), int((~y).sum())
        what = f" of {scorer}" if scorer else ""
        if n_same < MIN_PAIRS or n_diff < MIN_PAIRS:
            raise CalibrationError(f"calibrating the scores{what} needs at least {MIN_PAIRS} same-individual pairs and "
                                   f"{MIN_PAIRS} pairs of different individuals; got {n_same} and {n_diff} (give more "
                                   "calibration photos: several encounters of each of more individuals)")
        eps = 1.0 / (2.0 * len(s))
        prior = n_same / len(s)
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression
            iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, y)
            params = {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}
        elif kind == "logistic":
            from sklearn.linear_model import LogisticRegression
            mu, sd = float(s.mean()), float(s.std()) or 1.0
            lr = LogisticRegression(C=1e4).fit(((s - mu) / sd)[:, None], y)
            a, b = float(lr.coef_[0, 0]) / sd, float(lr.intercept_[0]) - float(lr.coef_[0, 0]) * mu / sd
            params = {"a": max(a, 0.0), "b": b}
        else:
            raise CalibrationError(f"unknown calibration kind {kind!r}; expected one of {', '.join(KINDS)}")
        return cls(kind, params, eps, prior, pairs={"same": n_same, "different": n_diff}, scorer=scorer)

    def __call__(self, scores):
        """P(same individual) of scores (any shape); NaN stays NaN."""
        s = np.asarray(scores, np.float64)
        if self.kind == "isotonic":
            p = np.interp(np.nan_to_num(s, nan=0.0), self._x, self._y)
        else:
            z = self.params["a"] * np.nan_to_num(s, nan=0.0) + self.params["b"]
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
        return np.where(np.isnan(s), np.nan, np.clip(p, self.eps, 1.0 - self.eps))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "params": self.params, "eps": self.eps, "prior": self.prior,
                "pairs": self.pairs, "scorer": self.scorer}

    @classmethod
    def from_dict(cls, d, where="the calibration"):
        try:
            return cls(d["kind"], d["params"], d["eps"], d["prior"], d.get("pairs"), d.get("scorer"))
        except (KeyError, TypeError, AttributeError) as e:
            raise CalibrationError(f"{where} is not a usable pair calibration (missing or malformed {e})") from None


class Fusion:
    """Several scorers' pair probabilities → one; ``mean`` (WildFusion) or ``logistic`` (weights on logits).

    ``calibrations`` maps a scorer name to its ``PairCalibration``; ``weights``/``bias`` are used by
    ``logistic``; ``prior`` is π of the pairs the fusion was fitted on.
    """

    def __init__(self, calibrations, method="mean", weights=None, bias=0.0, prior=None, eps=None):
        if method not in FUSIONS:
            raise CalibrationError(f"unknown fusion {method!r}; expected one of {', '.join(FUSIONS)}")
        if not calibrations:
            raise CalibrationError("a fusion needs at least one calibrated scorer")
        self.calibrations = dict(calibrations)
        self.method = method
        names = list(self.calibrations)
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in names}
        self.bias = float(bias)
        cal = list(self.calibrations.values())
        self.prior = float(prior if prior is not None else np.mean([c.prior for c in cal]))
        self.eps = float(eps if eps is not None else min(c.eps for c in cal))

    @property
    def scorers(self):
        return list(self.calibrations)

    def probabilities(self, scores: dict) -> np.ndarray:
        """Fused P(same) from ``{scorer: scores array}`` (all the same shape); a pair a scorer did not score
        (NaN) is fused from the others; NaN where none scored it."""
        missing = [n for n in self.calibrations if n not in scores]
        if missing:
            raise CalibrationError(f"the fusion needs the scores of {', '.join(missing)}")
        ps = [self.calibrations[n](scores[n]) for n in self.calibrations]
        stack = np.stack(ps)
        have = ~np.isnan(stack)
        if self.method == "mean":
            w = np.array([self.weights[n] for n in self.calibrations])[:, None] * np.ones(stack.shape[1:]).ravel()
            w = w.reshape(stack.shape) * have
            total = w.sum(axis=0)
            p = np.where(total > 0, (np.nan_to_num(stack) * w).sum(axis=0) / np.where(total > 0, total, 1), np.nan)
        else:
            z = self.bias + sum(self.weights[n] * np.nan_to_num(_logit(np.clip(p_, self.eps, 1 - self.eps)))
                                for n, p_ in zip(self.calibrations, ps))
            p = np.where(have.any(axis=0), 0.5 * (1.0 + np.tanh(0.5 * z)), np.nan)
        return np.where(np.isnan(p), np.nan, np.clip(p, self.eps, 1.0 - self.eps))

    @classmethod
    def fit(cls, scores: dict, same, kind="isotonic", method="mean", groups=None, folds=5, seed=0):
        """Calibrate each scorer on the same pairs (``{scorer: (n,) scores}``, truth ``same`` (n,)) and fuse.

        ``logistic`` fits its weights on *out-of-fold* calibrated logits (each pair's probability from
        calibrations fitted without its fold; ``groups``, e.g. the query of each pair, keeps a query's pairs in
        one fold), so a scorer whose calibration merely fits noise gets no weight."""
        calibrations = {n: PairCalibration.fit(s, same, kind, scorer=n) for n, s in scores.items()}
        same = np.asarray(same, bool).ravel()
        prior = float(same.mean())
        if method != "logistic" or len(calibrations) == 1:
            return cls(calibrations, "mean" if len(calibrations) > 1 else method, prior=prior)
        _sklearn()
        from sklearn.linear_model import LogisticRegression
        eps = min(c.eps for c in calibrations.values())
        n = len(same)
        g = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
        fold_of_group = np.random.default_rng(seed).integers(0, int(folds), g.max() + 1)
        fold = fold_of_group[g]
        X = np.zeros((n, len(calibrations)))
        for k in range(int(folds)):
            test = fold == k
            if not test.any():
                continue
            for c, (name, s) in enumerate(scores.items()):
                s = np.asarray(s, np.float64).ravel()
                try:
                    cal = PairCalibration.fit(s[~test], same[~test], kind, scorer=name)
                except CalibrationError:                   # a fold too small to fit on: use the full fit
                    cal = calibrations[name]
                X[test, c] = np.nan_to_num(_logit(np.clip(cal(s[test]), eps, 1 - eps)))
        lr = LogisticRegression(C=1e4).fit(X, same)
        weights = {name: max(0.0, float(w)) for name, w in zip(calibrations, lr.coef_[0])}
        return cls(calibrations, "logistic", weights, float(lr.intercept_[0]), prior)

    def to_dict(self) -> dict:
        return {"method": self.method, "weights": self.weights, "bias": self.bias, "prior": self.prior,
                "eps": self.eps, "scorers": {n: c.to_dict() for n, c in self.calibrations.items()}}

    @classmethod
    def from_dict(cls, d, where="the calibration"):
        try:
            cals = {n: PairCalibration.from_dict(c, f"{where} (scorer {n})") for n, c in d["scorers"].items()}
            return cls(cals, d["method"], d.get("weights"), d.get("bias", 0.0), d.get("prior"), d.get("eps"))
        except (KeyError, TypeError, AttributeError) as e:
            raise CalibrationError(f"{where} is not a usable fusion of calibrated scorers (missing or malformed "
                                   f"{e})") from None


def _hypothesis_logits(p_same, prior_pairs, prior_known):
    """(Q, U + 1) log (prior × likelihood ratio) of each individual and, last, of "unknown" (unnormalised)."""
    p = np.asarray(p_same, np.float64)
    if p.ndim != 2:
        raise ValueError(f"pair probabilities must be (queries, individuals), got shape {p.shape}")
    if not 0.0 < prior_pairs < 1.0:
        raise ValueError(f"the pair prior must be in (0, 1), got {prior_pairs}")
    if not 0.0 <= prior_known <= 1.0:
        raise ValueError(f"the prior that a query is a known individual must be in [0, 1], got {prior_known}")
    U = np.maximum((~np.isnan(p)).sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore"):
        log_lr = _logit(np.clip(np.nan_to_num(p, nan=0.5), 1e-300, 1 - 1e-16)) \
            + math.log((1 - prior_pairs) / prior_pairs)
    log_lr = np.where(np.isnan(p), -np.inf, log_lr)
    log_known = np.log(prior_known) - np.log(U) + log_lr if prior_known > 0 else np.full(p.shape, -np.inf)
    log_unknown = np.full((p.shape[0], 1), np.log(1 - prior_known) if prior_known < 1 else -np.inf)
    return np.concatenate([log_known, log_unknown], axis=1)


def _softmax(z):
    m = np.max(z, axis=1, keepdims=True)
    w = np.exp(z - m)
    return w / w.sum(axis=1, keepdims=True)


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise CalibrationError(f"the answer's temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def posterior(p_same, prior_pairs, prior_known=DEFAULT_PRIOR_KNOWN, temperature=1.0):
    """Open-set posterior from fused pair probabilities (see the module docstring).

    p_same       (Q, U) P(same) of each query with each enrolled individual; NaN: not scored (left out)
    prior_pairs  π, the share of same-individual pairs the calibration was fitted on
    prior_known  α, the prior probability that a query shows one of the enrolled individuals
    temperature  T: the hypotheses' log-odds are divided by T before normalising (temperature scaling, Guo et
                 al. 2017; ``fit_temperature``). T > 1 softens, T < 1 sharpens; the most probable hypothesis,
                 hence the answer and every ranking within a query, is the same at any T.

    Returns ``(P (Q, U) of each individual, P_unknown (Q,))``; each row sums with P_unknown to 1.
    """
    T = _check_temperature(temperature)
    w = _softmax(_hypothesis_logits(p_same, prior_pairs, prior_known) / T)
    return w[:, :-1], w[:, -1]


MIN_ANSWER_QUERIES = 20    # known queries (and as many strangers) needed to fit the answer's temperature


def _answers(w, truth):
    """The shown probability (the most probable hypothesis's) and whether that answer is right."""
    best = np.argmax(w, axis=1)
    shown = w[np.arange(len(w)), best]
    right = np.where(truth < 0, best == w.shape[1] - 1, best == truth)
    return shown, right


def fit_temperature(p_same, truth, prior_pairs, prior_known=DEFAULT_PRIOR_KNOWN, bounds=(0.05, 20.0)) -> dict:
    """The answer's temperature T (``posterior``) that minimises the negative log-likelihood of the true hypothesis
    on calibration queries (temperature scaling, Guo et al. 2017).

    p_same   (Q, U) fused pair probabilities of queries of known truth
    truth    (Q,) the column of each query's individual, or −1 for a stranger (none of the U)
    Known queries are weighted by α = ``prior_known`` and strangers by 1 − α (each group's weights summing to
    its share), so T is fitted for the mix of queries the answer's prior assumes. Needs at least
    ``MIN_ANSWER_QUERIES`` known queries and as many strangers. Returns ``{temperature, queries, nll, ece}``
    (negative log-likelihood and expected calibration error of the shown probability, weighted alike, before
    (T = 1) and after)."""
    p = np.asarray(p_same, np.float64)
    t = np.asarray(truth).ravel()
    if p.ndim != 2 or len(t) != len(p):
        raise CalibrationError(f"fitting the answer's temperature needs (queries, individuals) pair probabilities "
                               f"and one truth per query, got shapes {p.shape} and {t.shape}")
    if np.any((t >= p.shape[1]) | (t < -1)):
        raise CalibrationError(f"each query's truth must be a column 0 … {p.shape[1] - 1} or −1 (a stranger)")
    known = t >= 0
    n_known, n_strange = int(known.sum()), int((~known).sum())
    if n_known < MIN_ANSWER_QUERIES or n_strange < MIN_ANSWER_QUERIES:
        raise CalibrationError(f"fitting the answer's temperature needs at least {MIN_ANSWER_QUERIES} queries of known "
                               f"individuals and {MIN_ANSWER_QUERIES} of strangers; got {n_known} and {n_strange} "
                               "(give more calibration photos: several encounters of each of more individuals)")
    if not 0.0 < prior_known < 1.0:
        raise CalibrationError(f"fitting the answer's temperature needs a prior α in (0, 1), got {prior_known}")
    if not (0 < bounds[0] < 1 < bounds[1]):
        raise CalibrationError(f"the temperature's bounds must straddle 1, got {bounds}")
    z = _hypothesis_logits(p, prior_pairs, prior_known)
    col = np.where(known, t, p.shape[1])
    wts = np.where(known, prior_known / n_known, (1 - prior_known) / n_strange)

    def nll(T):
        zt = z / T
        m = np.max(zt, axis=1)
        lse = m + np.log(np.exp(zt - m[:, None]).sum(axis=1))
        own = zt[np.arange(len(zt)), col]
        return float(np.sum(wts * np.where(np.isfinite(own), lse - own, 50.0)))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])     # golden section on log T (the NLL is unimodal in it)
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(math.exp(c)), nll(math.exp(d))
    for _ in range(60):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(math.exp(d))
    T = math.exp((a + b) / 2)

    def ece(T_):
        shown, right = _answers(_softmax(z / T_), t)
        return _weighted_ece(shown, right, wts)

    return {"temperature": T, "method": "temperature scaling (Guo et al. 2017) of the open-set posterior",
            "prior_known": float(prior_known), "queries": {"known": n_known, "strangers": n_strange},
            "nll": {"before": nll(1.0), "after": nll(T)}, "ece": {"before": ece(1.0), "after": ece(T)}}


def _weighted_ece(p, correct, weights, bins=10):
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, int(bins) - 1)
    total, out = float(np.sum(weights)), 0.0
    for b in range(int(bins)):
        m = idx == b
        if m.any():
            w = weights[m]
            out += float(w.sum()) / total * abs(float(np.sum(w * correct[m]) / w.sum() - np.sum(w * p[m]) / w.sum()))
    return out


def fit_answer_map(shown, right, weights=None) -> dict:
    """A Platt map of the answer's shown probability (Platt 1999): P(the answer is right) = σ(a·logit(shown) + b),
    a ≥ 0, fitted by (weighted) logistic regression on calibration answers. Monotone, so the answer and the order
    of answers by confidence are kept; it changes the number shown, not what is answered. Needs
    ``MIN_ANSWER_QUERIES`` right and as many wrong answers."""
    _sklearn()
    from sklearn.linear_model import LogisticRegression
    p = np.clip(np.asarray(shown, np.float64).ravel(), 1e-6, 1 - 1e-6)
    y = np.asarray(right, bool).ravel()
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64).ravel()
    if not (len(p) == len(y) == len(w)):
        raise CalibrationError(f"shown probabilities, outcomes and weights must have the same length, got {len(p)}, "
                               f"{len(y)} and {len(w)}")
    if y.sum() < MIN_ANSWER_QUERIES or (~y).sum() < MIN_ANSWER_QUERIES:
        raise CalibrationError(f"fitting the answer's map needs at least {MIN_ANSWER_QUERIES} right and "
                               f"{MIN_ANSWER_QUERIES} wrong calibration answers; got {int(y.sum())} and "
                               f"{int((~y).sum())}")
    lr = LogisticRegression(C=1e4).fit(_logit(p)[:, None], y, sample_weight=w / w.mean())
    a, b = max(0.0, float(lr.coef_[0, 0])), float(lr.intercept_[0])
    after = 0.5 * (1.0 + np.tanh(0.5 * (a * _logit(p) + b)))
    return {"method": "platt", "a": a, "b": b, "answers": {"right": int(y.sum()), "wrong": int((~y).sum())},
            "ece": {"before": _weighted_ece(p, y.astype(float), w), "after": _weighted_ece(after, y.astype(float), w)}}


def answer_map(calibration):
    """The map of the shown probability a calibration carries (``fit_answer_map``) as a function, or None."""
    ans = (calibration or {}).get("answer")
    if not ans or ans.get("method") != "platt":
        return None
    a, b = ans.get("a"), ans.get("b")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)) or a < 0:
        raise CalibrationError("the calibration's answer map is malformed: expected finite a ≥ 0 and b")
    return lambda q: float(0.5 * (1.0 + math.tanh(0.5 * (a * float(_logit(min(max(q, 1e-6), 1 - 1e-6))) + b))))


def answer_temperature(calibration) -> float:
    """The answer's temperature a calibration summary carries (``{'answer': {'temperature': T}}``); 1 for one
    made without (older files)."""
    ans = (calibration or {}).get("answer")
    if ans is None or (isinstance(ans, dict) and ans.get("method") == "platt"):
        return 1.0
    if not isinstance(ans, dict) or "temperature" not in ans:
        raise CalibrationError("the calibration's 'answer' entry is malformed: expected {'temperature': T}")
    return _check_temperature(ans["temperature"])


def estimate_prior_known(p_same, prior_pairs, start=DEFAULT_PRIOR_KNOWN, iterations=100, tol=1e-6):
    """α estimated from a batch of queries without their truth (expectation–maximisation): start from ``start``,
    then α ← the mean over the queries of P(known | scores, α) until it settles. The answer for a batch of a
    club's photos then reflects how many of them show enrolled animals. Returns α in [0.01, 0.99].

    It is only as good as the pair probabilities' independence across individuals: on the nyala open-set
    splits (4 individuals enrolled, two thirds of the queries strangers) it settled at 0.99, so nabi's
    default stays a fixed α (``DEFAULT_PRIOR_KNOWN``) and 'auto' is an option, not the default."""
    alpha = float(start)
    for _ in range(int(iterations)):
        _, P0 = posterior(p_same, prior_pairs, alpha)
        new = float(np.clip(1.0 - P0.mean(), 0.01, 0.99))
        if abs(new - alpha) < tol:
            return new
        alpha = new
    return alpha


def reliability(probabilities, correct, bins=10) -> list:
    """Per equal-width bin of the shown probability: ``{lo, hi, count, mean_probability, accuracy}``."""
    p = np.asarray(probabilities, np.float64).ravel()
    c = np.asarray(correct, bool).ravel()
    if p.shape != c.shape:
        raise ValueError(f"probabilities and outcomes must have the same length, got {p.size} and {c.size}")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, int(bins) - 1)
    out = []
    for b in range(int(bins)):
        m = idx == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(m.sum()),
                    "mean_probability": float(p[m].mean()) if m.any() else None,
                    "accuracy": float(c[m].mean()) if m.any() else None})
    return out


def expected_calibration_error(probabilities, correct, bins=10) -> float:
    """ECE = Σ_b (n_b / n) · |accuracy_b − mean probability_b| over equal-width bins (Guo et al. 2017)."""
    rows = reliability(probabilities, correct, bins)
    n = sum(r["count"] for r in rows)
    if n == 0:
        raise ValueError("the expected calibration error of no answers is undefined")
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["mean_probability"]) for r in rows if r["count"]))
