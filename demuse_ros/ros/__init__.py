"""ROS 2 adapters (the only package that imports rclpy).

Nodes here stay thin: declare parameters, build core objects, wire topics, spin.
"""
