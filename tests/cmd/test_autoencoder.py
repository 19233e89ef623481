"""CMD autoencoder: content-frame weights, shapes at every setting, parameter counts, overfitting, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmdbench.cmd.autoencoder import CMDAutoencoder, compression_ratio

# Full-size settings (cmd-paper.md Table 5 / §2.5): (kwargs, content shape, motion shape, compression).
FULL_SETTINGS = {
    "ucf101-pixel": (dict(in_channels=3, sample_size=(64, 64)), (3, 64, 64), (8, 16, 64), 9.6),
    "webvid-sd15-latent": (
        dict(in_channels=4, sample_size=(64, 64), output_activation="none"), (4, 64, 64), (8, 16, 64), 10.67,
    ),
    "webvid-sd21-latent": (
        dict(in_channels=4, sample_size=(64, 128), output_activation="none"), (4, 64, 128), (8, 16, 96), 11.64,
    ),
}

TINY = dict(in_channels=3, num_frames=8, sample_size=(16, 16), hidden_size=32, depth=1, num_heads=2, head_dim=16,
            motion_channels=4)


@pytest.fixture
def one_thread():
    """The test machine is shared: a single intra-op thread avoids oversubscription stalls in training loops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_autoencoder(seed: int = 0, **overrides) -> CMDAutoencoder:
    torch.manual_seed(seed)
    return CMDAutoencoder(**{**TINY, **overrides}).eval()


def expected_parameter_count(c: int, hidden: int, depth: int, heads: int, head_dim: int, d: int,
                             mlp_ratio: float = 4.0, patch: int = 2) -> int:
    """Independent count of the design in autoencoder.py's docstring."""
    inner = heads * head_dim
    attention = hidden * 3 * inner + 3 * inner + inner * hidden + hidden
    mlp_hidden = int(hidden * mlp_ratio)
    mlp = hidden * mlp_hidden + mlp_hidden + mlp_hidden * hidden + hidden
    block = 2 * attention + mlp + 3 * 2 * hidden  # temporal + spatial attention, MLP, 3 LayerNorms
    backbone = depth * block + 2 * hidden  # + final LayerNorm
    patch_conv = c * patch * patch * hidden + hidden  # pre-layer / content embedding
    unpatch_conv = hidden * c * patch * patch + c  # importance head / post-layer
    conv1x1 = hidden * d + d  # motion heads (enc), and d * hidden + hidden (dec)
    encoder = patch_conv + backbone + unpatch_conv + 2 * conv1x1
    decoder = patch_conv + 2 * (d * hidden + hidden) + backbone + unpatch_conv
    return encoder + decoder


# -- content frame (Eq. 3) ------------------------------------------------------------------------------------


def test_content_weights_sum_to_one_over_time_per_pixel_and_channel():
    model = tiny_autoencoder()
    video = torch.randn(2, 3, 8, 16, 16)
    with torch.no_grad():
        weights = model.content_weights(video)
    assert weights.shape == (2, 3, 8, 16, 16)
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(2, 3, 16, 16), atol=1e-5, rtol=0)
    # Per-pixel, per-channel: not one scalar per frame.
    assert weights[:, :, 0].flatten(1).std(dim=1).min() > 0


def test_content_frame_is_the_weighted_sum_of_input_frames():
    model = tiny_autoencoder()
    video = torch.randn(2, 3, 8, 16, 16)
    with torch.no_grad():
        content, _ = model.encode(video)
        weights = model.content_weights(video)
    manual = sum(weights[:, :, t] * video[:, :, t] for t in range(8))
    torch.testing.assert_close(content, manual, atol=1e-5, rtol=1e-5)
    # A convex combination lies between the per-pixel minimum and maximum over time.
    assert (content >= video.amin(dim=2) - 1e-5).all() and (content <= video.amax(dim=2) + 1e-5).all()


def test_static_video_content_frame_is_that_frame():
    model = tiny_autoencoder(seed=3)
    frame = torch.rand(2, 3, 16, 16) * 2 - 1
    video = frame[:, :, None].expand(-1, -1, 8, -1, -1).contiguous()
    with torch.no_grad():
        content, _ = model.encode(video)
    torch.testing.assert_close(content, frame, atol=1e-5, rtol=1e-5)


