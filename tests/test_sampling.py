"""Frame-index samplers: lengths, bounds, determinism, short videos, multi-view coverage and fps resampling."""

from __future__ import annotations

import math
import random

import pytest

from vlkd.data.sampling import FrameSampler, dense_indices, fps_indices, multiview_indices, segment_indices

SIZES = [(1, 8), (3, 8), (7, 8), (8, 8), (9, 8), (100, 8), (301, 16), (50, 1)]


def draws(function, times=300, seed=0):
    rng = random.Random(seed)
    return [tuple(function(rng)) for _ in range(times)]


# --------------------------------------------------------------------------- segment


@pytest.mark.parametrize("num_frames, num_segments", SIZES)
@pytest.mark.parametrize("train", [True, False])
def test_segment_length_bounds_and_order(num_frames, num_segments, train):
    for indices in draws(lambda rng: segment_indices(num_frames, num_segments, train, rng), times=20):
        assert len(indices) == num_segments
        assert all(0 <= index < num_frames for index in indices)
        assert list(indices) == sorted(indices)


def test_segment_test_mode_takes_centres():
    assert segment_indices(80, 8, train=False) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert segment_indices(100, 4, train=False) == [12, 37, 62, 87]


def test_segment_train_draws_every_frame_of_its_segment_only():
    samples = draws(lambda rng: segment_indices(80, 8, True, rng))
    for segment in range(8):
        seen = {indices[segment] for indices in samples}
        assert seen == set(range(segment * 10, segment * 10 + 10))


def test_segment_train_is_deterministic_given_the_seed_and_random_otherwise():
    assert draws(lambda rng: segment_indices(100, 8, True, rng), seed=3) == draws(
        lambda rng: segment_indices(100, 8, True, rng), seed=3
    )
    assert draws(lambda rng: segment_indices(100, 8, True, rng), seed=3) != draws(
        lambda rng: segment_indices(100, 8, True, rng), seed=4
    )
    assert len(set(draws(lambda rng: segment_indices(100, 8, False, rng)))) == 1


def test_segment_short_video_repeats_frames_in_order():
    assert segment_indices(3, 8, train=False) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert segment_indices(1, 4, train=True, rng=random.Random(0)) == [0, 0, 0, 0]


def test_segment_without_rng_uses_the_global_generator():
    random.seed(11)
    first = segment_indices(100, 8, True)
    random.seed(11)
    assert segment_indices(100, 8, True) == first


# --------------------------------------------------------------------------- dense


@pytest.mark.parametrize("num_frames", [1, 20, 113, 114, 500])
@pytest.mark.parametrize("train", [True, False])
def test_dense_length_stride_and_bounds(num_frames, train):
    for indices in draws(lambda rng: dense_indices(num_frames, 8, 16, train, rng), times=20):
        assert len(indices) == 8
        assert all(0 <= index < num_frames for index in indices)
        if num_frames >= 113:  # the window (7 * 16 + 1 frames) fits
            assert all(b - a == 16 for a, b in zip(indices, indices[1:], strict=False))


def test_dense_test_mode_is_centred():
    indices = dense_indices(200, 8, 16, train=False)
    assert indices[0] == (200 - 113) // 2
    assert indices[0] - 0 == pytest.approx((200 - 1) - indices[-1], abs=1)


def test_dense_train_start_covers_the_valid_range_and_is_seeded():
    starts = {indices[0] for indices in draws(lambda rng: dense_indices(120, 8, 16, True, rng))}
    assert starts == set(range(0, 120 - 113 + 1))
    assert draws(lambda rng: dense_indices(500, 8, 16, True, rng), seed=1) == draws(
        lambda rng: dense_indices(500, 8, 16, True, rng), seed=1
    )


def test_dense_short_video_clamps_or_loops():
    assert dense_indices(50, 8, 16, train=False) == [0, 16, 32, 48, 49, 49, 49, 49]
    assert dense_indices(50, 8, 16, train=True, rng=random.Random(0)) == [0, 16, 32, 48, 49, 49, 49, 49]
    assert dense_indices(50, 8, 16, train=False, out_of_bounds="loop") == [0, 16, 32, 48, 14, 30, 46, 12]
    with pytest.raises(ValueError, match="out_of_bounds"):
        dense_indices(50, 8, 16, train=False, out_of_bounds="wrap")


