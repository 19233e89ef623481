"""lvdm-t2v: the 3D UNet port (attention parity, published size and cost) and the generator."""

from __future__ import annotations

import math

import pytest
import torch

from baselines._common.loading import MissingWeightsError
from baselines.lvdm.generator import NAME, build
from baselines.lvdm.unet3d import LVDMUNet3D, TemporalSelfAttention
from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.metrics.efficiency import count_flops
from cmdbench.registry import GENERATORS


@pytest.fixture(scope="module")
def tiny():
    return build(GeneratorSpec(tiny=True))


@pytest.fixture(scope="module")
def full_meta():
    return build(GeneratorSpec(device="meta"))


def test_registered():
    assert GENERATORS.get(NAME) is build


def test_temporal_attention_matches_a_per_pair_loop():
    """Shaw et al. relative attention, written out element by element, equals the vectorised module."""
    torch.manual_seed(0)
    heads, d, frames, max_rel = 2, 4, 5, 3  # max_rel < frames - 1: the clipping is exercised
    attn = TemporalSelfAttention(heads * d, heads, d, temporal_length=max_rel).eval()
    x = torch.randn(3, frames, heads * d)
    q = attn.to_q(x).view(3, frames, heads, d)
    k = attn.to_k(x).view(3, frames, heads, d)
    v = attn.to_v(x).view(3, frames, heads, d)
    table_k = attn.relative_position_k.embeddings_table
    table_v = attn.relative_position_v.embeddings_table
    out = torch.zeros(3, frames, heads, d)
    for n in range(3):
        for h in range(heads):
            for t in range(frames):
                logits = torch.stack([
                    q[n, t, h] @ (k[n, s, h] + table_k[max(-max_rel, min(max_rel, s - t)) + max_rel])
                    for s in range(frames)
                ]) / math.sqrt(d)
                weights = logits.softmax(0)
                out[n, t, h] = sum(
                    weights[s] * (v[n, s, h] + table_v[max(-max_rel, min(max_rel, s - t)) + max_rel])
                    for s in range(frames)
                )
    expected = attn.to_out(out.reshape(3, frames, heads * d))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_unet_keeps_shape_and_mixes_frames():
    """Output shape = input shape; changing one frame changes the others (temporal attention is live)."""
    torch.manual_seed(0)
    unet = LVDMUNet3D(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                      num_heads=2, context_dim=8, temporal_length=4, norm_num_groups=8).eval()
    x = torch.randn(1, 4, 3, 8, 8)
    ctx = torch.randn(1, 5, 8)
    with torch.no_grad():
        y = unet(x, torch.tensor(10), ctx)
        x2 = x.clone()
        x2[:, :, 0] += 1.0
        y2 = unet(x2, torch.tensor(10), ctx)
    assert y.shape == x.shape
    assert not torch.allclose(y[:, :, 2], y2[:, :, 2])


def test_tiny_samples_uint8_video(tiny, checks):
    video = checks.sample_at_defaults(tiny, [0, 1])
    d = tiny.defaults
    assert video.dtype == torch.uint8 and video.shape == (2, d.num_frames, 3, d.height, d.width)
    assert video.float().std() > 1.0


def test_eta_one_stays_batch_invariant(tiny, checks):
    """LVDM samples with DDIM eta = 1: the per-step noise is per sample too."""
    assert tiny.eta == 1.0
    batch = checks.sample_at_defaults(tiny, [4, 5])
    single = checks.sample_at_defaults(tiny, [5])
    assert (batch[1].int() - single[0].int()).abs().max() <= 2


def test_parameter_count_near_table_10(full_meta, checks):
    # CMD Table 10: LVDM 0.96B; SD 1.5 UNet 859.52M + 16 blocks x 2 temporal attentions
    assert checks.millions(full_meta.denoiser) == pytest.approx(958.92, abs=0.01)
    assert checks.millions(full_meta.text_encoder) == pytest.approx(123.06, abs=0.01)
    assert checks.millions(full_meta.vae) == pytest.approx(83.65, abs=0.01)


@pytest.mark.slow
def test_meta_forward_shape_and_paper_macs_at_512x1024x16(full_meta, checks):
    stages = {s.name: s for s in full_meta.cost_stages(num_frames=16, height=512, width=1024, steps=50)}
    denoiser = stages["denoiser"]
    assert denoiser.calls == 50 and denoiser.guidance_passes == 2
    inputs = denoiser.make_inputs(1)
    assert full_meta.denoiser(**inputs).shape == (1, 4, 16, 64, 128)
    fc = count_flops(full_meta.denoiser, inputs)
    # the relative temporal attention is explicit (einsum/bmm, as in LVDM): 2.37 TMAC over 50 steps of
    # products fvcore counts; spatial attention is fused (xformers in CMD's run, SDPA here) and is not
    explicit = (fc.flops_by_op.get("aten.bmm", 0) + fc.flops_by_op.get("aten.baddbmm", 0)) / 2
    assert explicit * 50 / 1e12 == pytest.approx(2.37, abs=0.01)
    # CMD Table 9: LVDM 625.6 TFLOPs (fvcore's count, cmdbench.metrics.efficiency) over 50 steps
    assert fc.paper_macs * 50 / 1e12 == pytest.approx(625.6, rel=1e-3)


