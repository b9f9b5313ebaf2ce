"""Typed config fields: declaration, validation and dataclass <-> dict conversion.

Config classes are (usually frozen) dataclasses. Leaf fields are declared with
:func:`param`, which records a description, an SI unit, an inclusive range and
allowed choices in the field metadata (keys ``"doc"``, ``"unit"``, ``"range"``,
``"choices"``). Each class calls :func:`validate_fields` from ``__post_init__``.
Nested config groups are plain ``field(default_factory=SubConfig)`` (or
``param(default_factory=SubConfig, doc=...)``).

:func:`from_dict` builds a class from a (possibly nested, possibly dotted)
mapping with strict type checks; :func:`to_dict` is its inverse and
:func:`parameter_specs` flattens a class into the ROS 2 parameters it declares.
Nothing here imports rclpy.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

_MISSING: Any = dataclasses.MISSING
_NONE = type(None)
_UNIONS = (Union, types.UnionType)
_WORDS: dict[Any, str] = {bool: "a boolean (true/false)", int: "an integer", float: "a float"}
_WORDS.update(
    {str: "a string", _NONE: "null", list: "a list", tuple: "a list", Mapping: "a mapping"}
)


class ConfigError(ValueError):
    """A config value or file that the user has to fix.

    Reads ``"<source>: <dotted.key> = <value> <problem>; <what to change>"``, or
    ``"<source>: <dotted.key>: <problem>"`` for messages that do not start with
    ``"= "`` or ``"is "`` (e.g. a class's own cross-field ValueError).

    Attributes:
        detail: The problem and the fix, without the location.
        source: File path or ``"<dict>"``; None while not yet known (e.g. raised by
            :func:`validate_fields`), in which case :func:`from_dict` fills it in.
        key: Full dotted key of the offending value, or None for file-level errors.
    """

    def __init__(self, detail: str, *, source: str | None = None, key: str | None = None) -> None:
        self.detail, self.source, self.key = detail, source, key
        where = f"{source if source is not None else '<dict>'}: "
        if key:
            where += f"{key} " if detail.startswith(("= ", "is ")) else f"{key}: "
        super().__init__(where + detail)

    def __reduce__(self) -> Any:
        return functools.partial(ConfigError, source=self.source, key=self.key), (self.detail,)


def param(
    default: Any = _MISSING,
    *,
    doc: str,
    unit: str | None = None,
    range: tuple[float | None, float | None] | None = None,
    choices: tuple | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """Declares a documented config field; use as ``name: float = param(...)``.

    Args:
        default: Default value. Mutable ones (lists, dicts, non-frozen dataclasses)
            are copied per instance through a ``default_factory``.
        doc: One-sentence description; becomes the ROS parameter description.
        unit: SI unit shown in messages (``"s"``, ``"m/s"``); the field name carries it too.
        range: Inclusive ``(low, high)`` bounds, ``None`` for an open side. Applies
            element-wise to tuple/list fields.
        choices: Allowed values (element-wise for tuple/list fields).
        default_factory: Alternative to ``default``, e.g. a nested config class.

    Returns:
        A ``dataclasses.field`` carrying the metadata.

    Raises:
        TypeError/ValueError: The declaration itself is inconsistent.
    """
    if not isinstance(doc, str) or not doc.strip():
        raise TypeError("param(): doc must be a non-empty description of the field")
    if range is not None:
        if len(range) != 2:
            raise TypeError(f"param(): range must be (low, high), got {range!r}")
        range = (range[0], range[1])
        if None not in range and range[0] > range[1]:
            raise ValueError(f"param(): range {range!r} has low > high")
    if choices is not None:
        choices = tuple(choices)
        if not choices:
            raise ValueError("param(): choices must not be empty")
    meta = {"doc": doc.strip(), "unit": unit, "range": range, "choices": choices}
    if default is not _MISSING:
        if default_factory is not _MISSING:
            raise TypeError("param(): give default or default_factory, not both")
        problem = _check_value("default", default, meta)
        if problem:
            raise ValueError(f"param(): {problem[0]} {problem[1]}")
        if type(default).__hash__ is None:  # mutable: list, dict, non-frozen dataclass
            return dataclasses.field(
                default_factory=functools.partial(copy.deepcopy, default), metadata=meta
            )
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def validate_fields(obj: Any) -> None:
    """Checks every field of a config dataclass instance against its metadata.

    Rejects NaN/Inf in any float, values outside ``range`` and values not in
    ``choices`` (element-wise for tuples/lists). Call it from ``__post_init__``.

    Raises:
        ConfigError: Without a source; :func:`from_dict` adds source and key prefix.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"validate_fields() needs a dataclass instance, got {obj!r}")
    for f in dataclasses.fields(obj):
        problem = _check_value(f.name, getattr(obj, f.name), f.metadata)
        if problem:
            raise ConfigError(problem[1], key=problem[0])


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> tuple[str, str] | None:
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _check_value(f"{key}[{i}]", item, meta)
            if problem:
                return problem
        return None
    rng, unit, choices = meta.get("range"), meta.get("unit"), meta.get("choices")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, float) and not math.isfinite(value):
        hint = f"a value in {_fmt_range(rng, unit)}" if rng else "a finite number"
        return key, f"= {_show(value)} is not a finite number; set {hint}"
    if rng and value is not None:
        if not is_number:
            return (
                key,
                f"= {_show(value)} is {_kind(value)}; expected a number in {_fmt_range(rng)}",
            )
        low, high = rng
        if (low is not None and value < low) or (high is not None and value > high):
            where = _fmt_range(rng, unit)
            return key, f"= {_show(value)} is out of range {where}; set a value in that range"
    if choices is not None and value is not None and value not in choices:
        return key, f"= {_show(value)} is not one of {_listing(choices)}; choose one of those"
    return None


