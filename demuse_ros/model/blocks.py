"""The transformer block: AdaMN, bidirectional attention, FFN or shared-expert sparse MoE.

Paper §3.2–3.4 and A.2–A.3. Every ``forward`` here is free of data-dependent
Python control flow and host syncs, except :meth:`SparseMoE.routed_sparse`, the
training path, which gathers each expert's tokens (and so reads their counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation (DiT): ``x · (1 + scale) + shift``, all ``(B, N, d)``."""
    return x * (1 + scale) + shift


def _xavier_(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(w, -bound, bound)


class AdaMN(nn.Module):
    """Adaptive Modality-specific Normalization (paper §3.3, Eq. 1, A.2 Algorithm 1).

    An affine-free LayerNorm is applied by the caller; this module produces the
    per-token modulation. Each modality ``m`` has its own 2-layer SiLU MLP
    ``SiLU → Linear(d, h) → SiLU → Linear(h, n·d)`` of its context ``c_m``
    (timestep + task embedding, §3.3), giving ``n`` vectors (shift/scale/gate for
    attention and FFN: n = 6; shift/scale for the head: n = 2). The MLPs are
    stored stacked, one row per modality slot, so all of them run as two batched
    matmuls; tokens pick their modality's row through a constant index
    (``token_slot``). The last layer starts at zero (adaLN-Zero, DiT §3.2), so every
    block starts as the identity.
    """

    def __init__(self, hidden_dim: int, n_slots: int, mlp_hidden: int, n_chunks: int) -> None:
        super().__init__()
        self.n_chunks = n_chunks
        self.w1 = nn.Parameter(torch.empty(n_slots, hidden_dim, mlp_hidden))
        self.b1 = nn.Parameter(torch.zeros(n_slots, mlp_hidden))
        self.w2 = nn.Parameter(torch.zeros(n_slots, mlp_hidden, n_chunks * hidden_dim))
        self.b2 = nn.Parameter(torch.zeros(n_slots, n_chunks * hidden_dim))
        _xavier_(self.w1, hidden_dim, mlp_hidden)

    def forward(self, ctx: torch.Tensor, token_slot: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``ctx (B, S, d)``, ``token_slot (N,)`` → ``n_chunks`` tensors of ``(B, N, d)``."""
        c = F.silu(ctx).transpose(0, 1)  # (S, B, d): one batched matmul per modality slot
        h = torch.baddbmm(self.b1[:, None], c, self.w1)  # (S, B, h)
        mod = torch.baddbmm(self.b2[:, None], F.silu(h), self.w2)  # (S, B, n·d)
        return mod[token_slot].transpose(0, 1).chunk(self.n_chunks, dim=-1)  # n × (B, N, d)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention over the whole sequence (no mask)."""

    def __init__(self, hidden_dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, N, D/H)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D/H)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class FeedForward(nn.Module):
    """The dense FFN of DiT: ``Linear → GELU(tanh) → Linear``."""

    def __init__(self, hidden_dim: int, ffn_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, ffn_hidden)
        self.fc2 = nn.Linear(ffn_hidden, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class FusedFFN(NamedTuple):
    """One MoDE-cached MLP: the shared expert and the selected routed experts side by side.

    ``y = (GELU(x W1ᵀ + b1) ⊙ scale) W2ᵀ + b2`` with ``W1 = [W1_shared; W1_e…]``
    ``(H, d)``, ``W2 = [W2_shared, W2_e…]`` ``(d, H)``, ``scale`` = 1 on the shared
    part and the gate weight on each routed part, ``b2`` = shared bias + Σ gate ·
    expert bias. Equal to shared(x) + Σ gate_e · expert_e(x).
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    scale: torch.Tensor
    b2: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = F.gelu(F.linear(x, self.w1, self.b1), approximate="tanh") * self.scale
        return F.linear(h, self.w2, self.b2)


class SparseMoE(nn.Module):
    """Sparse MoE with one always-on shared expert (paper §3.4, Eq. 2, A.3 Algorithm 2).

    ``y = shared(x) + Σ_{e ∈ top-k} p_e(x) · expert_e(x)`` with ``p = softmax(router(r))``,
    where ``r`` is the token's hidden state (``router="token"``) or its modality's
    timestep embedding (``router="noise"``, MoDE). As in Switch / DeepSeekMoE the
    gate weights are the softmax probabilities of the selected experts, not
    renormalized, so the router gets a gradient through the output.

    Two numerically equal paths compute the routed part: :meth:`routed_sparse`
    (training: each expert runs on its own tokens) and :meth:`routed_dense`
    (inference and export: every expert runs on every token and a mask of gate
    weights combines them; no host syncs, static shapes — at these token counts
    the cost is arithmetic, not weight traffic, as every expert's weights are read
    once either way).
    """

    def __init__(
        self, hidden_dim: int, shared_hidden: int, expert_hidden: int, n_experts: int, top_k: int
    ) -> None:
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        self.shared = FeedForward(hidden_dim, shared_hidden)
        self.router = nn.Linear(hidden_dim, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden_dim, expert_hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, expert_hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, expert_hidden, hidden_dim))
        self.b2 = nn.Parameter(torch.zeros(n_experts, hidden_dim))
        _xavier_(self.w1, hidden_dim, expert_hidden)
        _xavier_(self.w2, expert_hidden, hidden_dim)
        nn.init.normal_(self.router.weight, std=0.02)

    def gate(self, route_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities ``(..., E)`` (float32) and the top-k weights and indices."""
        probs = self.router(route_in).float().softmax(dim=-1)
        weights, idx = probs.topk(self.top_k, dim=-1)  # (..., k)
        return probs, weights, idx

    def forward(
        self, x: torch.Tensor, route_in: torch.Tensor, balance_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, N, d)`` → ``(y (B, N, d), load-balancing loss ())``.

        Training mode takes the sparse path and computes the loss; eval mode (inference,
        export) takes the dense path and returns a loss of 0.
        """
        probs, weights, idx = self.gate(route_in)  # (B, N, E), (B, N, k), (B, N, k)
        if self.training:
            routed = self.routed_sparse(x, weights, idx)
            aux = self.balance_loss(probs, idx, balance_mask)
        else:  # inference needs no balancing statistics
            routed = self.routed_dense(x, weights, idx)
            aux = x.new_zeros(())
        return self.shared(x) + routed, aux

    def routed_dense(
        self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """All experts on all tokens, combined with a mask of gate weights: ``(B, N, d)``.

        Two batched matmuls over the expert axis read the stacked weights in place.
        """
        B, N, D = x.shape
        combine = torch.zeros(*idx.shape[:-1], self.n_experts, dtype=x.dtype, device=x.device)
        combine = combine.scatter(-1, idx, weights.to(x.dtype))  # (B, N, E), 0 where unrouted
        xe = x.reshape(1, B * N, D).expand(self.n_experts, B * N, D)  # (E, T, d), a view
        h = torch.baddbmm(self.b1[:, None], xe, self.w1)  # (E, T, h)
        y = torch.baddbmm(self.b2[:, None], F.gelu(h, approximate="tanh"), self.w2)  # (E, T, d)
        mask = combine.reshape(B * N, self.n_experts).T[..., None]  # (E, T, 1)
        return (y * mask).sum(dim=0).reshape(B, N, D)

    def routed_sparse(
        self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """Each expert on the tokens routed to it (training path; syncs for the counts)."""
        B, N, D = x.shape
        xf = x.reshape(B * N, D)  # (T, d)
        flat_e = idx.reshape(-1)  # (T·k,)
        flat_w = weights.reshape(-1).to(x.dtype)
        token = torch.arange(B * N, device=x.device).repeat_interleave(self.top_k)
        order = torch.argsort(flat_e, stable=True)
        counts = torch.bincount(flat_e, minlength=self.n_experts).tolist()
        out = torch.zeros_like(xf)
        for e, sel in enumerate(order.split(counts)):
            if not counts[e]:
                continue
            tok = token[sel]
            h = F.gelu(xf[tok] @ self.w1[e] + self.b1[e], approximate="tanh")  # (n_e, h)
            out.index_add_(0, tok, (h @ self.w2[e] + self.b2[e]) * flat_w[sel, None])
        return out.reshape(B, N, D)

    def balance_loss(
        self, probs: torch.Tensor, idx: torch.Tensor, balance_mask: torch.Tensor
    ) -> torch.Tensor:
        """Switch-Transformer load balancing over the masked tokens only (paper Eq. 4, A.3).

        ``E · Σ_e f_e · P_e`` with ``f_e`` the fraction of the tokens' top-k
        assignments that went to expert ``e`` and ``P_e`` their mean router
        probability; 1 when balanced. ``balance_mask (N,)`` excludes the action
        token (A.3: "we exclude Action Tokens (modality_id=1)").
        """
        m = balance_mask.to(probs.dtype)[None, :, None]  # (1, N, 1)
        n_tokens = probs.shape[0] * balance_mask.to(probs.dtype).sum()
        assigned = F.one_hot(idx, self.n_experts).to(probs.dtype).sum(dim=-2)  # (B, N, E)
        frac = (assigned * m).sum(dim=(0, 1)) / (n_tokens * self.top_k)  # (E,)
        mean_prob = (probs * m).sum(dim=(0, 1)) / n_tokens  # (E,)
        return self.n_experts * (frac * mean_prob).sum()

    @torch.no_grad()
    def fuse(
        self, slot_route_in: torch.Tensor, combos: dict[tuple[int, ...], tuple] | None = None
    ) -> list[FusedFFN]:
        """MoDE expert caching: one :class:`FusedFFN` per modality slot for one noise level.

        Args:
            slot_route_in: ``(S, d)`` router input per slot (timestep embeddings, no batch:
                every sample in a sampling batch is at the same step).
            combos: Memo of fused weight matrices per selected-expert set, shared
                across denoising steps so each set is concatenated once.
        """
        combos = {} if combos is None else combos
        _, weights, idx = self.gate(slot_route_in)  # (S, k) each
        fused = []
        for w_s, e_s in zip(weights.tolist(), idx.tolist(), strict=True):
            key = tuple(e_s)
            if key not in combos:
                combos[key] = (
                    torch.cat([self.shared.fc1.weight] + [self.w1[e].T for e in key]),
                    torch.cat([self.shared.fc1.bias] + [self.b1[e] for e in key]),
                    torch.cat([self.shared.fc2.weight] + [self.w2[e].T for e in key], dim=1),
                )
            w1, b1, w2 = combos[key]
            ones = torch.ones_like(self.shared.fc1.bias)
            gates = list(zip(w_s, key, strict=True))
            scale = torch.cat([ones] + [torch.full_like(self.b1[e], g) for g, e in gates])
            b2 = self.shared.fc2.bias + sum(g * self.b2[e] for g, e in gates)
            fused.append(FusedFFN(w1.contiguous(), b1, w2.contiguous(), scale, b2))
        return fused


class DeMUSEBlock(nn.Module):
    """Modulate–Synthesize–Scale (paper §3.2): AdaMN → attention → AdaMN → FFN/MoE, gated."""

    def __init__(
        self,
        hidden_dim: int,
        n_heads: int,
        n_slots: int,
        adamn_hidden: int,
        ffn: FeedForward | SparseMoE,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_dim, n_heads)
        self.norm2 = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.ffn = ffn
        self.adamn = AdaMN(hidden_dim, n_slots, adamn_hidden, 6)

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ffn, SparseMoE)

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        token_slot: torch.Tensor,
        route_in: torch.Tensor | None,
        balance_mask: torch.Tensor,
        modulation: Sequence[torch.Tensor] | None = None,
        cached: Sequence[tuple[int, int, FusedFFN]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, N, d)``, ``ctx (B, S, d)`` → ``(x (B, N, d), aux loss ())``.

        ``route_in``: the MoE router's input ``(B, N, d)``; None routes on the tokens
        themselves (the FFN input). ``modulation``: this block's six AdaMN outputs when
        precomputed for the step (they depend only on timesteps and task). ``cached``:
        MoDE fused experts as ``(start, stop, ffn)`` per token segment (replaces routing;
        valid only with the noise router at the step it was built for).
        """
        if modulation is None:
            modulation = self.adamn(ctx, token_slot)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, N, d)
        h = modulate(self.norm2(x), shift2, scale2)  # (B, N, d)
        aux = x.new_zeros(())
        if cached is not None:
            h = torch.cat([ffn(h[:, a:b]) for a, b, ffn in cached], dim=1)
        elif isinstance(self.ffn, SparseMoE):
            h, aux = self.ffn(h, h if route_in is None else route_in, balance_mask)
        else:
            h = self.ffn(h)
        return x + gate2 * h, aux
