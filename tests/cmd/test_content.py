"""CMD content-frame models (SD UNet, pixel ContentDiT) and SD parts: published configs, parameter counts,
DiT initialisation, parity with diffusers' DiT, null label, loading, conditioning, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import TimestepEmbedding

from cmdbench.cmd import content
from cmdbench.cmd.autoencoder import sincos_embedding_2d
from cmdbench.cmd.content import (
    build_content_dit,
    build_content_unet,
    build_text_encoder,
    build_vae,
    content_dit_null_label,
    sd_unet_config,
)
from cmdbench.cmd.content_dit import UCF101_XL2_PARAMETERS, ContentDiT


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
    """Independent count of DiT's layout (Peebles & Xie): blocks of attention (4 C^2 + 4 C), MLP (8 C^2 + 5 C)
    and adaLN-Zero modulation (6 C^2 + 6 C); ONE timestep MLP (256 -> C -> C) and ONE label table
    (classes + 1 rows); patch embedding; final adaLN (2 C^2 + 2 C) and linear. Positions are fixed (0)."""
    embedder = (256 * hidden + hidden + hidden * hidden + hidden) + (classes + 1) * hidden
    block = (4 * hidden * hidden + 4 * hidden) + (6 * hidden * hidden + 6 * hidden) + (8 * hidden * hidden + 5 * hidden)
    patch_embed = in_ch * patch * patch * hidden + hidden
    final = 2 * hidden * hidden + 2 * hidden + hidden * patch * patch * out_ch + patch * patch * out_ch
    return depth * block + embedder + patch_embed + final


def test_content_dit_xl2_parameter_count_on_meta():
    model = build_content_dit("XL/2", num_classes=101, device="meta")
    assert isinstance(model, ContentDiT)
    assert n_params(model) == dit_expected_parameters(28, 1152, 3, 3, 2, 101) == UCF101_XL2_PARAMETERS == 673_771_404
    # DiT's own XL/2 (256x256 -> 4x32x32 latents, learned sigma, 1000 classes): the paper's 675M, which with
    # DiT's fixed 256 x 1152 position table held as a parameter is 675,129,632.
    with torch.device("meta"):
        imagenet = ContentDiT(sample_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    assert n_params(imagenet) == dit_expected_parameters(28, 1152, 4, 8, 2, 1000) == 674_834_720
    assert n_params(imagenet) + 256 * 1152 == 675_129_632
    # ONE timestep embedder and ONE label table (diffusers' DiT has one of each per block: 720.8M here).
    assert sum(isinstance(m, TimestepEmbedding) for m in model.modules()) == 1
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(tables) == 1 and tables[0].num_embeddings == 102
    assert content_dit_null_label(model) == 101
    out = model(torch.empty(1, 3, 64, 64, device="meta"), torch.tensor([1], device="meta"),
                torch.tensor([101], device="meta"), return_dict=False)[0]
    assert out.shape == (1, 3, 64, 64)
    assert build_content_dit("XL/2", device="meta", learn_sigma=True).out_channels == 6
    assert model.config.depth == 28 and model.config.hidden_size == 1152 and model.config.num_heads == 16


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


def tiny_content_dit(seed: int = 0, perturb: bool = False, **overrides) -> ContentDiT:
    """A tiny ContentDiT; ``perturb`` randomises the zero-initialised adaLN/output weights so inputs matter."""
    torch.manual_seed(seed)
    kwargs = {"sample_size": 16, "patch_size": 2, "in_channels": 3, "hidden_size": 32, "depth": 2, "num_heads": 2,
              "num_classes": 5, **overrides}
    model = ContentDiT(**kwargs).eval()
    if perturb:
        with torch.no_grad():
            for block in model.blocks:
                block.modulation[1].weight.normal_(std=0.1)
            model.final_layer.linear.weight.normal_(std=0.1)
            model.final_layer.modulation[1].weight.normal_(std=0.1)
    return model


def test_content_dit_outputs_exactly_zero_at_initialisation_and_gradient_reaches_the_output_layer():
    model = tiny_content_dit().train()
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999]), torch.tensor([0, 4, 5])
    out = model(x, t, y, return_dict=False)[0]
    assert torch.equal(out, torch.zeros(3, 3, 16, 16))  # adaLN-Zero: exactly zero, not just small
    F.mse_loss(out, torch.randn_like(out)).backward()
    # At initialisation only the zero output layer has a gradient (everything behind it is gated by zeros).
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.to_q.weight.grad.abs().sum() == 0
    assert model.class_embed.weight.grad.abs().sum() == 0


def test_content_dit_initialisation_follows_dit():
    """xavier-uniform linears (q/k/v as one fused (3C x C) matrix), patch embedding xavier on its flattened
    weight, zero biases, timestep MLP and label table N(0, 0.02), zero adaLN modulation and output layer.
    PyTorch's default (kaiming-uniform, std = 1/sqrt(3 fan_in)) or separate q/k/v xavier fail these."""
    c = 256
    model = tiny_content_dit(hidden_size=c, num_heads=4, depth=2, num_classes=100, sample_size=8)

    def std_close(tensor, expected):
        assert tensor.std().item() == pytest.approx(expected, rel=0.05), (tensor.std().item(), expected)

    attn = model.blocks[0].attn
    qkv = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight])  # (3C, C)
    std_close(qkv, (2 / (c + 3 * c)) ** 0.5)
    std_close(attn.to_out[0].weight, (2 / (c + c)) ** 0.5)
    std_close(model.blocks[1].mlp.net[0].proj.weight, (2 / (c + 4 * c)) ** 0.5)
    std_close(model.blocks[1].mlp.net[2].weight, (2 / (4 * c + c)) ** 0.5)
    patch = model.patch_embed.proj.weight  # (C, 3, 2, 2)
    std_close(patch, (2 / (3 * 2 * 2 + c)) ** 0.5)
    std_close(model.time_embed.linear_1.weight, 0.02)
    std_close(model.time_embed.linear_2.weight, 0.02)
    std_close(model.class_embed.weight, 0.02)
    assert model.class_embed.weight.mean().abs() < 0.002
    biases = [m.bias for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    zero = [b.modulation[1].weight for b in model.blocks] + [model.final_layer.modulation[1].weight,
                                                            model.final_layer.linear.weight]
    assert all(torch.equal(w, torch.zeros_like(w)) for w in zero)


def _diffusers_dit_with_our_weights(ours: ContentDiT) -> DiTTransformer2DModel:
    """diffusers' DiT (one embedder per block) holding ``ours``'s weights in every block's embedder, with its
    timestep sinusoid set to DiT's (diffusers' per-block one uses downscale_freq_shift=1), its LayerNorm eps
    to DiT's 1e-6 (``norm_eps``) and its position table to ours; otherwise the published XL/2 config keys."""
    cfg = ours.config
    theirs = DiTTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=ours.out_channels, num_layers=cfg.depth,
        sample_size=cfg.sample_size, patch_size=cfg.patch_size, num_embeds_ada_norm=cfg.num_classes,
        attention_bias=True, activation_fn="gelu-approximate", norm_type="ada_norm_zero",
        norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()
    with torch.no_grad():
        theirs.pos_embed.proj.load_state_dict(ours.patch_embed.proj.state_dict())
        theirs.pos_embed.pos_embed.copy_(ours.pos_embed[None])
        for mine, block in zip(ours.blocks, theirs.transformer_blocks, strict=True):
            emb = block.norm1.emb
            emb.time_proj.downscale_freq_shift = 0
            emb.timestep_embedder.load_state_dict(ours.time_embed.state_dict())
            emb.class_embedder.embedding_table.load_state_dict(ours.class_embed.state_dict())
            block.norm1.linear.load_state_dict(mine.modulation[1].state_dict())
            block.attn1.load_state_dict(mine.attn.state_dict())
            block.ff.load_state_dict(mine.mlp.state_dict())
        theirs.proj_out_1.load_state_dict(ours.final_layer.modulation[1].state_dict())
        theirs.proj_out_2.load_state_dict(ours.final_layer.linear.state_dict())
    return theirs


def test_content_dit_equals_diffusers_dit_with_shared_embedder_weights():
    """Parity with a peer implementation: diffusers' ``DiTTransformer2DModel`` (adaLN-Zero order of shift,
    scale, gate; final layer; unpatchify) given the same weights computes the same eps."""
    ours = tiny_content_dit(perturb=True, learn_sigma=True)
    theirs = _diffusers_dit_with_our_weights(ours)
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([3, 400, 999]), torch.tensor([0, 2, 5])
    with torch.no_grad():
        mine = ours(hidden_states=x, timestep=t, class_labels=y, return_dict=False)[0]
        ref = theirs(hidden_states=x, timestep=t, class_labels=y, return_dict=False)[0]
    assert mine.shape == (3, 6, 16, 16) and mine.abs().mean() > 0.1
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


def test_content_dit_keywords_and_output_forms():
    model = tiny_content_dit(perturb=True)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5, 5]), torch.tensor([1, 2])
    with torch.no_grad():
        positional = model(x, t, y, return_dict=False)
        by_name = model(hidden_states=x, timestep=t, class_labels=y).sample
        by_sample = model(sample=x, timestep=t, class_labels=y, return_dict=False)[0]
        scalar_t = model(x, 5, y, return_dict=False)[0]
    assert isinstance(positional, tuple) and len(positional) == 1
    for other in (by_name, by_sample, scalar_t):
        torch.testing.assert_close(other, positional[0], atol=0, rtol=0)