def from_dict(
    cls: type[T], values: Mapping[str, Any], *, source: str = "<dict>", prefix: str = ""
) -> T:
    """Builds config class ``cls`` from a mapping, checking keys, types and ranges.

    Nested dataclass fields accept nested mappings, dotted keys
    (``"sync.max_age_s"``) or both. Missing keys take the field defaults. ints are
    accepted (and converted) for floats; bools and strings are never numbers; YAML
    lists become tuples for tuple fields.

    Args:
        cls: The config dataclass.
        values: Parsed config, e.g. a node's ``ros__parameters`` mapping.
        source: File path or ``"<dict>"``, named in every error.
        prefix: Dotted key of ``values`` inside the source, prepended to error keys.

    Raises:
        ConfigError: Unknown key (with the known keys and a suggestion), wrong type,
            out-of-range value, bad choice, or a failed ``__post_init__`` check.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict() needs a dataclass type, got {cls!r}")
    try:
        return _build(cls, values, prefix)
    except ConfigError as err:
        if err.source is not None:  # already located (e.g. raised by a nested loader)
            raise
        raise ConfigError(err.detail, source=source, key=err.key) from None


def _build(cls: type[T], values: Any, prefix: str) -> T:
    """from_dict without the source; raised ConfigErrors carry full keys."""
    if not isinstance(values, Mapping):
        raise _type_error(values, cls, prefix)
    hints, fields = _hints(cls), {f.name: f for f in _init_fields(cls)}
    direct: dict[str, Any] = {}
    dotted: dict[str, dict[str, Any]] = {}
    for raw_key, value in values.items():
        key = _join(prefix, str(raw_key))
        if not isinstance(raw_key, str):
            raise ConfigError(f"= {_show(raw_key)} is not a valid key; use a string", key=key)
        head, dot, rest = raw_key.partition(".")
        if head not in fields:
            close = difflib.get_close_matches(head, list(fields), n=1)
            hint = f"did you mean '{close[0]}{dot}{rest}'? " if close else ""
            under = f" under '{prefix}'" if prefix else ""
            known = f"{hint}Known keys{under}: {', '.join(fields)}"
            raise ConfigError(f"is not a known key; {known}", key=key)
        if dot:
            dotted.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in dotted:
            merged = direct.get(name, {})
            if not isinstance(merged, Mapping) or _dataclass_of(hints[name]) is None:
                what = _describe(hints[name])
                raise ConfigError(
                    f"is set both as a value and as dotted keys; expected {what}", key=key
                )
            merged = dict(merged)
            for sub, value in dotted[name].items():
                if sub in merged:
                    raise ConfigError(
                        f"is given twice (nested and as '{name}.{sub}'); keep one",
                        key=f"{key}.{sub}",
                    )
                merged[sub] = value
            direct[name] = merged
        if name in direct:
            kwargs[name] = _convert(direct[name], hints[name], key)
            problem = _check_value(key, kwargs[name], f.metadata)
            if problem:
                raise ConfigError(problem[1], key=problem[0])
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"is required; set it to {_describe(hints[name])}", key=key)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # from validate_fields: key relative to cls
        if err.source is not None:
            raise
        raise ConfigError(err.detail, key=_join(prefix, err.key or "") or None) from err
    except ValueError as err:  # a class's own cross-field check
        raise ConfigError(str(err), key=prefix or None) from err


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against type hint ``tp`` and converts it (int->float, list->tuple)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in _UNIONS:
        if value is None and _NONE in args:
            return None
        options = [a for a in args if a is not _NONE]
        for option in options:
            try:
                return _convert(value, option, key)
            except ConfigError:
                if len(options) == 1:
                    raise
        raise _type_error(value, tp, key)
    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise ConfigError(
            f"= {_show(value)} is not one of {_listing(args)}; choose one of those", key=key
        )
    if tp in (float, int, bool, str):
        if isinstance(value, bool) and tp is not bool:
            raise _type_error(value, tp, key)
        if tp is float and isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, tp):
            return value
        raise _type_error(value, tp, key)
    if _dataclass_of(tp) is tp:
        if isinstance(value, tp):
            return value
        return _build(tp, value, key)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, tp, key)
        if _is_fixed_tuple(tp):
            if len(value) != len(args):
                got = f"= {_show(value)} has {len(value)} elements"
                raise ConfigError(f"{got}; expected {_describe(tp)}", key=key)
            elems = args
        else:
            elems = (args[0] if args else Any,) * len(value)
        items = [
            _convert(v, e, f"{key}[{i}]") for i, (v, e) in enumerate(zip(value, elems, strict=True))
        ]
        return tuple(items) if (origin or tp) is tuple else items
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _type_error(value, tp, key)
    return value


def _type_error(value: Any, tp: Any, key: str) -> ConfigError:
    hint = ""
    if isinstance(value, str) and tp in (float, int):
        try:
            float(value)
            hint = "; write the number without quotes"
        except ValueError:
            pass
    return ConfigError(
        f"= {_show(value)} is {_kind(value)}; expected {_describe(tp)}{hint}", key=key
    )


def _describe(tp: Any) -> str:
    """Human wording of a type hint, e.g. ``"a list of 3 floats"``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp in _WORDS:
        return _WORDS[tp]
    if origin in _UNIONS:
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return f"one of {_listing(args)}"
    if _dataclass_of(tp) is tp:
        return f"a mapping of {tp.__name__} keys"
    if origin in (tuple, list) or tp in (tuple, list):
        plural = {float: "floats", int: "integers", bool: "booleans", str: "strings"}
        if _is_fixed_tuple(tp):
            kinds = {plural.get(a, "values") for a in args}
            return f"a list of exactly {len(args)} {kinds.pop() if len(kinds) == 1 else 'values'}"
        return f"a list of {plural.get(args[0], 'values') if args else 'values'}"
    return f"a {getattr(tp, '__name__', tp)}"


