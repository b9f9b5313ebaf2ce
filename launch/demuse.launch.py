"""The cell and the 10 Hz policy: ``ros2 launch demuse_ros demuse.launch.py [use_sim:=true]``.

``use_sim:=true`` does what ``demuse run --sim`` does: the simulated cell
(sim_node), the three driver nodes pointed at it, and policy_node running the
shipped checkpoint (or ``checkpoint:=DIR``, or ``checkpoint:=expert``: the twin's
scripted expert) until the episode ends, then everything shuts down. Without it
the drivers connect to the real cell (``robot_ip``, ``ft_ip``, ``camera_serial``
override ``config/demuse.yaml``) and the policy runs until Ctrl-C. ``record:=true``
adds recorder_node, recording from the first data.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _nodes(context, *args, **kwargs):
    from demuse_ros.ros import launch_support as ls

    def arg(name):
        return LaunchConfiguration(name).perform(context)

    use_sim = ls.parse_bool(arg("use_sim"))
    parameters = ls.cell_parameters(
        use_sim=use_sim,
        robot_ip=arg("robot_ip"),
        ft_ip=arg("ft_ip"),
        camera_serial=arg("camera_serial"),
    )
    policy = ls.policy_action(arg("checkpoint"), arg("backend"))
    actions = [*ls.cell_actions(parameters, use_sim=use_sim), policy]
    if use_sim:  # as `demuse run --sim`: the run ends with the episode
        actions.append(ls.shutdown_when_done(policy, "policy_node finished the episode"))
    if ls.parse_bool(arg("record")):
        actions.append(ls.recorder_action(record_on_start=True))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "use_sim",
                default_value="false",
                choices=["true", "false"],
                description="Run the simulated cell (sim_node) and point the drivers at it, "
                "as `demuse run --sim` does.",
            ),
            DeclareLaunchArgument(
                "robot_ip",
                default_value="",
                description="UR controller address; empty: arm.host from config/demuse.yaml "
                "(ignored with use_sim).",
            ),
            DeclareLaunchArgument(
                "ft_ip",
                default_value="",
                description="RG2-FT compute box address; empty: ft.host from "
                "config/demuse.yaml (ignored with use_sim).",
            ),
            DeclareLaunchArgument(
                "camera_serial",
                default_value="",
                description="D435i serial number; empty: the first camera found "
                "(ignored with use_sim).",
            ),
            DeclareLaunchArgument(
                "checkpoint",
                default_value="dispense-cpu",
                description="Policy: a checkpoint folder, a shipped checkpoint's name (a folder "
                "under share/demuse_ros/models; dispense-cpu is trained in the twin), or "
                "'expert', the twin's scripted expert (use_sim).",
            ),
            DeclareLaunchArgument(
                "backend",
                default_value="onnxruntime",
                choices=["torch", "torch-compile", "onnxruntime", "tensorrt"],
                description="Inference backend of a checkpoint (`demuse bench policy` "
                "compares them).",
            ),
            DeclareLaunchArgument(
                "record",
                default_value="false",
                choices=["true", "false"],
                description="Also run recorder_node and record one episode from the first "
                "data to the end (recorder.out_dir).",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
