"""``demuse bench policy``: machine-readable rows per backend, ratios measured in one run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the backends need the 'model' extra (torch)")
pytest.importorskip("onnxruntime", reason="the 'model' extra (onnxruntime)")
pytest.importorskip("onnxscript", reason="the 'model' extra (onnxscript, for the exporter)")

from demuse_ros.cli import main  # noqa: E402

KEYS = (
    "backend",
    "chunk_ms_p50",
    "chunk_ms_p99",
    "step_ms_p50",
    "torch_eager_chunk_ms_p50",
    "speedup_vs_torch_eager",
)


def test_bench_policy_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["bench", "policy", "--preset", "tiny", "--repeats", "3", "--json"]
    argv += ["--backends", "onnxruntime-step,tensorrt-fp16", "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    assert result["preset"] == "tiny" and result["n_steps"] == 8
    rows = {r["backend"]: r for r in result["rows"]}
    assert list(rows)[:2] == ["torch", "onnxruntime-step"]  # torch eager always runs first
    for name in ("torch", "onnxruntime-step"):
        row = rows[name]
        assert all(k in row for k in KEYS), row
        assert 0 < row["step_ms_p50"] < row["chunk_ms_p50"] <= row["chunk_ms_p99"]
        assert row["torch_eager_chunk_ms_p50"] == rows["torch"]["chunk_ms_p50"]
        assert row["speedup_vs_torch_eager"] == pytest.approx(
            row["torch_eager_chunk_ms_p50"] / row["chunk_ms_p50"]
        )
    assert rows["torch"]["max_abs_action_diff_vs_torch"] == 0
    assert rows["onnxruntime-step"]["max_abs_action_diff_vs_torch"] < 1e-4
    assert result["best"]["backend"] in rows
    if importlib.util.find_spec("tensorrt") is None:  # requested but missing: a clear row
        error = rows["tensorrt-fp16"]["error"]
        assert "not installed" in error and "'torch'" in error and "'onnxruntime'" in error
        assert "chunk_ms_p50" not in rows["tensorrt-fp16"]


def test_bench_policy_rejects_unknown_backends_and_presets() -> None:
    with pytest.raises(SystemExit, match="unknown backend"):
        main(["bench", "policy", "--backends", "tvm"])
    with pytest.raises(SystemExit, match="unknown preset"):
        main(["bench", "policy", "--preset", "huge"])
