"""The fields a club keeps for each individual (sex, age class, status, health notes …), configurable.

``nabi serve --fields FILE`` reads a TOML file with one ``[[field]]`` table per field::

    [[field]]
    key = "sex"                       # letters, digits and _ ; how the value is stored
    label = "Sex"                     # what the page shows
    type = "choice"                   # text | longtext | date | choice | number
    choices = ["female", "male", "unknown"]
    help = ""                         # optional: a hint under the field

    [[field]]
    key = "neutered_on"
    label = "Neutered on"
    type = "date"

Without it the fields are ``DEFAULT_FIELDS`` (sex, age class, status and its date, health notes),
which suit most animals. Values are checked against their type (a date is YYYY-MM-DD, a choice one of
its choices, a number a finite number); a field removed from the file keeps its stored values, which
simply stop being shown.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

TYPES = ("text", "longtext", "date", "choice", "number")
MAX_TEXT, MAX_LONGTEXT = 200, 5000

DEFAULT_FIELDS = [
    {"key": "sex", "label": "Sex", "type": "choice", "choices": ["female", "male", "unknown"]},
    {"key": "age_class", "label": "Age class", "type": "choice", "choices": ["young", "adult", "old", "unknown"]},
    {"key": "status", "label": "Status", "type": "text", "help": "e.g. neutered, adopted, moved away"},
    {"key": "status_date", "label": "Status since", "type": "date"},
    {"key": "health", "label": "Health notes", "type": "longtext"},
]


def check_fields(fields, where="the fields") -> list:
    """The field list, checked: each a dict with key, label, type (and choices for a choice); keys unique."""
    if not isinstance(fields, list) or not fields:
        raise ValueError(f"{where}: expected a non-empty list of [[field]] tables")
    out, seen = [], set()
    for i, f in enumerate(fields):
        what = f"{where}, field {i + 1}"
        if not isinstance(f, dict):
            raise ValueError(f"{what}: expected a table with key, label and type")
        unknown = set(f) - {"key", "label", "type", "choices", "help"}
        if unknown:
            raise ValueError(f"{what}: unknown setting(s) {', '.join(sorted(unknown))} (expected key, label, type, "
                             f"choices, help)")
        key = f.get("key")
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", key):
            raise ValueError(f"{what}: key must be 1–40 letters, digits or _ starting with a letter, got {key!r}")
        if key in seen:
            raise ValueError(f"{what}: the key {key!r} is used twice")
        seen.add(key)
        label = f.get("label", key)
        if not isinstance(label, str) or not label.strip() or len(label) > 80:
            raise ValueError(f"{what} ({key}): label must be text of 1–80 characters")
        kind = f.get("type", "text")
        if kind not in TYPES:
            raise ValueError(f"{what} ({key}): type must be one of {', '.join(TYPES)}, got {kind!r}")
        choices = f.get("choices", [])
        if kind == "choice":
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
                raise ValueError(f"{what} ({key}): a choice field needs choices = [\"…\", …]")
        elif choices:
            raise ValueError(f"{what} ({key}): choices are only for type = \"choice\"")
        help_text = f.get("help", "")
        if not isinstance(help_text, str):
            raise ValueError(f"{what} ({key}): help must be text")
        out.append({"key": key, "label": label.strip(), "type": kind, "choices": list(choices), "help": help_text})
    return out


def load_fields(path) -> list:
    """The fields of the TOML file at ``path`` (see the module docstring)."""
    try:
        import tomllib
    except ModuleNotFoundError:            # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"fields file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"fields file {path} is not valid TOML: {e}") from None
    return check_fields(data.get("field"), where=f"fields file {path}")


def check_value(spec, value):
    """``value`` for the field ``spec`` as stored (text), or None to clear it; ``ValueError`` naming the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    label = spec["label"]
    if not isinstance(value, str):
        raise ValueError(f"{label}: expected text, got {type(value).__name__}")
    value = value.strip()
    if any(ord(c) < 32 and c not in "\n\t" for c in value):
        raise ValueError(f"{label}: control characters are not allowed")
    kind = spec["type"]
    if kind == "date":
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(f"{label}: a date is written YYYY-MM-DD, got {value!r}")
    elif kind == "choice":
        if value not in spec["choices"]:
            raise ValueError(f"{label}: expected one of {', '.join(spec['choices'])}, got {value!r}")
    elif kind == "number":
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f"{label}: expected a number, got {value!r}") from None
        if not math.isfinite(x):
            raise ValueError(f"{label}: expected a finite number, got {value!r}")
    limit = MAX_LONGTEXT if kind == "longtext" else MAX_TEXT
    if len(value) > limit:
        raise ValueError(f"{label}: at most {limit:,} characters, got {len(value):,}")
    if kind != "longtext" and "\n" in value:
        raise ValueError(f"{label}: one line only")
    return value
