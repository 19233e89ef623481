"""latte-1: tiny sampling, published size on meta (T5 built lazily), MACs, frames, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from baselines.latte.generator import NAME, build
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


def test_tiny_samples_uint8_video(tiny, checks):
    video = checks.sample_at_defaults(tiny, [0, 1])
    d = tiny.defaults
    assert video.dtype == torch.uint8 and video.shape == (2, d.num_frames, 3, d.height, d.width)
    assert video.float().std() > 1.0


def test_padding_is_masked_out_of_the_caption(tiny):
    """With the mask, a prompt's noise prediction does not depend on the padding tokens' states."""
    with torch.no_grad():
        states, mask = tiny.encode_text(["a cat"])
    noisy = states.clone()
    noisy[mask == 0] += 5.0
    latents = torch.randn(1, 4, tiny.defaults.num_frames, 4, 4)
    with torch.no_grad():
        a = tiny.predict_noise(latents, torch.tensor(500), states, mask)
        b = tiny.predict_noise(latents, torch.tensor(500), noisy, mask)
        c = tiny.predict_noise(latents, torch.tensor(500), noisy, torch.ones_like(mask))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_text_encoder_is_built_only_when_needed(full_meta, checks):
    assert full_meta._text_encoder is None  # building the generator did not build T5-XXL
    assert checks.millions(full_meta.denoiser) == pytest.approx(1057.25, abs=0.01)  # baselines.md §6.5
    assert checks.millions(full_meta.text_encoder) == pytest.approx(4762.31, abs=0.01)  # T5 v1.1 XXL encoder


@pytest.mark.slow
def test_meta_forward_shape_and_macs_at_512x1024x16(full_meta, checks):
    denoiser = {s.name: s for s in full_meta.cost_stages(num_frames=16, height=512, width=1024, steps=50)}[
        "denoiser"]
    inputs = denoiser.make_inputs(1)
    assert full_meta.denoiser(**inputs).sample.shape == (1, 8, 16, 64, 128)
    fc = count_flops(full_meta.denoiser, inputs)
    macs, scores = fc.macs_excl_attention, fc.attention_macs
    # baselines.md §4.3 [V]: 31.80 TMAC excluding scores, 4.62 TMAC of scores
    assert macs / 1e12 == pytest.approx(31.80, rel=0.01)
    assert scores / 1e12 == pytest.approx(4.62, rel=0.01)


def test_frames_other_than_the_position_table_are_refused(tiny, checks):
    with pytest.raises(UnsupportedSettingError, match=f"allowed {tiny.defaults.num_frames}"):
        checks.sample_at_defaults(tiny, [0], num_frames=tiny.defaults.num_frames + 1)


@pytest.mark.slow
def test_checkpoint_round_trip(tiny, tmp_path, checks):
    from transformers import CLIPTokenizer

    from baselines.latte.generator import TEXT_LENGTH

    tiny.save_pretrained(tmp_path / "ckpt")
    # A T5 tokenizer cannot be built offline; a CLIP BPE tokenizer of the same ids stands in for it.
    import clip.clip

    vocab_dir = tmp_path / "bpe"
    vocab_dir.mkdir()
    bpe = clip.clip._tokenizer
    import json

    (vocab_dir / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), pad_token="!")
    tokenizer.model_max_length = TEXT_LENGTH
    tokenizer.save_pretrained(tmp_path / "ckpt" / "tokenizer")
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))
