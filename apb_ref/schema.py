"""Reading untrusted JSON: a depth-limited parser and a small schema checker, shared by every reader
of a file the tool did not just write (checkpoints, `.apbz` headers). A check is a function
(value, path) -> value that raises `Invalid`; `validate` turns that into one ValueError naming the
file and the field."""
from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, Callable

import numpy as np

MAX_JSON_DEPTH = 32  # json.loads recurses per level; real headers and trees nest < 10 deep


def parse_json(text: bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from a file that may be hostile: ValueError(f"{where}: ...") for bad UTF-8 or syntax,
    nesting deeper than `max_depth` (measured before parsing, so never a RecursionError), and
    NaN/Infinity literals or numbers out of float range."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 ({e})") from None
    brackets = re.findall(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', s))  # outside strings
    depth = max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)
    if depth > max_depth:
        raise ValueError(f"{where}: JSON nested {depth} deep (at most {max_depth} allowed)")

    def no_constant(name):
        raise ValueError(f"{name} is not a number JSON allows")

    def finite(text):
        if not math.isfinite(value := float(text)):
            raise ValueError(f"number {text[:30]} is out of range")
        return value

    try:
        return json.loads(s, parse_constant=no_constant, parse_float=finite)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so is a 5000-digit int
        raise ValueError(f"{where}: unreadable JSON ({str(e)[:200]})") from None


class Invalid(Exception):
    """A value that breaks its schema: where it sits (e.g. `header.layers["fc"].k`), what was
    expected and what came. `validate` turns it into the one ValueError naming the file."""

    def __init__(self, path: str, expected: str, got: Any = None, missing: bool = False):
        super().__init__(path)
        self.path, self.expected, self.got, self.missing = path, expected, got, missing

    def message(self, where: str) -> str:
        got = "nothing (the field is missing)" if self.missing else show(self.got)
        return f"{where}: {self.path}: expected {self.expected}, got {got}"


Check = Callable[[Any, str], Any]  # (value, path) -> the value (or its checked form); raises Invalid


def validate(value: Any, check: Check, where: str, root: str) -> Any:
    """Run a schema check; a failure is one ValueError "{where}: {path}: expected ..., got ..."."""
    try:
        return check(value, root)
    except Invalid as e:
        raise ValueError(e.message(where)) from None


def show(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"an array {v.dtype} {v.shape}"
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def key_path(path: str, key: Any) -> str:
    """`path.key` for identifier keys, `path["a.b"]` otherwise."""
    return f"{path}.{key}" if isinstance(key, str) and key.isidentifier() else f"{path}[{show(key)}]"


def integer(lo: int, hi: int) -> Check:
    def check(v, path):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise Invalid(path, f"an integer in [{lo}, {hi}]", v)
        return int(v)
    return check


def number(lo: float, hi: float, above: float | None = None) -> Check:
    """A finite number in [lo, hi] (and > `above` when given)."""
    what = f"a finite number in [{lo}, {hi}]" + (f" and > {above}" if above is not None else "")

    def check(v, path):
        ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
        if not ok or not math.isfinite(v) or not lo <= v <= hi or (above is not None and v <= above):
            raise Invalid(path, what, v)
        return float(v)
    return check


def nullable(check: Check) -> Check:
    """None, or what `check` accepts."""
    def nullable_check(v, path):
        return None if v is None else check(v, path)
    return nullable_check


def string(choices=None, max_len: int = 256) -> Check:
    what = f"one of {sorted(choices)}" if choices is not None else f"a string of at most {max_len} characters"

    def check(v, path):
        if not isinstance(v, str) or len(v) > max_len or (choices is not None and v not in choices):
            raise Invalid(path, what, v)
        return v
    return check


def list_of(item: Check, min_len: int = 0, max_len: int = 1 << 20, what: str | None = None) -> Check:
    what = what or (f"a list of {min_len} items" if min_len == max_len else f"a list of {min_len} to {max_len} items")

    def check(v, path):
        if not isinstance(v, list) or not min_len <= len(v) <= max_len:
            raise Invalid(path, what, v)
        return [item(x, f"{path}[{i}]") for i, x in enumerate(v)]
    return check


def mapping(value: Check, max_len: int = 1 << 20, what: str = "an object") -> Check:
    """A dict with string keys, every value checked."""
    def check(v, path):
        if not isinstance(v, dict) or len(v) > max_len or not all(isinstance(k, str) for k in v):
            raise Invalid(path, what, v)
        return {k: value(x, key_path(path, k)) for k, x in v.items()}
    return check


def record(required: dict[str, Check] | None = None, optional: dict[str, Check] | None = None,
           what: str = "an object") -> Check:
    """A dict with these fields. Returns only the known fields, checked: unknown keys are allowed
    (newer writers) but never passed on."""
    required, optional = required or {}, optional or {}

    def check(v, path):
        if not isinstance(v, dict):
            raise Invalid(path, what, v)
        for k in required:
            if k not in v:
                raise Invalid(key_path(path, k), "a value", missing=True)
        return {k: c(v[k], key_path(path, k)) for k, c in {**required, **optional}.items() if k in v}
    return check


def or_none(check: Check) -> Check:
    """`check`, or None."""
    return lambda v, path: None if v is None else check(v, path)


def anything(v, path):
    return v


def array(v, path):
    if not isinstance(v, np.ndarray):
        raise Invalid(path, "an array", v)
    return v
