"""ROS 2 parameters derived from the config dataclasses (pure Python: no rclpy here).

A node's parameters are one or more *groups*: a config dataclass declared under
a dotted prefix (``camera`` → ``camera.width``, ``camera.clock_mapper.window_s``)
or at the top level (prefix ``""``). :func:`declarations` walks the dataclass
fields (:func:`~demuse_ros.config.parameter_specs`) into one :class:`ParamDecl`
per leaf: name, ROS type, default, description, range. The node turns each into
a ``ParameterDescriptor`` (:mod:`demuse_ros.ros.node_base`), and reads the
values back through :func:`to_configs`, which builds the dataclasses with
:func:`~demuse_ros.config.from_dict`: the same validation, and the same error
messages, as the embedded runner reading ``config/*.yaml``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

from demuse_ros.config import ParamSpec, from_dict, parameter_specs

#: ROS 2 parameter types used here (``rcl_interfaces/msg/ParameterType`` names, lower case).
KINDS = (
    "bool",
    "integer",
    "double",
    "string",
    "bool_array",
    "integer_array",
    "double_array",
    "string_array",
)
_SCALAR = {bool: "bool", int: "integer", float: "double", str: "string"}
#: Bounds of an open range side (int64 for integers; the largest finite double).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DOUBLE_MAX = sys.float_info.max


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Config class ``cls`` declared under ``prefix`` (``""``: at the node's top level)."""

    prefix: str
    cls: type


@dataclasses.dataclass(frozen=True)
class ParamDecl:
    """One ROS parameter, ready for ``declare_parameter``.

    Attributes:
        name: Dotted name (``"camera.width"``).
        kind: One of :data:`KINDS`.
        default: Default in its ROS type (floats for doubles, lists for arrays).
        description: The field's doc (``ParameterDescriptor.description``).
        float_range: Inclusive bounds of a double (``FloatingPointRange``), else None.
        int_range: Inclusive bounds of an integer (``IntegerRange``), else None.
        constraints: Unit, choices, element range and length in words
            (``ParameterDescriptor.additional_constraints``).
    """

    name: str
    kind: str
    default: Any
    description: str
    float_range: tuple[float, float] | None
    int_range: tuple[int, int] | None
    constraints: str


def ros_kind(tp: Any) -> str:
    """The ROS parameter type of a config field's type hint (a :data:`KINDS` name).

    Raises:
        TypeError: A type ROS parameters cannot hold (optional values, mappings,
            nested lists, mixed tuples).
    """
    origin, args = get_origin(tp), get_args(tp)
    if tp in _SCALAR:
        return _SCALAR[tp]
    if origin is Literal:
        kinds = {_SCALAR.get(type(a)) for a in args}
        if len(kinds) == 1 and None not in kinds:
            return kinds.pop()  # type: ignore[return-value]
    if origin in (tuple, list) or tp in (tuple, list):
        elems = {a for a in args if a is not Ellipsis}
        if len(elems) == 1 and (elem := elems.pop()) in _SCALAR:
            return _SCALAR[elem] + "_array"
    raise TypeError(
        f"{tp!r} cannot be a ROS 2 parameter (use bool, int, float, str or a tuple of one of them)"
    )


def _ros_value(kind: str, value: Any) -> Any:
    """``value`` in the Python type rclpy expects for ``kind`` (1 → 1.0 for doubles)."""
    if kind == "double":
        return float(value)
    if kind == "double_array":
        return [float(v) for v in value]
    if kind.endswith("_array"):
        return list(value)
    return value


