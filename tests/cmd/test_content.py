"""CMD content-frame model and SD parts: published configs, parameter counts, null label, loading, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmdbench.cmd import content
from cmdbench.cmd.content import (
    build_content_dit,
    build_content_unet,
    build_text_encoder,
    build_vae,
    content_dit_null_label,
    sd_unet_config,
)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- published configs and sizes --------------------------------------------------------------------------------


def test_unet_configs_follow_the_published_values():
    sd21, sd15 = sd_unet_config("2.1-base"), sd_unet_config("1.5")
    assert sd21["attention_head_dim"] == [5, 10, 20, 20] and sd15["attention_head_dim"] == 8
    assert (sd21["cross_attention_dim"], sd15["cross_attention_dim"]) == (1024, 768)
    assert sd21["use_linear_projection"] is True and sd15["use_linear_projection"] is False
    different = {k for k in sd15 if sd15[k] != sd21[k]}
    assert different == {"attention_head_dim", "cross_attention_dim", "use_linear_projection"}
    assert sd21["block_out_channels"] == [320, 640, 1280, 1280] and sd21["sample_size"] == 64
    sd21["in_channels"] = 99  # a fresh copy each call
    assert sd_unet_config("2.1-base")["in_channels"] == 4


@pytest.mark.parametrize(
    ("version", "unet", "text", "text_width"),
    [("2.1-base", 865.91e6, 340.39e6, 1024), ("1.5", 859.52e6, 123.06e6, 768)],
)
def test_full_size_parameter_counts_on_meta(version, unet, text, text_width):
    """Counts verified in baselines.md §5 (UNet, text encoder; VAE 83.65M)."""
    u = build_content_unet(version, device="meta")
    t = build_text_encoder(version, device="meta")
    v = build_vae(version, device="meta")
    assert n_params(u) == pytest.approx(unet, abs=0.01e6)
    assert n_params(t) == pytest.approx(text, abs=0.01e6)
    assert n_params(v) == pytest.approx(83.65e6, abs=0.01e6)
    assert t.config.hidden_size == text_width == u.config.cross_attention_dim
    assert v.config.scaling_factor == 0.18215
    assert all(p.device.type == "meta" for p in u.parameters())
    # WebVid SD2.1: a 64x128 latent content frame (512x1024 frames).
    out = u(torch.empty(1, 4, 64, 128, device="meta"), torch.tensor([1], device="meta"),
            encoder_hidden_states=torch.empty(1, 77, text_width, device="meta")).sample
    assert out.shape == (1, 4, 64, 128)


def test_sd21_text_encoder_is_the_23_layer_openclip_tower():
    config = content.sd_text_encoder_config("2.1-base")
    assert (config["num_hidden_layers"], config["hidden_size"], config["hidden_act"]) == (23, 1024, "gelu")


def dit_expected_parameters(depth, hidden, in_ch, out_ch, patch, classes):
    """Independent count of diffusers' DiT: original layout + one timestep/label embedder per block."""
    embedder = (256 * hidden + hidden + hidden * hidden + hidden) + (classes + 1) * hidden
    block = (4 * hidden * hidden + 4 * hidden) + (6 * hidden * hidden + 6 * hidden) + (8 * hidden * hidden + 5 * hidden)
    patch_embed = in_ch * patch * patch * hidden + hidden
    final = 2 * hidden * hidden + 2 * hidden + hidden * patch * patch * out_ch + patch * patch * out_ch
    original = depth * block + embedder + patch_embed + final
    return original, original + (depth - 1) * embedder


def test_content_dit_xl2_on_meta():
    model = build_content_dit("XL/2", num_classes=101, device="meta")
    original, total = dit_expected_parameters(28, 1152, 3, 3, 2, 101)
    assert n_params(model) == total  # ~720.8M in diffusers' layout
    assert original == pytest.approx(675e6, rel=0.01)  # DiT-XL/2 of the DiT paper
    assert content_dit_null_label(model) == 101
    out = model(torch.empty(1, 3, 64, 64, device="meta"), torch.tensor([1], device="meta"),
                torch.tensor([101], device="meta"), return_dict=False)[0]
    assert out.shape == (1, 3, 64, 64)
    assert build_content_dit("XL/2", device="meta", learn_sigma=True).config.out_channels == 6


# -- tiny models, real tensors ---------------------------------------------------------------------------------


