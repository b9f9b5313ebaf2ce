"""The README's ROS 2 tables, generated from the code (pure Python: no rclpy, no launch).

* interfaces: :func:`demuse_ros.ros.interfaces.interface_table`;
* launch arguments: parsed from ``launch/*.launch.py`` with :mod:`ast` (each
  ``DeclareLaunchArgument``'s name, default, choices and description);
* parameters: one table per node from :data:`~demuse_ros.ros.node_config.NODE_PARAMETERS`.

The README holds each between ``<!-- generated:NAME -->`` and
``<!-- end:NAME -->``; ``python -m demuse_ros.ros.docs README.md`` rewrites
them and ``--check`` fails when they are out of date (a test runs the check).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Any

from demuse_ros.ros.interfaces import NODES, interface_table
from demuse_ros.ros.node_config import node_parameter_groups
from demuse_ros.ros.params import declarations, parameter_table

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = ("demuse.launch.py", "sim.launch.py", "capture.launch.py")


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)  # an expression (a substitution): shown as code


def launch_arguments(path: str | Path) -> list[dict[str, Any]]:
    """``DeclareLaunchArgument(...)`` calls of a launch file, in order, without running it."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if func != "DeclareLaunchArgument":
            continue
        kw = {k.arg: k.value for k in node.keywords}
        name = _literal(node.args[0] if node.args else kw.get("name"))
        out.append(
            {
                "name": name,
                "default": _literal(kw.get("default_value")),
                "choices": _literal(kw.get("choices")),
                "description": _literal(kw.get("description")) or "",
                "line": node.lineno,
            }
        )
    return sorted(out, key=lambda a: a["line"])


def launch_table() -> str:
    """One Markdown table of every launch file's arguments."""
    lines = ["| launch file | argument | default | choices | what |", "|---|---|---|---|---|"]
    for name in LAUNCH_FILES:
        for a in launch_arguments(ROOT / "launch" / name):
            choices = " \\| ".join(a["choices"]) if a["choices"] else ""
            default = f"`{a['default']}`" if a["default"] != "" else "(empty)"
            lines.append(
                f"| `{name}` | `{a['name']}` | {default} | {choices} | {a['description']} |"
            )
    return "\n".join(lines)


def parameter_tables() -> str:
    """Per node: how many parameters, and the table (folded, it is long)."""
    parts = []
    for node in NODES:
        groups = node_parameter_groups(node)
        n = len(declarations(groups))
        classes = ", ".join(
            f"`{g.prefix}.*` {g.cls.__name__}" if g.prefix else g.cls.__name__ for g in groups
        )
        parts.append(
            f"<details><summary><code>{node}</code>: {n} parameters ({classes})</summary>\n\n"
            f"{parameter_table(groups)}\n\n</details>"
        )
    return "\n\n".join(parts)


SECTIONS = {
    "ros-interfaces": interface_table,
    "ros-launch-arguments": launch_table,
    "ros-parameters": parameter_tables,
}


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current content."""
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- end:{name} -->)", flags=re.DOTALL
        )
        if not pattern.search(text):
            raise ValueError(f"no '<!-- generated:{name} -->' … '<!-- end:{name} -->' block")
        content = make()
        text = pattern.sub(lambda m, c=content: m.group(1) + c + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("readme", nargs="?", default=str(ROOT / "README.md"))
    parser.add_argument("--check", action="store_true", help="fail if the tables are stale")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text(encoding="utf-8")
    new = render(old)
    if args.check:
        if new != old:
            print(f"{path}: the ROS 2 tables are out of date; run python -m demuse_ros.ros.docs")
            return 1
        return 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
