"""Static checks of the ROS 2 layer that run without ROS 2 (the package as colcon sees it).

package.xml lists what the code imports; setup.py installs the launch files,
config, models and the ament resource marker; every console script resolves
to a ``main`` that, without rclpy, says what to source; the launch files
compile and declare exactly the documented arguments; each node's parameter
names are the keys of its section in ``config/*.yaml`` (same names, same ROS
types); the nodes use only the interfaces in the table; the README's tables
are generated from the code.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from demuse_ros.config import node_parameters
from demuse_ros.ros import interfaces
from demuse_ros.ros.docs import LAUNCH_FILES, launch_arguments, render
from demuse_ros.ros.node_config import NODE_CONFIG_FILE, node_parameter_groups
from demuse_ros.ros.params import declarations, to_configs

ROOT = Path(__file__).resolve().parents[1]
ROS_DIR = ROOT / "demuse_ros" / "ros"
NODES = ("camera_node", "ft_node", "arm_node", "policy_node", "recorder_node", "sim_node")
#: Python modules that come from ROS 2 packages (rosdep key = package name).
ROS_MODULES = {
    "rclpy", "rcl_interfaces", "builtin_interfaces", "std_msgs", "std_srvs", "sensor_msgs",
    "geometry_msgs", "trajectory_msgs", "diagnostic_msgs", "lifecycle_msgs", "tf2_ros",
    "tf2_msgs", "launch", "launch_ros", "launch_testing", "launch_testing_ros",
}  # fmt: skip


# ---------------------------------------------------------------------- package.xml
def _package() -> ET.Element:
    return ET.parse(ROOT / "package.xml").getroot()


def test_package_xml_is_format_3() -> None:
    root = _package()
    assert root.tag == "package" and root.get("format") == "3"
    for tag in ("name", "version", "description", "maintainer", "license"):
        assert (root.findtext(tag) or "").strip(), tag
    assert root.find("maintainer").get("email")  # type: ignore[union-attr]
    assert root.findtext("buildtool_depend") == "ament_python"
    assert root.findtext("export/build_type") == "ament_python"
    allowed = {
        "name", "version", "description", "maintainer", "license", "url", "author",
        "buildtool_depend", "build_depend", "build_export_depend", "exec_depend", "depend",
        "doc_depend", "test_depend", "conflict", "replace", "group_depend", "member_of_group",
        "export",
    }  # fmt: skip
    assert {child.tag for child in root} <= allowed
    assert "xml-model" in (ROOT / "package.xml").read_text().split("\n", 2)[1]


def _imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_package_xml_lists_every_ros_package_the_code_uses() -> None:
    root = _package()
    runtime = {e.text for e in root.findall("exec_depend")} | {
        e.text for e in root.findall("depend")
    }
    tests = {e.text for e in root.findall("test_depend")}
    used: set[str] = set()
    for path in [*ROS_DIR.glob("*.py"), *(ROOT / "launch").glob("*.launch.py")]:
        used |= _imported_modules(path) & ROS_MODULES
    used |= {t.split("/")[0] for t in interfaces.message_types()}  # imported by name
    assert used <= runtime, f"add <exec_depend> for {sorted(used - runtime)}"
    test_used = _imported_modules(ROOT / "test" / "test_ros_launch.py") & ROS_MODULES
    assert test_used <= runtime | tests, (
        f"add <test_depend> for {sorted(test_used - runtime - tests)}"
    )
    for dep in ("launch_testing", "launch_testing_ros"):
        assert dep in tests


# ---------------------------------------------------------------------- setup.py / setup.cfg
def _setup_kwargs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import runpy

    import setuptools

    captured: dict[str, Any] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


def test_setup_installs_share_files_and_the_resource_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kw = _setup_kwargs(monkeypatch)
    installed = {f"{dest}/{Path(f).name}" for dest, files in kw["data_files"] for f in files}
    share = "share/demuse_ros"
    assert "share/ament_index/resource_index/packages/demuse_ros" in installed
    assert (ROOT / "resource" / "demuse_ros").is_file()
    assert f"{share}/package.xml" in installed
    for name in LAUNCH_FILES:
        assert f"{share}/launch/{name}" in installed, name
    for yaml in ("demuse.yaml", "sim.yaml", "train.yaml"):
        assert f"{share}/config/{yaml}" in installed, yaml
    assert f"{share}/models/README.md" in installed
    for _, files in kw["data_files"]:
        for f in files:
            assert (ROOT / f).is_file(), f


def test_setup_cfg_puts_scripts_where_ros2_run_finds_them() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/demuse_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/demuse_ros"


def test_console_scripts_resolve_to_main_without_rclpy(monkeypatch: pytest.MonkeyPatch) -> None:
    scripts = dict(
        line.replace(" ", "").split("=")
        for line in _setup_kwargs(monkeypatch)["entry_points"]["console_scripts"]
    )
    assert set(NODES) <= set(scripts)
    for node in NODES:
        assert scripts[node] == f"demuse_ros.ros.{node}:main"
    # A fresh interpreter where rclpy cannot be imported: every entry point resolves
    # and every node's main() refuses with what to source.
    script = textwrap.dedent(f"""
        import importlib, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("rclpy", "launch", "launch_ros", "tf2_ros"):
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, Block())
        for target in {sorted(scripts.values())!r}:
            module, func = target.split(":")
            main = getattr(importlib.import_module(module), func)
            assert callable(main), target
            if module.startswith("demuse_ros.ros."):
                try:
                    main([])
                except SystemExit as exc:
                    assert "source /opt/ros" in str(exc), exc
                else:
                    raise AssertionError(target + " did not refuse without rclpy")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ---------------------------------------------------------------------- launch files