# --------------------------------------------------------------------------- multi-view


def test_dense_views_span_the_video_evenly():
    views = multiview_indices(300, 3, 8, stride=16)
    assert len(views) == 3 and all(len(view) == 8 for view in views)
    assert views[0][0] == 0 and views[-1][-1] == 299  # first and last frames are covered
    starts = [view[0] for view in views]
    assert starts[1] - starts[0] == pytest.approx(starts[2] - starts[1], abs=1)


def test_one_view_equals_the_test_sampler():
    assert multiview_indices(300, 1, 8, stride=16) == [dense_indices(300, 8, 16, train=False)]
    assert multiview_indices(300, 1, 8) == [segment_indices(300, 8, train=False)]


def test_segment_views_tile_the_segments():
    views = multiview_indices(24, 3, 8)
    assert sorted(index for view in views for index in view) == list(range(24))
    assert all(view == sorted(view) for view in views)


@pytest.mark.parametrize("stride", [None, 4])
def test_views_of_short_videos_stay_in_bounds(stride):
    for view in multiview_indices(5, 4, 8, stride):
        assert len(view) == 8 and all(0 <= index < 5 for index in view)


# --------------------------------------------------------------------------- fps


def test_fps_indices_resample_with_timestamps():
    indices, timestamps = fps_indices(100, source_fps=25, target_fps=5)
    assert indices == list(range(0, 100, 5))
    assert timestamps == pytest.approx([index / 25 for index in indices])
    assert timestamps[1] - timestamps[0] == pytest.approx(0.2)


def test_fps_indices_fractional_rates_cover_the_whole_video():
    source = 30000 / 1001
    indices, timestamps = fps_indices(300, source, 1.0)
    assert len(indices) == math.ceil(300 / source)  # one per second of the 10.01 s video
    assert indices[-1] == 299 and timestamps[-1] < 300 / source
    assert all(b > a for a, b in zip(indices, indices[1:], strict=False))
    assert [round(t) for t in timestamps] == list(range(len(indices)))


def test_fps_indices_never_upsample():
    assert fps_indices(10, 10, 30) == (list(range(10)), pytest.approx([i / 10 for i in range(10)]))


def test_fps_indices_max_frames_spreads_over_the_video():
    indices, timestamps = fps_indices(1000, 25, 5, max_frames=7)
    assert len(indices) == 7 and indices[0] == 0 and indices[-1] == 995
    assert len(set(indices)) == 7 and indices == sorted(indices)
    assert timestamps == pytest.approx([index / 25 for index in indices])
    assert fps_indices(100, 25, 5, max_frames=1000)[0] == list(range(0, 100, 5))


# --------------------------------------------------------------------------- FrameSampler


def test_sampler_train_and_eval_views():
    sampler = FrameSampler(mode="segment", num_frames=8, num_views=3)
    rng = random.Random(0)
    train = sampler(100, 25.0, train=True, rng=rng)
    assert len(train) == 3 and all(len(view) == 8 for view in train)
    assert sampler(100, 25.0, train=False) == multiview_indices(100, 3, 8)
    dense = FrameSampler(mode="dense", num_frames=4, stride=2)
    assert dense(100, 25.0, train=False) == [dense_indices(100, 4, 2, train=False)]


def test_sampler_is_deterministic_given_the_seed():
    sampler = FrameSampler(mode="dense", num_frames=8, stride=4)
    first = sampler(500, 30.0, train=True, rng=random.Random(5))
    assert sampler(500, 30.0, train=True, rng=random.Random(5)) == first
    assert any(sampler(500, 30.0, train=True, rng=random.Random(seed)) != first for seed in range(6, 10))


