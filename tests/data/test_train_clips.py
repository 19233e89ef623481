"""Training clips: epoch order, fresh windows, stride/fps, clips per video, resume, workers, bad clips.

The frame-content tests use "counter" videos whose frame ``i`` shows ``i`` in its pixels (left half
gray ``8 + 16 * (i % 16)``, right half ``8 + 16 * (i // 16)``: steps of 16 survive the codecs'
quantisation), so which frames a clip took is read back
from the decoded pixels, not from our own bookkeeping.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdbench.data import readers, synthetic, train_clips
from cmdbench.data.clips import VideoSource, crop_resize
from cmdbench.data.epoch_order import EpochOrder
from cmdbench.data.policy import DatasetError
from cmdbench.data.readers import SourceInfo
from cmdbench.data.source_table import SourceTable
from cmdbench.data.train_clips import (
    ClipKey,
    TrainBatchSampler,
    TrainClips,
    TrainClipSpec,
    build_train_clips,
    collate_train_clips,
    make_train_loader,
)
from cmdbench.video import write_mp4


def counter_video(num_frames: int) -> torch.Tensor:
    """uint8 (T, 3, 32, 64) whose frame i encodes i in two flat halves."""
    v = torch.empty(num_frames, 3, 32, 64, dtype=torch.uint8)
    for i in range(num_frames):
        v[i, :, :, :32] = 8 + 16 * (i % 16)
        v[i, :, :, 32:] = 8 + 16 * (i // 16)
    return v


def frame_numbers(video: torch.Tensor) -> list[int]:
    """Read back the frame numbers of uint8 (T, 3, H, W) counter frames (any size with both halves)."""
    w = video.shape[-1]
    left = video[:, :, :, : w // 4].float().median(dim=-1).values.median(dim=-1).values.median(dim=-1).values
    right = video[:, :, :, -(w // 4):].float().median(dim=-1).values.median(dim=-1).values.median(dim=-1).values
    low = ((left - 8) / 16).round().long()
    high = ((right - 8) / 16).round().long()
    return (high * 16 + low).tolist()


@pytest.fixture(scope="module")
def counters(tmp_path_factory) -> Path:
    """A folder: c60.mp4 (60 frames, 24 fps), c12.mp4 (12 frames, 12 fps), c40.avi (40 frames, 25 fps)."""
    root = tmp_path_factory.mktemp("counters")
    write_mp4(root / "c60.mp4", counter_video(60), fps=24)
    write_mp4(root / "c12.mp4", counter_video(12), fps=12)
    synthetic.write_avi(root / "c40.avi", counter_video(40), fps=25)
    return root


@pytest.fixture(scope="module")
def with_bad(tmp_path_factory) -> Path:
    """Four good videos, one corrupt file and one too short for an 8-frame clip."""
    root = tmp_path_factory.mktemp("bad")
    synthetic.write_folder(root, 4, num_frames=16, captions=False)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    write_mp4(root / "short.mp4", counter_video(4))
    return root


@pytest.fixture(scope="module")
def ucf(tmp_path_factory) -> Path:
    return synthetic.write_fake_ucf101(tmp_path_factory.mktemp("ucf"), classes=(0, 3, 7), train_per_class=2,
                                       test_per_class=0, num_frames=20, height=24, width=32)


def _single(root: Path, name: str, spec: TrainClipSpec) -> TrainClips:
    return TrainClips("counters", root, [VideoSource(root / name, name, None)], spec)


# --- epoch order -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 64, 97, 127, 128, 129, 1000, 1024, 10_000])
def test_epoch_order_is_a_bijection(n):
    for seed, epoch in [(0, 0), (0, 1), (12345, 7)]:
        order = EpochOrder(n, seed, epoch)
        assert sorted(order(i) for i in range(n)) == list(range(n))
    with pytest.raises(IndexError):
        EpochOrder(n, 0, 0)(n)


@pytest.mark.parametrize("n", [3, 10_000, 2**20 + 3, 2**32 - 5])
def test_tabulated_round_functions_equal_the_formula(n):
    tab, calc = EpochOrder(n, 5, 2), EpochOrder(n, 5, 2, tabulate=False)
    assert tab._tables is not None and calc._tables is None
    positions = [0, 1, n // 3, n // 2, n - 1, *range(0, n, max(1, n // 500))]
    assert [tab(p) for p in positions] == [calc(p) for p in positions]


def test_epoch_order_differs_between_epochs_and_seeds_and_is_well_mixed():
    n = 10_000
    orders = [list(map(EpochOrder(n, s, e), range(n))) for s, e in [(0, 0), (0, 1), (0, 2), (1, 0)]]
    for a in range(len(orders)):
        for b in range(a + 1, len(orders)):
            same = sum(x == y for x, y in zip(orders[a], orders[b], strict=True))
            assert same < 20  # independent permutations agree at ~1 position in expectation
    # far from the identity and from a shift: rank correlation with the positions is near 0
    assert abs(np.corrcoef(np.arange(n), orders[0])[0, 1]) < 0.05
    # position 0 lands uniformly over 8 items across 2,000 epochs (expected 250 per item)
    counts = Counter(EpochOrder(8, 3, e)(0) for e in range(2000))
    assert sorted(counts) == list(range(8)) and all(170 < c < 330 for c in counts.values())


# --- windows, stride, fps --------------------------------------------------------------------------------


def test_a_video_gives_a_fresh_window_each_epoch_and_the_same_key_the_same_clip(counters):
    ds = _single(counters, "c60.mp4", TrainClipSpec(num_frames=4, size=None))
    starts = []
    for epoch in range(8):
        clip = ds[ClipKey(epoch, 0, 0)]
        frames = frame_numbers(clip.video)
        assert frames == list(range(frames[0], frames[0] + 4))  # consecutive at stride 1
        starts.append(frames[0])
    assert len(set(starts)) >= 4  # 8 draws from 57 starts
    again = _single(counters, "c60.mp4", TrainClipSpec(num_frames=4, size=None))  # a fresh object: no memo
    assert torch.equal(again[ClipKey(5, 0, 0)].video, ds[ClipKey(5, 0, 0)].video)
    assert frame_numbers(ds[ClipKey(5, 0, 1)].video) != frame_numbers(ds[ClipKey(5, 0, 0)].video) or \
        frame_numbers(ds[ClipKey(6, 0, 1)].video) != frame_numbers(ds[ClipKey(6, 0, 0)].video)  # rank is in the key


def test_window_starts_cover_every_valid_start(counters):
    ds = _single(counters, "c12.mp4", TrainClipSpec(num_frames=4, stride=3, size=(8, 16)))
    starts = Counter(frame_numbers(ds[ClipKey(e, 0, 0)].video)[0] for e in range(120))
    assert sorted(starts) == [0, 1, 2]  # span 10 in 12 frames: starts 0..2, each one reached


@pytest.mark.parametrize("stride", [1, 2, 5])
def test_stride_takes_every_stride_th_frame(counters, stride):
    ds = _single(counters, "c40.avi", TrainClipSpec(num_frames=6, stride=stride, size=None))
    for epoch in range(3):
        frames = frame_numbers(ds[ClipKey(epoch, 0, 0)].video)
        assert np.diff(frames).tolist() == [stride] * 5 and frames[0] >= 0 and frames[-1] < 40


def test_target_fps_derives_the_stride_from_each_video(counters):
    spec = TrainClipSpec(num_frames=3, fps=6.0, size=(16, 32))
    ds = TrainClips("counters", counters, [VideoSource(counters / "c60.mp4", "a", None),
                                           VideoSource(counters / "c12.mp4", "b", None)], spec)
    by_id = {}
    for p in range(2):
        clip = ds[ClipKey(0, p, 0)]
        by_id[clip.id] = np.diff(frame_numbers(clip.video)).tolist()
    assert by_id == {"a": [4, 4], "b": [2, 2]}  # 24 fps -> stride 4, 12 fps -> stride 2


def test_fps_rounding_is_documented_nearest_halves_up():
    spec = TrainClipSpec(fps=8.0)
    here = Path("x.mp4")
    assert [spec.stride_for(SourceInfo(100, fps), here) for fps in (25.0, 30.0, 12.0, 4.0, 29.97)] == [3, 4, 2, 1, 4]
    assert TrainClipSpec(fps=12.0).stride_for(SourceInfo(100, 30.0), here) == 3  # 2.5 rounds up
    with pytest.raises(readers.UnreadableVideoError, match="no frame rate"):
        spec.stride_for(SourceInfo(100, None), here)
    with pytest.raises(ValueError, match="set one"):
        TrainClipSpec(stride=2, fps=8.0)


def write_vfr_mp4(path: Path, video: torch.Tensor) -> Path:
    """H.264 mp4 with a variable frame rate: every third frame lasts two ticks (timestamps 0,1,2,4,5,7,...)."""
    import fractions

    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = video.shape[-1], video.shape[-2], "yuv420p"
        stream.time_base = fractions.Fraction(1, 25)
        pts = 0
        for i, f in enumerate(video.permute(0, 2, 3, 1).numpy()):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 25)
            pts += 1 if i % 3 else 2
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("name,windows", [("c60.mp4", [range(0, 4), range(33, 60, 9), range(50, 60)]),
                                          ("c40.avi", [range(0, 40, 13), range(17, 25), range(39, 40)])])
def test_pyav_fast_path_reads_the_frames_decord_reads(counters, name, windows, monkeypatch):
    path = counters / name
    expected = [readers.read_frames(path, w) for w in windows]  # decord's frame index (the reference)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the fast path fell back to decord")

    monkeypatch.setattr(readers, "read_frames", no_fallback)
    for w, ref in zip(windows, expected, strict=True):
        video, info = readers.read_chosen_frames(path, lambda _, w=w: w)
        assert frame_numbers(video) == list(w) == frame_numbers(ref)
        assert (video.int() - ref.int()).abs().max() <= 2
    assert (info.num_frames, info.fps) == ((60, 24.0) if name == "c60.mp4" else (40, 25.0))


def test_variable_frame_rate_falls_back_to_decord_numbering(tmp_path, monkeypatch):
    path = write_vfr_mp4(tmp_path / "vfr.mp4", counter_video(30))
    calls = []
    original = readers.read_frames
    monkeypatch.setattr(readers, "read_frames", lambda *a: calls.append(a) or original(*a))
    for w in (range(0, 6), range(10, 16), range(20, 30, 3)):
        video, _ = readers.read_chosen_frames(path, lambda _, w=w: w)
        assert frame_numbers(video) == list(w)  # the n-th frame in the file, whatever its timestamp
    assert len(calls) >= 2  # windows past the first timestamp gap went to decord


def test_clips_are_cropped_and_resized(counters):
    clip = _single(counters, "c40.avi", TrainClipSpec(num_frames=2, size=(8, 8)))[ClipKey(0, 0, 0)]
    assert clip.video.dtype == torch.uint8 and clip.video.shape == (2, 3, 8, 8) and clip.video.is_contiguous()


@pytest.mark.parametrize("shape,size", [((3, 3, 48, 80), (16, 16)), ((2, 3, 90, 40), (24, 32)),
                                        ((2, 3, 64, 64), (64, 64)), ((2, 3, 37, 53), (20, 10))])
def test_uint8_crop_resize_matches_the_float_crop_resize(shape, size):
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(shape, generator=g) * 255, 3, 1, 1)  # some structure
    video = smooth.round().to(torch.uint8)
    ref = crop_resize(video, size)
    out = train_clips.crop_resize_uint8(video.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), size)
    assert out.shape == ref.shape and out.dtype == torch.uint8
    assert (out.int() - ref.int()).abs().max() <= 1


# --- epochs, loader, resume ------------------------------------------------------------------------------


def test_clips_per_video_visits_each_video_that_many_times_per_epoch(with_bad):
    sources = [VideoSource(p, p.stem, None) for p in sorted(with_bad.glob("video_*.mp4"))]
    ds = TrainClips("folder", with_bad, sources, TrainClipSpec(num_frames=4, size=(8, 8), clips_per_video=3))
    assert len(ds) == 12
    for epoch in range(3):
        assert Counter(ds.video_at(epoch, p) for p in range(12)) == {v: 3 for v in range(4)}
    assert [ds.video_at(0, p) for p in range(12)] != [ds.video_at(1, p) for p in range(12)]
    loader = iter(make_train_loader(ds, batch_size=4, seed=0, rank=0, world_size=1, num_workers=0))
    ids = [i for _ in range(3) for i in next(loader).ids]
    assert Counter(ids) == {s.id: 3 for s in sources}


def _batches(ds, n, **kw):
    it = iter(make_train_loader(ds, batch_size=3, seed=0, **kw))
    return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
    return (torch.equal(a.videos, b.videos) and a.ids == b.ids and a.keys == b.keys
            and a.conditions == b.conditions and a.replaced == b.replaced)


def test_batches_are_the_same_for_any_num_workers_and_resume_is_exact(ucf):
    ds = build_train_clips("ucf101", ucf, TrainClipSpec(num_frames=4, size=(16, 16), clips_per_video=2))
    assert len(ds) == 12
    ref = _batches(ds, 6, rank=0, world_size=1, num_workers=0)  # 18 clips: crosses into epoch 1
    assert ref[0].videos.shape == (3, 4, 3, 16, 16) and ref[0].videos.dtype == torch.uint8
    assert [k.epoch for b in ref for k in b.keys] == [0] * 12 + [1] * 6
    for workers in (1, 2):
        assert all(_same(a, b) for a, b in zip(ref, _batches(ds, 6, rank=0, world_size=1, num_workers=workers),
                                                strict=True))
    resumed = iter(make_train_loader(ds, batch_size=3, seed=0, rank=0, world_size=1, start_step=4, num_workers=2))
    assert _same(next(resumed), ref[4]) and _same(next(resumed), ref[5])
    assert all(isinstance(c, int) and 0 <= c < 101 for b in ref for c in b.conditions)


def test_the_loader_leaves_the_global_torch_rng_alone(ucf):
    ds = build_train_clips("ucf101", ucf, TrainClipSpec(num_frames=2, size=(8, 8)))
    for workers in (0, 1):
        state = torch.get_rng_state()
        next(iter(make_train_loader(ds, batch_size=2, seed=0, rank=0, world_size=1, num_workers=workers)))
        assert torch.equal(torch.get_rng_state(), state)  # a resumed run's noise stream is not shifted


def test_ranks_split_each_epoch_without_overlap(ucf):
    ds = build_train_clips("ucf101", ucf, TrainClipSpec(num_frames=2, size=(8, 8)))
    r0 = _batches(ds, 1, rank=0, world_size=2, num_workers=0)[0]
    r1 = _batches(ds, 1, rank=1, world_size=2, num_workers=0)[0]
    assert sorted(k.position for k in r0.keys + r1.keys) == list(range(6))
    assert sorted(r0.ids + r1.ids) == sorted(s.id for s in ds.sources)  # one epoch = every video once
    assert {k.rank for k in r1.keys} == {1}


def test_sampler_starts_at_any_step_in_constant_time():
    s = TrainBatchSampler(1_000, batch_size=4, rank=1, world_size=8, start_step=10**15)
    g = (10**15 * 8 + 1) * 4
    assert next(iter(s)) == [ClipKey((g + j) // 1000, (g + j) % 1000, 1) for j in range(4)]


def test_loader_seed_must_match_the_dataset(ucf):
    ds = build_train_clips("ucf101", ucf, TrainClipSpec(seed=3))
    with pytest.raises(ValueError, match="TrainClipSpec.seed=3"):
        make_train_loader(ds, batch_size=2, seed=4, rank=0, world_size=1)


# --- bad input ---------------------------------------------------------------------------------------------


def test_no_video_is_opened_at_construction(with_bad, monkeypatch):
    opened = []
    monkeypatch.setattr(train_clips, "read_chosen_frames", lambda *a, **k: opened.append(a) or (_ for _ in ()).throw(
        AssertionError("read at construction")))
    monkeypatch.setattr(readers, "count_frames", lambda *a, **k: opened.append(a))
    ds = build_train_clips("folder", with_bad, TrainClipSpec(num_frames=8, policy="strict"))
    assert opened == [] and len(ds) == 6  # the corrupt and short files are listed, not probed


def test_skip_replaces_bad_clips_and_names_them(with_bad):
    spec = TrainClipSpec(num_frames=8, size=(8, 8), policy="skip", clips_per_video=2)
    ds = build_train_clips("folder", with_bad, spec)
    assert len(ds) == 12
    batches = _batches(ds, 4, rank=0, world_size=1, num_workers=2)  # one epoch
    ids = [i for b in batches for i in b.ids]
    assert len(ids) == 12 and set(ids) <= {f"video_{i:04d}" for i in range(4)}
    replaced = [s for b in batches for s in b.replaced]
    first_tries = Counter(Path(ds.sources[ds.video_at(0, p)].path).name for p in range(12))
    assert first_tries["corrupt.mp4"] == 2 and first_tries["short.mp4"] == 2
    reasons = {Path(s.source).name: s.reason for s in replaced}
    assert set(reasons) == {"corrupt.mp4", "short.mp4"} and len(replaced) >= 4
    assert "cannot open" in reasons["corrupt.mp4"] and "has 4 frames" in reasons["short.mp4"]
    assert all(s.stage == "decode" for s in replaced)
    # each clip carries exactly the failures behind it, and a clean clip carries none
    for p in range(12):
        clip = ds[ClipKey(0, p, 0)]
        bad_first = Path(ds.sources[ds.video_at(0, p)].path).name in reasons
        assert bool(clip.replaced) == bad_first


def test_strict_stops_naming_the_file_and_the_reason(with_bad):
    ds = build_train_clips("folder", with_bad, TrainClipSpec(num_frames=8, size=(8, 8)))
    pos = {Path(ds.sources[ds.video_at(0, p)].path).name: p for p in range(len(ds))}
    with pytest.raises(DatasetError, match=r"corrupt\.mp4.*cannot open"):
        ds[ClipKey(0, pos["corrupt.mp4"], 0)]
    with pytest.raises(DatasetError, match=r"short\.mp4.*has 4 frames.*needs 8"):
        ds[ClipKey(0, pos["short.mp4"], 0)]
    loader = iter(make_train_loader(ds, batch_size=len(ds), seed=0, rank=0, world_size=1, num_workers=1))
    try:  # the worker's error reaches the training loop
        next(loader)
        raise AssertionError("policy 'strict' read a corrupt file without error")
    except DatasetError as err:
        message = str(err)
        # torch's re-raise leaves an exception <-> frame cycle holding the loader; a cycle-collected
        # loader waits 5 s for its worker, so break the cycle and let reference counting close it now
        err.__traceback__ = None
    assert "bad input" in message and "DataLoader worker" in message
    del loader


def test_every_candidate_failing_stops_with_a_clear_error(with_bad):
    sources = [VideoSource(with_bad / "corrupt.mp4", "c", None), VideoSource(with_bad / "short.mp4", "s", None)]
    ds = TrainClips("folder", with_bad, sources, TrainClipSpec(num_frames=8, policy="skip", max_replacements=5))
    with pytest.raises(DatasetError, match="5 seeded replacements all failed"):
        ds[ClipKey(0, 0, 0)]


def test_unknown_options_name_the_allowed_ones(ucf):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['stride'\]; allowed \['split', 'fold'\].*clip setting"):
        build_train_clips("ucf101", ucf, TrainClipSpec(), stride=2)
    with pytest.raises(ValueError, match=r"'num_clips'.*allowed \['captions'\]"):
        build_train_clips("folder", ucf, TrainClipSpec(), num_clips=3)
    with pytest.raises(ValueError, match="allowed"):
        build_train_clips("kinetics", ucf, TrainClipSpec())
    with pytest.raises(TypeError, match="ClipKey"):
        build_train_clips("ucf101", ucf, TrainClipSpec())[0]


def test_collate_refuses_clips_of_different_sizes():
    a = train_clips.TrainClip(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, "a", ClipKey(0, 0, 0), ())
    b = train_clips.TrainClip(torch.zeros(2, 3, 8, 6, dtype=torch.uint8), None, "b", ClipKey(0, 1, 0), ())
    with pytest.raises(DatasetError, match="set TrainClipSpec.size"):
        collate_train_clips([a, b])


# --- listings and identity ---------------------------------------------------------------------------------


def test_webvid_and_folder_listings_carry_captions(tmp_path):
    csv_path = synthetic.write_fake_webvid(tmp_path / "webvid", num_videos=3, num_frames=12)
    ds = build_train_clips("webvid", tmp_path / "webvid", TrainClipSpec(num_frames=4, size=(8, 16)), csv=csv_path)
    clip = ds[ClipKey(0, 0, 0)]
    assert isinstance(clip.condition, str) and "moving" in clip.condition and clip.video.shape == (4, 3, 8, 16)
    synthetic.write_folder(tmp_path / "folder", 2, num_frames=8)
    ds = build_train_clips("folder", tmp_path / "folder", TrainClipSpec(num_frames=4, size=(8, 8)))
    assert {ds[ClipKey(0, p, 0)].condition for p in range(2)} == {s.condition for s in ds.sources} and \
        all(isinstance(s.condition, str) for s in ds.sources)


def test_describe_identifies_listing_and_spec(ucf):
    a = build_train_clips("ucf101", ucf, TrainClipSpec(num_frames=4)).describe()
    assert json.loads(json.dumps(a)) == a
    assert a == build_train_clips("ucf101", ucf, TrainClipSpec(num_frames=4)).describe()
    assert a != build_train_clips("ucf101", ucf, TrainClipSpec(num_frames=4, stride=2)).describe()
    b = build_train_clips("ucf101", ucf, TrainClipSpec(num_frames=4), fold=1)
    fewer = list(b.sources)[:-1]
    assert TrainClips("ucf101", ucf, fewer, b.spec, index_files=b.index_files).describe()["index_sha256"] != \
        a["index_sha256"]


def test_source_table_gives_back_every_listed_source(tmp_path):
    listed = [VideoSource(tmp_path / "a" / "x.mp4", "x", 7), VideoSource(tmp_path / "y.avi", "y", "a caption é"),
              VideoSource(Path("/elsewhere/z.mp4"), "z", None), VideoSource(tmp_path / "w.mp4", "w", 0)]
    table = SourceTable(listed, tmp_path)
    assert list(table) == listed and table[-1] == listed[-1] and len(table) == 4
    assert type(table[0].condition) is int  # labels come back as Python ints, not numpy scalars
    renamed = SourceTable([*listed[:3], VideoSource(tmp_path / "w.mp4", "w", 1)], tmp_path)
    assert renamed.digest() != table.digest()
    assert SourceTable(listed, tmp_path).digest() == table.digest()
    moved = [VideoSource(tmp_path / "moved" / s.path.relative_to(tmp_path), s.id, s.condition) for s in listed
             if s.path.is_relative_to(tmp_path)]
    assert SourceTable(moved, tmp_path / "moved").digest() == SourceTable(
        [s for s in listed if s.path.is_relative_to(tmp_path)], tmp_path).digest()  # root-relative
    with pytest.raises(IndexError):
        table[4]
    with pytest.raises(TypeError, match="neither a caption"):
        SourceTable([VideoSource(tmp_path / "v.mp4", "v", 1.5)], tmp_path)
