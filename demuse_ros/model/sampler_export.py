"""The sampler's steps as graphs: denoiser + DDIM update with per-step tables fed as
inputs (:class:`SamplerStep`), its k-step unrolling, and their ONNX export — what the
inference backends run (DESIGN §7). :mod:`.export` has the plain denoising step."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SparseMoE
from .config import ModelConfig
from .diffusion import DDIMSampler
from .dit import DeMUSE, StepCache

# ------------------------------------------------------------ the sampler's steps
#: Columns of the per-step DDIM coefficient table (:func:`ddim_coefficients`): √ᾱ and
#: √(1−ᾱ) at the step's timestep and at the next one, per stream, and whether the action
#: stream takes a DDIM step at this evaluation (DUST holds it for q − 1 of every q).
COEF_COLUMNS = (
    "sqrt_abar_v",
    "sqrt_1m_abar_v",
    "sqrt_abar_v_next",
    "sqrt_1m_abar_v_next",
    "sqrt_abar_a",
    "sqrt_1m_abar_a",
    "sqrt_abar_a_next",
    "sqrt_1m_abar_a_next",
    "update_a",
)


def ddim_coefficients(sampler: DDIMSampler) -> torch.Tensor:
    """``(n_evaluations, 9)`` float32: :data:`COEF_COLUMNS` for every denoiser evaluation.

    Each value is computed exactly as :meth:`NoiseSchedule.ddim_step` computes it (float32
    ``ᾱ``, then ``sqrt`` / ``(1 − ᾱ).sqrt()``), so a graph that reads them reproduces the
    sampler's arithmetic.
    """
    abar = sampler.schedule.alphas_cumprod.cpu()
    one = abar.new_ones(())

    def pair(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = abar[t] if t >= 0 else one
        return a.sqrt(), (1 - a).sqrt()

    tv, ta, q = sampler.t_vision, sampler.t_action, sampler.q
    rows = []
    for j in range(len(tv)):
        i = j // q
        update = (j + 1) % q == 0
        ta_next = (ta[i + 1] if i + 1 < len(ta) else -1) if update else ta[i]
        row = [*pair(tv[j]), *pair(tv[j + 1] if j + 1 < len(tv) else -1)]
        row += [*pair(ta[i]), *pair(ta_next), one if update else one * 0]
        rows.append(torch.stack(row))
    return torch.stack(rows)  # (n, 9)


def slot_modulation_width(cfg: ModelConfig) -> int:
    """Width of the per-slot modulation input: six AdaMN vectors per block, two for the head."""
    return (6 * cfg.n_layers + 2) * cfg.hidden_dim


@torch.no_grad()
def slot_tables(
    model: DeMUSE, sampler: DDIMSampler, task: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-step, per-modality-slot inputs of :class:`SamplerStep` for a batch of tasks ``(B,)``.

    Returns ``modulation (n, B, S, (6L + 2)·d)`` (every block's AdaMN shift/scale/gate for
    attention and FFN, then the head's shift/scale) and, with the noise router,
    ``route (n, B, S, d)`` (each slot's timestep embedding), else None. They depend only on
    the timesteps and the task, so a backend computes them once per task, not per chunk:
    the AdaMN MLPs then cost nothing per step (DESIGN §6: precomputed modulation).
    """
    B = task.shape[0]
    slots = torch.arange(len(model.layout.slots), device=task.device)
    mods, routes = [], []
    for j, tv in enumerate(sampler.t_vision):
        ta = sampler.t_action[j // sampler.q]
        ctx, t_ctx = model.contexts(
            torch.full((B,), tv, device=task.device),
            torch.full((B,), ta, device=task.device),
            task,
        )  # (B, S, d) each
        parts = [torch.cat(b.adamn(ctx, slots), dim=-1) for b in model.blocks]
        parts.append(torch.cat(model.final.adamn(ctx, slots), dim=-1))
        mods.append(torch.cat(parts, dim=-1))  # (B, S, (6L + 2)·d)
        routes.append(t_ctx)
    route = torch.stack(routes) if model.cfg.router == "noise" else None
    return torch.stack(mods), route


def sampler_input_names(cfg: ModelConfig) -> list[str]:
    """Inputs of :class:`SamplerStep` and of :class:`SamplerSteps` (same names)."""
    cond = [
        n
        for n, m in (("rgb_latent", "rgb"), ("depth", "depth"), ("wrench", "force"))
        if m in cfg.modalities
    ]
    x = ["x_v", "x_a"] if "rgb" in cfg.modalities else ["x_a"]
    tables = ["modulation", "route"] if cfg.router == "noise" else ["modulation"]
    return [*cond, "state", *x, *tables, "coef"]


def sampler_output_names(cfg: ModelConfig, unrolled: bool = False) -> list[str]:
    """Outputs: the next state, and for a single step also its noise predictions."""
    has_rgb = "rgb" in cfg.modalities
    x = ["x_v_next", "x_a_next"] if has_rgb else ["x_a_next"]
    if unrolled:
        return x
    return [*x, *(["eps_rgb", "eps_action"] if has_rgb else ["eps_action"])]


def _ddim(x: torch.Tensor, eps: torch.Tensor, c: torch.Tensor, clip: float) -> torch.Tensor:
    """:meth:`NoiseSchedule.ddim_step` with its four coefficients read from ``c (4,)``."""
    sa, s1a, sa_next, s1a_next = c.unbind(0)
    x0 = (x - s1a * eps) / sa
    if clip > 0:
        x0 = x0.clamp(-clip, clip)
        eps = (x - sa * x0) / s1a
    return sa_next * x0 + s1a_next * eps


class ConcatExpertsMoE(SparseMoE):
    """Inference form of a :class:`SparseMoE` for the exported graphs: compute all and mask,
    as two wide matmuls.

    The shared expert and every routed expert are concatenated along the hidden axis
    (``W1 (Hs + E·He, d)``, ``W2 (d, Hs + E·He)``); the hidden activations of expert ``e``
    are scaled by the token's gate weight for ``e`` (0 when not routed there, 1 for the
    shared part), so the second matmul also sums the experts:
    ``y = (GELU(x W1ᵀ + b1) ⊙ mask) W2ᵀ + b2_shared + Σ_e g_e b2_e`` = shared(x) +
    Σ_e g_e expert_e(x) (MoDE's fused experts, with the mask per token). Same weight
    traffic and arithmetic as :meth:`SparseMoE.routed_dense`, but one large GEMM each way
    instead of a batched one plus the shared expert's: ~20 % faster per step for the
    ``cpu`` preset in onnxruntime. The concatenated weights are copies taken at
    construction (the model must not change afterwards).
    """

    def __init__(self, moe: SparseMoE) -> None:
        nn.Module.__init__(self)  # shares the router; owns the concatenated copies
        self.n_experts, self.top_k = moe.n_experts, moe.top_k
        self.router = moe.router
        E, d, He = moe.w1.shape
        self.shared_hidden, self.expert_hidden = moe.shared.fc1.out_features, He
        with torch.no_grad():
            w1 = torch.cat([moe.shared.fc1.weight, moe.w1.transpose(1, 2).reshape(E * He, d)])
            b1 = torch.cat([moe.shared.fc1.bias, moe.b1.reshape(E * He)])
            w2 = moe.w2.permute(2, 0, 1).reshape(d, E * He)
            w2 = torch.cat([moe.shared.fc2.weight, w2], dim=1)
        self.register_buffer("w1_cat", w1.contiguous(), persistent=False)  # (Hs + E·He, d)
        self.register_buffer("b1_cat", b1.contiguous(), persistent=False)
        self.register_buffer("w2_cat", w2.contiguous(), persistent=False)  # (d, Hs + E·He)
        self.register_buffer("b2_shared", moe.shared.fc2.bias.detach().clone(), persistent=False)
        self.register_buffer("b2_experts", moe.b2.detach().clone(), persistent=False)  # (E, d)

    def forward(
        self, x: torch.Tensor, route_in: torch.Tensor, balance_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        E, He = self.n_experts, self.expert_hidden
        _, weights, idx = self.gate(route_in)  # (B, N, k) each
        combine = x.new_zeros(B, N, E).scatter(-1, idx, weights.to(x.dtype))  # (B, N, E)
        h = F.gelu(F.linear(x, self.w1_cat, self.b1_cat), approximate="tanh")  # (B, N, H)
        mask = torch.cat(
            [
                x.new_ones(B, N, self.shared_hidden),
                combine[..., None].expand(B, N, E, He).reshape(B, N, E * He),
            ],
            dim=-1,
        )  # (B, N, H)
        y = F.linear(h * mask, self.w2_cat, self.b2_shared) + combine @ self.b2_experts
        return y, x.new_zeros(())  # (B, N, d); no balancing statistics at inference


def export_view(model: DeMUSE) -> DeMUSE:
    """A copy of ``model``'s module tree that shares its parameters, with every MoE layer
    in its :class:`ConcatExpertsMoE` form (``model`` itself is left untouched)."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    blocks = []
    for block in model.blocks:
        if isinstance(block.ffn, SparseMoE):
            block = copy.copy(block)
            block._modules = dict(block._modules)
            block._modules["ffn"] = ConcatExpertsMoE(block.ffn)
        blocks.append(block)
    view._modules["blocks"] = nn.ModuleList(blocks)
    return view.eval()


class SamplerStep(nn.Module):
    """One DDIM evaluation with its update, from precomputed per-step tables (for export).

    Inputs (:func:`sampler_input_names`): the conditions, the state ``x_v (B, F·C, h, w)``
    and ``x_a (B, H, A)``, this step's ``modulation (B, S, M)`` and ``route (B, S, d)``
    rows of :func:`slot_tables` and its ``coef (9,)`` row of :func:`ddim_coefficients`.
    The per-slot modulations are gathered to the tokens inside the graph; the MoE runs
    every expert and masks (eval mode), so the graph has static shapes and no host syncs.
    Outputs: the next state and the noise predictions. Equal to one iteration of
    :meth:`DDIMSampler.run_steps` up to float rounding (the MoE layers run as
    :class:`ConcatExpertsMoE`, which sums the experts in another order).
    """

    def __init__(self, model: DeMUSE, clip_rgb: float, clip_action: float) -> None:
        super().__init__()
        self.model = export_view(model.eval())
        self.clip_rgb, self.clip_action = clip_rgb, clip_action
        cfg = model.cfg
        self.has_rgb = "rgb" in cfg.modalities
        self.names = sampler_input_names(cfg)

    def _cache(self, modulation: torch.Tensor, route: torch.Tensor | None) -> StepCache:
        m = self.model
        slot = m.token_slot
        chunks = modulation.split(m.cfg.hidden_dim, dim=-1)  # (6L + 2) × (B, S, d)
        per_token = [c.index_select(1, slot) for c in chunks]  # (B, N, d) each: ONNX Gather
        blocks = tuple(tuple(per_token[6 * i : 6 * i + 6]) for i in range(len(m.blocks)))
        final = tuple(per_token[-2:])
        route_in = None if route is None else route.index_select(1, slot)  # (B, N, d)
        return StepCache(modulation, blocks, final, route_in, None)

    def step(
        self, x: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(x_v', x_a', eps_rgb, eps_action)`` from named inputs."""
        x_v, x_a, coef = x.get("x_v"), x["x_a"], x["coef"]
        rgb_in = None if x_v is None else torch.cat([x["rgb_latent"], x_v], dim=1)
        action_in = torch.cat([x["state"], x_a.flatten(1)], dim=1)  # (B, S + H·A)
        out = self.model(
            rgb_in,
            x.get("depth"),
            x.get("wrench"),
            action_in,
            None,  # type: ignore[arg-type]  # the cache replaces timesteps and task
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            self._cache(x["modulation"], x.get("route")),
        )
        if x_v is not None:
            x_v = _ddim(x_v, out.eps_rgb, coef[0:4], self.clip_rgb)
        eps_a = out.eps_action.reshape(x_a.shape)
        x_a = torch.where(coef[8] > 0, _ddim(x_a, eps_a, coef[4:8], self.clip_action), x_a)
        return x_v, x_a, out.eps_rgb, out.eps_action

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x_v, x_a, eps_rgb, eps_action = self.step(dict(zip(self.names, inputs, strict=True)))
        if self.has_rgb:
            return x_v, x_a, eps_rgb, eps_action
        return x_a, eps_action


class SamplerSteps(nn.Module):
    """``k`` consecutive :class:`SamplerStep` evaluations unrolled into one graph.

    Same inputs as the step, with the tables for ``k`` steps: ``modulation (k, B, S, M)``,
    ``route (k, B, S, d)``, ``coef (k, 9)``; outputs the state after the ``k`` steps. The
    graph depends only on ``k``, not on which steps: a chunk is one call, and a split
    chunk (speculative inference) is two calls of the graphs for its two lengths.
    """

    def __init__(self, step: SamplerStep, k: int) -> None:
        super().__init__()
        self.inner, self.k = step, k
        self.names = step.names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = dict(zip(self.names, inputs, strict=True))
        per_step = [n for n in ("modulation", "route", "coef") if n in x]
        tables = {n: x[n].unbind(0) for n in per_step}
        for j in range(self.k):
            x.update({n: t[j] for n, t in tables.items()})
            x_v, x["x_a"], _, _ = self.inner.step(x)
            if x_v is not None:
                x["x_v"] = x_v
        return (x["x_v"], x["x_a"]) if self.inner.has_rgb else (x["x_a"],)


def sampler_example_inputs(
    model: DeMUSE, sampler: DDIMSampler, batch: int = 1, steps: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Inputs of :class:`SamplerStep` (``steps`` None) or of ``SamplerSteps(k=steps)``,
    on the model's device."""
    cfg, dev = model.cfg, model.token_slot.device
    g = torch.Generator().manual_seed(seed)
    h = cfg.latent_size
    task = torch.randint(0, cfg.n_tasks, (batch,), generator=g)
    mod, route = slot_tables(model, sampler, task.to(dev))
    coef = ddim_coefficients(sampler)
    k = 1 if steps is None else steps
    tables = {"modulation": mod[:k], "route": None if route is None else route[:k]}
    tables["coef"] = coef[:k].to(dev)
    if steps is None:
        tables = {n: None if t is None else t[0] for n, t in tables.items()}
    shapes = {
        "rgb_latent": (batch, cfg.latent_channels, h, h),
        "depth": (batch, 1, h, h),
        "wrench": (batch, cfg.wrench_in_dim),
        "state": (batch, cfg.state_dim),
        "x_v": (batch, cfg.rgb_out_channels, h, h),
        "x_a": (batch, cfg.action_horizon, cfg.action_dim),
    }
    return tuple(
        tables[n] if n in tables else torch.randn(shapes[n], generator=g).to(dev)
        for n in sampler_input_names(cfg)
    )


def export_sampler_onnx(
    model: DeMUSE,
    sampler: DDIMSampler,
    path: str | os.PathLike[str],
    batch: int = 1,
    steps: int | None = None,
    opset: int = 18,
    external_data: bool | None = None,
) -> Path:
    """Writes the sampler's step (``steps`` None) or ``steps`` unrolled steps as ONNX.

    Fixed shapes (batch included), opset ``opset`` (≥ 17), the dynamo exporter. Models
    past ~1.5 GB of weights (``xl``) keep them in an external-data file next to ``path``
    (ONNX protobufs stop at 2 GB); ``external_data`` forces the choice.
    """
    if opset < 17:
        raise ValueError(f"opset {opset}: the sampler graphs need opset >= 17 (LayerNormalization)")
    path = Path(path)
    step = SamplerStep(model, sampler.clip_rgb, sampler.clip_action)
    module: nn.Module = (step if steps is None else SamplerSteps(step, steps)).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        torch.onnx.export(
            module,
            sampler_example_inputs(model, sampler, batch, steps),
            str(path),
            input_names=step.names,
            output_names=sampler_output_names(model.cfg, unrolled=steps is not None),
            opset_version=opset,
            dynamo=True,
            verbose=False,
            external_data=weight_bytes > 1.5e9 if external_data is None else external_data,
        )
    return path


#: Inputs of the sampler graphs that change from step to step (one row per step).
PER_STEP_INPUTS = ("modulation", "route", "coef")


def unroll_onnx(step_path: str | os.PathLike[str], k: int, path: str | os.PathLike[str]) -> Path:
    """Writes ``k`` copies of the :class:`SamplerStep` graph at ``step_path`` chained into one
    graph with the inputs and outputs of ``SamplerSteps(k)``; returns ``path``.

    Equivalent to exporting :class:`SamplerSteps` (same inputs, outputs and arithmetic) but
    built by ONNX graph surgery in well under a second, where the dynamo exporter takes
    minutes for the unrolled module. The weights are shared, not copied; step ``j`` reads
    row ``j`` of each per-step table through a ``Gather``. External weight data stay
    where the step graph keeps them, so ``path`` must be in the same directory.
    """
    import onnx
    from onnx import TensorProto, helper

    if k < 1:
        raise ValueError(f"k = {k}: unroll at least one step")
    step_path, path = Path(step_path), Path(path)
    if step_path.resolve().parent != path.resolve().parent:
        raise ValueError("the unrolled graph must sit next to the step graph (shared weights)")
    model = onnx.load(str(step_path), load_external_data=False)
    g = model.graph
    if model.functions or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        raise ValueError(f"{step_path}: expected a flat step graph (no functions or subgraphs)")
    inputs = {i.name: i for i in g.input}
    outputs = [o.name for o in g.output]
    state_in = [n for n in ("x_v", "x_a") if n in inputs]
    state_out = [f"{n}_next" for n in state_in]
    if not set(state_out) <= set(outputs):
        raise ValueError(f"{step_path}: not a sampler step graph (outputs {outputs})")
    shared = {t.name for t in g.initializer} | (set(inputs) - set(PER_STEP_INPUTS) - set(state_in))

    nodes, new_inputs = [], []
    for i in g.input:  # per-step tables gain a leading axis of k
        new = onnx.ValueInfoProto()
        new.CopyFrom(i)
        if i.name in PER_STEP_INPUTS:
            dims = new.type.tensor_type.shape.dim
            dims.insert(0, onnx.TensorShapeProto.Dimension(dim_value=k))
        new_inputs.append(new)
    current = {n: n for n in state_in}  # state name -> the value that holds it now
    for j in range(k):
        prefix = f"s{j}/"
        rename = {n: n for n in shared} | {"": ""}
        rename.update(current)
        for name in PER_STEP_INPUTS:
            if name in inputs:
                idx = f"{prefix}{name}_index"
                nodes.append(
                    helper.make_node(
                        "Constant",
                        [],
                        [idx],
                        value=helper.make_tensor(idx, TensorProto.INT64, [], [j]),
                    )
                )
                nodes.append(helper.make_node("Gather", [name, idx], [prefix + name], axis=0))
                rename[name] = prefix + name
        for i, node in enumerate(g.node):
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = prefix + (node.name or f"{node.op_type}_{i}")
            new.input[:] = [rename.get(x, prefix + x) for x in node.input]
            new.output[:] = [prefix + x for x in node.output]
            nodes.append(new)
        current = {s: prefix + o for s, o in zip(state_in, state_out, strict=True)}
    for s, o in zip(state_in, state_out, strict=True):  # name the last step's state outputs
        nodes.append(helper.make_node("Identity", [current[s]], [o], name=f"out/{o}"))
    out_info = [o for o in g.output if o.name in state_out]
    graph = helper.make_graph(nodes, f"{g.name}_x{k}", new_inputs, out_info, list(g.initializer))
    unrolled = helper.make_model(graph, opset_imports=list(model.opset_import))
    unrolled.ir_version = model.ir_version
    unrolled.producer_name = "demuse_ros.unroll_onnx"
    onnx.save(unrolled, str(path))
    return path
