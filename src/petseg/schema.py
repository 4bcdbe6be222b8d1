"""Strict conversion of parsed YAML into frozen dataclasses: every field required, no unknown keys, no bool-as-int,
no str-as-number, finite floats only, and each class's ``validate(key)`` run; errors name the dotted key."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

import yaml

from petseg.errors import PetsegError


class ConfigError(PetsegError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                problem = f"key {key!r} is written twice, first on line {seen[key]}"
                raise yaml.constructor.ConstructorError(problem=problem, problem_mark=key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: object) -> Any:
    """YAML text -> Python values, a syntax error or a key written twice as one line naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where}: not valid YAML ({getattr(err, 'problem', err)})") from None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a).lower() if isinstance(a, bool) else repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to ``tp``; strict (no bool-as-int, no str-as-number)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if type(value) is type(allowed) and value == allowed:
                return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, list | tuple) and len(value) == len(args):
            return tuple(_convert(v, a, key) for v, a in zip(value, args, strict=True))
    elif origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if isinstance(value, dict):
            return {_convert(k, key_tp, key): _convert(v, value_tp, _join(key, k)) for k, v in value.items()}
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number (got {value})")
            return float(value)
    elif tp is type(None):
        if value is None:
            return None
    elif type(value) is tp:
        return value
    raise ConfigError(f"{key}: must be {_type_name(tp)} (got {value!r})")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else str(name)


def build(cls: type, raw: Any, key: str = "") -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: must be a mapping (got {raw!r})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in raw:
        if name not in names:
            where = f"under {key}" if key else "at the top level"
            raise ConfigError(f"{_join(key, name)}: unknown key (allowed {where}: {', '.join(names)})")
    missing = [name for name in names if name not in raw]
    if missing:
        raise ConfigError(f"{_join(key, missing[0])}: missing (every key is required, as in the shipped params.yaml)")
    values = {name: _convert(raw[name], hints[name], _join(key, name)) for name in names}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(key)
    return obj


def set_dotted(raw: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(raw, dict):
            break
        raw = raw.setdefault(part, {})
    if isinstance(raw, dict):
        raw[leaf] = value


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values, e.g. for MLflow params."""
    out: dict[str, Any] = {}
    items = dataclasses.asdict(obj).items() if dataclasses.is_dataclass(obj) else obj.items()
    for name, value in items:
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            out.update(to_flat_dict(value, dotted + "."))
        else:
            out[dotted] = list(value) if isinstance(value, tuple) else value
    return out