def test_tiny_sd_parts_fit_together():
    unet, text, vae = build_content_unet(tiny=True), build_text_encoder(tiny=True), build_vae(tiny=True)
    frames = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
        tokens = torch.randint(0, 49408, (2, 77))
        hidden = text(tokens).last_hidden_state
        eps = unet(latents, torch.tensor([10, 500]), encoder_hidden_states=hidden).sample
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    assert latents.shape == (2, 4, 8, 8)  # f = 8, 4 channels, like SD
    assert hidden.shape == (2, 77, content.TINY_TEXT_HIDDEN)
    assert eps.shape == latents.shape and decoded.shape == frames.shape


def test_content_dit_null_label_and_no_per_block_dropout():
    model = build_content_dit(tiny=True, num_classes=5).train()
    assert content_dit_null_label(model) == 5
    tables = [b.norm1.emb.class_embedder for b in model.transformer_blocks]
    assert all(t.embedding_table.num_embeddings == 6 and t.dropout_prob == 0.0 for t in tables)
    x = torch.randn(2, 3, 64, 64)
    # In training mode the output is deterministic (no random label dropout) and the null label differs.
    out1 = model(x, torch.tensor([3, 3]), torch.tensor([1, 5]), return_dict=False)[0]
    out2 = model(x, torch.tensor([3, 3]), torch.tensor([1, 5]), return_dict=False)[0]
    torch.testing.assert_close(out1, out2, atol=0, rtol=0)


def test_content_dit_loads_from_a_local_folder(tmp_path):
    model = build_content_dit(tiny=True, num_classes=5)
    model.save_pretrained(tmp_path / "transformer")
    loaded = build_content_dit("tiny", num_classes=5, checkpoint=tmp_path)
    x, t, y = torch.randn(1, 3, 64, 64), torch.tensor([7]), torch.tensor([2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y, return_dict=False)[0], model(x, t, y, return_dict=False)[0])
    assert content_dit_null_label(loaded) == 5
    with pytest.raises(ValueError, match="num_embeds_ada_norm=5 \\(expected 101\\)"):
        build_content_dit("tiny", num_classes=101, checkpoint=tmp_path)


@pytest.mark.slow
def test_content_dit_overfits_a_handful_of_frames(one_thread):
    torch.manual_seed(0)
    model = build_content_dit(tiny=True, num_classes=4, sample_size=16).train()
    frames, labels = torch.rand(4, 3, 16, 16) * 2 - 1, torch.arange(4)
    t, eps = torch.tensor([50, 250, 500, 900]), torch.randn(4, 3, 16, 16)
    alpha_bar = (torch.cos(t / 1000 * torch.pi / 2) ** 2)[:, None, None, None]
    noisy = alpha_bar.sqrt() * frames + (1 - alpha_bar).sqrt() * eps
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        loss = F.mse_loss(model(noisy, t, labels, return_dict=False)[0], eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0] / 10, (losses[0], losses[-5:])


@pytest.mark.slow
def test_tiny_content_unet_overfits_a_handful_of_latents(one_thread):
    torch.manual_seed(0)
    unet = build_content_unet(tiny=True).train()
    latents, text = torch.randn(4, 4, 8, 8), torch.randn(4, 6, content.TINY_TEXT_HIDDEN)
    t, eps = torch.tensor([50, 250, 500, 900]), torch.randn(4, 4, 8, 8)
    alpha_bar = (torch.cos(t / 1000 * torch.pi / 2) ** 2)[:, None, None, None]
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * eps
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=text).sample, eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0] / 20, (losses[0], losses[-5:])


# -- bad input -----------------------------------------------------------------------------------------------


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"allowed: \('2.1-base', '1.5'\)"):
        sd_unet_config("2.1")
    with pytest.raises(ValueError, match="allowed"):
        build_content_dit("XXL/2", device="meta")
    with pytest.raises(ValueError, match="tiny=True"):
        build_vae(tiny=True, checkpoint=tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a 'unet/' subfolder nor a config.json"):
        build_content_unet("2.1-base", checkpoint=tmp_path)
    with pytest.raises(FileNotFoundError, match="offline"):
        build_text_encoder("2.1-base", checkpoint="no-such-org/no-such-model")


def test_mismatched_unet_checkpoint_is_rejected(tmp_path):
    build_content_unet(tiny=True).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match=r"does not match .*cross_attention_dim=32 \(expected 1024\)"):
        build_content_unet("2.1-base", checkpoint=tmp_path)
