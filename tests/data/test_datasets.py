"""Datasets: layouts, seeded clips, and every bad-input case under both policies."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cmdbench.data import synthetic
from cmdbench.data.clips import ClipSpec, crop_resize, iter_clips, make_loader, shard_indices, window_start
from cmdbench.data.datasets import folder, msrvtt, ucf101, webvid
from cmdbench.data.policy import DatasetError
from cmdbench.data.prompts import msrvtt_test_captions, webvid_captions
from cmdbench.registry import DATASETS
from cmdbench.video import write_mp4

SMALL = ClipSpec(num_frames=8, size=(16, 16))


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory):
    return synthetic.write_fake_ucf101(tmp_path_factory.mktemp("ucf"), classes=(0, 5, 36), train_per_class=3)


def test_registered():
    assert {"ucf101", "webvid", "msrvtt", "folder"} <= set(DATASETS.names())


def test_ucf101_train_split_labels_and_case_insensitive_paths(ucf_root):
    ds = ucf101(ucf_root, clip=SMALL)
    assert len(ds) == 9 and ds.report.listed == 9 and ds.report.num_skipped == 0
    labels = sorted(ds[i].condition for i in range(len(ds)))
    assert labels == [0] * 3 + [5] * 3 + [36] * 3
    item = ds[0]
    assert item.video.dtype == torch.uint8 and item.video.shape == (8, 3, 16, 16)
    test = ucf101(ucf_root, split="test", clip=SMALL)
    assert len(test) == 3 and {test[i].id for i in range(3)}.isdisjoint({ds[i].id for i in range(9)})


def test_ucf101_official_handstand_spelling(tmp_path):
    root = synthetic.write_fake_ucf101(tmp_path, classes=(36,), train_per_class=2, test_per_class=0)
    # the official archive stores HandstandPushups videos under 'HandStandPushups'
    os.rename(root / "UCF-101" / "HandstandPushups", root / "UCF-101" / "HandStandPushups")
    ds = ucf101(root, clip=SMALL)
    assert len(ds) == 2 and all(ds[i].condition == 36 for i in range(2))


def test_same_seed_same_clips_other_seed_other_clips(ucf_root):
    a = ucf101(ucf_root, clip=ClipSpec(num_frames=4, size=(16, 16), seed=3))
    b = ucf101(ucf_root, clip=ClipSpec(num_frames=4, size=(16, 16), seed=3))
    c = ucf101(ucf_root, clip=ClipSpec(num_frames=4, size=(16, 16), seed=4))
    assert [p.start for p in a.plan] == [p.start for p in b.plan]
    assert [p.source.id for p in a.plan] == [p.source.id for p in b.plan]
    assert torch.equal(a[2].video, b[2].video)
    assert [(p.source.id, p.start) for p in a.plan] != [(p.source.id, p.start) for p in c.plan]


def test_window_start_is_a_pure_function_of_seed_id_k():
    # pinned values: numpy's SeedSequence/PCG64 stream is stable across platforms and versions
    starts = [window_start(0, "v_x", k, 100, 16) for k in range(4)]
    assert starts == [window_start(0, "v_x", k, 100, 16) for k in range(4)]
    assert all(0 <= s <= 84 for s in starts) and len(set(starts)) > 1
    assert window_start(0, "v_x", 0, 16, 16) == 0  # exactly one window


def test_stride_and_frames_match_source(tmp_path):
    from PIL import Image

    d = tmp_path / "counter"
    d.mkdir()
    for i in range(30):  # lossless frames whose value is their index
        Image.fromarray(np.full((6, 6, 3), i * 8, dtype=np.uint8)).save(d / f"f{i}.png")
    ds = folder(tmp_path, clip=ClipSpec(num_frames=5, stride=3, size=None, seed=7))
    start = ds.plan[0].start
    assert 0 <= start <= 30 - 13
    assert ds[0].video[:, 0, 0, 0].tolist() == [(start + 3 * j) * 8 for j in range(5)]


def test_num_clips_beyond_videos_reuses_round_robin_and_reports(ucf_root):
    ds = ucf101(ucf_root, clip=ClipSpec(num_frames=4, size=(16, 16), num_clips=20))
    ids = [p.source.id for p in ds.plan]
    assert len(ids) == 20 and ids[:9] == ids[9:18]
    assert ds.report.clips_per_video_max == 3
    assert [p.k for p in ds.plan][:9] == [0] * 9 and [p.k for p in ds.plan][9:18] == [1] * 9


def test_crop_resize_centre_square():
    v = torch.zeros(2, 3, 10, 20, dtype=torch.uint8)
    v[..., 5:15] = 200  # centre square columns of a 10x20 frame
    out = crop_resize(v, (5, 5))
    assert out.shape == (2, 3, 5, 5) and int(out.min()) == 200


def test_loader_two_workers_and_sharding(ucf_root):
    ds = ucf101(ucf_root, clip=SMALL)
    seen = []
    for b in iter_clips(ds, make_loader(ds, batch_size=4, num_workers=2)):
        assert b.videos.shape[1:] == (8, 3, 16, 16)
        seen.extend(b.indices)
    assert seen == list(range(9)) and ds.report.clips_delivered == 9
    parts = [shard_indices(9, r, 2) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(9)) and not set(parts[0]) & set(parts[1])


def test_webvid_layout_and_captions(tmp_path):
    csv_path = synthetic.write_fake_webvid(tmp_path, num_videos=4)
    ds = webvid(tmp_path, clip=ClipSpec(num_frames=8, size=(16, 32)))
    assert len(ds) == 4 and ds[0].video.shape == (8, 3, 16, 32) and isinstance(ds[0].condition, str)
    caps = webvid_captions(csv_path)
    assert [c.id for c in caps] == [str(1_000_000 + i) for i in range(4)]
    assert len(webvid_captions(csv_path, limit=2)) == 2
    with pytest.raises(DatasetError, match="4 usable captions, 5 requested"):
        webvid_captions(csv_path, limit=5)


def test_webvid_missing_caption_and_duplicate_id(tmp_path):
    csv_path = synthetic.write_fake_webvid(tmp_path, num_videos=4)
    lines = csv_path.read_text().splitlines()
    parts = lines[2].split(",")
    parts[-1] = ""  # second video loses its caption
    lines[2] = ",".join(parts)
    lines.append(lines[3])  # third video listed twice
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="missing caption"):
        webvid(tmp_path, clip=ClipSpec(num_frames=8, size=(16, 16)))
    ds = webvid(tmp_path, clip=ClipSpec(num_frames=8, size=(16, 16)), policy="skip")
    reasons = [s.reason for s in ds.report.skipped]
    assert len(ds) == 3 and len(reasons) == 2
    assert any("missing caption" in r for r in reasons) and any("duplicate videoid" in r for r in reasons)


def test_msrvtt_test_captions_deterministic(tmp_path):
    path = synthetic.write_fake_msrvtt(tmp_path, num_test=12)
    data = json.loads(path.read_text())
    data["videos"].append({"video_id": "video9", "split": "train"})
    data["sentences"].reverse()  # order in the file must not matter
    path.write_text(json.dumps(data))
    caps = msrvtt(tmp_path)
    assert [c.id for c in caps.captions] == [f"video{7010 + i}" for i in range(12)]
    assert caps[0].text == "a red square moving, caption 0 of video7010"  # lowest sen_id
    seeded = msrvtt_test_captions(path, choice="seeded", seed=1)
    assert seeded == msrvtt_test_captions(path, choice="seeded", seed=1)
    assert [c.text for c in seeded] != [c.text for c in caps.captions]


def test_msrvtt_video_without_caption(tmp_path):
    path = synthetic.write_fake_msrvtt(tmp_path, num_test=3)
    data = json.loads(path.read_text())
    data["sentences"] = [s for s in data["sentences"] if s["video_id"] != "video7011"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="video7011"):
        msrvtt(path)
    caps = msrvtt(path, policy="skip")
    assert len(caps) == 2 and caps.report.skipped[0].source.endswith("video7011")


# --- bad input in a folder -----------------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path):
    """Two good videos plus one of every bad kind, written in sorted-name order."""
    good, _ = synthetic.moving_shape(0, num_frames=12, height=16, width=16)
    write_mp4(tmp_path / "a_good.mp4", good)
    write_mp4(tmp_path / "b_good.mp4", synthetic.moving_shape(1, num_frames=12, height=16, width=16)[0])
    data = (tmp_path / "a_good.mp4").read_bytes()
    (tmp_path / "c_truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "d_empty.mp4").write_bytes(b"")
    (tmp_path / "e_text.mp4").write_text("this is not a video")
    (tmp_path / "f_notes.txt").write_text("not a video either")
    write_mp4(tmp_path / "g_short.mp4", good[:3])
    noise = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    noisy = write_mp4(tmp_path / "h_corrupt.mp4", noise).read_bytes()  # large frame data (mdat)
    mdat, moov = noisy.find(b"mdat"), noisy.find(b"moov")
    assert 0 < mdat < moov, "write_mp4 is expected to put the index (moov) after the frame data"
    start = mdat + 8 + (moov - mdat) // 3  # zero 2000 bytes of frame data, keep the index intact
    corrupt = bytearray(noisy)
    corrupt[start : start + 2000] = b"\x00" * 2000
    (tmp_path / "h_corrupt.mp4").write_bytes(bytes(corrupt))
    return tmp_path


BAD = {"c_truncated.mp4": "cannot open", "d_empty.mp4": "empty (0 bytes)", "e_text.mp4": "cannot open",
       "f_notes.txt": "not a video", "g_short.mp4": "has 3 frames", "h_corrupt.mp4": "cannot decode"}


def test_strict_stops_at_first_bad_file_naming_it(messy):
    with pytest.raises(DatasetError, match=r"f_notes\.txt.*not a video"):  # index stage comes first
        folder(messy, clip=ClipSpec(num_frames=8, size=None))
    (messy / "f_notes.txt").unlink()
    with pytest.raises(DatasetError, match=r"c_truncated\.mp4.*cannot open"):
        folder(messy, clip=ClipSpec(num_frames=8, size=None))


def test_skip_records_every_bad_file_and_counts(messy):
    ds = folder(messy, clip=ClipSpec(num_frames=8, size=None), policy="skip")
    batches = list(iter_clips(ds, make_loader(ds, batch_size=8, num_workers=0)))
    delivered = [i for b in batches for i in b.ids]
    assert sorted(delivered) == ["a_good", "b_good"]
    skipped = {os.path.basename(s.source): s.reason for s in ds.report.skipped}
    assert set(skipped) == set(BAD), skipped
    for name, reason in BAD.items():
        assert reason in skipped[name], (name, skipped[name])
    r = ds.report
    assert (r.listed, r.usable, r.clips_planned, r.clips_delivered, r.num_skipped) == (8, 3, 3, 2, 6)
    assert r.to_dict()["num_skipped"] == 6 and "skipped=6" in r.summary()


def test_decode_failure_is_an_error_under_strict(messy):
    for name in ("c_truncated.mp4", "d_empty.mp4", "e_text.mp4", "f_notes.txt", "g_short.mp4"):
        (messy / name).unlink()
    ds = folder(messy, clip=ClipSpec(num_frames=8, size=None))  # probing passes: corruption is mid-stream
    with pytest.raises(DatasetError, match=r"h_corrupt\.mp4"):
        list(iter_clips(ds, make_loader(ds, batch_size=8, num_workers=0)))


def test_grayscale_odd_sized_gif_avi_and_frame_dirs(tmp_path):
    from PIL import Image

    gray, _ = synthetic.moving_shape(2, num_frames=10, height=33, width=47, grayscale=True)
    frames = [Image.fromarray(f[0].numpy(), "L") for f in gray]
    frames[0].save(tmp_path / "gray.gif", save_all=True, append_images=frames[1:], duration=40)
    d = tmp_path / "frames_dir"
    d.mkdir()
    for i, f in enumerate(frames):  # frame2 < frame10: natural order
        f.save(d / f"frame{i}.png")
    synthetic.write_avi(tmp_path / "clip.avi", synthetic.moving_shape(3, num_frames=10, height=32, width=48)[0])
    ds = folder(tmp_path, clip=ClipSpec(num_frames=10, size=(20, 20)))
    items = {ds[i].id: ds[i].video for i in range(len(ds))}
    assert set(items) == {"gray", "frames_dir", "clip"}
    for v in items.values():
        assert v.shape == (10, 3, 20, 20) and v.dtype == torch.uint8
    assert torch.equal(items["gray"][:, 0], items["gray"][:, 2])  # grey -> equal RGB channels
    assert torch.equal(items["gray"], items["frames_dir"])  # lossless sources agree exactly
    raw = folder(tmp_path, clip=ClipSpec(num_frames=10, size=None))
    assert {tuple(raw[i].video.shape[-2:]) for i in range(3)} == {(33, 47), (32, 48)}


def test_captions_csv_missing_rows_duplicates_and_ids(tmp_path):
    synthetic.write_folder(tmp_path, 3, num_frames=8, height=16, width=16)
    write_mp4(tmp_path / "video_0001.avi", synthetic.moving_shape(9, num_frames=8, height=16, width=16)[0])
    with open(tmp_path / "captions.csv", "a") as f:
        f.write("video_0000.mp4,again\nghost.mp4,a caption for nothing\n")
    lines = (tmp_path / "captions.csv").read_text().splitlines()
    (tmp_path / "captions.csv").write_text("\n".join(line for line in lines if "video_0002" not in line) + "\n")
    with pytest.raises(DatasetError):
        folder(tmp_path, clip=ClipSpec(num_frames=8, size=None))
    ds = folder(tmp_path, clip=ClipSpec(num_frames=8, size=None), policy="skip")
    reasons = " | ".join(f"{s.source}: {s.reason}" for s in ds.report.skipped)
    assert "duplicate caption row for 'video_0000.mp4'" in reasons
    assert "duplicate id 'video_0001'" in reasons
    assert "no caption row for 'video_0002.mp4'" in reasons
    assert "'ghost.mp4' names no video" in reasons
    assert "no caption row for 'video_0001.avi'" in reasons  # the first of two equal ids, sorted
    assert sorted(ds[i].id for i in range(len(ds))) == ["video_0000"]
    assert ds[0].condition.startswith("a ")


def test_unreadable_directory(tmp_path, monkeypatch):
    synthetic.write_folder(tmp_path, 2, num_frames=8, height=16, width=16, captions=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads anything: make the listing fail the way a permission error does
        real_scandir = os.scandir

        def scandir(path="."):
            if os.fspath(path) == os.fspath(locked):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        with pytest.raises(DatasetError, match=r"locked.*cannot be listed"):
            folder(tmp_path, clip=ClipSpec(num_frames=8, size=None))
        ds = folder(tmp_path, clip=ClipSpec(num_frames=8, size=None), policy="skip")
        assert len(ds) == 2 and ds.report.skipped[0].stage == "index"
    finally:
        locked.chmod(0o755)


def test_manifest_changes_with_files(tmp_path):
    synthetic.write_folder(tmp_path, 2, num_frames=8, height=16, width=16)
    clip = ClipSpec(num_frames=8, size=None)
    a = folder(tmp_path, clip=clip).manifest
    assert a.sha256 == folder(tmp_path, clip=clip).manifest.sha256 and len(a) == 3  # 2 videos + captions
    os.utime(tmp_path / "video_0000.mp4", ns=(1, 1))
    assert folder(tmp_path, clip=clip).manifest.sha256 != a.sha256


def test_bad_options_are_errors(tmp_path):
    with pytest.raises(ValueError, match="policy"):
        folder(tmp_path, policy="lenient")
    with pytest.raises(ValueError, match="order"):
        ClipSpec(order="random")
    with pytest.raises(DatasetError, match="not a directory"):
        ucf101(tmp_path / "nope")
    with pytest.raises(DatasetError, match="classInd"):
        ucf101(tmp_path)
