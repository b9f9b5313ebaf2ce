"""Package shape: ROS-free core, package.xml, entry point, markers, shipped config."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "demuse_ros"


def core_modules() -> list[str]:
    mods = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts
        if parts[1] == "ros" or parts[-1] == "__main__":
            continue
        mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return mods


def test_core_imports_without_rclpy() -> None:
    """Every core module imports in a fresh interpreter where importing rclpy fails."""
    mods = core_modules()
    assert "demuse_ros.sync.synchronizer" in mods and len(mods) > 10
    script = textwrap.dedent(f"""
        import importlib, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "rclpy" or name.startswith("rclpy."):
                    raise ImportError("rclpy is blocked in this test")
        sys.meta_path.insert(0, Block())
        for m in {mods!r}:
            importlib.import_module(m)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "rosidl_runtime_py"))
        assert not leaked, leaked
        print("ok", len({mods!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_no_rclpy_import_statement_outside_ros() -> None:
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] == "ros":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "rclpy"]
    assert not offenders


def test_package_xml() -> None:
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "demuse_ros"
    exec_deps = {e.text for e in root.findall("exec_depend")}
    for dep in (
        "rclpy",
        "sensor_msgs",
        "geometry_msgs",
        "trajectory_msgs",
        "std_msgs",
        "std_srvs",
        "diagnostic_msgs",
        "lifecycle_msgs",
        "tf2_ros",
        "launch",
        "launch_ros",
    ):
        assert dep in exec_deps, dep
    test_deps = {e.text for e in root.findall("test_depend")}
    assert {"ament_flake8", "ament_pep257", "launch_testing_ros"} <= test_deps
    assert root.find("export/build_type").text == "ament_python"
    assert (ROOT / "resource" / "demuse_ros").is_file()
    for folder in ("demuse_ros", "launch", "config", "models", "test"):
        assert (ROOT / folder).is_dir(), folder


def test_pytest_markers_registered(pytestconfig: pytest.Config) -> None:
    registered = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    assert {"ros", "gpu", "tensorrt", "hardware", "slow"} <= registered


def test_shipped_config_validates() -> None:
    from demuse_ros.config import load_config
    from demuse_ros.sync import SyncConfig

    cfg = load_config(ROOT / "config" / "demuse.yaml", SyncConfig, "policy_node", section="sync")
    assert cfg == SyncConfig()  # the file documents the defaults; change both together


def test_cli_help_and_bad_arguments() -> None:
    run = [sys.executable, "-m", "demuse_ros"]
    ok = subprocess.run([*run, "bench", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "sync" in ok.stdout
    bad = subprocess.run(
        [*run, "bench", "sync", "--seconds", "-1"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2 and "positive" in bad.stderr


@pytest.mark.slow
def test_bench_sync_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "demuse_ros", "bench", "sync", "--seconds", "1.5", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("tick_us_p50", "tick_us_p99", "frame_write_ms_p50", "tick_p50_vs_goal"):
        assert result[key] > 0, key
    assert result["tick_valid_count"] > 10
    assert result["torn_images"] == 0
    assert set(result["writers"]) == {"camera", "ft", "arm"}
    assert all(w["records"] > 0 for w in result["writers"].values())


def test_a_policy_resolves_to_a_folder_or_a_shipped_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demuse_ros.paths import resolve_policy

    assert resolve_policy("expert") == "expert"
    assert resolve_policy(str(tmp_path)) == str(tmp_path)  # an existing folder wins
    shipped = tmp_path / "models" / "demo"
    shipped.mkdir(parents=True)
    monkeypatch.setenv("DEMUSE_MODEL_DIR", str(tmp_path / "models"))
    with pytest.raises(FileNotFoundError, match="shipped checkpoint"):
        resolve_policy("demo")  # a folder without config.json is no checkpoint
    (shipped / "config.json").write_text("{}")
    assert resolve_policy("demo") == str(shipped)
    with pytest.raises(FileNotFoundError, match="neither 'expert'"):
        resolve_policy("no/such/folder")