def test_weighted_sum_is_float32_under_bf16_autocast():
    """Eq. 3 under bf16 autocast: the content frame equals a float64 softmax-weighted sum of the frames built
    from the importance logits the network produced, and a static video still gives back its frame. Rounding
    the weights to bf16 before the sum (8-bit mantissa, weights no longer summing to 1) misses both by ~1e-3."""
    model = tiny_autoencoder(seed=5)
    torch.manual_seed(1)
    frame = torch.rand(2, 3, 16, 16) * 2 - 1
    video = torch.randn(2, 3, 8, 16, 16)
    logits = []
    hook = model.importance_head.register_forward_hook(lambda _m, _i, out: logits.append(out.detach()))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            content, motion = model.encode(video)
            static = model.encode(frame[:, :, None].expand(-1, -1, 8, -1, -1).contiguous())[0]
    finally:
        hook.remove()
    assert logits[0].dtype == torch.bfloat16  # the network really ran in bf16
    assert content.dtype == torch.float32 and static.dtype == torch.float32  # the video's dtype
    # float64 reference from the bf16 logits: (B*L, C, H, W) -> (B, C, L, H, W), softmax over time.
    weights = logits[0].double().view(2, 8, 3, 16, 16).transpose(1, 2).softmax(dim=2)
    reference = (weights * video.double()).sum(dim=2)
    torch.testing.assert_close(content.double(), reference, atol=2e-6, rtol=0)
    torch.testing.assert_close(static, frame, atol=2e-6, rtol=0)


def test_half_precision_video_gives_a_half_content_frame_summed_in_float32():
    model = tiny_autoencoder(seed=5).to(torch.bfloat16)
    video = torch.randn(1, 3, 8, 16, 16).to(torch.bfloat16)
    with torch.no_grad():
        content, _ = model.encode(video)
        weights = model.content_weights(video)
    assert content.dtype == torch.bfloat16 and weights.dtype == torch.float32
    reference = (weights.double() * video.double()).sum(dim=2)
    torch.testing.assert_close(content.double(), reference.to(torch.bfloat16).double(), atol=0, rtol=0)


# -- shapes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", sorted(FULL_SETTINGS))
def test_full_size_shapes_and_parameter_count_on_meta(setting):
    kwargs, content_shape, motion_shape, ratio = FULL_SETTINGS[setting]
    with torch.device("meta"):
        model = CMDAutoencoder(**kwargs)
        video = torch.empty(1, kwargs["in_channels"], 16, *kwargs["sample_size"])
        content, motion = model.encode(video)
        recon = model.decode(content, motion)
    assert tuple(content.shape[1:]) == content_shape == model.content_shape
    assert tuple(motion.shape[1:]) == motion_shape == model.motion_shape
    assert recon.shape == video.shape
    assert model.latent_hw == (kwargs["sample_size"][0] // 2, kwargs["sample_size"][1] // 2)
    assert compression_ratio(model) == pytest.approx(ratio, abs=0.01)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameter_count(kwargs["in_channels"], 384, 12, 8, 64, 8)
    assert 66e6 < count < 67e6  # Table 5 size: depth 12 per side, 8 heads of 64 (release: depth 8, ~47.4M)


def test_tiny_shapes_and_ranges():
    model = tiny_autoencoder()
    video = torch.rand(3, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        content, motion = model.encode(video)
        recon = model.decode(content, motion)
    assert content.shape == (3, 3, 16, 16)
    assert motion.shape == (3, 4, 8, 16) == (3, *model.motion_shape)
    assert recon.shape == video.shape
    assert motion.abs().max() < 1 and recon.abs().max() <= 1  # tanh bottleneck, tanh output (pixel mode)


def test_latent_mode_output_is_linear():
    model = tiny_autoencoder(in_channels=4, output_activation="none", motion_tanh=False)
    with torch.no_grad():
        model.decoder_post_layer.bias.fill_(5.0)
        recon = model(torch.randn(1, 4, 8, 16, 16))
    assert recon.min() > 1.0  # a tanh output could never exceed 1


def test_decoder_uses_the_motion_latent():
    model = tiny_autoencoder()
    video = torch.randn(1, 3, 8, 16, 16)
    with torch.no_grad():
        content, motion = model.encode(video)
        base = model.decode(content, motion)
        moved = model.decode(content, motion.roll(1, dims=2))
    assert (base - moved).abs().max() > 1e-3


def test_batch_elements_are_independent():
    model = tiny_autoencoder()
    video = torch.randn(3, 3, 8, 16, 16)
    with torch.no_grad():
        together = model(video)
        alone = model(video[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_autoencoder()
    model.save_pretrained(tmp_path / "ae")
    loaded = CMDAutoencoder.from_pretrained(tmp_path / "ae").eval()
    video = torch.randn(1, 3, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), atol=0, rtol=0)
    assert loaded.frame_size == (16, 16)


def test_gradient_checkpointing_gives_the_same_gradients():
    video = torch.randn(1, 3, 8, 16, 16)
    grads = []
    for checkpointing in (False, True):
        model = tiny_autoencoder(depth=2).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
        F.mse_loss(model(video), video).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# -- training ------------------------------------------------------------------------------------------------


def moving_square(start: tuple[int, int], velocity: tuple[int, int], color: tuple[float, float, float],
                  frames: int = 8, size: int = 16, side: int = 5) -> torch.Tensor:
    """A (3, frames, size, size) video in [-1, 1]: a coloured square moving over a black background."""
    video = -torch.ones(3, frames, size, size)
    for t in range(frames):
        y, x = start[0] + velocity[0] * t, start[1] + velocity[1] * t
        video[:, t, y : y + side, x : x + side] = torch.tensor(color)[:, None, None]
    return video


@pytest.mark.slow
def test_autoencoder_overfits_two_moving_square_videos(one_thread):
    videos = torch.stack([
        moving_square((1, 1), (1, 1), (1.0, -0.5, 0.2)),
        moving_square((10, 2), (-1, 1), (-0.3, 0.9, 0.5)),
    ])
    model = tiny_autoencoder().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = F.mse_loss(model(videos), videos)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # The best motion-free reconstruction repeats the temporal mean frame; beating it needs the motion latent.
    static_loss = F.mse_loss(videos.mean(dim=2, keepdim=True).expand_as(videos), videos).item()
    final = min(losses[-5:])
    assert final < losses[0] / 10, (losses[0], final)
    assert final < 0.5 * static_loss, (static_loss, final)


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 3, 7, 16, 16), "num_frames=8"),  # wrong length
        ((1, 3, 8, 16, 11), r"multiples of patch_size=2 \(native 16x16\)"),  # not a multiple of the patch
        ((1, 4, 8, 16, 16), "channels=3"),  # wrong channels
        ((3, 8, 16, 16), r"\(B, C, L, H, W\)"),  # no batch axis
    ],
)
def test_wrong_video_shapes_are_rejected(shape, match):
    model = tiny_autoencoder()
    with pytest.raises(ValueError, match=match):
        model.encode(torch.zeros(shape))


