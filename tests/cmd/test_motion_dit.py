"""CMD motion DiT: token layout (cmd-paper.md §4.2), parameter counts (§4.3), MACs, conditioning, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cmdbench.cmd.motion_dit import MOTION_DIT_CONFIGS, MotionDiT, motion_dit_config

# Paper settings: (size, kwargs, motion tokens, content tokens).
PAPER_SETTINGS = {
    "ucf101": ("DiT-L/2", dict(num_classes=101), 256, 256),
    "webvid-sd15": ("DiT-XL/2", dict(text_embed_dim=1024, content_channels=4), 256, 256),
    "webvid-sd21": (
        "DiT-XL/2",
        dict(text_embed_dim=1024, motion_width=96, content_channels=4, content_size=(64, 128), content_patch_size=8),
        384, 128,
    ),
}

TINY = dict(motion_channels=4, num_frames=8, motion_width=16, patch_size=2, content_channels=3, content_size=(16, 16),
            content_patch_size=4, hidden_size=32, depth=2, num_heads=4)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_dit(seed: int = 0, perturb: bool = True, **overrides) -> MotionDiT:
    """A tiny MotionDiT; ``perturb`` randomises the zero-initialised adaLN/output weights so inputs matter."""
    torch.manual_seed(seed)
    model = MotionDiT(**{**TINY, **overrides}).eval()
    if perturb:
        with torch.no_grad():
            for block in model.blocks:
                block.modulation[1].weight.normal_(std=0.05)
            model.final_layer.linear.weight.normal_(std=0.05)
            model.final_layer.modulation[1].weight.normal_(std=0.05)
    return model


def tiny_inputs(batch: int = 2):
    return torch.randn(batch, 4, 8, 16), torch.randint(0, 1000, (batch,)), torch.randn(batch, 3, 16, 16)


def reference_parameter_count(depth: int, hidden: int, in_ch: int, out_ch: int, patch: int, content_ch: int,
                              content_patch: int, cond_params: int) -> int:
    """Independent count of the original DiT layout plus the content patch embedding (no positions: fixed)."""
    block = (4 * hidden * hidden + 4 * hidden) + (8 * hidden * hidden + 5 * hidden) + (6 * hidden * hidden + 6 * hidden)
    embeds = in_ch * patch * patch * hidden + hidden + content_ch * content_patch**2 * hidden + hidden
    timestep = 256 * hidden + hidden + hidden * hidden + hidden
    final = 2 * hidden * hidden + 2 * hidden + hidden * patch * patch * out_ch + patch * patch * out_ch
    return depth * block + embeds + timestep + final + cond_params


# -- full size on meta -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", sorted(PAPER_SETTINGS))
def test_paper_settings_token_counts_and_shapes_on_meta(setting):
    size, kwargs, motion_tokens, content_tokens = PAPER_SETTINGS[setting]
    with torch.device("meta"):
        model = MotionDiT(**motion_dit_config(size, **kwargs))
        d, length, width = model.sample_shape
        cond = (
            {"class_labels": torch.tensor([101])}
            if "num_classes" in kwargs
            else {"encoder_hidden_states": torch.empty(1, 77, 1024)}
        )
        out = model(torch.empty(1, d, length, width), torch.tensor([999]), torch.empty(1, *model.content_shape), **cond)
    assert (model.num_motion_tokens, model.num_content_tokens) == (motion_tokens, content_tokens)
    assert motion_tokens + content_tokens == 512
    assert out.shape == (1, d, length, width)


def test_parameter_counts_match_the_paper_estimates():
    """cmd-paper.md §4.3: MotionDiT-L/2 (UCF) ~457M; MotionDiT-XL/2 (WebVid, with 1024->1152 text proj) ~675M."""
    with torch.device("meta"):
        ucf = MotionDiT(**motion_dit_config("DiT-L/2", num_classes=101))
        webvid = MotionDiT(**motion_dit_config("DiT-XL/2", **PAPER_SETTINGS["webvid-sd21"][1]))
    n_ucf = sum(p.numel() for p in ucf.parameters())
    n_webvid = sum(p.numel() for p in webvid.parameters())
    assert n_ucf == reference_parameter_count(24, 1024, 8, 8, 2, 3, 4, cond_params=102 * 1024)
    assert n_webvid == reference_parameter_count(28, 1152, 8, 8, 2, 4, 8, cond_params=1024 * 1152 + 1152)
    assert n_ucf == pytest.approx(457e6, rel=0.01)
    assert n_webvid == pytest.approx(675e6, rel=0.01)


def test_named_sizes():
    assert MOTION_DIT_CONFIGS["DiT-L/2"] == {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 2}
    assert MOTION_DIT_CONFIGS["DiT-XL/2"] == {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2}
    assert set(MOTION_DIT_CONFIGS) == {"DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2"}
    with pytest.raises(KeyError, match="allowed"):
        motion_dit_config("MotionDiT-L/2")


def test_macs_at_512_tokens_match_the_analytic_count():
    """XL/2 WebVid SD2.1 (384 + 128 tokens): FlopCounterMode on meta equals the matmul count by hand."""
    kwargs = PAPER_SETTINGS["webvid-sd21"][1]
    with torch.device("meta"):
        model = MotionDiT(**motion_dit_config("DiT-XL/2", **kwargs))
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 8, 16, 96), torch.tensor([1]), torch.empty(1, 4, 64, 128),
                  encoder_hidden_states=torch.empty(1, 77, 1024))
    h, n, nm, nc = 1152, 512, 384, 128
    per_block = 6 * h * h + n * 12 * h * h + 2 * n * n * h  # adaLN, qkv+out+MLP, QK^T and AV
    embeds = nm * 8 * 4 * h + nc * 4 * 64 * h + 256 * h + h * h + 1024 * h
    final = 2 * h * h + nm * h * 4 * 8
    assert counter.get_total_flops() // 2 == 28 * per_block + embeds + final  # ~245.5 GMAC (228.5 excl. scores)


# -- tiny, real tensors -------------------------------------------------------------------------------------


def test_adaln_zero_initialisation_outputs_zero():
    model = tiny_dit(perturb=False, num_classes=10)
    z, t, content = tiny_inputs()
    with torch.no_grad():
        out = model(z, t, content, class_labels=torch.tensor([1, 2]))
    assert out.shape == z.shape
    assert torch.count_nonzero(out) == 0


def test_unpatchify_inverts_patchify():
    model = tiny_dit(learn_sigma=True)
    b, c, length, width, p = 2, model.out_channels, 8, 16, 2
    image = torch.randn(b, c, length, width)
    # Reference patchify in the conv's token order (row-major grid), each token (p, p, C) flattened.
    tokens = image.view(b, c, length // p, p, width // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    torch.testing.assert_close(model._unpatchify(tokens), image, atol=0, rtol=0)


def test_learn_sigma_doubles_the_output_channels():
    model = tiny_dit(learn_sigma=True)
    z, t, content = tiny_inputs()
    with torch.no_grad():
        assert model(z, t, content).shape == (2, 8, 8, 16)


def test_class_conditioning_and_null_label():
    model = tiny_dit(num_classes=10)
    assert model.null_class_label == 10
    assert model.class_embed.embedding_table.num_embeddings == 11
    z, t, content = tiny_inputs(1)
    with torch.no_grad():
        outs = [model(z, t, content, class_labels=torch.tensor([y])) for y in (0, 3, 10)]
    assert (outs[0] - outs[1]).abs().max() > 1e-4 and (outs[0] - outs[2]).abs().max() > 1e-4
    # With class dropout 0 the null row still exists (needed for guidance).
    assert tiny_dit(num_classes=10, class_dropout_prob=0.0).class_embed.embedding_table.num_embeddings == 11


def test_content_frame_and_timestep_change_the_prediction():
    model = tiny_dit()
    z, t, content = tiny_inputs(1)
    with torch.no_grad():
        base = model(z, t, content)
        assert (base - model(z, t, content + 1)).abs().max() > 1e-4
        assert (base - model(z, t + 100, content)).abs().max() > 1e-4
        torch.testing.assert_close(model(z, int(t), content), base)  # scalar timestep is broadcast


def test_text_features_are_mean_pooled():
    model = tiny_dit(text_embed_dim=12)
    z, t, content = tiny_inputs(2)
    feats = torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        sequence = model(z, t, content, encoder_hidden_states=feats)
        pooled = model(z, t, content, encoder_hidden_states=feats.mean(1))
        masked = model(z, t, content, encoder_hidden_states=feats, encoder_attention_mask=mask)
        first_three = model(z, t, content, encoder_hidden_states=feats[:, :3])
    torch.testing.assert_close(sequence, pooled)
    torch.testing.assert_close(masked[0], first_three[0])
    torch.testing.assert_close(masked[1], sequence[1])
    assert (sequence - model(z, t, content, encoder_hidden_states=-feats)).abs().max() > 1e-4


def test_padded_text_positions_do_not_change_the_condition():
    """With the mask, anything at padded positions leaves the prediction unchanged (masked mean); without it
    the same change moves it (the plain mean over all S positions that sampling used before)."""
    model = tiny_dit(text_embed_dim=12)
    z, t, content = tiny_inputs(2)
    feats = torch.randn(2, 7, 12)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]])
    garbage = torch.where(mask[..., None].bool(), feats, 100 * torch.randn(2, 7, 12))
    with torch.no_grad():
        clean = model(z, t, content, encoder_hidden_states=feats, encoder_attention_mask=mask)
        noisy = model(z, t, content, encoder_hidden_states=garbage, encoder_attention_mask=mask)
        unmasked = model(z, t, content, encoder_hidden_states=garbage)
    torch.testing.assert_close(noisy, clean, atol=1e-6, rtol=1e-6)
    assert (unmasked - clean).abs().max() > 1e-3


def test_state_dict_keys_are_stable():
    """Checkpoint layout: the keys MotionDiT has always saved (the DiT blocks moved to dit_blocks.py)."""
    block = ["attn.to_k.bias", "attn.to_k.weight", "attn.to_out.0.bias", "attn.to_out.0.weight", "attn.to_q.bias",
             "attn.to_q.weight", "attn.to_v.bias", "attn.to_v.weight", "mlp.net.0.proj.bias", "mlp.net.0.proj.weight",
             "mlp.net.2.bias", "mlp.net.2.weight", "modulation.1.bias", "modulation.1.weight"]
    common = [f"blocks.0.{k}" for k in block] + [
        "content_embed.proj.bias", "content_embed.proj.weight", "final_layer.linear.bias", "final_layer.linear.weight",
        "final_layer.modulation.1.bias", "final_layer.modulation.1.weight", "motion_embed.proj.bias",
        "motion_embed.proj.weight", "time_embed.linear_1.bias", "time_embed.linear_1.weight",
        "time_embed.linear_2.bias", "time_embed.linear_2.weight"]
    classes = MotionDiT(**{**TINY, "depth": 1, "num_classes": 5})
    text = MotionDiT(**{**TINY, "depth": 1, "text_embed_dim": 8})
    assert sorted(classes.state_dict()) == sorted([*common, "class_embed.embedding_table.weight"])
    assert sorted(text.state_dict()) == sorted([*common, "text_proj.bias", "text_proj.weight"])


def test_attention_projections_are_initialised_as_dits_fused_qkv():
    """DiT's q, k, v are one xavier-uniform (3C x C) matrix: std sqrt(2 / 4C), not sqrt(2 / 2C) each."""
    c = 256
    model = MotionDiT(**{**TINY, "hidden_size": c, "depth": 1})
    attn = model.blocks[0].attn
    qkv = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight])
    assert qkv.std().item() == pytest.approx((2 / (4 * c)) ** 0.5, rel=0.05)
    assert attn.to_out[0].weight.std().item() == pytest.approx((2 / (2 * c)) ** 0.5, rel=0.05)


