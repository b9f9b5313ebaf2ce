"""The "dispense" task: press a spring-loaded button to a target force, hold, release.

The fixture is a box housing on the table with a button cap on a vertical
slide joint (a spring with preload pushes it up against its travel stop). The
robot presses the cap with its closed fingertips (or the gripper underside).

Ground truth ``force_n`` is the contact force the robot applies to the cap along
the plunger axis (all robot geoms, N), so pressing on a bottomed-out button
still reads the full force. The episode:

* succeeds when the force stayed within ``target_force_n ± force_band_n`` for
  ``hold_s`` without interruption and afterwards dropped below ``release_n``;
* fails on ``force_n > max_force_n`` at any substep ("overshoot"), on an arm
  collision ("collision"), or after ``timeout_s`` ("timeout").

The task is decided every physics substep by :meth:`DispenseTask.update`; the
privileged accessors (:meth:`plunger_top_pose`, :meth:`force_n`) serve scripted
experts and evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from demuse_ros.config import param, validate_fields
from demuse_ros.twin import scene
from demuse_ros.twin.interface import TaskStatus

PLUNGER_BODY = "plunger"
CAP_BODY = "plunger_cap"
CAP_JOINT = "plunger_joint"
_STEM_GAP_M = 0.002  # cap bottom stays this far above the housing at full travel
CAP_HALF_HEIGHT_M = 0.01


@dataclass(frozen=True)
class TaskConfig:
    """Dispense task: fixture, randomization and the success criterion."""

    name: str = param("dispense", doc="Task name.", choices=("dispense",))
    target_force_n: float = param(10.0, doc="Press force to reach.", unit="N", range=(0.5, 60.0))
    force_band_n: float = param(
        2.0, doc="Half width of the accepted force band.", unit="N", range=(0.1, 20.0)
    )
    hold_s: float = param(0.5, doc="Uninterrupted time in band.", unit="s", range=(0.0, 30.0))
    release_n: float = param(
        1.0, doc="Force below which the button counts as released.", unit="N", range=(0.0, 20.0)
    )
    max_force_n: float = param(
        15.0, doc="Force above which the episode fails.", unit="N", range=(1.0, 500.0)
    )
    timeout_s: float = param(20.0, doc="Episode time limit.", unit="s", range=(0.1, 3600.0))
    spring_stiffness_n_m: float = param(
        1500.0, doc="Plunger spring rate.", unit="N/m", range=(10.0, 1e6)
    )
    spring_preload_n: float = param(
        1.0, doc="Spring force at the rest (top) position.", unit="N", range=(0.0, 50.0)
    )
    spring_damping_n_s_m: float = param(
        3.0, doc="Plunger viscous damping.", unit="N·s/m", range=(0.0, 1e4)
    )
    travel_m: float = param(
        0.02, doc="Plunger travel to its bottom stop.", unit="m", range=(0.002, 0.1)
    )
    cap_half_size_m: float = param(
        0.016, doc="Half side of the square button cap.", unit="m", range=(0.005, 0.05)
    )
    housing_height_m: float = param(0.06, doc="Height of the housing.", unit="m", range=(0.01, 0.3))
    nominal_xy_m: tuple[float, float] = param(
        (-0.65, -0.15),
        doc="Nominal plunger position on the table (base frame).",
        unit="m",
        range=(-1.1, 0.7),
    )
    randomize_half_range_m: tuple[float, float] = param(
        (0.08, 0.08), doc="Placement is uniform in nominal ± this box.", unit="m", range=(0.0, 0.3)
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if len(self.nominal_xy_m) != 2 or len(self.randomize_half_range_m) != 2:
            raise ValueError("nominal_xy_m and randomize_half_range_m need 2 values (x, y)")
        band_top = self.target_force_n + self.force_band_n
        if (
            not self.release_n
            < self.target_force_n - self.force_band_n
            < band_top
            < self.max_force_n
        ):
            raise ValueError(
                f"need release_n < target_force_n - force_band_n and target_force_n + "
                f"force_band_n < max_force_n (got {self.release_n}, {self.target_force_n} ± "
                f"{self.force_band_n}, {self.max_force_n}); adjust the force thresholds"
            )

    @property
    def cap_rest_top_z_m(self) -> float:
        """Height of the button top above the table at rest."""
        return self.housing_height_m + self.travel_m + _STEM_GAP_M + 2 * CAP_HALF_HEIGHT_M


class DispenseTask:
    """Ground truth, placement and success logic of the dispense task."""

    def __init__(self, config: TaskConfig | None = None) -> None:
        self.config = config or TaskConfig()
        self._model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        self.placement_xy = np.array(self.config.nominal_xy_m, dtype=float)
        self._clear()

    def _clear(self) -> None:
        self._force = self._peak = self._hold_t = self._err_sum = 0.0
        self._held = False  # hold_s completed, waiting for the release
        self._t_success = math.nan
        self._reason = ""  # "" while running, else success/overshoot/collision/timeout

    def mjcf(self) -> str:
        """Worldbody fragment of the fixture at the nominal placement."""
        c = self.config
        hh, s = c.housing_height_m, c.cap_half_size_m
        cap_hz = CAP_HALF_HEIGHT_M
        cap_z = c.cap_rest_top_z_m - cap_hz
        stem_len = c.travel_m + _STEM_GAP_M + 0.01  # reaches into the housing at rest
        spring_ref = c.spring_preload_n / c.spring_stiffness_n_m
        x, y = c.nominal_xy_m
        env = 'contype="1" conaffinity="7"'
        return f"""
