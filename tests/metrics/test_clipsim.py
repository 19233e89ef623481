"""CLIPSIM against an independent computation with clip-anytorch's own load/preprocess/forward."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

from cmdbench import weights
from cmdbench.metrics.clipsim import CLIPSIM, bootstrap_std, format_x100, load_clip, preprocess_frames
from cmdbench.video import VideoFormatError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP

PROMPTS = ["a dog running on the beach", "fireworks over a city at night", "a dog running on the beach"]


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory):
    """A random tiny CLIP (widths 64, 2 layers, vocab 49408, context 77, 224 px, patch 32) saved as a state dict."""
    torch.manual_seed(0)
    model = CLIP(64, 224, 2, 64, 32, 77, 49408, 64, 1, 2)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_file):
    return load_clip(tiny_clip_file)


@pytest.fixture(scope="module")
def videos():
    """Three non-square noise videos of 4 frames: the centre crop and the resize both matter."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 4, 3, 40, 64), dtype=torch.uint8, generator=g)


def independent_clipsim(path, videos, prompts):
    """The definition, written with nothing but clip-anytorch: clip.load, its preprocess, forward()."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, preprocess = clip.load(str(path), device="cpu", jit=False)
    per_video = []
    with torch.no_grad():
        for video, prompt in zip(videos, prompts, strict=True):
            text = clip.tokenize([prompt])
            frame_scores = []
            for frame in video:
                image = preprocess(Image.fromarray(frame.permute(1, 2, 0).numpy()))[None]
                logits_per_image, _ = model(image, text)  # logit_scale * cosine
                frame_scores.append(float(logits_per_image[0, 0] / model.logit_scale.exp()))
            per_video.append(np.mean(frame_scores))
    return float(np.mean(per_video)), np.array(per_video)


def test_equals_independent_clip_computation(tiny_clip_file, videos):
    metric = CLIPSIM(tiny_clip_file)
    metric.update(videos, PROMPTS)
    result = metric.compute()
    expected, expected_per_video = independent_clipsim(tiny_clip_file, videos, PROMPTS)
    np.testing.assert_allclose(metric.per_video_scores, expected_per_video, rtol=0, atol=2e-6)
    assert result.value == pytest.approx(expected, abs=2e-6)
    # raw cosine, never x100 (the random tiny CLIP gives |cos| well below 1)
    assert abs(result.value) < 1 and result.unit == "cosine"
    assert format_x100(result.value) == f"{100 * result.value:.2f}"
    assert result.name == "clipsim" and result.higher_is_better is True and result.n == 3


@pytest.mark.parametrize("size", [(40, 64), (300, 224), (224, 224), (17, 500)])
def test_batched_preprocess_is_bit_identical_to_clip_preprocess(tiny_clip, size):
    from PIL import Image

    g = torch.Generator().manual_seed(2)
    frames = torch.randint(0, 256, (3, *size, 3), dtype=torch.uint8, generator=g).numpy()  # (n, H, W, 3)
    expected = torch.stack([tiny_clip.preprocess(Image.fromarray(f)) for f in frames])
    got = preprocess_frames(tiny_clip.preprocess, frames)
    assert got.dtype == expected.dtype == torch.float32 and got.shape == (3, 3, 224, 224)
    assert torch.equal(got, expected)


def test_parity_test_is_sensitive_to_preprocessing(tiny_clip, videos):
    """A whole-frame stretch to 224x224 (no centre crop) gives a clearly different number."""
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

    metric = CLIPSIM(clip_model=tiny_clip)
    metric.update(videos, PROMPTS)
    stretch = Compose([
        Resize((224, 224), interpolation=InterpolationMode.BICUBIC),
        ToTensor(),
        Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])
    stretched = CLIPSIM(clip_model=type(tiny_clip)(tiny_clip.model, stretch, "stretch", None, None))
    stretched.update(videos, PROMPTS)
    assert abs(metric.compute().value - stretched.compute().value) > 1e-4


def test_records_model_and_weight_hash(tiny_clip_file, tiny_clip, videos):
    metric = CLIPSIM(clip_model=tiny_clip)
    metric.update(videos, PROMPTS)
    extra = metric.compute().extra
    assert extra["weights_sha256"] == hashlib.sha256(tiny_clip_file.read_bytes()).hexdigest()
    assert extra["weights_path"] == str(tiny_clip_file)
    assert extra["weights_verified"] is False  # not the published ViT-B/32
    assert extra["model"].startswith("CLIP ViT (") and "vision_width 64" in extra["model"]
    assert extra["frames"] == 12 and extra["frames_per_video"] == [4] and extra["prompts_truncated"] == 0


def test_streaming_and_batching_do_not_change_the_value(tiny_clip, videos):
    whole = CLIPSIM(clip_model=tiny_clip, batch_size=64)
    whole.update(videos, PROMPTS)
    pieces = CLIPSIM(clip_model=tiny_clip, batch_size=3)
    pieces.update(videos[:1], PROMPTS[:1])
    pieces.update(videos[1:], PROMPTS[1:])
    np.testing.assert_allclose(pieces.per_video_scores, whole.per_video_scores, rtol=0, atol=1e-6)
    a, b = whole.compute(), pieces.compute()
    assert a.value == pytest.approx(b.value, abs=1e-6) and a.n == b.n == 3
    pieces.reset()
    with pytest.raises(ValueError, match="before any update"):
        pieces.compute()


def test_mean_over_frames_then_videos(tiny_clip, videos):
    """Videos of different lengths weigh equally: the value is the mean of per-video frame means."""
    metric = CLIPSIM(clip_model=tiny_clip)
    metric.update(videos[:1, :1], PROMPTS[:1])  # 1 frame
    metric.update(videos[1:2], PROMPTS[1:2])  # 4 frames
    single = CLIPSIM(clip_model=tiny_clip)
    single.update(videos[:1, :1], PROMPTS[:1])
    four = CLIPSIM(clip_model=tiny_clip)
    four.update(videos[1:2], PROMPTS[1:2])
    expected = (single.compute().value + four.compute().value) / 2
    assert metric.compute().value == pytest.approx(expected, abs=1e-12)
    assert metric.compute().extra["frames_per_video"] == [1, 4]
    # a video repeating one frame scores exactly that frame
    still = CLIPSIM(clip_model=tiny_clip)
    still.update(videos[:1, :1].repeat(1, 3, 1, 1, 1), PROMPTS[:1])
    assert still.compute().value == pytest.approx(single.compute().value, abs=1e-6)


def test_bootstrap_std_matches_standard_error():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.3, 0.05, size=400)
    std = bootstrap_std(scores, resamples=2000, seed=0)
    standard_error = scores.std() / np.sqrt(scores.size)
    assert std == pytest.approx(standard_error, rel=0.1)
    assert bootstrap_std(scores, resamples=2000, seed=0) == std  # seeded
    assert bootstrap_std(scores[:1]) is None


def test_std_comes_from_the_per_video_scores(tiny_clip, videos):
    metric = CLIPSIM(clip_model=tiny_clip, bootstrap=500, seed=3)
    metric.update(videos, PROMPTS)
    result = metric.compute()
    assert result.std == bootstrap_std(metric.per_video_scores, resamples=500, seed=3)
    assert result.std > 0


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        (None, "pass prompts="),
        (PROMPTS[:2], "got 2 prompts for 3 videos"),
        (PROMPTS + ["extra"], "got 4 prompts for 3 videos"),
        ("a dog", "not a single string"),
        ([PROMPTS[0], 7, PROMPTS[2]], r"entries \[1\] are not"),
        ([PROMPTS[0], "  ", PROMPTS[2]], r"prompts \[1\] are empty"),
    ],
)
def test_prompt_errors(tiny_clip, videos, prompts, match):
    metric = CLIPSIM(clip_model=tiny_clip)
    with pytest.raises(ValueError, match=match):
        metric.update(videos, prompts)
    assert metric.per_video_scores.size == 0  # nothing half-counted


def test_long_prompt_is_an_error_unless_truncation_is_asked_for(tiny_clip, videos):
    long_prompt = " ".join(["dog"] * 100)
    prompts = [PROMPTS[0], long_prompt, PROMPTS[1]]
    with pytest.raises(ValueError, match=r"prompts \[1\] exceed CLIP's 77-token context"):
        CLIPSIM(clip_model=tiny_clip).update(videos, prompts)
    metric = CLIPSIM(clip_model=tiny_clip, truncate=True)
    metric.update(videos, prompts)
    assert metric.compute().extra["prompts_truncated"] == 1


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda v: v.float() / 255, "dtype torch.uint8"),
        (lambda v: v.permute(0, 1, 3, 4, 2).contiguous(), "3 RGB channels"),
        (lambda v: v[:, 0], r"shape \(B, T, 3, H, W\)"),
        (lambda v: v[:, :0], "0 frames"),
    ],
)
def test_video_format_errors(tiny_clip, videos, make, match):
    with pytest.raises(VideoFormatError, match=match):
        CLIPSIM(clip_model=tiny_clip).update(make(videos), PROMPTS)


def test_nan_embeddings_are_an_error(tiny_clip_file, tmp_path, videos):
    state = torch.load(tiny_clip_file)
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    broken = tmp_path / "nan_clip.pt"
    torch.save(state, broken)
    with pytest.raises(ValueError, match=r"NaN/inf cosines for videos \[0, 1, 2\]"):
        CLIPSIM(broken).update(videos, PROMPTS)


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "ViT-B-32.pt"
    monkeypatch.setenv(weights.override_env_var("clip_vit_b32"), str(missing))
    with pytest.raises(weights.MissingWeightsError) as info:
        CLIPSIM()
    msg = str(info.value)
    assert str(missing) in msg and "cmdbench weights fetch clip_vit_b32" in msg
    assert weights.KNOWN["clip_vit_b32"].urls[0] in msg
    with pytest.raises(weights.MissingWeightsError, match="does not exist"):
        CLIPSIM(tmp_path / "no_such_file.pt")


def test_registered_as_clipsim(plugins):
    assert plugins.METRICS.get("clipsim") is CLIPSIM


@pytest.mark.weights
def test_real_vit_b32_if_present():
    """With the real weights: published architecture, verified hash, and a colour sanity check."""
    if not weights.path("clip_vit_b32").is_file():
        pytest.skip(f"CLIP ViT-B/32 not present at {weights.path('clip_vit_b32')}; `cmdbench weights fetch clip_vit_b32`")
    metric = CLIPSIM()
    assert metric.clip.model_name == "ViT-B/32"
    red = torch.zeros(1, 2, 3, 64, 64, dtype=torch.uint8)
    red[:, :, 0] = 255
    metric.update(torch.cat([red, red]), ["a plain red image", "a plain green image"])
    red_score, green_score = metric.per_video_scores
    assert red_score > green_score
    result = metric.compute()
    assert result.extra["weights_verified"] is True and 0 < result.value < 1


# --- the offline stand-in (clip-random-tiny) ----------------------------------------------------------------
def test_stand_in_equals_clip_load_of_the_same_random_tiny_clip(tmp_path, videos):
    """CLIPSIM(weights="clip-random-tiny") is CLIPSIM of clip-anytorch's CLIP at the documented tiny widths,
    seeded, saved and loaded by clip.load: the independent computation on that file gives the same value."""
    from cmdbench.metrics.clipsim_standin import STANDIN_NAME, TINY_CLIP_ARGS

    rng_before = torch.random.get_rng_state()
    metric = CLIPSIM(STANDIN_NAME)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    metric.update(videos, PROMPTS)
    result = metric.compute()
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(CLIP(*TINY_CLIP_ARGS).state_dict(), path)
    expected, _ = independent_clipsim(path, videos, PROMPTS)
    assert result.value == pytest.approx(expected, abs=2e-6)
    assert TINY_CLIP_ARGS == (64, 224, 2, 64, 32, 77, 49408, 64, 1, 2)  # reference/dependencies.md section 5


def test_stand_in_is_labelled_random_everywhere(videos):
    metric = CLIPSIM("clip-random-tiny")
    metric.update(videos, PROMPTS)
    result = metric.compute()
    assert result.protocol == "clip-random-tiny/every-frame/clip-preprocess"
    assert result.extra["random_weights"] is True and "means nothing" in result.extra["stand_in"]
    assert result.extra["weights_verified"] is False and result.extra["model"] == "clip-random-tiny"
    again = CLIPSIM("clip-random-tiny")
    again.update(videos, PROMPTS)
    assert again.compute().value == result.value and again.compute().extra["weights_sha256"] == \
        result.extra["weights_sha256"]


def test_missing_clip_file_names_the_stand_in(tmp_path):
    with pytest.raises(weights.MissingWeightsError, match="offline stand-in 'clip-random-tiny'"):
        load_clip(tmp_path / "nope.pt")