def test_total_flops_unchanged_by_the_per_call_vae_decoder_stage(full_meta):
    from cmdbench.metrics.efficiency import count_generator_cost

    cost = count_generator_cost(full_meta, 16, 512, 1024, 50)
    vae = next(s for s in cost.stages if s.stage == "vae_decoder")
    assert vae.calls == 2  # two decode calls of 8 frames per video (baselines._common.text_video.decode_chunk)
    # `cmdbench efficiency --count-only --json` with the whole-clip stage: 3376.1 true TFLOPs, 625.6 paper TMAC
    assert cost.true_tflops == pytest.approx(3376.1062094192644, rel=1e-9)
    assert cost.paper_tmacs == pytest.approx(625.613815808, rel=1e-9)


def test_unsupported_size(tiny, checks):
    with pytest.raises(UnsupportedSettingError, match="multiple of 16"):
        checks.sample_at_defaults(tiny, [0], width=40)


@pytest.mark.slow
def test_checkpoint_round_trip(tiny, tmp_path, checks):
    tiny.save_pretrained(tmp_path / "ckpt")
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        build(GeneratorSpec(checkpoint=str(tmp_path / "t2v.ckpt")))
    (tmp_path / "dir" / "unet").mkdir(parents=True)
    with pytest.raises(MissingWeightsError, match="vae"):
        build(GeneratorSpec(checkpoint=str(tmp_path / "dir")))


TEMPORAL_PARTS = ("attn1_tmp", "attn2_tmp", "norm4", "norm5")


def sd_layout_state(unet: LVDMUNet3D) -> dict[str, torch.Tensor]:
    """The spatial trunk's weights under LDM's SD 1.x key names: temporal parts dropped, 1x3x3 -> 3x3."""
    return {
        f"model.diffusion_model.{k}": (v[:, :, 0] if v.ndim == 5 else v)
        for k, v in unet.state_dict().items()
        if not any(f".{part}." in k for part in TEMPORAL_PARTS)
    }


def test_full_trunk_is_exactly_the_sd15_unet():
    """diffusers' own LDM->diffusers converter maps the trunk onto SD 1.5's UNet2DConditionModel with
    every key and shape matching: LVDM = SD 1.x UNet + temporal attention (paper Sec. 3)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from baselines._common.text_video import init_kwargs
    from baselines.animatediff.generator import SD15_UNET_CONFIG

    with torch.device("meta"):
        lvdm = LVDMUNet3D()
        sd15 = UNet2DConditionModel(**init_kwargs(UNet2DConditionModel, SD15_UNET_CONFIG))
    state = convert_ldm_unet_checkpoint(sd_layout_state(lvdm), dict(sd15.config))
    sd15.load_state_dict(state, strict=True, assign=True)  # raises on any missing key or shape mismatch
    assert sum(v.numel() for v in state.values()) / 1e6 == pytest.approx(859.52, abs=0.01)


def test_without_temporal_attention_a_static_video_is_sd_per_frame():
    """Parity with an independent implementation: with the temporal attentions' outputs zeroed, LVDM on a
    video whose frames are identical equals diffusers' UNet2DConditionModel on that frame. (With distinct
    frames the two differ by design: LVDM's GroupNorms pool statistics over time as well.)"""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    torch.manual_seed(0)
    lvdm = LVDMUNet3D(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                      num_heads=2, context_dim=8, temporal_length=4, norm_num_groups=8).eval()
    for name, module in lvdm.named_modules():
        if name.endswith("_tmp.to_out.0"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    sd = UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
                              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2,
                              cross_attention_dim=8, norm_num_groups=8).eval()
    sd.load_state_dict(convert_ldm_unet_checkpoint(sd_layout_state(lvdm), dict(sd.config)), strict=True)
    frame = torch.randn(2, 4, 8, 8)
    video = frame[:, :, None].expand(2, 4, 3, 8, 8).contiguous()
    context = torch.randn(2, 5, 8)
    with torch.no_grad():
        ours = lvdm(video, torch.tensor(321), context)  # (2, 4, 3, 8, 8)
        reference = sd(frame, torch.tensor(321), encoder_hidden_states=context).sample  # (2, 4, 8, 8)
    torch.testing.assert_close(ours, reference[:, :, None].expand_as(ours), rtol=1e-5, atol=1e-5)