DOCUMENTED = {
    "demuse.launch.py": {
        "use_sim": ["true", "false"],
        "robot_ip": None,
        "ft_ip": None,
        "camera_serial": None,
        "checkpoint": None,
        "backend": ["torch", "torch-compile", "onnxruntime", "tensorrt"],
        "record": ["true", "false"],
    },
    "sim.launch.py": {"personality": ["cb3", "e-series"]},
    "capture.launch.py": {
        "use_sim": ["true", "false"],
        "robot_ip": None,
        "ft_ip": None,
        "camera_serial": None,
    },
}


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_file_compiles_and_declares_the_documented_arguments(name: str) -> None:
    path = ROOT / "launch" / name
    code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    assert "generate_launch_description" in code.co_names
    args = launch_arguments(path)
    assert {a["name"]: a["choices"] for a in args} == DOCUMENTED[name]
    for a in args:
        assert a["description"].strip(), f"{name}: {a['name']} is not documented"
        assert a["default"] is not None, f"{name}: {a['name']} has no default"
        if a["choices"]:
            assert a["default"] in a["choices"], a["name"]


def test_backend_choices_are_the_backend_registry() -> None:
    from demuse_ros.backends import BACKENDS
    from demuse_ros.ros.launch_support import BACKENDS as LAUNCH_BACKENDS

    assert list(LAUNCH_BACKENDS) == list(BACKENDS) == DOCUMENTED["demuse.launch.py"]["backend"]


# ---------------------------------------------------------------------- parameters vs the YAML
def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _ros_kind_of(value: Any) -> str:
    scalar = {bool: "bool", int: "integer", float: "double", str: "string"}
    if isinstance(value, list):
        return scalar[type(value[0])] + "_array"
    return scalar[type(value)]


@pytest.mark.parametrize("node", NODES)
def test_node_parameter_names_are_the_yaml_keys(node: str) -> None:
    """Each key of the node's YAML section is a parameter the node declares, with the same
    ROS type (ROS refuses 100 for a double), and the section validates as the node reads it."""
    path = ROOT / "config" / NODE_CONFIG_FILE[node]
    yaml_values = _flatten(node_parameters(path, node))
    groups = node_parameter_groups(node)
    declared = {d.name: d for d in declarations(groups)}
    unknown = sorted(set(yaml_values) - set(declared))
    assert not unknown, f"{path.name}: {node} does not declare {unknown}"
    for name, value in yaml_values.items():
        assert _ros_kind_of(value) == declared[name].kind, (
            f"{path.name}: {node}.{name} = {value!r} reads as {_ros_kind_of(value)}, "
            f"the node declares a {declared[name].kind}"
        )
    # Every group the node declares has a section in the YAML (documented there).
    top = {name.split(".")[0] for name in declared}
    grouped = {name.split(".")[0] for name in declared if "." in name}
    assert grouped <= {name.split(".")[0] for name in yaml_values} | (top - grouped), node
    defaults = {name: d.default for name, d in declared.items()}
    to_configs(groups, {**defaults, **yaml_values}, source=f"{path.name} {node}")