def _describe_constraints(spec: ParamSpec, kind: str) -> str:
    parts = []
    if spec.unit:
        parts.append(f"unit: {spec.unit}")
    if spec.choices is not None:
        parts.append("one of: " + ", ".join(str(c) for c in spec.choices))
    if spec.range is not None and kind.endswith("_array"):
        low, high = spec.range
        parts.append(
            f"each element in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        )
    args = get_args(spec.type)
    if kind.endswith("_array") and args and Ellipsis not in args:
        parts.append(f"exactly {len(args)} elements")
    return "; ".join(parts)


def declarations(groups: Sequence[ParamGroup]) -> list[ParamDecl]:
    """Every leaf field of every group as a :class:`ParamDecl`, in declaration order.

    Raises:
        TypeError: A field ROS parameters cannot express, a required field (no
            default), or two groups declaring the same name.
    """
    out: list[ParamDecl] = []
    seen: set[str] = set()
    for group in groups:
        for spec in parameter_specs(group.cls, group.prefix):
            if spec.default is dataclasses.MISSING:
                raise TypeError(f"{spec.name}: a ROS parameter needs a default")
            try:
                kind = ros_kind(spec.type)
            except TypeError as exc:
                raise TypeError(f"{spec.name}: {exc}") from None
            if spec.name in seen:
                raise TypeError(f"{spec.name} is declared by two parameter groups")
            seen.add(spec.name)
            float_range = int_range = None
            if spec.range is not None and kind == "double":
                low, high = spec.range
                float_range = (
                    -DOUBLE_MAX if low is None else float(low),
                    DOUBLE_MAX if high is None else float(high),
                )
            elif spec.range is not None and kind == "integer":
                low, high = spec.range
                int_range = (
                    INT64_MIN if low is None else int(low),
                    INT64_MAX if high is None else int(high),
                )
            out.append(
                ParamDecl(
                    name=spec.name,
                    kind=kind,
                    default=_ros_value(kind, spec.default),
                    description=spec.doc,
                    float_range=float_range,
                    int_range=int_range,
                    constraints=_describe_constraints(spec, kind),
                )
            )
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *groups, leaf = name.split(".")
        node = out
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    return out


def to_configs(
    groups: Sequence[ParamGroup], values: Mapping[str, Any], *, source: str
) -> dict[type, Any]:
    """Builds each group's config class from the node's parameter values.

    Args:
        groups: The node's parameter groups.
        values: Dotted name → value as the node holds it (ROS arrays may come back
            as ``array.array``; they are turned into lists here).
        source: Named in errors, e.g. ``"/policy_node parameters"``.

    Returns:
        Config class → validated instance.

    Raises:
        ConfigError: As :func:`~demuse_ros.config.from_dict` (out of range, bad
            choice, a class's own cross-field check), naming the dotted parameter.
    """
    plain = {
        k: list(v) if not isinstance(v, (str, bytes)) and hasattr(v, "__len__") else v
        for k, v in values.items()
    }
    out: dict[type, Any] = {}
    for group in groups:
        if group.prefix:
            head = group.prefix + "."
            mine = {k[len(head) :]: v for k, v in plain.items() if k.startswith(head)}
        else:
            fields = {f.name for f in dataclasses.fields(group.cls) if f.init}
            mine = {k: v for k, v in plain.items() if k.split(".", 1)[0] in fields}
        out[group.cls] = from_dict(group.cls, _nest(mine), source=source, prefix=group.prefix)
    return out


# ---------------------------------------------------------------------- documentation
def _code(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value) if value == "" else value
    elif isinstance(value, float):
        text = repr(value) if abs(value) < 1e6 else f"{value:.3g}"
    elif isinstance(value, list):
        text = "[" + ", ".join(_code(v).strip("`") for v in value) + "]"
    else:
        text = str(value)
    return f"`{text}`"


def _range_text(decl: ParamDecl) -> str:
    rng: tuple[Any, Any] | None = decl.float_range or decl.int_range
    parts = []
    if rng is not None:
        low = "" if rng[0] in (-DOUBLE_MAX, INT64_MIN) else _code(rng[0]).strip("`")
        high = "" if rng[1] in (DOUBLE_MAX, INT64_MAX) else _code(rng[1]).strip("`")
        parts.append(f"{low or '−∞'} … {high or '∞'}")
    if decl.constraints:
        parts.append(decl.constraints)
    return "; ".join(parts)


def parameter_table(groups: Sequence[ParamGroup]) -> str:
    """A Markdown table of one node's parameters (name, type, default, range, description)."""
    lines = [
        "| parameter | type | default | range / constraints | description |",
        "|---|---|---|---|---|",
    ]
    for d in declarations(groups):
        desc = d.description.replace("|", "\\|").replace("\n", " ")
        rng = _range_text(d).replace("|", "\\|")
        lines.append(f"| `{d.name}` | {d.kind} | {_code(d.default)} | {rng} | {desc} |")
    return "\n".join(lines)


__all__ = [
    "DOUBLE_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "KINDS",
    "ParamDecl",
    "ParamGroup",
    "declarations",
    "parameter_table",
    "ros_kind",
    "to_configs",
]
