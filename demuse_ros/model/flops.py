"""Parameter and FLOP counts per preset, against the paper's 1.57 B parameters / 135 GFLOPs.

FLOPs follow DiT's convention (the paper builds on DiT-XL/2, whose "118.6
Gflops" are multiply-accumulates): one multiply-add = 1 FLOP, counted for every
matmul and convolution of one denoiser forward at batch 1; norms, activations
and softmax are left out. ``torch.utils.flop_counter`` counts the same matmuls at
2 FLOPs per MAC; a test checks that this analytic count equals its count / 2.

Two MoE costs are given: ``routed`` (top-k experts per token, the training
path and what the paper reports) and ``dense`` (every expert on every token,
the export path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import ACTION, DEPTH, FORCE, RGB, TIMESTEP_FREQ_DIM, ModelConfig

#: The paper's numbers for the xl preset (§4.3 "Scaling Analysis", A.3, Table 6).
PAPER_XL_PARAMS = 1.57e9
PAPER_XL_GFLOPS = 135.0


@dataclass(frozen=True)
class Counts:
    params: int  # all parameters
    active_params: int  # parameters one token uses (shared + top-k experts, not the others)
    tokens: int
    gmacs_routed: float  # one forward, top-k routing (paper convention: "GFLOPs")
    gmacs_dense: float  # one forward, every expert on every token (export path)


def param_count(cfg: ModelConfig) -> int:
    """Exact parameter count of the model ``cfg`` builds (on the meta device: no memory)."""
    import torch

    from .dit import DeMUSE

    with torch.device("meta"):
        model = DeMUSE(cfg)
    return sum(p.numel() for p in model.parameters())


def forward_macs(cfg: ModelConfig, moe: Literal["routed", "dense"] = "routed") -> int:
    """Multiply-accumulates of one forward at batch 1 (see the module docstring)."""
    lay = cfg.layout()
    d, n, s = cfg.hidden_dim, lay.n_tokens, len(lay.slots)
    n_rgb, n_depth = lay.n(RGB), lay.n(DEPTH)
    macs = n_rgb * cfg.rgb_in_channels * cfg.rgb_patch**2 * d
    macs += n_depth * cfg.depth_patch**2 * d + lay.n(FORCE) * 6 * d + cfg.action_in_dim * d
    macs += 2 * (TIMESTEP_FREQ_DIM * d + d * d)  # two timestep embeddings
    macs += s * 2 * d  # mixing them into per-modality contexts
    adamn_hidden = cfg.adamn_hidden
    for layer in range(cfg.n_layers):
        macs += s * (d * adamn_hidden + adamn_hidden * 6 * d)  # AdaMN MLPs (per modality)
        macs += n * d * 3 * d + n * d * d + 2 * n * n * d  # qkv, proj, QKᵀ and AV
        if layer < cfg.moe_start_layer:
            macs += 2 * n * d * cfg.ffn_hidden
            continue
        experts = cfg.top_k if moe == "routed" else cfg.n_routed_experts
        macs += 2 * n * d * cfg.ffn_hidden + n * d * cfg.n_routed_experts  # shared + router
        macs += experts * 2 * n * d * cfg.expert_hidden  # (the dense path's gate mask is
        # an element-wise product: not counted)
    macs += s * (d * adamn_hidden + adamn_hidden * 2 * d)  # final AdaMN
    macs += n_rgb * d * cfg.rgb_patch**2 * cfg.rgb_out_channels
    macs += d * cfg.action_horizon * cfg.action_dim * (lay.n(ACTION) > 0)
    return macs


def counts(cfg: ModelConfig) -> Counts:
    total = param_count(cfg)
    expert = 2 * cfg.hidden_dim * cfg.expert_hidden + cfg.expert_hidden + cfg.hidden_dim
    idle = cfg.n_moe_layers * (cfg.n_routed_experts - cfg.top_k) * expert
    return Counts(
        params=total,
        active_params=total - idle,
        tokens=cfg.layout().n_tokens,
        gmacs_routed=forward_macs(cfg, "routed") / 1e9,
        gmacs_dense=forward_macs(cfg, "dense") / 1e9,
    )


def xl_vs_paper(cfg: ModelConfig, c: Counts) -> str:
    """Where the xl numbers differ from the paper's, and why (numbers from this counter)."""
    import dataclasses

    dense = forward_macs(dataclasses.replace(cfg, moe_start_layer=cfg.n_layers)) / 1e9
    expert = 2 * c.tokens * cfg.hidden_dim * cfg.expert_hidden * cfg.n_moe_layers / 1e9
    return (
        f"xl: {c.params / 1e9:.3f} B parameters vs the paper's 1.57 B "
        f"({c.params / PAPER_XL_PARAMS - 1:+.1%}); {c.gmacs_routed:.1f} GFLOPs (multiply-adds, "
        f"top-1) vs 135 ({c.gmacs_routed / PAPER_XL_GFLOPS - 1:+.1%}). Parameters: routed experts "
        "as wide as the dense FFN (the paper's 4E -> 8E step adds 0.6 B = 56 FFN-sized experts) "
        "and per-modality AdaMN MLPs of hidden width d/2 (A.2 gives none) reproduce 1.57 B. "
        f"FLOPs: the dense trunk (shared expert as its FFN) at {c.tokens} tokens is already "
        f"{dense:.1f}, and top-1 adds one FFN-sized routed expert in {cfg.n_moe_layers} layers "
        f"(+{expert:.1f}). The paper's own top-1 -> top-2 step (135 -> 174, +39) matches one "
        f"such expert (+{expert:.1f}), so both count multiply-adds alike, but its 135 is only "
        f"{PAPER_XL_GFLOPS - dense:+.1f} over that trunk: the paper's figure cannot include "
        "both the always-on shared expert and a routed expert of FFN width."
    )
