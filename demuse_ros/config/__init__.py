"""Typed, validated configuration loaded from ROS 2 parameter files.

Config classes are frozen dataclasses declared with :func:`param`; the same
``config/*.yaml`` (ROS 2 parameter-file layout) configures the ROS nodes and the
embedded runner. This package never imports rclpy.

Example:
    >>> cfg = load_config("config/policy.yaml", PolicyNodeConfig, "policy_node")  # doctest: +SKIP
"""

from .params import load_config, node_parameters, read_parameter_file
from .schema import (
    ConfigError,
    ParamSpec,
    from_dict,
    param,
    parameter_specs,
    to_dict,
    validate_fields,
)

__all__ = [
    "ConfigError",
    "ParamSpec",
    "from_dict",
    "load_config",
    "node_parameters",
    "param",
    "parameter_specs",
    "read_parameter_file",
    "to_dict",
    "validate_fields",
]