def test_integer_video_is_rejected():
    with pytest.raises(TypeError, match="float"):
        tiny_autoencoder().encode(torch.zeros(1, 3, 8, 16, 16, dtype=torch.uint8))


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="divisible by patch_size=2"):
        CMDAutoencoder(**{**TINY, "sample_size": (15, 16)})
    with pytest.raises(ValueError, match="output_activation"):
        CMDAutoencoder(**{**TINY, "output_activation": "sigmoid"})


def test_decode_rejects_wrong_latent_shapes():
    model = tiny_autoencoder()
    content, motion = torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 8, 16)
    with pytest.raises(ValueError, match=r"motion latent must be .* \(B, 4, 8, 16\)"):
        model.decode(content, motion[..., :12])
    with pytest.raises(ValueError, match="content frame has frame size 16x7"):
        model.decode(content[..., :7], motion)
    with pytest.raises(ValueError, match=r"motion latent must be .* \(B, 4, 8, 12\) for a 16x8 content frame"):
        model.decode(content[..., :8], motion)  # a valid smaller frame, but the motion latent of 16x16
    with pytest.raises(ValueError, match="batch sizes differ"):
        model.decode(content.expand(2, -1, -1, -1), motion)


# -- frame sizes other than the native one -------------------------------------------------------------------


def reference_sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE/DiT 1D sin-cos table written out independently: [sin(p * w_k), cos(p * w_k)], w_k = 10000^(-k/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def reference_spacetime_table(dim: int, frames: int, gh: int, gw: int) -> torch.Tensor:
    """(L, gh*gw, dim): time table + [row table | column table], row-major over (h, w)."""
    hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    space = torch.cat([reference_sincos_1d(dim // 2, hh.reshape(-1)), reference_sincos_1d(dim // 2, ww.reshape(-1))], 1)
    return (reference_sincos_1d(dim, torch.arange(frames))[:, None] + space[None]).float()


def test_native_position_table_matches_an_independent_formula_and_is_not_saved():
    model = tiny_autoencoder()
    torch.testing.assert_close(model.pos_embed, reference_spacetime_table(32, 8, 8, 8), rtol=0, atol=1e-6)
    assert model.pos_embed_for(8, 8, model.pos_embed.device) is model.pos_embed  # native grid: the buffer
    assert not [k for k in model.state_dict() if "pos_embed" in k]
    other = model.pos_embed_for(4, 6, torch.device("cpu"))
    torch.testing.assert_close(other, reference_spacetime_table(32, 8, 4, 6), rtol=0, atol=1e-6)
    assert model.pos_embed_for(4, 6, torch.device("cpu")) is other  # cached per grid


@pytest.mark.parametrize("size", [(8, 12), (24, 16)])
def test_other_frame_size_equals_a_model_built_for_that_size(size):
    """The same weights at a non-native frame size give exactly what a model built natively for it gives."""
    model = tiny_autoencoder()
    built = CMDAutoencoder(**{**TINY, "sample_size": size}).eval()
    built.load_state_dict(model.state_dict())
    video = torch.rand(2, 3, 8, *size) * 2 - 1
    with torch.no_grad():
        content, motion = model.encode(video)
        torch.testing.assert_close(model(video), built(video), rtol=0, atol=0)
    assert content.shape == (2, 3, *size)
    assert motion.shape == (2, 4, 8, size[0] // 2 + size[1] // 2)
