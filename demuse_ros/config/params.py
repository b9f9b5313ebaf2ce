"""Reading ROS 2 parameter files (the ``<node>: ros__parameters:`` YAML layout).

The same ``config/*.yaml`` configures the ROS nodes and the embedded runner, so
this module reads it the way ROS 2 does, without rclpy:

* top-level keys are node names: ``policy_node``, ``/policy_node``,
  ``/ns/policy_node``, ``ns/policy_node`` or the ``/**`` wildcard; a namespace may
  also be a mapping level of its own (``ns: {policy_node: {ros__parameters: ...}}``);
* nested mappings under ``ros__parameters`` and dotted keys are the same
  parameter (``sync: {max_age_s: ...}`` == ``sync.max_age_s: ...``);
* lists are ROS parameter arrays, so they must hold scalars of one type;
* numbers like ``1e-3`` are floats (as in ROS), not strings (as in plain PyYAML);
* a key given twice in one mapping is an error rather than silently last-wins.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .schema import ConfigError, _show, from_dict

T = TypeVar("T")

PARAMS_KEY = "ros__parameters"
WILDCARDS = ("/**", "**")
# Parameters every ROS 2 node declares itself; load_config ignores them unless
# the config class has a field of that name.
ROS_BUILTIN_PARAMETERS = frozenset(
    {"use_sim_time", "qos_overrides", "start_type_description_service"}
)


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: let SafeLoader report it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first given on line {first + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_parameter_file(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Reads a ROS 2 parameter file.

    Args:
        path: The YAML file.

    Returns:
        Node name (as written, namespace levels joined with ``/``) -> that node's
        ``ros__parameters`` mapping, nested as in the file, in file order.

    Raises:
        ConfigError: Missing/unreadable file, YAML syntax error (with line and
            column), top level not a mapping, a node section without
            ``ros__parameters``, or a list that is not a ROS parameter array.
    """
    source = str(path)
    file = Path(path)
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise ConfigError(
            f"parameter file not found: '{file.resolve()}' {what}; check the path "
            "(relative paths are taken from the current directory)",
            source=source,
        )
    try:
        text = file.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_Loader)  # _Loader subclasses SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(filter(None, [err.context, err.problem]))
        raise ConfigError(
            f"YAML syntax error{where}: {problem}; fix the YAML there", source=source
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the file: {err}", source=source) from None
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            f"the top level is {'not a mapping' if data else 'empty'}; expected node "
            "sections like 'policy_node: {ros__parameters: {...}}'",
            source=source,
        )
    nodes: dict[str, dict[str, Any]] = {}
    for name, section in data.items():
        _collect(str(name), section, nodes, source)
    return nodes


def _collect(name: str, section: Any, nodes: dict[str, dict[str, Any]], source: str) -> None:
    """Adds the node(s) in ``section`` to ``nodes``, descending into namespace levels."""
    if isinstance(section, Mapping) and PARAMS_KEY in section:
        extra = [str(k) for k in section if k != PARAMS_KEY]
        if extra:
            raise ConfigError(
                f"has keys beside '{PARAMS_KEY}': {', '.join(extra)}; "
                f"indent them under '{PARAMS_KEY}'",
                source=source,
                key=name,
            )
        params = section[PARAMS_KEY]
        params = {} if params is None else params
        key = f"{name}.{PARAMS_KEY}"
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"= {_show(params)} is not a mapping of parameters", source=source, key=key
            )
        if name in nodes:
            raise ConfigError("is given twice; merge the two sections", source=source, key=name)
        _check_params(params, key, source)
        nodes[name] = dict(params)
    elif isinstance(section, Mapping) and section and all(_has_node(v) for v in section.values()):
        for child, sub in section.items():
            _collect(f"{name.rstrip('/')}/{str(child).lstrip('/')}", sub, nodes, source)
    else:
        raise ConfigError(
            f"node section has no '{PARAMS_KEY}'; write the parameters as "
            f"'{name}: {{{PARAMS_KEY}: {{...}}}}'",
            source=source,
            key=name,
        )


def _has_node(section: Any) -> bool:
    if not isinstance(section, Mapping):
        return False
    return PARAMS_KEY in section or (bool(section) and all(_has_node(v) for v in section.values()))


def _check_params(params: Mapping[Any, Any], prefix: str, source: str) -> None:
    """Checks that keys are strings and lists are homogeneous scalar arrays."""
    for name, value in params.items():
        key = f"{prefix}.{name}"
        if not isinstance(name, str):
            raise ConfigError(
                f"parameter name {_show(name)} is not a string", source=source, key=key
            )
        if isinstance(value, Mapping):
            _check_params(value, key, source)
        elif isinstance(value, list):
            if any(v is None or isinstance(v, (list, Mapping)) for v in value):
                raise ConfigError(
                    f"= {_show(value)} holds nulls, lists or mappings; ROS parameter arrays "
                    "hold only numbers, strings or booleans",
                    source=source,
                    key=key,
                )
            kinds = sorted({type(v).__name__ for v in value})
            if len(kinds) > 1:
                hint = "write every number with a decimal point (1.0, not 1)"
                if kinds != ["float", "int"]:
                    hint = "use one type for all elements"
                raise ConfigError(
                    f"= {_show(value)} mixes {' and '.join(kinds)}; ROS parameter arrays must "
                    f"hold one type, so {hint}",
                    source=source,
                    key=key,
                )


