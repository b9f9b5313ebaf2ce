"""Model and diffusion configs, the three presets, and the token layout they imply.

Pure dataclasses (no torch), so ``demuse --help``, the FLOP counter and config
validation work without the ``model`` extra. Values the paper's text extraction
lost (``seeds/README.md``) are config values whose docs say what we chose and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from demuse_ros.config import ConfigError, param, validate_fields

#: Modality ids carried by every token (paper A.1: "each token is assigned a unique
#: modality_id"; A.3 names action tokens modality_id = 1).
RGB, ACTION, DEPTH, FORCE = 0, 1, 2, 3
MODALITY_NAMES = {RGB: "rgb", ACTION: "action", DEPTH: "depth", FORCE: "force"}
#: The optional observation modalities; the action token is always present.
OPTIONAL_MODALITIES = ("rgb", "depth", "force")
#: The image autoencoder's spatial downsampling (paper A.1: "8× spatial downsampling").
AE_DOWNSAMPLE = 8
#: Size of the sinusoidal timestep features fed to the timestep MLP (as in DiT).
TIMESTEP_FREQ_DIM = 256


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the DeMUSE denoiser (paper §3.2–3.4, A.1–A.3, Table 7)."""

    image_size_px: int = param(
        256,
        doc="RGB and depth frames are resized to this square size before encoding",
        unit="px",
        range=(16, 4096),
    )
    latent_channels: int = param(
        4, doc="channels of the image autoencoder's latent (4 for SD-VAE)", range=(1, 64)
    )
    n_future_frames: int = param(
        1,
        doc="future RGB frames predicted jointly with the actions, stacked with the current "
        "frame along channels (the paper's horizon was lost in extraction; 1 keeps 274 tokens)",
        range=(1, 16),
    )
    rgb_patch: int = param(2, doc="patch size on the RGB latent (paper A.1)", range=(1, 16))
    rgb_summary: bool = param(
        False,
        doc="add a linear read-out of the whole current-frame latent to the proprio/action "
        "token (not in the paper): where a small object is becomes one matrix product away "
        "instead of something attention over patch tokens must learn",
    )
    depth_patch: int = param(
        8,
        doc="patch size on the depth map, taken at the latent resolution (paper A.1)",
        range=(1, 64),
    )
    state_dim: int = param(
        7, doc="proprio state size: TCP xyz (m) + rotation vector (rad) + gripper width (m)"
    )
    action_dim: int = param(7, doc="action size: absolute TCP target (xyz, rotvec) + gripper")
    action_horizon: int = param(
        16, doc="future actions per chunk (at 10 Hz: 1.6 s)", range=(1, 256)
    )
    n_tasks: int = param(
        16,
        doc="size of the task-embedding table (the paper's language encoder stands in as a "
        "task id; the global context is timestep + task embedding, §3.3)",
        range=(1, 100000),
    )
    hidden_dim: int = param(1152, doc="token width d", range=(8, 16384))
    n_layers: int = param(28, doc="transformer blocks", range=(1, 256))
    n_heads: int = param(16, doc="attention heads", range=(1, 256))
    mlp_ratio: float = param(
        4.0, doc="dense FFN and shared-expert width / hidden_dim", range=(0.25, 16.0)
    )
    moe_start_layer: int = param(
        14,
        doc="first block whose FFN is the sparse MoE; n_layers means no MoE",
        range=(0, 256),
    )
    n_routed_experts: int = param(4, doc="routed experts per MoE layer", range=(1, 64))
    top_k: int = param(1, doc="routed experts per token (paper: top-1 default)", range=(1, 64))
    expert_mlp_ratio: float = param(
        4.0,
        doc="routed-expert width / hidden_dim (the paper's 4E → 8E growth, 0.6 B for 56 "
        "experts, means each routed expert is as wide as the dense FFN)",
        range=(0.25, 16.0),
    )
    router: Literal["token", "noise"] = param(
        "token",
        doc="token: the router sees each token's hidden state (paper §3.4); noise: it sees "
        "only the modality's timestep embedding (MoDE, seed 002), which allows expert caching",
        choices=("token", "noise"),
    )
    adamn_hidden_ratio: float = param(
        0.5,
        doc="hidden width of each per-modality AdaMN MLP / hidden_dim (A.2 gives no number; "
        "d/2 is the width at which xl has the paper's 1.57 B parameters)",
        range=(0.01, 8.0),
    )
    wrench_history: int = param(
        1,
        doc="control ticks of force/torque the force token sees: the current one and the "
        "K-1 before it, oldest first (1: the current tick only). How long a contact has "
        "lasted, or whether the force is still rising, is not in one tick",
        range=(1, 64),
    )
    modalities: tuple[str, ...] = param(
        OPTIONAL_MODALITIES,
        doc="observation modalities present (any subset of rgb, depth, force); the "
        "proprio+action token is always present",
        choices=OPTIONAL_MODALITIES,
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"= {list(self.modalities)} repeats a modality", key="modalities")
        if self.hidden_dim % self.n_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be a multiple of n_heads ({self.n_heads})"
            )
        if (self.hidden_dim // self.n_heads) % 2:
            raise ValueError("hidden_dim / n_heads must be even (sinusoidal features per head)")
        if self.hidden_dim % 4:
            raise ValueError("hidden_dim must be a multiple of 4 (2-D sinusoidal positions)")
        if self.image_size_px % (AE_DOWNSAMPLE * self.rgb_patch):
            raise ValueError(
                f"image_size_px ({self.image_size_px}) must be a multiple of "
                f"{AE_DOWNSAMPLE} × rgb_patch = {AE_DOWNSAMPLE * self.rgb_patch}"
            )
        if "depth" in self.modalities:
            if self.latent_size % self.depth_patch:
                raise ValueError(
                    f"the depth map is patchified at the latent resolution {self.latent_size}; "
                    f"depth_patch ({self.depth_patch}) must divide it"
                )
            if self.depth_patch % self.rgb_patch:
                raise ValueError(
                    f"depth positions are the RGB grid pooled by depth_patch / rgb_patch; "
                    f"depth_patch ({self.depth_patch}) must be a multiple of rgb_patch "
                    f"({self.rgb_patch})"
                )
        if self.moe_start_layer > self.n_layers:
            raise ValueError(
                f"moe_start_layer ({self.moe_start_layer}) must be <= n_layers "
                f"({self.n_layers}); n_layers means no MoE"
            )
        if self.top_k > self.n_routed_experts:
            raise ValueError(
                f"top_k ({self.top_k}) must be <= n_routed_experts ({self.n_routed_experts})"
            )

    # ------------------------------------------------------------ derived sizes
    @property
    def latent_size(self) -> int:
        """Side of the (square) latent grid, image_size_px / 8."""
        return self.image_size_px // AE_DOWNSAMPLE

    @property
    def rgb_in_channels(self) -> int:
        """Channels of the stacked RGB latent: current frame + future frames."""
        return self.latent_channels * (1 + self.n_future_frames)

    @property
    def rgb_out_channels(self) -> int:
        """Channels whose noise the head predicts: the future frames only."""
        return self.latent_channels * self.n_future_frames

    @property
    def action_in_dim(self) -> int:
        """Size of the proprio + future-actions vector embedded as one token (A.1)."""
        return self.state_dim + self.action_horizon * self.action_dim

    @property
    def wrench_in_dim(self) -> int:
        """Size of the force token's input: ``wrench_history`` wrenches of 6."""
        return 6 * self.wrench_history

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.moe_start_layer

    @property
    def ffn_hidden(self) -> int:
        return round(self.hidden_dim * self.mlp_ratio)

    @property
    def expert_hidden(self) -> int:
        return round(self.hidden_dim * self.expert_mlp_ratio)

    @property
    def adamn_hidden(self) -> int:
        return max(1, round(self.hidden_dim * self.adamn_hidden_ratio))

    def layout(self) -> TokenLayout:
        return TokenLayout.from_config(self)


@dataclass(frozen=True)
class Segment:
    """A contiguous run of tokens of one modality in the canonical order."""

    modality: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return MODALITY_NAMES[self.modality]


@dataclass(frozen=True)
class TokenLayout:
    """Where each modality's tokens sit in the sequence (canonical order, paper A.1).

    Order: RGB, depth, force, action — the paper's "256 RGB + 16 Depth + 1 Force +
    1 Action". Absent modalities have no tokens. ``slots`` lists the modalities
    present in id order; AdaMN has one MLP per slot.
    """

    segments: tuple[Segment, ...]
    rgb_grid: int
    depth_grid: int

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TokenLayout:
        rgb_grid = cfg.latent_size // cfg.rgb_patch
        depth_grid = cfg.latent_size // cfg.depth_patch if "depth" in cfg.modalities else 0
        counts = [
            (RGB, rgb_grid**2 if "rgb" in cfg.modalities else 0),
            (DEPTH, depth_grid**2),
            (FORCE, 1 if "force" in cfg.modalities else 0),
            (ACTION, 1),
        ]
        segments, start = [], 0
        for modality, n in counts:
            if n:
                segments.append(Segment(modality, start, start + n))
                start += n
        return cls(tuple(segments), rgb_grid, depth_grid)

    @property
    def n_tokens(self) -> int:
        return self.segments[-1].stop

    @property
    def slots(self) -> tuple[int, ...]:
        """Modality ids present, ascending; the index into AdaMN's per-modality MLPs."""
        return tuple(sorted(s.modality for s in self.segments))

    def segment(self, modality: int) -> Segment | None:
        return next((s for s in self.segments if s.modality == modality), None)

    def n(self, modality: int) -> int:
        seg = self.segment(modality)
        return 0 if seg is None else seg.stop - seg.start

    def modality_ids(self) -> list[int]:
        """The ``modality_id`` of every token, in sequence order."""
        return [s.modality for s in self.segments for _ in range(s.start, s.stop)]


@dataclass(frozen=True)
class DiffusionConfig:
    """DDPM training and DDIM sampling (paper §3.5, B.3; DUST seeds 001/003)."""

    train_timesteps: int = param(
        1000, doc="DDPM diffusion steps in training (B.3)", range=(2, 100000)
    )
    beta_start: float = param(
        1e-4,
        doc="first beta of the linear schedule (B.3's value was lost; DDPM's 1e-4)",
        range=(1e-8, 0.5),
    )
    beta_end: float = param(
        0.02,
        doc="last beta of the linear schedule (B.3's value was lost; DDPM's 0.02)",
        range=(1e-8, 0.999),
    )
    ddim_steps: int = param(
        16, doc="deterministic DDIM steps for the action stream at inference", range=(1, 1000)
    )
    rgb_loss_weight: float = param(
        1.0, doc="weight of the future-RGB-latent noise MSE (λ_v in Eq. 3)", range=(0.0, None)
    )
    action_loss_weight: float = param(
        10.0,
        doc="weight of the future-action noise MSE (λ_a in Eq. 3; B.3 sets it > 1, the value "
        "was lost; 10 balances one action token against the RGB tokens' many elements)",
        range=(0.0, None),
    )
    aux_loss_weight: float = param(
        0.01, doc="weight of the MoE load-balancing loss (A.3)", range=(0.0, None)
    )
    clip_action_x0: float = param(
        1.0,
        doc="DDIM clips its action x0 estimate to ±this and recomputes ε from it (actions "
        "are min-max normalized to [-1, 1]; Diffusion Policy's clip_sample); 0 turns it off",
        range=(0.0, None),
    )
    clip_rgb_x0: float = param(
        0.0,
        doc="the same for the future RGB latents (unit variance, unbounded: off by default)",
        range=(0.0, None),
    )
    dust: bool = param(
        False,
        doc="DUST: sample the vision and action timesteps independently in training (the "
        "model's AdaMN always receives each modality's own timestep)",
    )
    dust_q: int = param(
        1,
        doc="DUST asynchronous sampling: vision DDIM steps per action step (1 = synchronous)",
        range=(1, 64),
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.beta_end < self.beta_start:
            raise ValueError(f"beta_end ({self.beta_end}) must be >= beta_start")
        if self.ddim_steps * self.dust_q > self.train_timesteps:
            raise ValueError(
                f"ddim_steps × dust_q ({self.ddim_steps * self.dust_q}) must not exceed "
                f"train_timesteps ({self.train_timesteps})"
            )


@dataclass(frozen=True)
class PolicyConfig:
    """Everything a checkpoint needs to rebuild the denoiser and its sampler."""

    model: ModelConfig = param(default_factory=ModelConfig, doc="the denoiser")
    diffusion: DiffusionConfig = param(default_factory=DiffusionConfig, doc="the diffusion")


#: preset name -> model config (STYLE §6: a small explicit registry).
PRESETS: dict[str, ModelConfig] = {
    # The paper (Table 7, A.1): 28 × 1152, 16 heads, MLP ×4, MoE from layer 14 with
    # 1 shared + 4 routed experts, 256×256 RGB → 32×32 latent → 256 + 16 + 1 + 1 = 274 tokens.
    "xl": ModelConfig(),
    # A 10 Hz closed loop on 2 CPU cores: 64×64 frames (16 + 1 + 1 + 1 = 19 tokens),
    # d = 128, 4 blocks (MoE with 1 shared + 4 routed experts in the last 2), 8 DDIM
    # steps: a chunk takes ~30 ms with step caching (models/README.md has the
    # measurements; d = 192 took ~49 ms, 16 steps twice as long).
    "cpu": ModelConfig(
        image_size_px=64,
        hidden_dim=128,
        n_layers=4,
        n_heads=4,
        moe_start_layer=2,
        n_routed_experts=4,
    ),
    # Unit tests: every feature, smallest sizes.
    "tiny": ModelConfig(
        image_size_px=64,
        hidden_dim=64,
        n_layers=2,
        n_heads=4,
        moe_start_layer=1,
        n_routed_experts=4,
        action_horizon=4,
        n_tasks=4,
    ),
}

#: preset name -> diffusion config; DDIM steps are where presets differ.
DIFFUSION_PRESETS: dict[str, DiffusionConfig] = {
    "xl": DiffusionConfig(),
    "cpu": DiffusionConfig(ddim_steps=8),
    "tiny": DiffusionConfig(ddim_steps=8),
}


def preset(name: str, **model_overrides: object) -> PolicyConfig:
    """The :class:`PolicyConfig` of preset ``name``, with optional model field overrides.

    Raises:
        ConfigError: Unknown preset (names the known ones) or a bad override.
    """
    if name not in PRESETS:
        raise ConfigError(
            f"= {name!r} is not a preset; choose one of {', '.join(PRESETS)}", key="preset"
        )
    model = dataclasses.replace(PRESETS[name], **model_overrides) if model_overrides else None
    return PolicyConfig(model=model or PRESETS[name], diffusion=DIFFUSION_PRESETS[name])
