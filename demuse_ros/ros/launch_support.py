"""Building blocks of the launch files in ``launch/`` (``launch`` imported only when used).

The launch files declare their arguments (few, documented, with choices) and
hand them to :func:`cell_actions`, :func:`policy_action` and
:func:`recorder_action`. The pure part, :func:`cell_parameters`, turns the
arguments into per-node parameter overrides on top of ``config/*.yaml`` and is
tested without ROS: with ``use_sim`` it points the drivers at the twin
exactly as ``demuse run --sim`` does (:func:`~demuse_ros.ros.node_config.sim_driver_parameters`).

Lifecycle: every hardware node (and sim_node) is configured by a launch event
as soon as it is up, and activated when that configure succeeded; with the
simulated cell the drivers are configured only once sim_node is (the twin
serves their protocols by then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from demuse_ros.paths import find_config, resolve_policy

PACKAGE = "demuse_ros"
DRIVER_NODES = ("camera_node", "ft_node", "arm_node")
BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")


def parse_bool(text: str) -> bool:
    """A launch argument's ``true``/``false``."""
    value = str(text).strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return value == "true"


def sim_config(personality: str = "") -> Any:
    """The twin's config from ``config/sim.yaml`` (``personality``: cb3 / e-series / "")."""
    from demuse_ros.config import load_config
    from demuse_ros.twin.interface import PERSONALITIES
    from demuse_ros.twin.sim_config import SimConfig

    overrides: dict[str, Any] = {}
    if personality:
        overrides["controller.personality"] = personality
        overrides["plant.arm_model"] = PERSONALITIES[personality].arm_model
    return load_config(find_config("sim.yaml"), SimConfig, "sim_node", overrides=overrides)


def cell_parameters(
    *,
    use_sim: bool,
    robot_ip: str = "",
    ft_ip: str = "",
    camera_serial: str = "",
    personality: str = "",
) -> dict[str, dict[str, Any]]:
    """Parameter overrides per node (on top of the YAML) for the cell's nodes.

    Simulated: sim_node's personality and the drivers pointed at the twin (the
    device addresses are then ignored). Real: the given addresses and serial
    replace the YAML's; empty ones keep it.
    """
    if use_sim:
        from demuse_ros.ros.node_config import sim_driver_parameters

        sim = sim_config(personality)
        out = sim_driver_parameters(sim)
        if personality:
            out["sim_node"].update(
                {
                    "controller.personality": sim.controller.personality,
                    "plant.arm_model": sim.plant.arm_model,
                }
            )
        return out
    out: dict[str, dict[str, Any]] = {node: {} for node in DRIVER_NODES}
    if robot_ip:
        out["arm_node"]["arm.host"] = robot_ip
    if ft_ip:
        out["ft_node"]["ft.host"] = ft_ip
    if camera_serial:
        out["camera_node"]["camera.serial_number"] = camera_serial
    return out


def resolve_checkpoint(checkpoint: str) -> str:
    """``expert``, a folder, or a shipped checkpoint's name (``share/demuse_ros/models``)."""
    return resolve_policy(checkpoint)


# ---------------------------------------------------------------------- launch actions
def _params(node: str, overrides: dict[str, Any]) -> list[Any]:
    from demuse_ros.ros.node_config import NODE_CONFIG_FILE

    files: list[Any] = [str(find_config(NODE_CONFIG_FILE[node]))]
    return files + ([overrides] if overrides else [])


def _transition(node: Any, transition_id: int) -> Any:
    from launch.actions import EmitEvent
    from launch.events import matches_action
    from launch_ros.events.lifecycle import ChangeState

    return EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id)
    )


def _on_configured(node: Any, entities: list[Any]) -> Any:
    from launch.actions import RegisterEventHandler
    from launch_ros.event_handlers import OnStateTransition

    return RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=entities,
        )
    )


def lifecycle_node(executable: str, overrides: dict[str, Any]) -> Any:
    """A hardware node (``name`` = executable; Humble needs an explicit namespace)."""
    from launch_ros.actions import LifecycleNode

    return LifecycleNode(
        package=PACKAGE,
        executable=executable,
        name=executable,
        namespace="",
        parameters=_params(executable, overrides),
        output="screen",
    )


def cell_actions(parameters: dict[str, dict[str, Any]], *, use_sim: bool) -> list[Any]:
    """The driver nodes (and sim_node), configured and activated by launch events."""
    from lifecycle_msgs.msg import Transition

    drivers = [lifecycle_node(name, parameters.get(name, {})) for name in DRIVER_NODES]
    actions: list[Any] = list(drivers)
    for node in drivers:  # configure succeeded -> activate
        actions.append(_on_configured(node, [_transition(node, Transition.TRANSITION_ACTIVATE)]))
    configure = [_transition(node, Transition.TRANSITION_CONFIGURE) for node in drivers]
    if use_sim:  # the twin first: the drivers connect to it
        sim = lifecycle_node("sim_node", parameters.get("sim_node", {}))
        after = [_transition(sim, Transition.TRANSITION_ACTIVATE), *configure]
        actions += [sim, _on_configured(sim, after)]
        actions.append(_transition(sim, Transition.TRANSITION_CONFIGURE))
    else:
        actions += configure
    return actions


def policy_action(checkpoint: str, backend: str) -> Any:
    """policy_node with the policy and the inference backend."""
    from launch_ros.actions import Node

    overrides = {"policy": resolve_checkpoint(checkpoint), "inference.backend": backend}
    return Node(
        package=PACKAGE,
        executable="policy_node",
        name="policy_node",
        parameters=_params("policy_node", overrides),
        output="screen",
    )


def recorder_action(record_on_start: bool) -> Any:
    """recorder_node; ``record_on_start`` records from the first data on."""
    from launch_ros.actions import Node

    return Node(
        package=PACKAGE,
        executable="recorder_node",
        name="recorder_node",
        parameters=_params("recorder_node", {"record_on_start": record_on_start}),
        output="screen",
    )


def shutdown_when_done(action: Any, reason: str) -> Any:
    """End the whole launch when ``action``'s process exits (the episode is over)."""
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown

    return RegisterEventHandler(
        OnProcessExit(target_action=action, on_exit=[EmitEvent(event=Shutdown(reason=reason))])
    )


def launch_file(name: str) -> Path:
    """A launch file of this package, from the source checkout or the install's share folder."""
    here = Path(__file__).resolve().parents[2] / "launch" / name
    if here.is_file():
        return here
    return find_config("demuse.yaml").parent.parent / "launch" / name


__all__ = [
    "BACKENDS",
    "DRIVER_NODES",
    "cell_actions",
    "cell_parameters",
    "launch_file",
    "lifecycle_node",
    "parse_bool",
    "policy_action",
    "recorder_action",
    "resolve_checkpoint",
    "shutdown_when_done",
    "sim_config",
]
