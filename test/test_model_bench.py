"""``demuse bench model`` and the parameter/FLOP table."""

from __future__ import annotations

import json

import pytest

from demuse_ros.model.config import PRESETS

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from demuse_ros.cli import main  # noqa: E402
from demuse_ros.model.flops import counts, xl_vs_paper  # noqa: E402


def test_xl_counts_against_the_paper() -> None:
    c = counts(PRESETS["xl"])
    assert abs(c.params / 1.57e9 - 1) < 0.01
    assert c.tokens == 274
    assert c.active_params < c.params  # 3 of 4 routed experts idle per token
    assert 160 < c.gmacs_routed < 175 and c.gmacs_dense > c.gmacs_routed
    note = xl_vs_paper(PRESETS["xl"], c)
    assert "1.57 B" in note and "135" in note


def test_bench_model_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "model", "--presets", "tiny", "--repeats", "3", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    row = result["presets"]["tiny"]
    assert row["params"] == counts(PRESETS["tiny"]).params
    assert row["forward_ms"]["p50"] > 0 and row["chunk_ms"]["p50"] > row["forward_ms"]["p50"]
    assert row["ddim_steps"] == 8 and row["encode_ms"]["p50"] > 0


def test_bench_model_table_without_latency(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "model", "--presets", "tiny,xl", "--repeats", "0", "--xl-repeats", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "xl" in out and "1.57 B" in out and "274" in out


def test_bench_model_rejects_unknown_presets() -> None:
    with pytest.raises(SystemExit, match="unknown preset"):
        main(["bench", "model", "--presets", "huge"])
