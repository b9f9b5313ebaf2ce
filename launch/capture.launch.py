"""Data capture: ``ros2 launch demuse_ros capture.launch.py [use_sim:=true]``.

The cell's driver nodes (real, or the simulated cell) and recorder_node, with
no policy: the operator moves the arm (teleoperation, or by hand in teach
mode) and records episodes with the services ``recorder/start``,
``recorder/stop``, ``recorder/discard`` and ``recorder/mark_success``.
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
    return [
        *ls.cell_actions(parameters, use_sim=use_sim),
        ls.recorder_action(record_on_start=False),
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "use_sim",
                default_value="false",
                choices=["true", "false"],
                description="Record the simulated cell instead of the real one.",
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
            OpaqueFunction(function=_nodes),
        ]
    )