def test_sampler_fps_mode():
    sampler = FrameSampler(mode="fps", num_frames=None, fps=2.0)
    assert sampler(100, 25.0, train=True) == [fps_indices(100, 25.0, 2.0)[0]]
    capped = FrameSampler(mode="fps", num_frames=3, fps=2.0)
    assert len(capped(100, 25.0, train=False)[0]) == 3
    with pytest.raises(ValueError, match="frame rate"):
        sampler(100, None, train=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "random"}, "mode"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": None}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"stride": -1}, "stride"),
        ({"num_views": 0}, "num_views"),
        ({"num_views": True}, "num_views"),
        ({"mode": "fps"}, "needs fps"),
        ({"mode": "fps", "fps": 0}, "fps"),
        ({"mode": "fps", "fps": 2, "num_views": 3}, "single view"),
        ({"mode": "segment", "fps": 2}, "only used by mode='fps'"),
    ],
)
def test_sampler_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrameSampler(**kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: segment_indices(0, 8, False), "num_frames"),
        (lambda: segment_indices(10, 0, False), "num_segments"),
        (lambda: dense_indices(10, 8, 0, False), "stride"),
        (lambda: multiview_indices(10, 0, 8), "num_views"),
        (lambda: fps_indices(10, 0, 1), "source_fps"),
        (lambda: fps_indices(10, 25, float("nan")), "target_fps"),
        (lambda: fps_indices(10, 25, 1, max_frames=0), "max_frames"),
        (lambda: FrameSampler()(0, 25.0, train=False), "num_frames_in_video"),
    ],
)
def test_functions_validate_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_stride_fps_keeps_the_window_duration_across_frame_rates():
    sampler = FrameSampler(mode="dense", num_frames=8, stride=16, stride_fps=30.0)
    assert [sampler.frame_step(fps) for fps in (30.0, 25.0, 12.0, 60.0, 1.0)] == [16, 13, 6, 32, 1]
    # A 12 fps video (Something-Something) of 60 frames: 8 frames 6 apart, centred, not 16 apart and clamped.
    assert sampler(60, 12.0, train=False) == [dense_indices(60, 8, 6, train=False)]
    assert FrameSampler(mode="dense", num_frames=8, stride=16)(60, 12.0, train=False) == [
        dense_indices(60, 8, 16, train=False)]
    with pytest.raises(ValueError, match="needs the video's frame rate"):
        sampler(60, None, train=False)
    with pytest.raises(ValueError, match="only used by modes"):
        FrameSampler(mode="segment", stride_fps=30.0)


def test_window_mode_spreads_the_frames_over_the_whole_window_as_pyslowfast():
    """8 x 16 at 30 fps: 8 frames over 128 frames, first and last included (PySlowFast's linspace + floor)."""
    sampler = FrameSampler(mode="window", num_frames=8, stride=16, stride_fps=30.0)
    assert sampler.frame_step(30.0) == pytest.approx(127 / 7)
    (view,) = sampler(300, 30.0, train=False)
    start = (300 - 128) // 2  # centred, as the dense mode
    assert view == [start + math.floor(k * 127 / 7 + 1e-9) for k in range(8)] and view[-1] - view[0] == 127
    # At 25 fps the window keeps its 4.27 s: 106.7 frames.
    (view,) = sampler(300, 25.0, train=False)
    assert view[-1] - view[0] == 105
    # Training: random starts inside the video, the same spacing.
    train = [tuple(sampler(300, 30.0, train=True, rng=random.Random(seed))[0]) for seed in range(40)]
    assert len({t[0] for t in train}) > 10 and all(t[-1] - t[0] == 127 and t[-1] < 300 for t in train)
    # Three test views run from the first frame to the last.
    first, middle, last = FrameSampler(mode="window", num_frames=8, stride=16, num_views=3)(300, 30.0, train=False)
    assert first[0] == 0 and last[-1] == 299 and first[0] < middle[0] < last[0]
    # A video shorter than the window: start at 0, clamp at the last frame.
    (short,) = sampler(50, 30.0, train=False)
    assert short[0] == 0 and short[-1] == 49 and short == sorted(short)
