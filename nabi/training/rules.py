"""What values a setting allows: the rules the training settings and every command-line flag are checked by.

A rule's ``problem(value)`` is None for an allowed value, else the end of a sentence that starts with the
setting's name ("must be at least 1, got 0"); ``describe()`` says what is allowed. ``BadArgument`` is the
``ValueError`` a refused value raises, its message naming the flag or key, the value and what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class BadArgument(ValueError):
    """A setting's or flag's value is outside what it allows."""


@dataclass(frozen=True)
class Int:
    """An integer ``low ≤ v`` (and ``v ≤ high`` when given)."""
    low: int
    high: int | None = None

    def problem(self, v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be a whole number, got {v!r}"
        if v < self.low:
            return f"must be at least {self.low}, got {v}"
        if self.high is not None and v > self.high:
            return f"must be at most {self.high}, got {v}"
        return None

    def describe(self):
        return f"an integer ≥ {self.low}" + (f" and ≤ {self.high}" if self.high is not None else "")


@dataclass(frozen=True)
class Float:
    """A finite number in ``[low, high)`` / ``(low, high)`` / ``[low, ∞)`` as the fields say."""
    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = True

    def problem(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {v!r}"
        if not math.isfinite(v):
            return f"must be a finite number, got {v}"
        below = v <= self.low if self.low_open else v < self.low
        above = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        if below or above:
            return f"must be {self.describe()}, got {v}"
        return None

    def describe(self):
        lo = ("(" if self.low_open else "[") + f"{self.low:g}"
        hi = "∞)" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"a finite number in {lo}, {hi}"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed list of names (a flag with these ``choices``)."""
    values: tuple

    def problem(self, v):
        if v not in self.values:
            return f"must be one of {', '.join(map(str, self.values))}, got {v!r}"
        return None

    def describe(self):
        return "one of " + ", ".join(map(str, self.values))


@dataclass(frozen=True)
class Text:
    """A non-empty string, such as a stage name (``what`` says what it names)."""
    what: str

    def problem(self, v):
        if not isinstance(v, str) or not v.strip():
            return f"must be {self.what}, got {v!r}"
        return None

    def describe(self):
        return self.what


@dataclass(frozen=True)
class EncounterRule:
    """How photos are grouped into encounters (``nabi.data.encounters``): auto, name, folder, time, photo or
    name:REGEX."""

    def problem(self, v):
        from nabi.data.encounters import parse_rule
        try:
            parse_rule(v)
        except ValueError as e:
            return f"must be auto, name, folder, time, photo or name:REGEX ({e})"
        return None

    def describe(self):
        return "auto, name, folder, time, photo or name:REGEX"


@dataclass(frozen=True)
class Flag:
    """On or off (``true`` / ``false`` in a TOML file)."""

    def problem(self, v):
        return None if isinstance(v, bool) else f"must be true or false, got {v!r}"

    def describe(self):
        return "true or false"


@dataclass(frozen=True)
class ModelName:
    """The name of a model in the zoo (``nabi summary --list``)."""

    def problem(self, v):
        from .. import models
        names = models.names()
        if v not in names:
            import difflib
            close = difflib.get_close_matches(str(v), names, n=3)
            return (f"must be a zoo model name, got unknown model {v!r}"
                    + (f" (did you mean {', '.join(close)}?)" if close else "; see `nabi summary --list`"))
        return None

    def describe(self):
        return "a zoo model name (nabi summary --list)"


POSITIVE, NON_NEGATIVE = Int(1), Int(0)
RATIO = Float(0.0, 1.0)                          # [0, 1)