def ldm_vae_state(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` keys -> the original LDM ``first_stage_model`` keys (the inverse of
    diffusers' ``convert_ldm_vae_checkpoint``; 1x1-conv attention weights as LDM stores them)."""
    import re

    def up(m: re.Match) -> str:
        return f"up.{num_blocks - 1 - int(m[1])}.{'block.' + m[2] if m[2] else 'upsample'}"

    out = {}
    for key, value in state.items():
        k = re.sub(r"down_blocks\.(\d+)\.resnets\.(\d+)", r"down.\1.block.\2", key)
        k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", k)
        k = re.sub(r"up_blocks\.(\d+)\.(?:resnets\.(\d+)|upsamplers\.0)", up, k)
        k = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
        k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
        for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            k = k.replace(f"attn_1.{new}.", f"attn_1.{old}.")
        k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".attn_1." in k and k.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[k] = value
    return out


def t2v_state(gen, with_clip: bool = True) -> dict[str, torch.Tensor]:
    """``gen``'s networks in LVDM's t2v.ckpt layout (``model.diffusion_model.*``, ``first_stage_model.*`` in
    LDM naming, and, ``with_clip``, ``cond_stage_model.transformer.*``)."""
    state = {f"model.diffusion_model.{k}": v for k, v in gen.denoiser.state_dict().items()}
    num_blocks = len(gen.vae.config.block_out_channels)
    state |= {f"first_stage_model.{k}": v for k, v in ldm_vae_state(gen.vae.state_dict(), num_blocks).items()}
    if with_clip:
        state |= {f"cond_stage_model.transformer.{k}": v for k, v in gen.text_encoder.state_dict().items()}
    return state


@pytest.mark.slow
def test_lvdm_lightning_checkpoint_loads(tiny, tmp_path, checks):
    """A file in LVDM's t2v.ckpt layout loads into the same networks; a missing key is named."""
    state = t2v_state(tiny)
    torch.save({"state_dict": state, "global_step": 0}, tmp_path / "t2v.ckpt")
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "t2v.ckpt"), tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))
    del state["model.diffusion_model.out.2.bias"]
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    with pytest.raises(RuntimeError, match="out.2.bias"):
        build(GeneratorSpec(checkpoint=str(tmp_path / "broken.ckpt"), tiny=True))


def test_t2v_ckpt_without_clip_weights_takes_a_separate_clip(tiny, tmp_path, checks, monkeypatch):
    """A t2v.ckpt without ``cond_stage_model.transformer.*``: ``"<t2v.ckpt>::<CLIP folder>"`` supplies the
    text model and tokenizer (the same videos as the full file); without it the default
    (openai/clip-vit-large-patch14, FrozenCLIPEmbedder's) is tried, and when that cannot be loaded the error
    says what to pass; a CLIP given beside a file that has its own is refused."""
    import baselines.lvdm.generator as module

    torch.save({"state_dict": t2v_state(tiny, with_clip=False)}, tmp_path / "t2v.ckpt")
    clip_dir = tmp_path / "clip-vit-large-patch14"
    tiny.text_encoder.save_pretrained(clip_dir)
    checks.clip_tokenizer(clip_dir, pad_token="<|endoftext|>")  # as FrozenCLIPEmbedder's tokenizer pads
    loaded = build(GeneratorSpec(checkpoint=f"{tmp_path / 't2v.ckpt'}::{clip_dir}", tiny=True))
    assert loaded.tokenizer is not None
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))

    assert module.DEFAULT_CLIP == "openai/clip-vit-large-patch14"
    monkeypatch.setattr(module, "DEFAULT_CLIP", str(clip_dir))
    assert build(GeneratorSpec(checkpoint=str(tmp_path / "t2v.ckpt"), tiny=True)).tokenizer is not None
    monkeypatch.setattr(module, "DEFAULT_CLIP", str(tmp_path / "no-clip-here"))
    with pytest.raises(MissingWeightsError, match=r"no CLIP text weights .* pass '<t2v.ckpt>::<folder or hub id"):
        build(GeneratorSpec(checkpoint=str(tmp_path / "t2v.ckpt"), tiny=True))

    torch.save({"state_dict": t2v_state(tiny)}, tmp_path / "full.ckpt")
    with pytest.raises(ValueError, match="holds its own CLIP text weights"):
        build(GeneratorSpec(checkpoint=f"{tmp_path / 'full.ckpt'}::{clip_dir}", tiny=True))