def test_content_dit_null_label_and_no_internal_label_dropout():
    model = tiny_content_dit(perturb=True).train()
    assert content_dit_null_label(model) == model.null_class_label == 5
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 3])
    # Training mode is deterministic (the model never drops labels itself) and the null label differs.
    out1 = model(x, t, torch.tensor([1, 5]), return_dict=False)[0]
    out2 = model(x, t, torch.tensor([1, 5]), return_dict=False)[0]
    torch.testing.assert_close(out1, out2, atol=0, rtol=0)
    null = model(x, t, torch.tensor([5, 5]), return_dict=False)[0]
    assert (null[0] - out1[0]).abs().max() > 1e-3


def test_content_dit_learns_to_use_the_class_label(one_thread):
    """Same noisy frame and timestep, a different target per label: only the label tells them apart. After a
    few steps each label's prediction is near its own target and far from the other's (a model that drops
    or ignores the label can only reach their mean, halfway)."""
    model = tiny_content_dit(depth=1).train()
    targets = torch.randn(2, 3, 16, 16)  # one target pattern per class
    x, t = torch.randn(1, 3, 16, 16).expand(4, -1, -1, -1), torch.full((4,), 500)
    labels = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        loss = F.mse_loss(model(x, t, labels, return_dict=False)[0], targets[labels])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model(x[:2], t[:2], torch.tensor([0, 1]), return_dict=False)[0]
        swapped = model(x[:2], t[:2], torch.tensor([1, 0]), return_dict=False)[0]
    right = F.mse_loss(out, targets[[0, 1]]).item()
    wrong = F.mse_loss(swapped, targets[[0, 1]]).item()
    assert right < 0.1 * wrong, (right, wrong)


