"""Typed, frozen configuration loaded from plain YAML (no expressions, no code).

:func:`from_mapping` builds a (nested) frozen dataclass from a mapping and
names any unknown key or wrongly typed value, e.g. ``grid.depht: unknown key
(expected one of depth, height, inplane_mm, width)``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from mrct.errors import ConfigError, InputNotFoundError

T = TypeVar("T")
# Seeds must fit numpy's legacy seeding (``np.random.seed``), the narrowest consumer.
SEED_MAX = 2**32 - 1


def seed_problem(seed: object) -> str | None:
    """Why ``seed`` cannot seed a run (None when it can): an integer in [0, SEED_MAX]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        return f"must be an integer in [0, {SEED_MAX}] (2**32 - 1), got {seed!r}"
    return None


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{path}: unknown key (expected one of {', '.join(sorted(fields))})")
        kwargs[key] = _convert(hints[key], value, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if value is None:  # "model:" with its keys commented out trained the paper's 64-filter model
            raise ConfigError(f"{path}: is empty; give its keys, or leave it out for the defaults")
        return from_mapping(hint, value, path)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        return _convert(hint, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        if (len(args) == 2 and args[1] is Ellipsis) or len(args) <= 1:
            return tuple(_convert(item, v, path) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, path) for a, v in zip(args, value, strict=True))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {value!r}")
        return float(value)
    if (hint in (int, str, bool) and not isinstance(value, hint)) or (
        hint is int and isinstance(value, bool)
    ):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _yaml_loader() -> Any:
    """PyYAML's safe loader, stricter and closer to YAML 1.2 in ways that bite configs:
    numbers and booleans are YAML 1.2's core schema (``lr: 1e-4`` is a float, not a string;
    ``seed: 010`` is 10, not octal 8; ``lr: 1:30`` is not sexagesimal 90; ``yes``/``off`` are
    text, which a boolean key then refuses), and a key given twice in one mapping is an error
    instead of the last one silently winning."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``; explicit keys override it
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    again = key in seen
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if again:
                    line = key_node.start_mark.line + 1
                    raise ConfigError(f"key {key!r} appears twice in one mapping (line {line})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    core = {"tag:yaml.org,2002:" + t for t in ("bool", "int", "float")}
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in core]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    patterns = {
        "bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        "int": (r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        "float": (
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            "-+0123456789.",
        ),
    }
    for name, (pattern, first) in patterns.items():
        Loader.add_implicit_resolver(f"tag:yaml.org,2002:{name}", re.compile(pattern), list(first))

    def core_int(loader: Any, node: Any) -> int:
        text = loader.construct_scalar(node)
        base = {"0o": 8, "0x": 16}.get(text[:2], 10)
        return int(text[2:] if base != 10 else text, base)

    Loader.add_constructor("tag:yaml.org,2002:int", core_int)
    return Loader


def _yaml_reason(err: Exception) -> str:
    """PyYAML's problem and where (1-based line and column): its first line alone said "while
    scanning for the next token", without the line or the cause (a tab)."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(err).splitlines()[0]


def load_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load ``cls`` from a YAML file (optionally one top-level section of it)."""
    import yaml

    p = Path(path)
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_yaml_loader())  # a SafeLoader subclass
    except FileNotFoundError as err:
        raise InputNotFoundError("config file not found", p) from err
    except ConfigError as err:
        raise ConfigError(err.message, p) from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 text (byte {err.start}); save the config as UTF-8", p) from err
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"not a readable YAML file ({_yaml_reason(err)})", p) from err
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping (key: value lines) at the top level, got {type(data).__name__}", p
        )
    if section is not None:
        data = (data or {}).get(section)
    try:
        return from_mapping(cls, data, section or "")
    except ConfigError as err:
        raise ConfigError(err.message, p) from err
