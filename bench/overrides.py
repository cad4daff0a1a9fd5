"""`--set method:field.sub=value` overrides of a method's nested dataclass settings (for sweeps)."""

from __future__ import annotations

import ast
from dataclasses import fields, is_dataclass, replace


def parse_value(text: str):
    """Python literals (numbers, tuples, booleans) as such; anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """["oneactor:tuning.lr=1e-3", …] → {"oneactor": {"tuning.lr": 0.001}, …}."""
    overrides: dict[str, dict[str, object]] = {}
    for item in items:
        method, sep, assignment = item.partition(":")
        path, eq, value = assignment.partition("=")
        if not sep or not eq or not path:
            raise ValueError(f"--set {item!r}: write method:field.subfield=value, e.g. oneactor:tuning.lr=1e-3")
        overrides.setdefault(method, {})[path] = parse_value(value)
    return overrides


def with_override(settings, path: str, value):
    """A copy of the dataclass `settings` with the dotted field `path` set to `value`."""
    head, _, rest = path.partition(".")
    if not is_dataclass(settings) or head not in {f.name for f in fields(settings)}:
        names = sorted(f.name for f in fields(settings)) if is_dataclass(settings) else []
        raise ValueError(f"no setting {head!r} in {type(settings).__name__}; it has {names}")
    inner = with_override(getattr(settings, head), rest, value) if rest else value
    return replace(settings, **{head: inner})


def apply_overrides(settings, overrides: dict[str, object]):
    for path, value in overrides.items():
        settings = with_override(settings, path, value)
    return settings
