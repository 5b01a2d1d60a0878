"""How many animals are there? Capture histories from the sightings, and closed-population estimates.

Capture histories: each identified individual × each *occasion* (a day, or an ISO week starting on
Monday, on which at least one photo was identified): 1 when it was photographed then, else 0. A
sighting's day is the date its time says: the camera's clock for an EXIF time, this computer's zone
for an upload time (UTC).

Estimates (each returns ``Estimate(method, n, se, low, high, note)``, a 95 % interval):

Lincoln–Petersen, two occasions: M marked (seen) on the first, C seen on the second, R of them seen on
both::

    N = M C / R
    95 % interval: from the proportion p = R / C with the normal approximation of Krebs (1989, Box 2.1),
    p ± (1.96 √((1 − f) p (1 − p) / (C − 1)) + 1 / (2C)), f = R / M, and N = M / p at each end.

Chapman's modification (Chapman 1951; nearly unbiased, defined when R = 0)::

    N = (M + 1)(C + 1) / (R + 1) − 1
    var N = (M + 1)(C + 1)(M − R)(C − R) / ((R + 1)² (R + 2))      (Seber 1970)
    95 % interval: N ± 1.96 √var (never below the M + C − R individuals seen)

Schnabel, t occasions (Schnabel 1938; Krebs 1989, eq. 2.6–2.8): on occasion i, C_i individuals seen,
R_i of them seen before, M_i individuals seen on earlier occasions::

    N = Σ C_i M_i / Σ R_i
    var(1/N) = Σ R_i / (Σ C_i M_i)²,  95 % interval: 1 / (1/N ± 1.96 √var(1/N))

Chao's M_h (Chao 1987), for capture probabilities that differ between individuals: S individuals seen,
f_k of them on exactly k occasions::

    N = S + f₁² / (2 f₂)                       (f₂ = 0: S + f₁ (f₁ − 1) / 2)
    var N = f₂ [ (f₁/f₂)⁴ / 4 + (f₁/f₂)³ + (f₁/f₂)² / 2 ]
    95 % interval: S + (N − S) / K … S + (N − S) K,  K = exp(1.96 √ln(1 + var / (N − S)²))

References: Chapman, D. G. (1951), Univ. Calif. Publ. Stat. 1:131–160. Chao, A. (1987), Biometrics
43:783–791. Krebs, C. J. (1989), Ecological Methodology, Harper & Row. Ricker, W. E. (1975), Bull. Fish.
Res. Board Can. 191. Schnabel, Z. E. (1938), Amer. Math. Monthly 45:348–352. Seber, G. A. F. (1970),
Biometrika 57:313–318.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

Z95 = 1.959963984540054


@dataclass
class Estimate:
    method: str
    n: float | None            # the estimate of the population size (None: not estimable from these data)
    se: float | None
    low: float | None          # 95 % interval
    high: float | None
    note: str = ""

    def as_dict(self):
        return asdict(self)


def lincoln_petersen(M, C, R) -> Estimate:
    """N = M C / R with Krebs's normal interval from the proportion R / C (see the module docstring)."""
    M, C, R = _counts(M=M, C=C, R=R)
    if R == 0:
        return Estimate("Lincoln–Petersen", None, None, None, None,
                        "no individual was seen on both occasions: no estimate (Chapman's is defined)")
    n = M * C / R
    p, f = R / C, R / M
    half = Z95 * math.sqrt(max(0.0, (1 - f) * p * (1 - p) / max(C - 1, 1))) + 1 / (2 * C)
    lo_p, hi_p = p - half, p + half
    high = M / lo_p if lo_p > 0 else math.inf
    return Estimate("Lincoln–Petersen", n, None, M / hi_p if hi_p > 0 else None, high)


def chapman(M, C, R) -> Estimate:
    """Chapman's N = (M+1)(C+1)/(R+1) − 1 with Seber's variance and a normal 95 % interval."""
    M, C, R = _counts(M=M, C=C, R=R)
    n = (M + 1) * (C + 1) / (R + 1) - 1
    var = (M + 1) * (C + 1) * (M - R) * (C - R) / ((R + 1) ** 2 * (R + 2))
    se = math.sqrt(var)
    return Estimate("Chapman", n, se, max(n - Z95 * se, M + C - R), n + Z95 * se,
                    "few recaptures: the interval is rough" if R < 7 else "")


