"""Teleoperation through the arm's safety filter and servo controller, like the policy.

:mod:`.core` (command, config, motion law), :mod:`.controller` (commands → chunks),
:mod:`.devices` (the device interface, SpaceMouse), :mod:`.keyboard` (terminal keys),
:mod:`.session` (tick loop, freedrive, the simulated cell). ``demuse teleop --sim``
runs it (:mod:`demuse_ros.cli_teleop`).
"""

from demuse_ros.teleop.controller import ChunkListener, TeleopController
from demuse_ros.teleop.core import TeleopCommand, TeleopConfig
from demuse_ros.teleop.devices import InputDevice, SpaceMouse
from demuse_ros.teleop.keyboard import KeyboardConfig, KeyboardTeleop, TerminalKeyboard

__all__ = [
    "ChunkListener",
    "InputDevice",
    "KeyboardConfig",
    "KeyboardTeleop",
    "SpaceMouse",
    "TeleopCommand",
    "TeleopConfig",
    "TeleopController",
    "TerminalKeyboard",
]
