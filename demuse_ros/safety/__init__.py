"""Safety: the filter every arm command passes through."""

from demuse_ros.safety.filter import REASONS, SafetyConfig, SafetyFilter, Verdict

__all__ = ["REASONS", "SafetyConfig", "SafetyFilter", "Verdict"]