def schnabel(caught, recaptured, marked=None) -> Estimate:
    """Schnabel's N = Σ C_i M_i / Σ R_i over occasions; ``marked`` M_i defaults to the individuals seen before
    (Σ_{j<i} C_j − R_j, no removals). Interval from var(1/N) = Σ R_i / (Σ C_i M_i)²."""
    C = [int(c) for c in caught]
    R = [int(r) for r in recaptured]
    if len(C) != len(R) or len(C) < 2:
        raise ValueError("Schnabel needs the catches and recaptures of at least two occasions, of equal length")
    if any(r > c or r < 0 for c, r in zip(C, R)):
        raise ValueError("recaptures must be between 0 and the catch of their occasion")
    if marked is None:
        marked, at_large = [], 0
        for c, r in zip(C, R):
            marked.append(at_large)
            at_large += c - r
    M = [int(m) for m in marked]
    scm, sr = sum(c * m for c, m in zip(C, M)), sum(R)
    if sr == 0:
        return Estimate("Schnabel", None, None, None, None, "no recapture on any occasion: no estimate")
    n = scm / sr
    se_inv = math.sqrt(sr) / scm
    lo_inv, hi_inv = 1 / n - Z95 * se_inv, 1 / n + Z95 * se_inv
    return Estimate("Schnabel", n, None, 1 / hi_inv, 1 / lo_inv if lo_inv > 0 else math.inf,
                    "fewer than 50 recaptures: the interval is rough" if sr < 50 else "")


def chao_mh(frequencies) -> Estimate:
    """Chao's M_h from the capture frequencies f_1, f_2, … (f_k individuals seen on exactly k occasions)."""
    f = [int(x) for x in frequencies]
    if any(x < 0 for x in f):
        raise ValueError("capture frequencies cannot be negative")
    S = sum(f)
    f1 = f[0] if f else 0
    f2 = f[1] if len(f) > 1 else 0
    if S == 0:
        return Estimate("Chao M_h", None, None, None, None, "nobody was seen")
    if f2 == 0:
        n = S + f1 * (f1 - 1) / 2
        return Estimate("Chao M_h", n, None, None, None,
                        "no individual seen exactly twice: the bias-corrected form, without an interval")
    r = f1 / f2
    n = S + f1 * f1 / (2 * f2)
    var = f2 * (r ** 4 / 4 + r ** 3 + r ** 2 / 2)
    if n - S <= 0:
        return Estimate("Chao M_h", n, math.sqrt(var), S, S)
    K = math.exp(Z95 * math.sqrt(math.log(1 + var / (n - S) ** 2)))
    return Estimate("Chao M_h", n, math.sqrt(var), S + (n - S) / K, S + (n - S) * K)


def _counts(**kw):
    out = []
    for name, v in kw.items():
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a whole number ≥ 0, got {v}")
        out.append(int(v))
    M, C, R = out
    if R > M or R > C:
        raise ValueError(f"R (seen on both occasions, {R}) cannot exceed M ({M}) or C ({C})")
    if M == 0 or C == 0:
        raise ValueError("both occasions need at least one individual")
    return M, C, R


# -- capture histories -------------------------------------------------------------------------------

def sighting_day(time: str) -> date:
    """The day of a sighting time: an EXIF time's own date; an upload time (…Z, UTC) in this computer's zone."""
    if time.endswith("Z"):
        return datetime.fromisoformat(time[:-1] + "+00:00").astimezone().date()
    return date.fromisoformat(time[:10])


def occasion_of(day: date, occasion: str) -> str:
    if occasion == "day":
        return day.isoformat()
    if occasion == "week":
        return (day - timedelta(days=day.weekday())).isoformat()       # the Monday that starts its ISO week
    raise ValueError(f"occasion must be day or week, got {occasion!r}")


def capture_histories(sightings, occasion="day"):
    """``(occasions, histories)`` from sightings [(individual id, time)]: the sorted occasions (day, or the
    Monday of the week) and {individual id: [0/1 per occasion]}."""
    seen = {}
    for ind, time in sightings:
        seen.setdefault(int(ind), set()).add(occasion_of(sighting_day(time), occasion))
    occasions = sorted(set().union(*seen.values())) if seen else []
    index = {o: i for i, o in enumerate(occasions)}
    histories = {}
    for ind in sorted(seen):
        row = [0] * len(occasions)
        for o in seen[ind]:
            row[index[o]] = 1
        histories[ind] = row
    return occasions, histories


def summaries(histories) -> dict:
    """What the estimators read from capture histories: per occasion the catch C_i, the recaptures R_i and the
    individuals seen before M_i; the capture frequencies f_k; S individuals; t occasions."""
    rows = list(histories.values())
    t = len(rows[0]) if rows else 0
    C, R, M = [], [], []
    before = set()
    for i in range(t):
        now = {k for k, r in enumerate(rows) if r[i]}
        C.append(len(now))
        R.append(len(now & before))
        M.append(len(before))
        before |= now
    f = [0] * t
    for r in rows:
        k = sum(r)
        if k:
            f[k - 1] += 1
    return {"occasions": t, "individuals": len(rows), "caught": C, "recaptured": R, "marked": M,
            "frequencies": f}


def estimates(histories) -> list:
    """Every estimate the histories allow: two occasions → Lincoln–Petersen and Chapman; more → Schnabel and
    Chao's M_h. Fewer than two occasions: none."""
    s = summaries(histories)
    if s["occasions"] < 2 or s["individuals"] == 0:
        return []
    if s["occasions"] == 2:
        M, C, R = s["caught"][0], s["caught"][1], s["recaptured"][1]
        return [lincoln_petersen(M, C, R), chapman(M, C, R)]
    return [schnabel(s["caught"], s["recaptured"], s["marked"]), chao_mh(s["frequencies"])]
