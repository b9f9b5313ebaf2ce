"""Export of one denoising step: torch.export, and ONNX checked against torch with onnxruntime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from demuse_ros.model.config import PRESETS

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from _model_helpers import randomize  # noqa: E402

from demuse_ros.model.dit import DeMUSE  # noqa: E402
from demuse_ros.model.export import (  # noqa: E402
    DenoiserStep,
    example_inputs,
    export_onnx,
    export_program,
    input_names,
)


def test_torch_export_of_the_tiny_denoiser() -> None:
    """Traces without graph breaks: no data-dependent control flow or host syncs in eval."""
    model = randomize(DeMUSE(PRESETS["tiny"]))
    program = export_program(model, batch=2)
    inputs = example_inputs(model.cfg, batch=2, seed=1)
    with torch.no_grad():
        expected = DenoiserStep(model)(*inputs)
    got = program.module()(*inputs)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    syncs = ("aten.nonzero", "aten.bincount", "aten.item", "aten._local_scalar_dense")
    assert not [op for op in ops if op.startswith(syncs)]


@pytest.mark.slow
@pytest.mark.parametrize("router", ["token", "noise"])
def test_onnx_export_matches_torch_in_onnxruntime(tmp_path: Path, router: str) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the 'model' extra (onnxruntime)")
    pytest.importorskip("onnxscript", reason="the 'model' extra (onnxscript, for the exporter)")
    model = randomize(DeMUSE(dataclasses.replace(PRESETS["tiny"], router=router)))
    path = export_onnx(model, tmp_path / "step.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == input_names(model.cfg)
    for seed in (1, 2):
        inputs = example_inputs(model.cfg, seed=seed)
        with torch.no_grad():
            expected = DenoiserStep(model)(*inputs)
        feeds = {n: x.numpy() for n, x in zip(input_names(model.cfg), inputs, strict=True)}
        got = session.run(None, feeds)
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(b, a.numpy(), rtol=1e-4, atol=1e-5)
