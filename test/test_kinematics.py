"""UR kinematics: FK against known poses, Jacobian against finite differences, IK round trips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from demuse_ros.kinematics import UR10, UR10E, IKError, URKinematics, matrix_to_pose, pose_to_matrix


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # At q = 0 the UR arm lies stretched along -x: x = a2 + a3, y = -(d4 + d6), z = d1 - d5.
        (UR10, [-1.1843, -0.256141, 0.0116]),
        (UR10E, [-1.18425, -0.2907, 0.06085]),
    ],
)
def test_fk_zero_pose(model, expected) -> None:
    pose = URKinematics(model).fk(np.zeros(6))
    np.testing.assert_allclose(pose[:3], expected, atol=1e-9)
    # flange z axis points along base -y at q = 0 (rotation of +90° about x)
    np.testing.assert_allclose(pose[3:], [np.pi / 2, 0, 0], atol=1e-9)


def test_tcp_offset_moves_along_flange_z() -> None:
    q = np.array([0.3, -1.2, 1.4, -1.8, -1.57, 0.4])
    flange = pose_to_matrix(URKinematics(UR10).fk(q))
    tcp = URKinematics(UR10, tcp_offset=np.array([0, 0, 0.2, 0, 0, 0])).fk(q)
    np.testing.assert_allclose(tcp[:3], flange[:3, 3] + 0.2 * flange[:3, 2], atol=1e-12)


@pytest.mark.parametrize("model", [UR10, UR10E])
def test_jacobian_matches_finite_differences(model) -> None:
    k = URKinematics(model, tcp_offset=np.array([0, 0, 0.21, 0, 0, 0]))
    rng = np.random.default_rng(3)
    for _ in range(5):
        q = rng.uniform(-2, 2, 6)
        J = k.jacobian(q)
        eps = 1e-7
        T0 = k.fk_matrix(q)
        for i in range(6):
            dq = np.zeros(6)
            dq[i] = eps
            T1 = k.fk_matrix(q + dq)
            np.testing.assert_allclose(J[:3, i], (T1[:3, 3] - T0[:3, 3]) / eps, atol=1e-5)
            w = Rotation.from_matrix(T1[:3, :3] @ T0[:3, :3].T).as_rotvec() / eps
            np.testing.assert_allclose(J[3:, i], w, atol=1e-5)


@pytest.mark.parametrize("model", [UR10, UR10E])
def test_ik_round_trip_from_nearby_seed(model) -> None:
    k = URKinematics(model, tcp_offset=np.array([0, 0, 0.21, 0, 0, 0]))
    home = np.array([0.0, -1.6, 1.7, -1.67, -1.57, 0.0])
    rng = np.random.default_rng(7)
    for _ in range(50):
        q = home + rng.normal(0, 0.25, 6)
        target = k.fk(q)
        sol = k.ik(target, q + rng.normal(0, 0.05, 6))
        np.testing.assert_allclose(k.fk(sol)[:3], target[:3], atol=1e-6)
        err = Rotation.from_matrix(
            pose_to_matrix(k.fk(sol))[:3, :3].T @ pose_to_matrix(target)[:3, :3]
        )
        assert err.magnitude() < 1e-6
        assert np.abs(sol - q).max() < 0.2  # stays on the seed's branch


def test_ik_out_of_reach_raises_a_clear_error() -> None:
    k = URKinematics(UR10)
    with pytest.raises(IKError, match="reach"):
        k.ik(np.array([3.0, 0, 0.5, 0, np.pi, 0]), np.array([0.0, -1.6, 1.7, -1.67, -1.57, 0.0]))


def test_pose_matrix_round_trip() -> None:
    pose = np.array([0.1, -0.2, 0.3, 0.4, -1.0, 2.0])
    np.testing.assert_allclose(matrix_to_pose(pose_to_matrix(pose)), pose, atol=1e-12)


def test_canonical_rotvec_keeps_the_rotation_and_removes_the_sign_flip_at_pi() -> None:
    from demuse_ros.kinematics.ur import canonical_rotvec, rotvec_to_matrix
    from demuse_ros.runtime.policies import ROTVEC_REFERENCE_RAD, canonical_pose

    rng = np.random.default_rng(3)
    axes = rng.normal(size=(500, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    rv = axes * rng.uniform(0, np.pi, (500, 1))
    out = canonical_rotvec(rv, ROTVEC_REFERENCE_RAD)
    for a, b in zip(rv, out, strict=True):
        np.testing.assert_allclose(rotvec_to_matrix(a), rotvec_to_matrix(b), atol=1e-12)
    # the tool-down pose as the controller reports it either way: one representation
    down = np.array([2.2214415, 2.2214415, 1e-9])
    a = canonical_pose(np.r_[0.1, 0.2, 0.3, down])
    b = canonical_pose(np.r_[0.1, 0.2, 0.3, -down])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a[3:], ROTVEC_REFERENCE_RAD, atol=1e-6)
    # small rotations are left alone
    np.testing.assert_array_equal(
        canonical_rotvec(np.array([0.1, 0.0, 0.0]), np.zeros(3)), [0.1, 0, 0]
    )
