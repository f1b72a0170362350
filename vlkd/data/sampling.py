"""Which frames to decode: pure functions from a frame count to lists of frame indices.

Nothing here decodes. Indices address frames as :mod:`vlkd.data.video` does
(frame ``i`` is the ``i``-th decoded frame) and always lie in ``[0, num_frames)``.

Randomness comes from a ``random.Random`` passed as ``rng``, so a sample is a
pure function of the seed; ``rng=None`` uses the ``random`` module's global
generator, which PyTorch's DataLoader reseeds in every worker. Evaluation
(``train=False``) never draws random numbers.

Samplers
    * :func:`segment_indices`: TSN-style, one frame per equal segment.
    * :func:`dense_indices`: a window of ``clip_len`` frames ``stride`` apart.
    * ``"window"`` mode of :class:`FrameSampler`: PySlowFast's clip, ``clip_len`` frames
      spread evenly over ``clip_len x stride`` frames.
    * :func:`multiview_indices`: several evaluation views spread over the video.
    * :func:`fps_indices`: every frame of a target frame rate, with timestamps.
    * :class:`FrameSampler`: the configuration a dataset holds, choosing among them.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

__all__ = ["FrameSampler", "dense_indices", "fps_indices", "multiview_indices", "segment_indices"]

MODES = ("segment", "dense", "window", "fps")
#: The modes that read a run of frames at a fixed spacing and take ``stride`` / ``stride_fps``.
WINDOW_MODES = ("dense", "window")
OUT_OF_BOUNDS = ("clamp", "loop")


def segment_indices(num_frames: int, num_segments: int, train: bool, rng: random.Random | None = None) -> list[int]:
    """One frame from each of ``num_segments`` equal segments of ``[0, num_frames)`` (TSN sampling).

    Segment ``k`` covers ``[k * L, (k + 1) * L)`` with ``L = num_frames / num_segments``
    (real-valued, so no frames are left over at the end). Training picks a
    uniformly random frame of each segment; evaluation picks each segment's
    centre. With fewer frames than segments, segments are shorter than a frame and
    neighbouring segments share frames: the result repeats frames, in order.

    Returns:
        ``num_segments`` non-decreasing indices in ``[0, num_frames)``.
    """
    _check_positive(num_frames=num_frames, num_segments=num_segments)
    rng = _generator(rng)
    offsets = [rng.random() for _ in range(num_segments)] if train else [0.5] * num_segments
    return _segment_positions(num_frames, offsets)


def dense_indices(
    num_frames: int,
    clip_len: int,
    stride: int,
    train: bool,
    rng: random.Random | None = None,
    out_of_bounds: str = "clamp",
) -> list[int]:
    """``clip_len`` frames ``stride`` apart (e.g. 8 frames every 16th).

    The window spans ``(clip_len - 1) * stride + 1`` frames. Training starts it at a
    uniformly random frame among those that keep it inside the video; evaluation
    centres it. A video shorter than the window starts it at frame 0 and
    ``out_of_bounds`` handles the positions past the end:

    * ``"clamp"``: repeat the last frame (no jump back in time; the default).
    * ``"loop"``: wrap around to the start (position ``p`` reads frame ``p % num_frames``).

    Returns:
        ``clip_len`` indices in ``[0, num_frames)``.
    """
    _check_positive(num_frames=num_frames, clip_len=clip_len, stride=stride)
    if out_of_bounds not in OUT_OF_BOUNDS:
        raise ValueError(f"out_of_bounds must be one of {OUT_OF_BOUNDS}, got {out_of_bounds!r}")
    return _dense(num_frames, clip_len, stride, train, rng, out_of_bounds)


def _dense(num_frames: int, clip_len: int, step: float, train: bool, rng, out_of_bounds: str = "clamp") -> list[int]:
    """:func:`dense_indices` with a step that may be fractional (frame ``start + floor(k * step)``)."""
    slack = num_frames - _span(clip_len, step)  # frames the window can move over
    if slack <= 0:
        start = 0
    elif train:
        start = _generator(rng).randint(0, slack)
    else:
        start = slack // 2
    return _window(num_frames, start, clip_len, step, out_of_bounds)


def multiview_indices(num_frames: int, num_views: int, clip_len: int, stride: int | None = None) -> list[list[int]]:
    """``num_views`` deterministic temporal views for test-time averaging of logits.

    * ``stride`` given (dense views): windows as in :func:`dense_indices`, their
      starts evenly spaced from the first to the last valid start, so the first
      view begins at frame 0 and the last ends at the last frame; one view is centred
      (the same as ``dense_indices(..., train=False)``).
    * ``stride=None`` (segment views): every view takes one frame per segment as in
      :func:`segment_indices`; view ``v`` at fraction ``(v + 0.5) / num_views`` of
      each segment. Together the views sample each segment evenly; one view takes
      the centres (the same as ``segment_indices(..., train=False)``).

    Videos too short for a dense window give identical views (clamped as in
    :func:`dense_indices`).

    Returns:
        ``num_views`` lists of ``clip_len`` indices in ``[0, num_frames)``.
    """
    _check_positive(num_frames=num_frames, num_views=num_views, clip_len=clip_len)
    if stride is None:
        return [_segment_positions(num_frames, [(view + 0.5) / num_views] * clip_len) for view in range(num_views)]
    _check_positive(stride=stride)
    return _dense_views(num_frames, num_views, clip_len, stride)


def _dense_views(num_frames: int, num_views: int, clip_len: int, step: float) -> list[list[int]]:
    """The dense views of :func:`multiview_indices`, with a step that may be fractional."""
    slack = max(num_frames - _span(clip_len, step), 0)
    if num_views == 1:
        starts = [slack // 2]
    else:
        starts = [round(view * slack / (num_views - 1)) for view in range(num_views)]
    return [_window(num_frames, start, clip_len, step, "clamp") for start in starts]


def fps_indices(
    num_frames: int, source_fps: float, target_fps: float, max_frames: int | None = None
) -> tuple[list[int], list[float]]:
    """Frames of the whole video resampled to ``target_fps``, with their timestamps.

    Sample ``j`` is taken at time ``j / target_fps`` and reads the frame shown then,
    ``floor(j * source_fps / target_fps)``, for every such time inside the video
    (``num_frames / source_fps`` seconds). A ``target_fps`` at or above
    ``source_fps`` returns every frame once: frames are never repeated to
    upsample. If more than ``max_frames`` samples result, ``max_frames`` of them are
    spread evenly over the whole video instead (a lower effective rate, still
    covering the end).

    Returns:
        ``(indices, timestamps)``: increasing distinct frame indices, and each
        chosen frame's presentation time ``index / source_fps`` in seconds.
    """
    _check_positive(num_frames=num_frames, source_fps=source_fps, target_fps=target_fps)
    if max_frames is not None:
        _check_positive(max_frames=max_frames)
    if target_fps >= source_fps:
        indices = list(range(num_frames))
    else:
        step = source_fps / target_fps  # source frames per sample, > 1
        # The tolerance keeps j * step from landing just below an integer through rounding.
        count = math.ceil(num_frames / step - 1e-9)
        indices = [min(math.floor(j * step + 1e-9), num_frames - 1) for j in range(count)]
    if max_frames is not None and len(indices) > max_frames:
        indices = [indices[k] for k in _spread(len(indices), max_frames)]
    return indices, [index / source_fps for index in indices]


@dataclass(frozen=True)
class FrameSampler:
    """How a dataset picks the frames of one video.

    Attributes:
        mode: ``"segment"`` (:func:`segment_indices`), ``"dense"`` (:func:`dense_indices`),
            ``"window"`` or ``"fps"`` (:func:`fps_indices`). ``"window"`` is PySlowFast's
            clip sampling, which FROSTER uses: ``num_frames`` frames spread evenly over a
            window of ``num_frames x stride`` frames, its first and last included (8 x 16:
            128 frames, about 18.1 apart; ``"dense"`` puts them exactly 16 apart over 113).
            Start, views and short videos are handled as in ``"dense"``.
        num_frames: frames per view. In ``"fps"`` mode the most frames returned
            (``None``: no limit).
        stride: frame stride of the ``"dense"`` and ``"window"`` modes; unused otherwise.
        stride_fps: the frame rate ``stride`` counts frames at in those modes, so a
            window lasts the same time whatever the video's rate: a video at ``fps``
            spaces its frames ``fps / stride_fps`` times as far (``"dense"`` rounds the
            stride to a whole number of frames, at least 1). PySlowFast, and so FROSTER,
            counts at 30 fps (``TARGET_FPS``): its 8 x 16 window lasts 4.3 s. ``None``
            counts the video's own frames.
        fps: target frame rate of ``"fps"`` mode; must be ``None`` in the other modes.
        num_views: views per video. Evaluation returns :func:`multiview_indices`
            views; training returns that many independent random draws (normally 1).
            ``"fps"`` mode has a single view.

    Calling it returns a list of views, each a list of frame indices.
    """

    mode: str = "segment"
    num_frames: int | None = 8
    stride: int = 16
    fps: float | None = None
    num_views: int = 1
    stride_fps: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"FrameSampler mode must be one of {MODES}, got {self.mode!r}")
        if self.num_frames is not None or self.mode != "fps":
            _check_positive(num_frames=self.num_frames)
        _check_positive(stride=self.stride, num_views=self.num_views)
        if self.mode == "fps":
            if self.fps is None:
                raise ValueError("FrameSampler mode='fps' needs fps, the target frame rate")
            _check_positive(fps=self.fps)
            if self.num_views != 1:
                raise ValueError(f"FrameSampler mode='fps' returns a single view, got num_views={self.num_views}")
        elif self.fps is not None:
            raise ValueError(f"FrameSampler fps is only used by mode='fps', not mode={self.mode!r}")
        if self.stride_fps is not None:
            if self.mode not in WINDOW_MODES:
                raise ValueError(
                    f"FrameSampler stride_fps is only used by modes {WINDOW_MODES}, not mode={self.mode!r}"
                )
            _check_positive(stride_fps=self.stride_fps)

    def __call__(
        self, num_frames_in_video: int, fps: float | None, train: bool, rng: random.Random | None = None
    ) -> list[list[int]]:
        """Views of frame indices for a video of ``num_frames_in_video`` frames at ``fps`` frames per second.

        ``fps`` (the video's rate) is needed in ``"fps"`` mode, and with ``stride_fps``.
        """
        _check_positive(num_frames_in_video=num_frames_in_video)
        frames, views = self.num_frames, self.num_views
        if self.mode == "fps":
            if fps is None or not fps > 0:
                raise ValueError(f"FrameSampler mode='fps' needs the video's frame rate, got fps={fps}")
            return [fps_indices(num_frames_in_video, fps, self.fps, max_frames=frames)[0]]
        if self.mode == "segment":
            if not train:
                return multiview_indices(num_frames_in_video, views, frames)
            return [segment_indices(num_frames_in_video, frames, True, rng) for _ in range(views)]
        step = self.frame_step(fps)
        if not train:
            return _dense_views(num_frames_in_video, views, frames, step)
        return [_dense(num_frames_in_video, frames, step, True, rng) for _ in range(views)]

    def frame_step(self, fps: float | None) -> float:
        """Frames between consecutive samples of a ``"dense"`` or ``"window"`` view, in the
        frames of a video at ``fps`` (see ``mode`` and ``stride_fps``)."""
        scale = 1.0
        if self.stride_fps is not None:
            if fps is None or not fps > 0:
                raise ValueError(
                    f"FrameSampler stride_fps={self.stride_fps} needs the video's frame rate, got fps={fps}; "
                    "set stride_fps to None to count the video's own frames"
                )
            scale = fps / self.stride_fps
        if self.mode == "dense":
            return max(1, round(self.stride * scale))
        if self.num_frames == 1:
            return 1.0
        # PySlowFast: linspace(start, start + window - 1, num_frames) over a window of num_frames x stride.
        return (self.num_frames * self.stride * scale - 1) / (self.num_frames - 1)


# --------------------------------------------------------------------------- helpers


def _generator(rng: random.Random | None):
    """``rng``, or the random module itself (same methods, global state) when ``None``."""
    return random if rng is None else rng


def _segment_positions(num_frames: int, offsets: list[float]) -> list[int]:
    """Frame at fraction ``offsets[k]`` (in ``[0, 1)``) of segment ``k``, one segment per offset."""
    length = num_frames / len(offsets)
    # min(): k * length + offset * length can round up to num_frames in the last segment.
    return [min(int((k + offset) * length), num_frames - 1) for k, offset in enumerate(offsets)]


def _span(clip_len: int, step: float) -> int:
    """Frames covered by a window of ``clip_len`` frames ``step`` apart."""
    return math.floor((clip_len - 1) * step + 1e-9) + 1


def _window(num_frames: int, start: int, clip_len: int, step: float, out_of_bounds: str) -> list[int]:
    # The tolerance keeps k * step from landing just below an integer through rounding.
    positions = (start + math.floor(k * step + 1e-9) for k in range(clip_len))
    if out_of_bounds == "loop":
        return [position % num_frames for position in positions]
    return [min(position, num_frames - 1) for position in positions]


def _spread(total: int, count: int) -> list[int]:
    """``count`` distinct positions in ``[0, total)`` evenly spread, first and last included."""
    if count == 1:
        return [0]
    return [math.floor(k * (total - 1) / (count - 1) + 0.5) for k in range(count)]


def _check_positive(**values) -> None:
    """Raise ValueError naming the first argument that is not positive; frame rates may be fractional."""
    for name, value in values.items():
        fractional = name in ("fps", "source_fps", "target_fps", "stride_fps")
        kind = numbers.Real if fractional else numbers.Integral
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{name} must be {'a number' if fractional else 'an integer'} > 0, got {value!r}")
        if not value > 0:  # also rejects NaN
            raise ValueError(f"{name} must be > 0, got {value!r}")