def test_embedded_runner_reads_the_driver_nodes_sections() -> None:
    from demuse_ros.drivers.cell import load_cell_config
    from demuse_ros.ros.node_config import ArmNodeConfig, CameraNodeConfig, FTNodeConfig

    path = ROOT / "config" / "demuse.yaml"
    cell = load_cell_config(str(path))
    for node, cls, group in (
        ("arm_node", ArmNodeConfig, "arm"),
        ("ft_node", FTNodeConfig, "ft"),
        ("camera_node", CameraNodeConfig, "camera"),
    ):
        groups = node_parameter_groups(node)
        values = {d.name: d.default for d in declarations(groups)}
        values |= _flatten(node_parameters(path, node))
        ros = to_configs(groups, values, source=node)[cls]
        assert getattr(ros, group) == getattr(cell, group), group


# ---------------------------------------------------------------------- interfaces
_CALLS = {"publisher": "publishers", "subscription": "subscribers", "service": "server"}


def _interface_calls(path: Path) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _CALLS
            and isinstance(getattr(node.func.value, "id", None), str)
            and node.func.value.id == "self"  # type: ignore[attr-defined]
        ):
            out.append(
                (
                    node.func.attr,
                    ast.literal_eval(node.args[0])
                    if isinstance(node.args[0], ast.Constant)
                    else "<loop>",
                )
            )
    return out


@pytest.mark.parametrize("node", NODES)
def test_nodes_use_only_their_interfaces_from_the_table(node: str) -> None:
    """The node module's own publishers/subscriptions/services match the table; each
    ``self.publisher(...)`` goes through the table at run time too (KeyError otherwise)."""
    source = (ROS_DIR / f"{node}.py").read_text(encoding="utf-8")
    names = set()
    for text in ast.walk(ast.parse(source)):
        if isinstance(text, ast.Constant) and isinstance(text.value, str):
            names.add(text.value)
    for t in interfaces.TOPICS:
        if t.name == "/diagnostics":
            continue
        mine = node in t.publishers or node in t.subscribers
        if t.name in ("/tf", "/tf_static"):  # tf2_ros broadcasters publish these
            broadcaster = (
                r"(?<!Static)TransformBroadcaster\("
                if t.name == "/tf"
                else r"StaticTransformBroadcaster\("
            )
            assert bool(re.search(broadcaster, source)) == mine, (node, t.name)
            continue
        assert (t.name in names) == mine, f"{node} and {t.name}: the table and the code disagree"
    for s in interfaces.SERVICES:
        assert (s.name in names) == (s.server == node), f"{node} and service {s.name}"
    for kind, name in _interface_calls(ROS_DIR / f"{node}.py"):
        if name == "<loop>":
            continue
        entry: Any = interfaces.service(name) if kind == "service" else interfaces.topic(name)
        owners = getattr(entry, _CALLS[kind])
        assert node in (owners if isinstance(owners, tuple) else (owners,)), (kind, name)


def test_streams_use_sensor_qos_and_commands_reliable() -> None:
    for t in interfaces.TOPICS:
        assert t.qos in interfaces.QOS_PROFILES
        if t.name.startswith("action_chunk"):
            assert t.qos == "reliable", t.name
        elif t.name.startswith(("camera/", "ft/", "gripper/")) or t.name in (
            "joint_states",
            "tcp_pose",
            "tcp_speed",
        ):
            assert t.qos == "sensor", t.name
    for t in interfaces.TOPICS:
        importlib.import_module("demuse_ros.ros.interfaces")  # names only, no ROS import
        assert t.type.count("/") == 2 and "/msg/" in t.type, t.type


# ---------------------------------------------------------------------- the README
def test_readme_ros_tables_are_generated_from_the_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render(readme) == readme, "README is stale: run python -m demuse_ros.ros.docs"
    for node in NODES:
        assert f"<code>{node}</code>" in readme
