"""DeMUSE denoiser: token layout and shapes per preset, modality ids, AdaMN, missing modalities."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from demuse_ros.config import ConfigError
from demuse_ros.model.config import ACTION, DEPTH, FORCE, PRESETS, RGB, ModelConfig

torch = pytest.importorskip("torch", reason="the model tests need the 'model' extra (torch)")

from _model_helpers import randomize, run  # noqa: E402

from demuse_ros.model.dit import DeMUSE  # noqa: E402
from demuse_ros.model.export import example_inputs  # noqa: E402


def test_xl_layout_is_the_papers_274_tokens() -> None:
    lay = PRESETS["xl"].layout()
    assert lay.n_tokens == 274  # A.1: 256 RGB + 16 depth + 1 force + 1 action
    assert [(s.name, s.stop - s.start) for s in lay.segments] == [
        ("rgb", 256),
        ("depth", 16),
        ("force", 1),
        ("action", 1),
    ]
    assert lay.rgb_grid == 16 and lay.depth_grid == 4  # depth positions = RGB grid pooled by 4
    cfg = PRESETS["xl"]
    assert (cfg.n_layers, cfg.hidden_dim, cfg.n_heads, cfg.mlp_ratio) == (28, 1152, 16, 4.0)
    assert (cfg.moe_start_layer, cfg.n_routed_experts, cfg.top_k) == (14, 4, 1)


def test_xl_shapes_on_the_meta_device() -> None:
    """The paper-size model builds and runs on ``meta`` (no memory); eval mode never syncs
    with the host there, or ``.item()``/``.tolist()`` on a meta tensor would raise."""
    cfg = PRESETS["xl"]
    with torch.device("meta"):
        model = DeMUSE(cfg).eval()
        out = run(model, tuple(t.to("meta") for t in example_inputs(cfg, batch=2)))
    assert out.eps_rgb.shape == (2, 4, 32, 32)
    assert out.eps_action.shape == (2, cfg.action_horizon * cfg.action_dim)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / 1.57e9 - 1) < 0.01  # the paper's 1.57 B


@pytest.mark.parametrize("name", ["tiny", "cpu"])
def test_shapes_per_preset(name: str) -> None:
    cfg = PRESETS[name]
    model = DeMUSE(cfg)
    for train in (True, False):
        model.train(train)
        out = run(model, example_inputs(cfg, batch=3))
        assert out.eps_rgb.shape == (3, cfg.rgb_out_channels, cfg.latent_size, cfg.latent_size)
        assert out.eps_action.shape == (3, cfg.action_horizon * cfg.action_dim)
        assert out.aux_loss.shape == ()


def test_every_token_has_its_modality_id() -> None:
    cfg = PRESETS["tiny"]
    model = DeMUSE(cfg)
    lay = cfg.layout()
    ids = model.modality_ids.tolist()
    assert ids == [RGB] * lay.n(RGB) + [DEPTH] * lay.n(DEPTH) + [FORCE] + [ACTION]
    # AdaMN slots are the modality ids present, ascending: rgb 0, action 1, depth 2, force 3
    assert model.token_slot.tolist() == ids
    assert model.balance_mask.tolist() == [i != ACTION for i in ids]


def test_adamn_gives_each_modality_its_own_modulation() -> None:
    """Changing one modality's AdaMN MLP changes exactly that modality's tokens."""
    cfg = PRESETS["tiny"]
    model = randomize(DeMUSE(cfg))
    ctx = torch.randn(2, 4, cfg.hidden_dim)
    adamn = model.blocks[0].adamn
    before = torch.cat(adamn(ctx, model.token_slot), -1)
    with torch.no_grad():
        adamn.w2[FORCE] += 1.0  # slot FORCE (ids are the slots with all modalities)
    after = torch.cat(adamn(ctx, model.token_slot), -1)
    changed = (after - before).abs().amax(dim=(0, 2)) > 0  # per token
    assert changed.tolist() == (model.modality_ids == FORCE).tolist()


def test_contexts_give_each_stream_its_own_timestep() -> None:
    """rgb follows t_vision, action t_action, the clean conditions the mean of both."""
    model = randomize(DeMUSE(PRESETS["tiny"]))
    task = torch.tensor([1])
    c1, _ = model.contexts(torch.tensor([10]), torch.tensor([500]), task)
    c2, _ = model.contexts(torch.tensor([10]), torch.tensor([900]), task)
    moved = (c1 - c2).abs().amax(-1)[0] > 0  # per slot
    assert moved.tolist() == [False, True, True, True]  # rgb unchanged
    same, _ = model.contexts(torch.tensor([7]), torch.tensor([7]), task)
    assert torch.allclose(same[0, RGB], same[0, DEPTH], atol=1e-6)  # one t: one context


def test_fresh_blocks_are_the_identity() -> None:
    """adaLN-Zero: every block's gates start at zero."""
    cfg = PRESETS["tiny"]
    model = DeMUSE(cfg).eval()
    x = torch.randn(2, cfg.layout().n_tokens, cfg.hidden_dim)
    ctx = torch.randn(2, 4, cfg.hidden_dim)
    for block in model.blocks:
        y, _ = block(x, ctx, model.token_slot, None, model.balance_mask)
        assert torch.equal(y, x)


SUBSETS = [s for r in range(4) for s in itertools.combinations(("rgb", "depth", "force"), r)]


@pytest.mark.parametrize("modalities", SUBSETS, ids=lambda s: "+".join(s) or "action-only")
def test_any_subset_of_modalities(modalities: tuple[str, ...]) -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], modalities=modalities)
    model = DeMUSE(cfg)
    lay = cfg.layout()
    assert lay.n_tokens == 16 * ("rgb" in modalities) + len(modalities) - ("rgb" in modalities) + 1
    out = run(model, example_inputs(cfg, batch=2))
    assert (out.eps_rgb is None) == ("rgb" not in modalities)
    assert out.eps_action.shape == (2, cfg.action_horizon * cfg.action_dim)
    assert model.layout.slots == tuple(sorted(lay.slots))


def test_a_missing_modality_input_is_refused() -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], modalities=("rgb", "force"))
    model = DeMUSE(cfg)
    rgb, wrench, action, tv, ta, task = example_inputs(cfg)
    with pytest.raises(ValueError, match=r"depth input is not in model\.modalities"):
        model(rgb, torch.zeros(1, 1, 8, 8), wrench, action, tv, ta, task)
    with pytest.raises(ValueError, match="force input is configured"):
        model(rgb, None, None, action, tv, ta, task)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_heads": 5}, "multiple of n_heads"),
        ({"moe_start_layer": 3}, "moe_start_layer"),
        ({"top_k": 5}, "top_k"),
        ({"depth_patch": 3}, "depth_patch"),
        ({"image_size_px": 72}, "image_size_px"),
        ({"modalities": ("rgb", "rgb")}, "repeats"),
        ({"modalities": ("lidar",)}, "not one of"),
        ({"router": "hash"}, "not one of"),
    ],
)
def test_config_rejects_nonsense_with_a_fix(change: dict, message: str) -> None:
    with pytest.raises((ValueError, ConfigError), match=message):
        ModelConfig(**{**dataclasses.asdict(PRESETS["tiny"]), **change})