def node_parameters(path: str | os.PathLike[str], node_name: str) -> dict[str, Any]:
    """Merged ``ros__parameters`` for one node, with dotted keys expanded to nesting.

    Sections apply in this order, later ones overriding earlier ones key by key
    (deep merge): ``/**``; the bare name (``policy_node`` or ``/policy_node``);
    namespaced names (``/ns/policy_node``, ``ns/policy_node``, ``/**/policy_node``).
    When ``node_name`` has a namespace itself, a namespaced section must match it.

    Raises:
        ConfigError: As :func:`read_parameter_file`, no section for the node (the
            message lists the nodes in the file), or a parameter given twice.
    """
    source = str(path)
    nodes = read_parameter_file(path)
    ranked = [(r, n) for n in nodes if (r := _match_rank(n, node_name)) is not None]
    if not ranked:
        raise ConfigError(
            f"no section for node '{node_name}'; nodes in this file: {', '.join(nodes)}. "
            f"Add a '{node_name}: {{{PARAMS_KEY}: ...}}' section or use one of those names",
            source=source,
        )
    merged: dict[str, Any] = {}
    for _, name in sorted(ranked, key=lambda item: item[0]):  # stable: file order within a rank
        nested = _nest(nodes[name], f"{name}.{PARAMS_KEY}", source)
        merged = _merge(merged, nested)
    return merged


def _match_rank(key: str, node_name: str) -> int | None:
    """0 for a wildcard, 1 for the bare name, 2 for a namespaced match, None otherwise."""
    if key in WILDCARDS:
        return 0
    wanted, written = node_name.strip("/"), key.strip("/")
    base = wanted.rsplit("/", 1)[-1]
    if written == base:
        return 1
    if "/" not in written:
        return None
    if "/" not in wanted:
        return 2 if written.endswith("/" + base) else None
    pattern = re.escape(written).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return 2 if re.fullmatch(pattern, wanted) else None


def _nest(params: Mapping[str, Any], prefix: str, source: str) -> dict[str, Any]:
    """Expands dotted keys (``a.b: 1`` -> ``a: {b: 1}``), rejecting a parameter set twice."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            value = _nest(value, f"{prefix}.{name}", source)
        head, *groups = name.split(".")
        for group in reversed(groups):
            value = {group: value}
        out = _merge(out, {head: value}, clash=(source, prefix))
    return out


def _merge(
    base: dict[str, Any], override: Mapping[str, Any], clash: tuple[str, str] | None = None
) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``override`` replaces.

    With ``clash=(source, key prefix)`` a value set on both sides is an error instead.
    """
    out = dict(base)
    for name, value in override.items():
        sub = None if clash is None else (clash[0], f"{clash[1]}.{name}")
        if isinstance(out.get(name), dict) and isinstance(value, Mapping):
            out[name] = _merge(out[name], value, sub)
        elif sub is not None and name in out:
            raise ConfigError(
                "is given twice (nested and dotted); keep one", source=sub[0], key=sub[1]
            )
        else:
            out[name] = value
    return out


def load_config(
    path: str | os.PathLike[str],
    cls: type[T],
    node_name: str,
    *,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Loads config class ``cls`` from a node's parameters in a ROS 2 parameter file.

    Args:
        path: The parameter file.
        cls: Config dataclass to build.
        node_name: Node whose section(s) to use, see :func:`node_parameters`.
        section: Optional dotted group inside the node's parameters (e.g. ``"sync"``);
            a missing group means all defaults.
        overrides: Dotted keys (relative to ``section``) replacing the file's values,
            e.g. from a command line; validated like the file.

    Returns:
        The validated config. Without ``section``, ROS's own per-node parameters
        (``use_sim_time``, ...) are ignored unless ``cls`` has such a field.

    Raises:
        ConfigError: Naming ``path`` and the full key, e.g.
            ``policy_node.ros__parameters.sync.max_age_s``.
    """
    source = str(path)
    values: Any = node_parameters(path, node_name)
    prefix = f"{node_name}.{PARAMS_KEY}"
    if section:
        for group in section.split("."):
            prefix = f"{prefix}.{group}"
            values = values.get(group, {})
            if not isinstance(values, Mapping):
                raise ConfigError(
                    f"= {_show(values)} is a value, but a group of parameters is expected here",
                    source=source,
                    key=prefix,
                )
    else:
        own = set(getattr(cls, "__dataclass_fields__", {}))
        values = {k: v for k, v in values.items() if k not in ROS_BUILTIN_PARAMETERS or k in own}
    if overrides:
        values = copy.deepcopy(dict(values))
        for key, value in overrides.items():
            *groups, leaf = key.split(".")
            node = values
            for group in groups:
                child = node.get(group)
                if not isinstance(child, Mapping):
                    child = node[group] = {}
                node = child  # type: ignore[assignment]
            node[leaf] = value
        source += " (with overrides)"
    return from_dict(cls, values, source=source, prefix=prefix)
