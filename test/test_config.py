"""Tests for demuse_ros.config: typed fields, validation and ROS 2 parameter files."""

import dataclasses
import math
import pickle
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from demuse_ros.config import (
    ConfigError,
    ParamSpec,
    from_dict,
    load_config,
    node_parameters,
    param,
    parameter_specs,
    read_parameter_file,
    to_dict,
    validate_fields,
)

DATA = Path(__file__).parent / "data" / "config"
GOOD = DATA / "policy.yaml"


@dataclass(frozen=True)
class SyncConfig:
    max_age_s: float = param(
        0.05,
        doc="Newest camera frame older than this makes the tick invalid.",
        unit="s",
        range=(0.001, 1.0),
    )
    interpolation: Literal["nearest", "linear"] = param(
        "linear",
        doc="How F/T and arm samples are taken at the anchor time.",
        choices=("nearest", "linear"),
    )
    ft_threshold_s: float = param(0.010, doc="Max F/T sample gap.", unit="s", range=(0.0, 0.5))
    thresholds_s: tuple[float, ...] = param(
        (0.01, 0.01), doc="Per-stream gap thresholds.", unit="s", range=(0.0, 0.5)
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.ft_threshold_s > self.max_age_s:
            raise ValueError("ft_threshold_s must not exceed max_age_s; lower ft_threshold_s")


@dataclass(frozen=True)
class PolicyNodeConfig:
    rate_hz: float = param(10.0, doc="Policy rate.", unit="Hz", range=(0.1, 1000.0))
    history_steps: int = param(2, doc="Observation history length.", range=(1, 16))
    use_gpu: bool = param(False, doc="Run inference on the GPU.")
    camera_offset_m: tuple[float, float, float] = param(
        (0.0, 0.0, 0.0), doc="Camera position in the flange frame.", unit="m"
    )
    joint_names: tuple[str, ...] = param(("a", "b"), doc="Arm joint names.")
    checkpoint: str | None = param(None, doc="Optional checkpoint path.")
    sync: SyncConfig = field(default_factory=SyncConfig)

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class CellConfig:
    name: str = param(doc="Required cell name.")
    policy: PolicyNodeConfig = field(
        default_factory=lambda: PolicyNodeConfig(sync=SyncConfig(max_age_s=0.2))
    )
    # param() turns a mutable default into a default_factory; ruff cannot know that.
    gains: list[float] = param([1.0, 2.0], doc="Mutable default.", range=(0.0, None))

    def __post_init__(self) -> None:
        validate_fields(self)


def write(tmp_path: Path, text: str, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def node_file(tmp_path: Path, params: str, node: str = "policy_node") -> Path:
    body = textwrap.indent(textwrap.dedent(params), "    ")
    return write(tmp_path, f"{node}:\n  ros__parameters:\n{body}")


# --- good files -------------------------------------------------------------------------


def test_good_file_loads_with_nested_dotted_wildcard_and_namespaced_keys() -> None:
    cfg = load_config(GOOD, PolicyNodeConfig, "policy_node")
    assert cfg.rate_hz == 15.0
    assert isinstance(cfg.rate_hz, float)
    assert cfg.history_steps == 4
    assert cfg.camera_offset_m == (0.1, 0.0, 0.25)
    assert cfg.joint_names == ("shoulder_pan", "shoulder_lift", "elbow")
    assert cfg.sync == SyncConfig(
        max_age_s=0.05,  # dotted key in the node section beats the wildcard's 0.08
        interpolation="nearest",  # only in the wildcard section
        ft_threshold_s=0.001,  # only in the namespaced section, written 1e-3
        thresholds_s=(0.01, 0.02),  # nested mapping next to the dotted key
    )
    assert (cfg.use_gpu, cfg.checkpoint) == (False, None)  # defaults


def test_node_parameters_merge_order_and_matching() -> None:
    merged = node_parameters(GOOD, "policy_node")
    assert merged["sync"] == {
        "max_age_s": 0.05,
        "interpolation": "nearest",
        "thresholds_s": [0.01, 0.02],
        "ft_threshold_s": 0.001,
    }
    assert merged["use_sim_time"] is False
    other = node_parameters(GOOD, "other_node")
    wildcard_sync = {"max_age_s": 0.08, "interpolation": "nearest"}
    assert other == {"use_sim_time": False, "sync": wildcard_sync, "rate_hz": 100.0}
    # A fully qualified name only picks namespaced sections of its own namespace.
    assert "ft_threshold_s" in node_parameters(GOOD, "/cell/policy_node")["sync"]
    assert "ft_threshold_s" not in node_parameters(GOOD, "/lab/policy_node")["sync"]
    # Only the wildcard matches: still a valid (all-wildcard) configuration.
    assert node_parameters(GOOD, "camera_node")["sync"]["max_age_s"] == 0.08


def test_read_parameter_file_keeps_the_file_layout() -> None:
    nodes = read_parameter_file(GOOD)
    assert list(nodes) == ["/**", "policy_node", "/cell/policy_node", "other_node"]
    assert nodes["policy_node"]["sync.max_age_s"] == 0.05
    assert nodes["policy_node"]["sync"] == {"thresholds_s": [0.01, 0.02]}


def test_namespace_as_its_own_mapping_level(tmp_path: Path) -> None:
    path = write(tmp_path, "cell:\n  policy_node:\n    ros__parameters:\n      rate_hz: 5.0\n")
    assert list(read_parameter_file(path)) == ["cell/policy_node"]
    assert load_config(path, PolicyNodeConfig, "policy_node").rate_hz == 5.0


def test_section_and_ros_builtin_parameters() -> None:
    # use_sim_time (from the wildcard section) is ROS's own; load_config skips it.
    with pytest.raises(ConfigError, match="use_sim_time is not a known key"):
        from_dict(PolicyNodeConfig, node_parameters(GOOD, "policy_node"))
    assert load_config(GOOD, PolicyNodeConfig, "policy_node").rate_hz == 15.0
    sync = load_config(GOOD, SyncConfig, "policy_node", section="sync")
    assert sync.max_age_s == 0.05
    # A group absent from the file means defaults.
    assert load_config(GOOD, SyncConfig, "policy_node", section="missing") == SyncConfig()


def test_load_config_section_error_points_at_the_full_key(tmp_path: Path) -> None:
    path = node_file(tmp_path, "sync:\n  max_age_s: 2.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, SyncConfig, "policy_node", section="sync")
    assert str(info.value).startswith(f"{path}: policy_node.ros__parameters.sync.max_age_s = 2.0")


# --- key and type errors ------------------------------------------------------------------


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = node_file(tmp_path, "sync:\n  max_agee_s: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PolicyNodeConfig, "policy_node")
    msg = str(info.value)
    assert msg.startswith(f"{path}: policy_node.ros__parameters.sync.max_agee_s is not a known key")
    assert "did you mean 'max_age_s'?" in msg
    assert "max_age_s, interpolation, ft_threshold_s, thresholds_s" in msg


def test_unknown_dotted_group_suggests_the_whole_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'sync\.max_age_s'\?"):
        from_dict(PolicyNodeConfig, {"snyc.max_age_s": 0.1})
    with pytest.raises(ConfigError) as info:
        from_dict(PolicyNodeConfig, {"zzz": 1})
    assert "did you mean" not in str(info.value)
    assert "Known keys: rate_hz, history_steps" in str(info.value)


@pytest.mark.parametrize(
    ("values", "key", "expected"),
    [
        ({"rate_hz": "fast"}, "rate_hz = 'fast'", "is a string; expected a float"),
        ({"rate_hz": "10"}, "rate_hz = '10'", "write the number without quotes"),
        ({"rate_hz": True}, "rate_hz = true", "is a boolean; expected a float"),
        ({"history_steps": True}, "history_steps = true", "is a boolean; expected an integer"),
        ({"history_steps": 2.0}, "history_steps = 2.0", "is a float; expected an integer"),
        ({"use_gpu": 1}, "use_gpu = 1", "is an integer; expected a boolean"),
        ({"rate_hz": [1.0, 2.0]}, "rate_hz = [1.0, 2.0]", "is a list; expected a float"),
        ({"joint_names": "a"}, "joint_names = 'a'", "expected a list of strings"),
        ({"joint_names": ["a", 1]}, "joint_names[1] = 1", "is an integer; expected a string"),
        (
            {"camera_offset_m": [1.0, 2.0]},
            "camera_offset_m = [1.0, 2.0]",
            "has 2 elements; expected a list of exactly 3 floats",
        ),
        ({"checkpoint": 3}, "checkpoint = 3", "expected a string"),
        ({"sync": 0.1}, "sync = 0.1", "expected a mapping of SyncConfig keys"),
        (
            {"sync": {"interpolation": 1}},
            "sync.interpolation = 1",
            "is not one of 'nearest', 'linear'",
        ),
    ],
)
def test_wrong_types_are_rejected(values: dict, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(PolicyNodeConfig, values)
    msg = str(info.value)
    assert msg.startswith(f"<dict>: {key} "), msg
    assert expected in msg


def test_wrong_type_in_file_has_source_and_full_key(tmp_path: Path) -> None:
    path = node_file(tmp_path, "history_steps: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PolicyNodeConfig, "policy_node")
    assert str(info.value) == (
        f"{path}: policy_node.ros__parameters.history_steps = true is a boolean; "
        "expected an integer"
    )


def test_int_converts_and_optional_accepts_value() -> None:
    cfg = from_dict(PolicyNodeConfig, {"camera_offset_m": [1, 2, 3], "checkpoint": "x.onnx"})
    assert cfg.camera_offset_m == (1.0, 2.0, 3.0)
    assert all(isinstance(v, float) for v in cfg.camera_offset_m)
    assert cfg.checkpoint == "x.onnx"


def test_required_field_and_mutable_default() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: name is required; set it to a string$"):
        from_dict(CellConfig, {})
    a, b = CellConfig(name="a"), CellConfig(name="b")
    assert a.gains == [1.0, 2.0]
    assert a.gains is not b.gains


def test_nested_and_dotted_duplicate_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"sync\.max_age_s is given twice"):
        from_dict(PolicyNodeConfig, {"sync": {"max_age_s": 0.1}, "sync.max_age_s": 0.2})


def test_nested_and_dotted_duplicate_in_file_is_rejected(tmp_path: Path) -> None:
    ok = node_file(tmp_path, "a.b:\n  c: {d: 1.0}\na:\n  b.c.e: 2.0\n", node="n")
    assert node_parameters(ok, "n") == {"a": {"b": {"c": {"d": 1.0, "e": 2.0}}}}
    bad = node_file(tmp_path, "a.b.c: 1.0\na:\n  b: {c: 2.0}\n", node="n")
    with pytest.raises(ConfigError) as info:
        node_parameters(bad, "n")
    assert str(info.value) == (
        f"{bad}: n.ros__parameters.a.b.c is given twice (nested and dotted); keep one"
    )


def test_empty_value_reads_as_null(tmp_path: Path) -> None:
    path = node_file(tmp_path, "rate_hz:\n")
    with pytest.raises(ConfigError, match=r"rate_hz = null is empty \(null\); expected a float$"):
        load_config(path, PolicyNodeConfig, "policy_node")


# --- range, choices, NaN -------------------------------------------------------------------


def test_out_of_range_message_matches_the_documented_form() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(PolicyNodeConfig, {"sync": {"max_age_s": 2.0}})
    assert str(info.value) == (
        "<dict>: sync.max_age_s = 2.0 is out of range [0.001, 1.0] s; set a value in that range"
    )
    assert (info.value.source, info.value.key) == ("<dict>", "sync.max_age_s")


def test_out_of_range_in_file_and_element_wise(tmp_path: Path) -> None:
    path = node_file(tmp_path, "rate_hz: 0.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PolicyNodeConfig, "policy_node")
    msg = str(info.value)
    assert f"{path}: policy_node.ros__parameters.rate_hz = 0.0 is out of range" in msg
    assert "[0.1, 1000.0] Hz" in msg
    expected = r"sync\.thresholds_s\[1\] = 0\.9 is out of range \[0\.0, 0\.5\] s;"
    with pytest.raises(ConfigError, match=expected):
        from_dict(PolicyNodeConfig, {"sync.thresholds_s": [0.1, 0.9]})
    with pytest.raises(ConfigError, match=r"gains\[0\] = -1\.0 is out of range \[0\.0, inf\)"):
        from_dict(CellConfig, {"name": "c", "gains": [-1.0]})


def test_bad_choice_lists_the_choices(tmp_path: Path) -> None:
    path = node_file(tmp_path, "sync:\n  interpolation: cubic\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PolicyNodeConfig, "policy_node")
    assert str(info.value) == (
        f"{path}: policy_node.ros__parameters.sync.interpolation = 'cubic' is not one of "
        "'nearest', 'linear'; choose one of those"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [("rate_hz: .nan", "rate_hz"), ("sync.thresholds_s: [0.1, .inf]", "sync.thresholds_s[1]")],
)
def test_nan_and_inf_are_rejected(tmp_path: Path, text: str, key: str) -> None:
    path = node_file(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PolicyNodeConfig, "policy_node")
    msg = str(info.value)
    assert f"policy_node.ros__parameters.{key} = " in msg
    assert "is not a finite number; set a value in" in msg


def test_validate_fields_on_direct_construction() -> None:
    with pytest.raises(ConfigError) as info:
        SyncConfig(max_age_s=math.nan)
    assert str(info.value).startswith("<dict>: max_age_s = nan is not a finite number")
    with pytest.raises(ConfigError, match=r"^<dict>: interpolation = 'cubic' is not one of"):
        SyncConfig(interpolation="cubic")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        validate_fields(SyncConfig)


def test_cross_field_value_error_gets_source_and_prefix(tmp_path: Path) -> None:
    path = node_file(tmp_path, "sync:\n  max_age_s: 0.01\n  ft_threshold_s: 0.02\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, PolicyNodeConfig, "policy_node")
    assert str(info.value) == (
        f"{path}: policy_node.ros__parameters.sync: "
        "ft_threshold_s must not exceed max_age_s; lower ft_threshold_s"
    )


def test_errors_are_not_double_prefixed() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(CellConfig, {"name": "c", "policy": {"sync": {"max_age_s": 5.0}}}, prefix="cell")
    assert str(info.value).startswith("<dict>: cell.policy.sync.max_age_s = 5.0 ")
    assert str(info.value).count("<dict>") == 1


def test_config_error_pickles() -> None:
    err = ConfigError("= 3 is bad; fix it", source="f.yaml", key="a.b")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) == "f.yaml: a.b = 3 is bad; fix it"
    assert (copy.source, copy.key, copy.detail) == ("f.yaml", "a.b", "= 3 is bad; fix it")


def test_param_declaration_errors() -> None:
    with pytest.raises(ValueError, match="out of range"):
        param(5.0, doc="x", range=(0.0, 1.0))
    with pytest.raises(ValueError, match="low > high"):
        param(0.5, doc="x", range=(1.0, 0.0))
    with pytest.raises(TypeError, match="doc"):
        param(0.5, doc="")
    with pytest.raises(ValueError, match="not one of"):
        param("c", doc="x", choices=("a", "b"))


# --- file errors ---------------------------------------------------------------------------


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "policy_node:\n  ros__parameters:\n    rate_hz: [1.0, 2.0\n    x: 1\n")
    with pytest.raises(ConfigError) as info:
        read_parameter_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: YAML syntax error at line 4")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = node_file(tmp_path, "rate_hz: 1.0\nrate_hz: 2.0\n")
    expected = r"line 4, column 5: .*duplicate key 'rate_hz' \(first given on line 3\)"
    with pytest.raises(ConfigError, match=expected):
        read_parameter_file(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, PolicyNodeConfig, "policy_node")
    msg = str(info.value)
    assert msg.startswith(f"{missing}: parameter file not found: '{missing.resolve()}'")
    assert "does not exist; check the path" in msg


def test_missing_node_lists_present_nodes() -> None:
    with pytest.raises(ConfigError) as info:
        node_parameters(GOOD.parent / "no_wildcard.yaml", "camera_node")
    msg = str(info.value)
    assert "no section for node 'camera_node'" in msg
    assert "nodes in this file: policy_node, /lab/arm_node" in msg


def test_missing_ros_parameters(tmp_path: Path) -> None:
    path = write(tmp_path, "policy_node:\n  rate_hz: 10.0\n")
    with pytest.raises(ConfigError) as info:
        read_parameter_file(path)
    assert str(info.value).startswith(f"{path}: policy_node: node section has no 'ros__parameters'")


def test_keys_beside_ros_parameters(tmp_path: Path) -> None:
    path = write(tmp_path, "policy_node:\n  ros__parameters:\n    a: 1\n  rate_hz: 10.0\n")
    with pytest.raises(ConfigError, match="has keys beside 'ros__parameters': rate_hz"):
        read_parameter_file(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "the top level is not a mapping"),
        ("", "the top level is empty"),
        ("policy_node:\n  ros__parameters: 3\n", "= 3 is not a mapping of parameters"),
    ],
)
def test_bad_top_level(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        read_parameter_file(write(tmp_path, text))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[0.01, 1]", "mixes float and int; ROS parameter arrays must hold one type"),
        ("[1, 0.01]", "write every number with a decimal point (1.0, not 1)"),
        ("[a, 1]", "mixes int and str"),
        ("[[1.0], [2.0]]", "hold only numbers, strings or booleans"),
    ],
)
def test_heterogeneous_lists_are_rejected(tmp_path: Path, value: str, expected: str) -> None:
    path = node_file(tmp_path, f"sync:\n  thresholds_s: {value}\n")
    with pytest.raises(ConfigError) as info:
        read_parameter_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: policy_node.ros__parameters.sync.thresholds_s = ")
    assert expected in msg


# --- round trip and parameter specs -------------------------------------------------------


def test_to_dict_from_dict_round_trip_through_yaml() -> None:
    cfg = load_config(GOOD, PolicyNodeConfig, "policy_node")
    plain = to_dict(cfg)
    assert plain["sync"]["thresholds_s"] == [0.01, 0.02]
    assert plain["camera_offset_m"] == [0.1, 0.0, 0.25]
    assert from_dict(PolicyNodeConfig, yaml.safe_load(yaml.safe_dump(plain))) == cfg
    cell = CellConfig(name="c")
    assert from_dict(CellConfig, to_dict(cell)) == cell
    with pytest.raises(TypeError):
        to_dict(PolicyNodeConfig)


def test_parameter_specs_flatten_names_ranges_and_defaults() -> None:
    specs = {s.name: s for s in parameter_specs(PolicyNodeConfig)}
    assert list(specs) == [
        "rate_hz",
        "history_steps",
        "use_gpu",
        "camera_offset_m",
        "joint_names",
        "checkpoint",
        "sync.max_age_s",
        "sync.interpolation",
        "sync.ft_threshold_s",
        "sync.thresholds_s",
    ]
    assert specs["sync.max_age_s"] == ParamSpec(
        name="sync.max_age_s",
        type=float,
        default=0.05,
        doc="Newest camera frame older than this makes the tick invalid.",
        unit="s",
        range=(0.001, 1.0),
        choices=None,
    )
    assert (specs["history_steps"].type, specs["history_steps"].range) == (int, (1, 16))
    assert specs["sync.interpolation"].choices == ("nearest", "linear")
    assert specs["sync.thresholds_s"].type == tuple[float, ...]


def test_parameter_specs_use_the_enclosing_default_and_prefix() -> None:
    specs = {s.name: s for s in parameter_specs(CellConfig, prefix="cell")}
    assert specs["cell.policy.sync.max_age_s"].default == 0.2  # from CellConfig's factory
    assert specs["cell.name"].default is dataclasses.MISSING
    assert specs["cell.gains"].default == [1.0, 2.0]


def test_core_config_does_not_import_rclpy() -> None:
    code = "import sys, demuse_ros.config; sys.exit('rclpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
