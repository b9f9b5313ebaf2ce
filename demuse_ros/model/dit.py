"""The DeMUSE denoiser: a diffusion transformer over RGB, depth, force and action tokens.

Paper §3.2 (Figure 2) and appendix A, written in the manner of DiT's ``models.py``:
the heterogeneous embedding (:mod:`.embed`), ``n_layers`` blocks of AdaMN →
bidirectional attention → FFN or shared-expert sparse MoE (:mod:`.blocks`), and a
joint prediction head that outputs the noise of the future RGB latents and of the
future actions. The inference forward (eval mode) has no data-dependent Python
control flow and no host syncs, so it traces for ``torch.export`` and ONNX.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .blocks import AdaMN, DeMUSEBlock, FeedForward, FusedFFN, SparseMoE, modulate
from .config import ACTION, DEPTH, FORCE, RGB, ModelConfig
from .embed import HeterogeneousEmbedding, TimestepEmbedder

#: How each modality's context mixes the two diffusion timesteps (vision, action):
#: the noised streams take their own (DUST: "each stream receives its own timestep
#: embedding"); the clean conditions (depth, force) take the mean of both, which is
#: exactly the shared timestep when the two are equal (the paper's single-t setting).
_CTX_MIX = {RGB: (1.0, 0.0), ACTION: (0.0, 1.0), DEPTH: (0.5, 0.5), FORCE: (0.5, 0.5)}

#: MoDE expert cache: per block, None (dense FFN) or (start, stop, fused MLP) per segment.
ExpertCache = list[tuple[tuple[int, int, FusedFFN], ...] | None]


class StepCache(NamedTuple):
    """Everything one denoising step computes from (t_vision, t_action, task) alone.

    A DDIM sampler's timesteps are fixed, so for a given task these are the same in
    every chunk: built once (:meth:`DeMUSE.build_step_cache`), they leave a forward
    only the token path — the diffusion analogue of MoDE's expert caching.
    """

    ctx: torch.Tensor  # (B, S, d) per-modality contexts
    modulation: tuple[tuple[torch.Tensor, ...] | None, ...]  # per block: AdaMN's 6 × (B, N, d)
    final: tuple[torch.Tensor, ...] | None  # the head's AdaMN shift and scale, (B, N, d) each
    route_in: torch.Tensor | None  # (B, N, d) noise-router input, None for the token router
    experts: ExpertCache | None  # MoDE fused experts (noise router), or None


class DenoiserOutput(NamedTuple):
    eps_rgb: torch.Tensor | None  # (B, F·C, h, w) noise of the future RGB latents; None w/o RGB
    eps_action: torch.Tensor  # (B, H·A) noise of the future actions
    aux_loss: torch.Tensor  # () MoE load-balancing loss summed over MoE layers


class FinalLayer(nn.Module):
    """Joint prediction head: AdaMN (shift/scale) + per-modality linear heads (zero-init)."""

    def __init__(self, cfg: ModelConfig, n_slots: int) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.adamn = AdaMN(d, n_slots, cfg.adamn_hidden, 2)
        if "rgb" in cfg.modalities:
            self.rgb_head = nn.Linear(d, cfg.rgb_patch**2 * cfg.rgb_out_channels)
        self.action_head = nn.Linear(d, cfg.action_horizon * cfg.action_dim)

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        token_slot: torch.Tensor,
        modulation: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        shift, scale = self.adamn(ctx, token_slot) if modulation is None else modulation
        return modulate(self.norm(x), shift, scale)  # (B, N, d)


class DeMUSE(nn.Module):
    """The denoiser ``ε_θ(x_t, t_vision, t_action, task)`` (paper §3.1–3.2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layout = layout = cfg.layout()
        d, slots = cfg.hidden_dim, layout.slots
        slot_of = {m: i for i, m in enumerate(slots)}
        ids = layout.modality_ids()
        # Constant per-token tables: the token layout is fixed by the config.
        self.register_buffer("modality_ids", torch.tensor(ids), persistent=False)  # (N,)
        self.register_buffer(
            "token_slot", torch.tensor([slot_of[m] for m in ids]), persistent=False
        )  # (N,)
        self.register_buffer(
            "balance_mask", torch.tensor([m != ACTION for m in ids]), persistent=False
        )  # (N,) tokens counted by the load-balancing loss
        self.register_buffer(
            "ctx_mix", torch.tensor([_CTX_MIX[m] for m in slots]), persistent=False
        )  # (S, 2)
        self.embed = HeterogeneousEmbedding(cfg, layout)
        self.t_embed = TimestepEmbedder(d)
        self.task_embed = nn.Embedding(cfg.n_tasks, d)
        self.blocks = nn.ModuleList(
            DeMUSEBlock(d, cfg.n_heads, len(slots), cfg.adamn_hidden, self._ffn(cfg, i))
            for i in range(cfg.n_layers)
        )
        self.final = FinalLayer(cfg, len(slots))
        self.initialize_weights()

    @staticmethod
    def _ffn(cfg: ModelConfig, layer: int) -> FeedForward | SparseMoE:
        if layer < cfg.moe_start_layer:
            return FeedForward(cfg.hidden_dim, cfg.ffn_hidden)
        return SparseMoE(
            cfg.hidden_dim, cfg.ffn_hidden, cfg.expert_hidden, cfg.n_routed_experts, cfg.top_k
        )

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier linears, zero adaLN outputs (adaLN-Zero), zero heads."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        for name in ("rgb_proj", "depth_proj"):  # patch embeddings initialised like nn.Linear
            conv = getattr(self.embed, name, None)
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.task_embed.weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for block in self.blocks:
            if isinstance(block.ffn, SparseMoE):
                nn.init.normal_(block.ffn.router.weight, std=0.02)
        # AdaMN output layers start at zero in their constructor; the heads do here.
        for head in (getattr(self.final, "rgb_head", None), self.final.action_head):
            if head is not None:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def contexts(
        self, t_vision: torch.Tensor, t_action: torch.Tensor, task: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality contexts (timestep + task) and their timestep parts, ``(B, S, d)`` each."""
        e = torch.stack([self.t_embed(t_vision), self.t_embed(t_action)], dim=1)  # (B, 2, d)
        t_ctx = torch.einsum("sk,bkd->bsd", self.ctx_mix, e)  # (B, S, d)
        return t_ctx + self.task_embed(task)[:, None], t_ctx

    def forward(
        self,
        rgb: torch.Tensor | None,
        depth: torch.Tensor | None,
        wrench: torch.Tensor | None,
        action: torch.Tensor,
        t_vision: torch.Tensor,
        t_action: torch.Tensor,
        task: torch.Tensor,
        cache: StepCache | None = None,
    ) -> DenoiserOutput:
        """Predicts the noise of the future RGB latents and the future actions.

        Args:
            rgb: ``(B, C·(1+F), h, w)``: current latent (clean), then the noised future latents.
            depth: ``(B, 1, h, w)`` normalized depth at the latent resolution.
            wrench: ``(B, 6·K)`` normalized force/torque of the last K ticks (oldest first).
            action: ``(B, state_dim + H·A)``: normalized state, then the noised future actions.
            t_vision, t_action: ``(B,)`` diffusion timesteps of the two noised streams
                (equal unless DUST).
            task: ``(B,)`` task ids.
            cache: From :meth:`build_step_cache` for these timesteps and task (inference
                only; then ``t_vision``, ``t_action`` and ``task`` are not read).
        """
        for name, value in (("rgb", rgb), ("depth", depth), ("force", wrench)):
            if (name in self.cfg.modalities) != (value is not None):
                need = "is configured" if value is None else "is not in model.modalities"
                raise ValueError(f"{name} input {need}; pass {name} exactly when it is configured")
        x = self.embed(rgb, depth, wrench, action)  # (B, N, d)
        if cache is None:
            ctx, t_ctx = self.contexts(t_vision, t_action, task)  # (B, S, d) each
            cache = StepCache(ctx, (None,) * len(self.blocks), None, self._route_in(t_ctx), None)
        ctx, route_in = cache.ctx, cache.route_in
        aux = x.new_zeros(())
        for i, block in enumerate(self.blocks):
            experts = cache.experts[i] if cache.experts is not None else None
            x, block_aux = block(
                x, ctx, self.token_slot, route_in, self.balance_mask, cache.modulation[i], experts
            )
            aux = aux + block_aux
        x = self.final(x, ctx, self.token_slot, cache.final)  # (B, N, d)
        eps_rgb = None
        seg = self.layout.segment(RGB)
        if seg is not None:
            eps_rgb = self.unpatchify(self.final.rgb_head(x[:, seg.start : seg.stop]))
        a = self.layout.segment(ACTION).start
        eps_action = self.final.action_head(x[:, a])  # (B, H·A)
        return DenoiserOutput(eps_rgb, eps_action, aux)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, g², p²·C)`` → ``(B, C, g·p, g·p)`` (DiT)."""
        p, g, c = self.cfg.rgb_patch, self.layout.rgb_grid, self.cfg.rgb_out_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def _route_in(self, t_ctx: torch.Tensor) -> torch.Tensor | None:
        """The noise router's per-token input: its modality's timestep embedding."""
        return t_ctx[:, self.token_slot] if self.cfg.router == "noise" else None  # (B, N, d)

    @torch.no_grad()
    def build_step_cache(
        self,
        t_vision: float,
        t_action: float,
        task: torch.Tensor,
        experts: ExpertCache | None = None,
    ) -> StepCache:
        """Precomputes contexts, every block's AdaMN modulation and the router input for one
        denoising step and a batch of tasks ``(B,)``; ``experts`` from
        :meth:`build_expert_cache` for the same step (MoDE) or None."""
        B = task.shape[0]
        tv = torch.full((B,), t_vision, device=task.device)
        ta = torch.full((B,), t_action, device=task.device)
        ctx, t_ctx = self.contexts(tv, ta, task)
        modulation = tuple(tuple(b.adamn(ctx, self.token_slot)) for b in self.blocks)
        final = tuple(self.final.adamn(ctx, self.token_slot))
        return StepCache(ctx, modulation, final, self._route_in(t_ctx), experts)

    @torch.no_grad()
    def build_expert_cache(
        self, t_vision: float, t_action: float, combos: dict[int, dict] | None = None
    ) -> ExpertCache:
        """MoDE expert caching (seed 002): fused experts for one denoising step.

        With the noise router the routing depends only on the timesteps, so before
        sampling the selected experts of every MoE layer are fused with the shared
        expert into one MLP per modality segment. ``combos`` (layer → memo) lets the
        steps of one sampler share fused weight matrices.

        Raises:
            ValueError: The model routes on tokens, so routing is not known in advance.
        """
        if self.cfg.router != "noise":
            raise ValueError("expert caching needs router='noise' (MoDE); this model routes tokens")
        combos = {} if combos is None else combos
        dev = self.ctx_mix.device
        _, t_ctx = self.contexts(
            torch.tensor([t_vision], device=dev),
            torch.tensor([t_action], device=dev),
            torch.zeros(1, dtype=torch.long, device=dev),
        )  # (1, S, d); the router ignores the task
        slot_of = {m: i for i, m in enumerate(self.layout.slots)}
        cache: ExpertCache = []
        for i, block in enumerate(self.blocks):
            if not isinstance(block.ffn, SparseMoE):
                cache.append(None)
                continue
            fused = block.ffn.fuse(t_ctx[0], combos.setdefault(i, {}))
            cache.append(
                tuple((s.start, s.stop, fused[slot_of[s.modality]]) for s in self.layout.segments)
            )
        return cache
