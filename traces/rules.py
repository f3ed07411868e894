"""Declared rules of a setting or document key, and the one check that applies them.

A :class:`Rule` states a value's kind and range; a table of them (``{"a.b": Rule}``, a
dotted key entering nested objects) sits next to where a document is read: the engine
settings (:data:`mist.profiles.limits.ENGINE_RULES`), a run's ``meta.json``
(:data:`mist.traces.readers.vllm_run.META_RULES`), a profile bundle's ``meta.yaml``
(:data:`mist.profiles.bundle.META_RULES`). :func:`check_document` applies a table and
turns the first violation into ``TraceError(file, "<key> must be …, got …")``.

Kinds are strict: a boolean is a JSON boolean (``"no"`` is an error, never true), an
integer is an integer (not ``1e3``, not ``"16"``, not ``true``), a number is finite, a
text is a string, a date is an ISO 8601 string, an object is a mapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from mist.traces.errors import TraceError

KINDS = ("int", "bool", "number", "text", "date", "object")


@dataclass(frozen=True)
class Rule:
    """Allowed values of one setting: ``kind`` (one of :data:`KINDS`; ``"number"`` is a
    finite int or float), between ``least`` and ``most`` inclusive (None: unbounded);
    ``above`` True makes ``least`` exclusive (a share in (0, 1]); ``required`` True: the
    key must be there (not null) whenever the object holding it is."""

    kind: str
    least: float | None = None
    most: float | None = None
    above: bool = False
    required: bool = False

    def problem(self, value) -> str | None:
        """Why ``value`` breaks the rule (None when it keeps it)."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false (a JSON boolean)"
        if self.kind == "text":
            return None if isinstance(value, str) else "must be a string"
        if self.kind == "object":
            return None if isinstance(value, dict) else "must be an object (a mapping of keys)"
        if self.kind == "date":
            return None if isinstance(value, str) and _iso_date(value) else "must be an ISO 8601 date"
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
            return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
        if not math.isfinite(value):
            return "must be a finite number"
        if self.least is not None and (value <= self.least if self.above else value < self.least):
            return f"must be {'above' if self.above else 'at least'} {_show(self.least)}"
        if self.most is not None and value > self.most:
            return f"must be at most {_show(self.most)} (a physical ceiling: larger would not fit any machine)"
        return None


def _iso_date(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _show(bound: float) -> str:
    """A bound as written: integers in full (16777216, not 1.67772e+07)."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) <= 2**53 else f"{bound:g}"


def checked(value, rule: Rule, path, name: str, line: int | None = None):
    """``value`` if it keeps ``rule``; else TraceError naming ``path``, ``name`` and why."""
    problem = rule.problem(value)
    if problem:
        raise TraceError(path, f"{name} {problem}, got {value!r}", line=line)
    return value


def check_settings(settings: dict, rules: dict[str, Rule], path, prefix: str = "") -> dict:
    """Check every key of ``settings`` that ``rules`` declares (null = not given);
    ``prefix`` names where they sit in the document (``"engine_kwargs."``)."""
    for key, rule in rules.items():
        if settings.get(key) is not None:
            checked(settings[key], rule, path, f"{prefix}{key}")
    return settings


def check_document(doc: dict, rules: dict[str, Rule], path) -> dict:
    """Check a parsed JSON/YAML document against ``rules`` (dotted keys ``"a.b"``: key
    ``b`` of the object at ``a``). A key that is absent or null is not given, which is
    allowed unless its rule is ``required`` and the object holding it is there; rules
    are applied in table order, so declare an object (``"a": Rule("object")``) before
    its keys."""
    for dotted, rule in rules.items():
        *parents, key = dotted.split(".")
        node = doc
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if node.get(key) is None:
            if rule.required:
                raise TraceError(path, f"{dotted} is missing (required in {'.'.join(parents) or 'the document'})")
            continue
        checked(node[key], rule, path, dotted)
    return doc