def test_batch_elements_are_independent():
    model = tiny_dit(num_classes=10)
    z, t, content = tiny_inputs(3)
    labels = torch.tensor([1, 4, 10])
    with torch.no_grad():
        together = model(z, t, content, class_labels=labels)
        alone = model(z[1:2], t[1:2], content[1:2], class_labels=labels[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_dit(text_embed_dim=12)
    model.save_pretrained(tmp_path / "dit")
    loaded = MotionDiT.from_pretrained(tmp_path / "dit").eval()
    z, t, content = tiny_inputs()
    feats = torch.randn(2, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, t, content, encoder_hidden_states=feats),
                                   model(z, t, content, encoder_hidden_states=feats), atol=0, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    z, t, content = tiny_inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_dit(num_classes=10, class_dropout_prob=0.0).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(z, t, content, class_labels=torch.tensor([1, 2])).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_overfits_a_handful_of_samples(one_thread):
    """Epsilon-prediction on 4 fixed (z_0, x_bar, y, t, eps): the loss must fall at least twentyfold."""
    torch.manual_seed(0)
    model = MotionDiT(**{**TINY, "num_classes": 4, "class_dropout_prob": 0.0, "hidden_size": 64}).train()
    z0, content = torch.randn(4, 4, 8, 16).tanh(), torch.randn(4, 3, 16, 16)
    labels, t = torch.arange(4), torch.tensor([100, 300, 600, 900])
    alpha_bar = torch.cos(t / 1000 * torch.pi / 2) ** 2
    eps = torch.randn_like(z0)
    z_t = alpha_bar.sqrt()[:, None, None, None] * z0 + (1 - alpha_bar).sqrt()[:, None, None, None] * eps
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss = F.mse_loss(model(z_t, t, content, class_labels=labels), eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0] / 20, (losses[0], losses[-5:])


# -- bad input -----------------------------------------------------------------------------------------------


def test_bad_inputs_are_rejected():
    model = tiny_dit(num_classes=10)
    z, t, content = tiny_inputs()
    labels = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\(B, 4, 8, W_m\) with W_m a positive multiple of patch_size=2"):
        model(z[..., :11], t, content, class_labels=labels)
    with pytest.raises(ValueError, match=r"content frame \(B, 3, Hc, Wc\) .* content_patch_size=4 \(native 16x16\)"):
        model(z, t, content[..., :6], class_labels=labels)
    with pytest.raises(ValueError, match=r"\(B, 4, 8, W_m\)"):
        model(z[:, :, :6], t, content, class_labels=labels)  # the clip length is fixed
    with pytest.raises(ValueError, match="needs class_labels"):
        model(z, t, content)
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        model(z, t, content, class_labels=torch.tensor([1, 11]))
    with pytest.raises(ValueError, match="timestep"):
        model(z, t[:1].expand(3), content, class_labels=labels)
    text = tiny_dit(text_embed_dim=12)
    with pytest.raises(ValueError, match="needs encoder_hidden_states"):
        text(z, t, content)
    with pytest.raises(ValueError, match=r"\(B=2, S, 12\)"):
        text(z, t, content, encoder_hidden_states=torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="not both"):
        MotionDiT(**{**TINY, "num_classes": 3, "text_embed_dim": 12})
    with pytest.raises(ValueError, match="content_patch_size=3"):
        MotionDiT(**{**TINY, "content_patch_size": 3})
    with pytest.raises(ValueError, match="divisible by patch_size"):
        MotionDiT(**{**TINY, "motion_width": 15})


# -- grids other than the native one ---------------------------------------------------------------------------


def reference_sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """MAE/DiT 2D sin-cos table written out independently: [rows | columns], each [sin | cos], row-major."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    parts = []
    for pos in (hh.reshape(-1), ww.reshape(-1)):
        angles = pos.double()[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def test_native_position_tables_match_an_independent_formula_and_are_not_saved():
    model = tiny_dit()
    torch.testing.assert_close(model.motion_pos_embed, reference_sincos_2d(32, 4, 8), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.content_pos_embed, reference_sincos_2d(32, 4, 4), rtol=0, atol=1e-6)
    assert not [k for k in model.state_dict() if "pos_embed" in k]


def test_other_grid_equals_a_model_built_for_that_grid():
    """Same weights, motion width 12 and a 8x16 content frame: exactly the output of a model built for them."""
    model = tiny_dit()
    built = MotionDiT(**{**TINY, "motion_width": 12, "content_size": (8, 16)}).eval()
    built.load_state_dict(model.state_dict())
    z, t, content = torch.randn(2, 4, 8, 12), torch.tensor([5, 900]), torch.randn(2, 3, 8, 16)
    with torch.no_grad():
        out = model(z, t, content)
        torch.testing.assert_close(out, built(z, t, content), rtol=0, atol=0)
    assert out.shape == z.shape
    assert model._positions((4, 6), model.motion_grid, model.motion_pos_embed, z.device) is model._pos_cache[
        (4, 6, "cpu")]
    torch.testing.assert_close(model._pos_cache[(4, 6, "cpu")], reference_sincos_2d(32, 4, 6), rtol=0, atol=1e-6)
