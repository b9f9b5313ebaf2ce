"""Offscreen RGB-D rendering of the twin's D435i-like camera.

The GL backend defaults to EGL (headless): this module sets ``MUJOCO_GL``
(if unset) before importing ``mujoco``, and :class:`CameraRenderer` creates
its context from the backend ``MUJOCO_GL`` names even when ``mujoco`` was
imported earlier with another default. A
:class:`CameraRenderer` owns a GL context, which is bound to the thread that
created it: construct it in the thread that renders (e.g. the camera server's
thread) and feed it :class:`RenderState` copies taken from the plant.

Depth: one ``mjr_render`` fills colour and depth buffers; the depth buffer
(MuJoCo's ``mjDEPTH_ZEROFAR`` mapping, as ``mujoco.Renderer`` uses) is
linearised to metres along the optical axis (z-depth, what a RealSense
reports), not the distance along the ray. Verified by
``test_render_depth_matches_table_plane``. Pixels with nothing closer than the
far plane read 0 ("no return").
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from dataclasses import dataclass

import mujoco
import numpy as np

from demuse_ros.config import param, validate_fields

CAMERA_NAME = "d435i"


@dataclass(frozen=True)
class CameraConfig:
    """Fixed colour+depth camera of the cell (pinhole, D435i colour defaults)."""

    width: int = param(640, doc="Image width.", unit="px", range=(16, 4096))
    height: int = param(480, doc="Image height.", unit="px", range=(16, 4096))
    fps: float = param(
        30.0, doc="Frame rate the camera server renders at.", unit="Hz", range=(1, 120)
    )
    fx: float = param(615.0, doc="Focal length, x.", unit="px", range=(1.0, 1e5))
    fy: float = param(
        615.0, doc="Focal length, y (sets the vertical field of view).", unit="px", range=(1.0, 1e5)
    )
    cx: float = param(
        320.0, doc="Principal point, x (from the left edge).", unit="px", range=(0.0, 4096.0)
    )
    cy: float = param(
        240.0, doc="Principal point, y (from the top edge).", unit="px", range=(0.0, 4096.0)
    )
    near_m: float = param(0.1, doc="Near clipping plane.", unit="m", range=(0.001, 10.0))
    far_m: float = param(
        10.0, doc="Far clipping plane; beyond it depth reads 0.", unit="m", range=(0.1, 100.0)
    )
    pos_m: tuple[float, float, float] = param(
        (-0.6, -1.25, 0.75), doc="Camera position in the base frame.", unit="m"
    )
    look_at_m: tuple[float, float, float] = param(
        (-0.6, -0.15, 0.2), doc="Point the optical axis goes through (base frame).", unit="m"
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if not (0 <= self.cx <= self.width and 0 <= self.cy <= self.height):
            raise ValueError(
                f"principal point ({self.cx}, {self.cy}) lies outside the {self.width}×"
                f"{self.height} image; set cx, cy inside it"
            )
        if self.near_m >= self.far_m:
            raise ValueError(f"near_m {self.near_m} must be < far_m {self.far_m}")
        if np.allclose(np.subtract(self.pos_m, self.look_at_m)[:2], 0.0):
            raise ValueError("pos_m must not be straight above/below look_at_m (world z is 'up')")

    @property
    def fovy_deg(self) -> float:
        """Vertical field of view implied by ``fy`` and ``height``."""
        return float(np.degrees(2 * np.arctan(self.height / (2 * self.fy))))

    @property
    def intrinsics(self) -> np.ndarray:
        """3×3 pinhole matrix K (pixels; u right, v down)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass
class RenderState:
    """What the renderer needs from the plant: a copy, safe to hand to another thread."""

    t_s: float
    qpos: np.ndarray  # (nq,)
    body_pos: np.ndarray  # (nbody, 3), carries the task's randomized fixture placement


class CameraRenderer:
    """Renders RGB + depth of the cell's fixed camera from :class:`RenderState` copies.

    Args:
        model: the plant's model; copied, so the plant may keep mutating its own.
        config: image size must match the camera the model was built with.
    """

    def __init__(self, model: mujoco.MjModel, config: CameraConfig) -> None:
        self._model = copy.copy(model)
        self._data = mujoco.MjData(self._model)
        self.config = config
        self._cam_id = self._model.camera(CAMERA_NAME).id
        w, h = config.width, config.height
        if tuple(self._model.cam_resolution[self._cam_id]) != (w, h):
            raise ValueError(
                f"camera config {w}×{h} does not match the model's camera "
                f"{tuple(self._model.cam_resolution[self._cam_id])}; pass the plant's camera config"
            )
        self._gl = _gl_context(w, h)
        self._gl.make_current()
        try:
            self._ctx = mujoco.MjrContext(self._model, mujoco.mjtFontScale.mjFONTSCALE_100)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
            self._ctx.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        except Exception:
            self._gl.free()
            raise
        self._scene = mujoco.MjvScene(self._model, maxgeom=1000)
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0  # sites (tcp, sensors) are markers, not scenery
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = self._cam_id
        self._rect = mujoco.MjrRect(0, 0, w, h)
        self._rgb = np.empty((h, w, 3), dtype=np.uint8)
        self._depth = np.empty((h, w), dtype=np.float32)
        extent = self._model.stat.extent
        self._near = float(self._model.vis.map.znear * extent)
        self._far = float(self._model.vis.map.zfar * extent)

    def render(self, state: RenderState) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 and depth (H, W) float32 in metres, 0 = no return."""
        if self._ctx is None:
            raise RuntimeError("CameraRenderer.render() after close()")
        m, d = self._model, self._data
        d.qpos[:] = state.qpos
        m.body_pos[:] = state.body_pos
        mujoco.mj_kinematics(m, d)
        mujoco.mj_camlight(m, d)
        self._gl.make_current()
        mujoco.mjv_updateScene(
            m, d, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._rgb, self._depth, self._rect, self._ctx)
        # Perspective depth buffer → metres along the optical axis (as mujoco.Renderer).
        # With mjDEPTH_ZEROFAR the far plane (and the empty background) reads 0.
        n, f, raw = self._near, self._far, self._depth
        depth = np.float32(f * n / (f - n)) / (raw + np.float32(0.5 * (f + n) / (f - n) - 0.5))
        depth[raw <= 0.0] = 0.0
        return np.flipud(self._rgb).copy(), np.flipud(depth).copy()

    def close(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self._gl.make_current()
            self._ctx.free()
            self._ctx = None
            self._gl.free()

    def __enter__(self) -> CameraRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gl_context(width: int, height: int):
    """A GL context of the backend ``MUJOCO_GL`` names (default EGL), whatever backend
    ``mujoco`` picked at its import (someone may have imported it before this module)."""
    backend = os.environ.get("MUJOCO_GL", "egl").strip().lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        GLContext = mujoco.GLContext
    return GLContext(width, height)
