"""How sure an answer is, in the words a person reads on the card, and the number the review queue sorts by.

Every threshold of these words is here, once:

With a calibrated probability (the gallery gives the answer's ``probability`` p₁: of the individual named
for a known answer, of "none of them" for an unknown one; p₂ is the runner-up candidate's, 0 without one):

    very likely A                              known, p₁ ≥ VERY_LIKELY and p₁ − p₂ ≥ CLOSE_PROBABILITY
    A or B — please check                      known, anything less, with a runner-up B
    A, or an animal not seen before — …        known, anything less, without a runner-up
    probably an animal not seen before         unknown, p₁ ≥ VERY_LIKELY
    an animal not seen before, or A — …        unknown, anything less

    confidence = min(|2 p₁ − 1|, p₁ − p₂)      (0: a coin toss … 1: certain; p₂ left out for unknown)

Without one (today's galleries and classifier runs), from the best score s (cosine or softmax
probability), the calibrated threshold t at or under which the answer is unknown, and the margin m
to the runner-up:

    very likely A                              known, s − t ≥ NEAR_THRESHOLD and m ≥ CLOSE_MARGIN
    A or B — please check                      known, m < CLOSE_MARGIN
    A, or an animal not seen before — …        known, s − t < NEAR_THRESHOLD
    probably an animal not seen before         unknown, t − s ≥ NEAR_THRESHOLD
    an animal not seen before, or A — …        unknown, closer to t

    confidence = min(|s − t|, m)               (m left out without a runner-up)

A gallery that was never calibrated has no t: it never says "not seen before", so its cards say
"closest: A — not calibrated, please check" and the confidence is the margin alone.
"""
from __future__ import annotations

VERY_LIKELY = 0.90           # calibrated probability for "very likely"
CLOSE_PROBABILITY = 0.20     # top two probabilities closer than this: "A or B"
CLOSE_MARGIN = 0.05          # top two scores closer than this (cosine or softmax units): "A or B"
NEAR_THRESHOLD = 0.05        # a score this close to the unknown threshold: "please check"

LEVELS = ("sure", "check", "new", "background", "uncalibrated")


def confidence(result: dict) -> float:
    """How sure ``result`` (an identifier's answer: answer, similarity, margin, probability, threshold,
    candidates with probability) is: 0 (a coin toss) … 1 (certain); see the module docstring."""
    if result["answer"] == "background":
        return 1.0 if result.get("margin") is None else min(1.0, abs(float(result["margin"])))
    p1, p2 = _probabilities(result)
    if p1 is not None:
        return max(0.0, min(abs(2 * p1 - 1), p1 - p2 if result["answer"] == "known" else 1.0))
    if not result.get("candidates"):
        return 1.0                            # nobody enrolled: nothing to weigh
    s, t, m = float(result["similarity"]), result.get("threshold"), result.get("margin")
    parts = []
    if t is not None:
        parts.append(abs(s - float(t)))
    if m is not None and result["answer"] == "known":
        parts.append(float(m))
    return max(0.0, min(parts)) if parts else 0.0


def _probabilities(result):
    cands = result.get("candidates") or []
    if result.get("probability") is None and not (cands and cands[0].get("probability") is not None):
        return None, None
    p1 = result.get("probability")
    if p1 is None:
        p1 = cands[0]["probability"]
    p2 = cands[1].get("probability") if len(cands) > 1 else None
    return float(p1), float(p2 or 0.0)


def words(result: dict, name_of) -> tuple[str, str]:
    """``(words, level)`` for ``result``; ``name_of(individual_id)`` gives today's name of an individual.
    ``level`` is one of ``LEVELS`` (the card's colour)."""
    answer = result["answer"]
    if answer == "background":
        return "no animal (background)", "background"
    cands = result.get("candidates") or []
    top = result.get("individual_id") or (cands[0]["individual_id"] if cands else None)
    first = name_of(top) if top is not None else None
    second = name_of(cands[1]["individual_id"]) if len(cands) > 1 else None
    if answer == "unknown" and first is None:
        return "an animal not seen before (nobody is enrolled yet)", "new"
    p1, p2 = _probabilities(result)
    t = result.get("threshold")
    if p1 is None and t is None:
        return f"closest: {first} — not calibrated, please check", "uncalibrated"
    if answer == "known":
        if p1 is not None:
            sure, close = p1 >= VERY_LIKELY and p1 - p2 >= CLOSE_PROBABILITY, p1 - p2 < CLOSE_PROBABILITY
        else:
            m = result.get("margin")
            close = m is not None and float(m) < CLOSE_MARGIN
            sure = not close and float(result["similarity"]) - float(t) >= NEAR_THRESHOLD
        if sure:
            return f"very likely {first}", "sure"
        if second is not None and (close or p1 is not None):
            return f"{first} or {second} — please check", "check"
        return f"{first}, or an animal not seen before — please check", "check"
    if p1 is not None:
        sure_new = p1 >= VERY_LIKELY              # p1: the probability of "none of them"
    else:
        sure_new = float(t) - float(result["similarity"]) >= NEAR_THRESHOLD
    if sure_new:
        return "probably an animal not seen before", "new"
    return f"an animal not seen before, or {first} — please check", "check"