def test_content_dit_takes_other_frame_sizes():
    """Any size divisible by the patch: positions computed for the input's grid, equal to a model built there."""
    model = tiny_content_dit(perturb=True)
    other = tiny_content_dit(perturb=True, sample_size=[8, 12])
    other.load_state_dict(model.state_dict())
    x, t, y = torch.randn(1, 3, 8, 12), torch.tensor([7]), torch.tensor([2])
    with torch.no_grad():
        out = model(x, t, y, return_dict=False)[0]
        torch.testing.assert_close(out, other(x, t, y, return_dict=False)[0], atol=0, rtol=0)
    assert out.shape == (1, 3, 8, 12)
    torch.testing.assert_close(model.pos_embed, sincos_embedding_2d(32, 8, 8))
    assert "pos_embed" not in model.state_dict()  # fixed, not saved


def test_content_dit_gradient_checkpointing_gives_the_same_gradients():
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([1, 4])
    grads = []
    for checkpointing in (False, True):
        model = tiny_content_dit(perturb=True).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(x, t, y, return_dict=False)[0].square().mean().backward()
        grads.append(model.blocks[0].attn.to_q.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_content_dit_bad_inputs():
    model = tiny_content_dit()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([1])
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 5\]"):
        model(x, t, torch.tensor([6]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 4, 16, 16), t, torch.tensor([1]))
    with pytest.raises(ValueError, match="multiples of patch_size=2"):
        model(torch.randn(1, 3, 15, 16), t, torch.tensor([1]))
    with pytest.raises(TypeError, match="class_labels"):
        model(x, t)
    with pytest.raises(TypeError, match="once"):
        model(x, t, torch.tensor([1]), sample=x)


def test_content_dit_loads_from_a_local_folder(tmp_path):
    model = build_content_dit(tiny=True, num_classes=5)
    with torch.no_grad():  # non-zero outputs, so the comparison means something
        model.final_layer.linear.weight.normal_(std=0.1)
    model.save_pretrained(tmp_path / "transformer")
    loaded = build_content_dit("tiny", num_classes=5, checkpoint=tmp_path)
    assert isinstance(loaded, ContentDiT)
    x, t, y = torch.randn(1, 3, 64, 64), torch.tensor([7]), torch.tensor([2])
    with torch.no_grad():
        expected = model(x, t, y, return_dict=False)[0]
        assert expected.abs().max() > 0
        torch.testing.assert_close(loaded(x, t, y, return_dict=False)[0], expected, atol=0, rtol=0)
    assert content_dit_null_label(loaded) == 5
    with pytest.raises(ValueError, match="num_classes=5 \\(expected 101\\)"):
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