def to_dict(obj: Any) -> dict[str, Any]:
    """Converts a config dataclass instance to nested plain dicts/lists (from_dict's inverse)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict() needs a dataclass instance, got {obj!r}")
    return _plain(obj)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in _init_fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One flattened leaf field, ready for a ROS ``declare_parameter``.

    Attributes:
        name: Dotted parameter name, e.g. ``"sync.max_age_s"``.
        type: The resolved type hint (``float``, ``tuple[float, ...]``, ``Literal[...]``...).
        default: Default value (from the enclosing default instance for nested
            groups), or ``dataclasses.MISSING`` for a required field.
        doc: Field description ("" for fields not declared with :func:`param`).
        unit: SI unit or None.
        range: Inclusive ``(low, high)`` bounds or None.
        choices: Allowed values; taken from a ``Literal`` hint when not given.
    """

    name: str
    type: Any
    default: Any
    doc: str
    unit: str | None
    range: tuple[float | None, float | None] | None
    choices: tuple | None


def parameter_specs(cls: type, prefix: str = "") -> list[ParamSpec]:
    """Flattens config class ``cls`` into one :class:`ParamSpec` per leaf field.

    Nested dataclass fields are recursed into with dotted names. Optional nested
    groups (``Sub | None``) stay one spec, as ROS parameters cannot express them.
    """
    return _specs(cls, prefix, None)


def _specs(cls: type, prefix: str, defaults: Any) -> list[ParamSpec]:
    hints, out = _hints(cls), []
    for f in _init_fields(cls):
        name, tp = _join(prefix, f.name), hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default_factory is not _MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if _dataclass_of(tp) is tp:
            out.extend(_specs(tp, name, None if default is _MISSING else default))
            continue
        meta = f.metadata
        choices = meta.get("choices")
        if choices is None and get_origin(tp) is Literal:
            choices = get_args(tp)
        doc, unit, rng = meta.get("doc", ""), meta.get("unit"), meta.get("range")
        out.append(ParamSpec(name, tp, default, doc, unit, rng, choices))
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass behind ``tp`` or ``tp | None``, else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in _UNIONS:
        options = [a for a in get_args(tp) if a is not _NONE]
        if len(options) == 1:
            return _dataclass_of(options[0])
    return None


def _is_fixed_tuple(tp: Any) -> bool:
    args = get_args(tp)
    return get_origin(tp) is tuple and bool(args) and not (len(args) == 2 and args[1] is Ellipsis)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(list(value)) if isinstance(value, tuple) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    """What the user wrote, e.g. ``"a string"``."""
    if value is None:
        return "empty (null)"
    for tp in (bool, int, float, str, list, tuple, Mapping):
        if isinstance(value, tp):
            return _WORDS[tp].replace(" (true/false)", "")
    return f"a {type(value).__name__}"


def _listing(values: tuple) -> str:
    return ", ".join(_show(v) for v in values)


def _fmt_range(rng: tuple[float | None, float | None], unit: str | None = None) -> str:
    low = "(-inf" if rng[0] is None else f"[{rng[0]!r}"
    high = "inf)" if rng[1] is None else f"{rng[1]!r}]"
    return f"{low}, {high}" + (f" {unit}" if unit else "")