<body name="{PLUNGER_BODY}" pos="{x} {y} 0">
  <geom name="plunger_housing" type="box" pos="0 0 {hh / 2}" size="{s + 0.014} {s + 0.014} {hh / 2}"
        {env} material="fixture"/>
  <body name="{CAP_BODY}" pos="0 0 {cap_z}">
    <joint name="{CAP_JOINT}" type="slide" axis="0 0 1" range="{-c.travel_m} 0"
           stiffness="{c.spring_stiffness_n_m}" springref="{spring_ref}"
           damping="{c.spring_damping_n_s_m}" solreflimit="0.005 1"
           solimplimit="0.95 0.99 0.001"/>
    <geom name="plunger_cap" type="box" size="{s} {s} {cap_hz}" mass="0.03" {env}
          material="button"/>
    <geom type="cylinder" fromto="0 0 {-cap_hz} 0 0 {-cap_hz - stem_len}" size="0.006" mass="0.01"
          contype="0" conaffinity="0" material="fixture"/>
  </body>
</body>"""

    # -- plant side -------------------------------------------------------------------
    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        """Look up ids in the compiled model (built by :mod:`demuse_ros.twin.scene`)."""
        self._model, self._data = model, data
        self._base_id = model.body(PLUNGER_BODY).id
        self._cap_id = model.body(CAP_BODY).id
        self._qadr = model.jnt_qposadr[model.joint(CAP_JOINT).id]
        self._cap_geoms = np.arange(model.ngeom) == model.geom("plunger_cap").id
        self._robot_geoms = scene.geom_classes(model) != scene.ENV
        self._zero3 = np.zeros(3)

    def reset(self, rng: np.random.Generator) -> None:
        """Randomize the placement (model.body_pos of the fixture) and clear the status."""
        c = self.config
        offset = rng.uniform(-1.0, 1.0, 2) * np.asarray(c.randomize_half_range_m)
        self.placement_xy = np.asarray(c.nominal_xy_m) + offset
        self._model.body_pos[self._base_id, :2] = self.placement_xy
        self._clear()

    def force_n(self) -> float:
        """Contact force the robot applies to the button along its axis (N), last substep."""
        return self._force

    def compute_force_n(self) -> float:
        """Robot→cap contact force from the current contacts (downward positive)."""
        f, _ = scene.contact_wrench(
            self._model, self._data, self._cap_geoms, self._zero3, by=self._robot_geoms
        )
        return -float(f[2])

    def spring_force_n(self) -> float:
        """Spring force on the plunger now (preload + k·x), N."""
        c = self.config
        x = -float(self._data.qpos[self._qadr])
        return c.spring_preload_n + c.spring_stiffness_n_m * x

    def plunger_top_pose(self) -> np.ndarray:
        """Pose of the button's top-face centre now: ``[x, y, z, 0, 0, 0]`` (world-aligned)."""
        top = self._data.xpos[self._cap_id].copy()
        top[2] += CAP_HALF_HEIGHT_M
        return np.concatenate([top, np.zeros(3)])

    def update(self, t_s: float, arm_collision: bool, ncon: int | None = None) -> None:
        """Advance the success/failure logic by one physics substep ending at ``t_s``.

        ``ncon`` (optional) is ``data.ncon``, passed to skip the contact scan when 0.
        """
        f = self._force = self.compute_force_n() if ncon != 0 else 0.0
        if self._reason:  # the outcome is final; only the live force still changes
            return
        c = self.config
        self._peak = max(self._peak, f)
        if f > c.max_force_n:
            self._reason = "overshoot"
        elif arm_collision:
            self._reason = "collision"
        elif not self._held:
            if abs(f - c.target_force_n) <= c.force_band_n:
                dt = self._model.opt.timestep
                self._hold_t += dt
                self._err_sum += abs(f - c.target_force_n) * dt
                self._held = self._hold_t >= c.hold_s - 1e-9
            else:  # left the band before the hold completed: start over
                self._hold_t = self._err_sum = 0.0
        elif f < c.release_n:
            self._t_success = t_s
            self._reason = "success"
        if not self._reason and t_s >= c.timeout_s - 1e-9:
            self._reason = "timeout"

    def _metrics(self) -> dict[str, float]:
        hold = float(self._hold_t)
        return {
            "peak_force_n": float(self._peak),
            "force_n": float(self._force),
            "hold_s": hold,
            "force_error_n": float(self._err_sum) / hold if hold > 0 else math.nan,
            "time_to_success_s": float(self._t_success),
        }

    def status(self) -> TaskStatus:
        r = self._reason
        return TaskStatus(
            self.config.name,
            done=bool(r),
            success=r == "success",
            reason=r,
            metrics=self._metrics(),
        )
