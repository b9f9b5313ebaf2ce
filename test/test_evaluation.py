"""``demuse eval``: lockstep episodes through the observation pipeline, summaries, outputs."""

from __future__ import annotations

import json
import math

import pytest

from demuse_ros.evaluation.run import summarize, wilson_interval, write_outputs


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(40, 50)
    assert lo == pytest.approx(0.6696, abs=1e-3) and hi == pytest.approx(0.8875, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def _record(seed, success, err=0.5, tts=7.0, peak=10.0) -> dict:
    metrics = {"force_error_n": err, "time_to_success_s": tts, "peak_force_n": peak}
    reason = "success" if success else "timeout"
    return {"seed": seed, "success": success, "reason": reason, "metrics": metrics}


def test_summary_and_outputs(tmp_path) -> None:
    records = [_record(0, True, 0.2), _record(1, True, 0.4), _record(2, False, 9.0)]
    s = summarize(records)
    assert (s["episodes"], s["successes"]) == (3, 2)
    assert s["success_rate"] == pytest.approx(2 / 3)
    assert s["force_error_n_median"] == pytest.approx(0.3)  # successes only
    assert s["reasons"] == {"success": 2, "timeout": 1}
    files = write_outputs(str(tmp_path), {"summary": s, "episodes": records})
    assert json.loads(files[0].read_text())["summary"]["successes"] == 2
    assert files[1].stat().st_size > 1000


@pytest.mark.slow
def test_lockstep_expert_through_the_observation_pipeline() -> None:
    pytest.importorskip("mujoco", reason="needs the sim extra")
    from demuse_ros.evaluation.run import evaluate_lockstep
    from demuse_ros.twin.runner import SimConfig

    records = evaluate_lockstep(SimConfig(), "expert", 2, seed=10_000)
    for r in records:
        # the scripted expert, fed by the synchronizer from the rendered frames, the
        # processed F/T and the arm records, and moved through the safety filter and
        # servoL, finishes the task
        assert r["success"], r
        assert r["ticks"] >= 50 and r["invalid_ticks"] == 0
        # as in real time, the arm's filter refuses an occasional seam (0-3 per episode)
        assert sum(r["chunks_refused"].values()) <= 0.05 * r["chunks"]
        assert 0.0 < r["metrics"]["force_error_n"] < 2.0
        assert 3.0 < r["time_to_done_s"] < 15.0
    assert records[0]["seed"] == 10_000 and records[1]["seed"] == 10_001
