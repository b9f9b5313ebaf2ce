"""demuse_ros: real-time DeMUSE diffusion-policy runtime for a UR10 + RG2-FT + D435i cell.

Everything outside :mod:`demuse_ros.ros` is ROS-free and runs embedded.
"""

__version__ = "0.1.0"
