"""The simulated cell: ``ros2 launch demuse_ros sim.launch.py [personality:=e-series]``.

sim_node runs the twin; once it is configured, camera_node, ft_node and
arm_node are configured against it (loopback RTDE, Modbus and the camera's
frame ring) and activated. Add a policy (``ros2 run demuse_ros policy_node``)
or a recorder, or use ``demuse.launch.py use_sim:=true`` for the whole loop.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _nodes(context, *args, **kwargs):
    from demuse_ros.ros import launch_support as ls

    personality = LaunchConfiguration("personality").perform(context)
    parameters = ls.cell_parameters(use_sim=True, personality=personality)
    return ls.cell_actions(parameters, use_sim=True)


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "personality",
                default_value="cb3",
                choices=["cb3", "e-series"],
                description="Simulated UR controller: cb3 (UR10, 125 Hz) or e-series "
                "(UR10e, 500 Hz).",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
