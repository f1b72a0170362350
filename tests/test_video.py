"""Video writing and decoding: every available backend returns the same frames for the same indices.

Test videos carry their frame index: six 8x8 blocks along the top edge are white
or dark for the index's bits, so a decoded frame names the index it came from
whatever the codec's losses. A red patch in the bottom-left corner checks the
channel order (RGB, not BGR).

Tolerance between backends: the frame indices decoded must match exactly; the
pixels must agree to a mean absolute difference below 2 (of 255). With decord
0.6, PyAV 18 and torchcodec 0.17 (on Debian's FFmpeg 5.1) they agree exactly,
but each bundles its own FFmpeg, whose colour conversion may differ by a
rounding step between versions.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from vlkd.data.video import (
    VideoBackendError,
    VideoInfo,
    _IndexedReader,
    available_backends,
    default_backend,
    open_video,
    probe_video,
    read_clip,
    read_frames,
)
from vlkd.data.writer import write_video
from vlkd.errors import VideoReadError, VlkdError

BACKENDS = available_backends()
BITS = 6  # frame indices up to 63
BLOCK = 8


def make_frames(num_frames: int, width: int, height: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames whose index is written in binary along the top edge."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 2] = 60  # dark blue background
    frames[..., 1] = np.linspace(0, 90, width, dtype=np.uint8)[None, None, :]  # a gradient for the codec to work on
    for index in range(num_frames):
        for bit in range(BITS):
            if index >> bit & 1:
                frames[index, :BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255
        frames[index, height - 16 :, :16] = (255, 0, 0)
    return frames


def frame_id(frame: torch.Tensor) -> int:
    """The index written into a decoded ``(C, H, W)`` frame (block centres, away from codec edges)."""
    value = 0
    for bit in range(BITS):
        block = frame[:, 2 : BLOCK - 2, bit * BLOCK + 2 : (bit + 1) * BLOCK - 2].float().mean()
        value |= int(block > 128) << bit
    return value


def frame_ids(frames: torch.Tensor) -> list[int]:
    return [frame_id(frame) for frame in frames]


# name: (codec, suffix, width, height, fps, frames, extra writer arguments)
CASES = {
    "h264-mp4": ("h264", ".mp4", 64, 48, 25, 24, {"gop_size": 6}),  # short GOP: random access seeks
    "h264-mp4-ntsc": ("h264", ".mp4", 96, 72, Fraction(30000, 1001), 30, {}),  # default GOP, B-frames
    "h264-444-odd": ("h264", ".mp4", 63, 47, 12, 12, {"pix_fmt": "yuv444p"}),
    "mpeg4-avi": ("mpeg4", ".avi", 64, 48, 12, 16, {"gop_size": 5}),
    "mpeg4-mp4": ("mpeg4", ".mp4", 96, 72, 29.97, 20, {}),
    "vp9-webm": ("vp9", ".webm", 64, 48, 25, 40, {"gop_size": 8}),
    "mjpeg-avi-odd": ("mjpeg", ".avi", 63, 47, 12, 10, {}),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """name -> (path, written frames (T, H, W, 3), fps) for every case in CASES."""
    folder = tmp_path_factory.mktemp("videos")
    written = {}
    for name, (codec, suffix, width, height, fps, count, extra) in CASES.items():
        frames = make_frames(count, width, height)
        path = write_video(folder / f"{name}{suffix}", frames, fps=fps, codec=codec, **extra)
        written[name] = (path, frames, float(fps))
    return written


def test_pyav_and_decord_are_available():
    # PyAV is a hard dependency; decord is one on Linux x86-64 (this machine).
    assert "pyav" in BACKENDS
    pytest.importorskip("decord")
    assert "decord" in BACKENDS


def test_default_backend_prefers_decord_on_cpu():
    expected = "decord" if "decord" in BACKENDS else "pyav"
    assert default_backend() == expected
    assert default_backend("cpu") != "torchcodec"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_probe_counts_fps_and_size(videos, name, backend):
    path, frames, fps = videos[name]
    count, height, width = frames.shape[:3]
    info = probe_video(path, backend=backend)
    assert isinstance(info, VideoInfo)
    assert (info.num_frames, info.width, info.height) == (count, width, height)
    assert info.fps == pytest.approx(fps, abs=1e-3)
    assert info.duration == pytest.approx(count / fps, rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
def test_frame_i_is_the_ith_frame(videos, name, backend):
    path, frames, _ = videos[name]
    count, height, width = frames.shape[:3]
    decoded = read_frames(path, list(range(count)), backend=backend)
    assert decoded.dtype == torch.uint8 and decoded.shape == (count, 3, height, width)
    assert frame_ids(decoded) == list(range(count))
    # Full resolution, close to what was written, and RGB: the corner patch is red.
    written = torch.from_numpy(frames).permute(0, 3, 1, 2)
    assert (decoded.float() - written.float()).abs().mean() < 6
    patch = decoded[:, :, height - 12 : height - 4, 4:12].float().mean(dim=(0, 2, 3))
    assert patch[0] > 200 and patch[2] < 60


@pytest.mark.parametrize("name", CASES)
def test_backends_agree_on_unsorted_duplicate_indices(videos, name):
    if len(BACKENDS) < 2:
        pytest.skip("one backend only")
    path, frames, _ = videos[name]
    count = len(frames)
    indices = [count - 1, 0, 3, 3, count // 2, 1, 0, count - 1]
    results = {backend: read_frames(path, indices, backend=backend) for backend in BACKENDS}
    reference = results[BACKENDS[0]]
    for backend, frames_out in results.items():
        assert frame_ids(frames_out) == indices, backend
        assert (frames_out.float() - reference.float()).abs().mean() < 2, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_past_the_end_give_the_last_frame(videos, backend):
    path, frames, _ = videos["h264-mp4"]
    count = len(frames)
    decoded = read_frames(path, [count + 5, 2, 10_000, count - 1], backend=backend)
    assert frame_ids(decoded) == [count - 1, 2, count - 1, count - 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_as_arrays_and_tensors(videos, backend):
    path, _, _ = videos["mpeg4-avi"]
    expected = [4, 1, 4]
    assert frame_ids(read_frames(path, np.array(expected), backend=backend)) == expected
    assert frame_ids(read_frames(path, torch.tensor(expected), backend=backend)) == expected


@pytest.mark.parametrize(
    "bad", [[-1], [], [1.5], np.array([0.0, 1.0])], ids=["negative", "empty", "float", "float-array"]
)
def test_bad_indices_raise_value_error(videos, bad):
    path, _, _ = videos["mpeg4-avi"]
    with pytest.raises(ValueError):
        read_frames(path, bad, backend="pyav")


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_clip_opens_once_and_splits_views(videos, backend):
    path, frames, _ = videos["vp9-webm"]
    seen = []

    def choose(info: VideoInfo) -> list[list[int]]:
        seen.append(info)
        return [[0, 5, 10], [39, 20], [7]]

    views = read_clip(path, choose, backend=backend)
    assert [frame_ids(view) for view in views] == [[0, 5, 10], [39, 20], [7]]
    assert [view.shape[0] for view in views] == [3, 2, 1]
    assert seen[0].num_frames == len(frames)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_reader_serves_info_and_several_reads(videos, backend):
    path, frames, _ = videos["h264-mp4"]
    with open_video(path, backend=backend) as video:
        assert video.info.num_frames == len(frames)
        assert frame_ids(video.read([20, 3])) == [20, 3]
        assert frame_ids(video.read([1])) == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_chunks_equals_read_in_pieces(videos, backend):
    path, frames, _ = videos["h264-mp4"]
    count = len(frames)
    # Non-decreasing with repeats across a chunk boundary and past the end; then out of order.
    for indices in ([0, 1, 1, 2, 5, 5, 5, 9, 20, count - 1, count + 3], [7, 2, 9, 0]):
        with open_video(path, backend=backend) as video:
            chunks = list(video.read_chunks(indices, 3))
            expected = video.read(indices)
        assert [chunk.shape[0] for chunk in chunks] == [3] * (len(indices) // 3) + [len(indices) % 3] * (
            len(indices) % 3 > 0)
        assert torch.equal(torch.cat(chunks), expected), indices


def test_pyav_read_chunks_decodes_the_file_once(videos, monkeypatch):
    from vlkd.data.video import _PyAVReader

    path, frames, _ = videos["h264-mp4"]
    opened = []
    original = _PyAVReader._open
    monkeypatch.setattr(_PyAVReader, "_open", lambda self: opened.append(1) or original(self))
    with open_video(path, backend="pyav") as video:
        opened.clear()  # opening the reader probes the stream once
        chunks = list(video.read_chunks(range(len(frames)), 4))
    assert len(opened) == 1 and sum(chunk.shape[0] for chunk in chunks) == len(frames)
    with pytest.raises(ValueError, match="chunk_size"):
        next(open_video(path, backend="pyav").read_chunks([0], 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reading_from_threads(videos, backend):
    # decord's bridge is thread-local: results must not depend on the calling thread.
    path, _, _ = videos["h264-mp4"]
    barrier = threading.Barrier(4)

    def read(start: int) -> list[int]:
        barrier.wait()
        return frame_ids(read_frames(path, [start, start + 8], backend=backend))

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read, range(4)))
    assert results == [[start, start + 8] for start in range(4)]


# --------------------------------------------------------------------------- over-reporting containers


@pytest.fixture(scope="module")
def truncated_avi(tmp_path_factory):
    """An MPEG-4 AVI cut to 70 % of its bytes: its header still promises 40 frames."""
    folder = tmp_path_factory.mktemp("truncated")
    noise = np.random.default_rng(0).integers(0, 40, (40, 48, 64, 3), dtype=np.uint8)
    frames = make_frames(40, 64, 48) | noise  # noise makes every frame cost bytes
    full = write_video(folder / "full.avi", frames, codec="mpeg4")
    data = full.read_bytes()
    path = folder / "cut.avi"
    path.write_bytes(data[: int(len(data) * 0.7)])
    return path


def test_truncated_avi_header_over_reports(truncated_avi):
    import av

    with av.open(str(truncated_avi)) as container:
        stream = container.streams.video[0]
        header = stream.frames
        decodable = sum(1 for _ in container.decode(stream))
    assert header == 40 and 0 < decodable < 40  # the situation the count must see through


@pytest.mark.parametrize("backend", BACKENDS)
def test_count_is_what_decodes_and_reads_clamp(truncated_avi, backend):
    import av

    with av.open(str(truncated_avi)) as container:
        decodable = sum(1 for _ in container.decode(video=0))
    info = probe_video(truncated_avi, backend=backend)
    assert info.num_frames == decodable
    assert frame_ids(read_frames(truncated_avi, [39, 0], backend=backend)) == [decodable - 1, 0]


# --------------------------------------------------------------------------- the count check of indexed backends


class StubReader(_IndexedReader):
    """An indexed backend over a fake 40-frame video whose frame ``i`` is filled with the value ``i``.

    Frames in ``bad`` fail to decode, and a failure breaks the handle until it is
    reopened, as a decord reader does.
    """

    name = "stub"

    def __init__(self, bad, length=40):
        self.bad, self.length, self.opened, self.decoded = set(bad), length, 0, []
        super().__init__(Path("stub.mp4"), torch.device("cpu"))

    def _open(self):
        self.opened += 1
        return {"broken": False}

    def _length(self, handle):
        return self.length

    def _frame_rate(self, handle):
        return 25.0

    def _decode(self, handle, indices):
        self.decoded.append(list(indices))
        if handle["broken"] or self.bad & set(indices):
            handle["broken"] = True
            raise RuntimeError("cannot decode")
        return torch.tensor(indices, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)


def test_over_reported_tail_is_found_and_clamped():
    reader = StubReader(bad=range(13, 40))
    assert reader.read([39, 2, 39, 12])[:, 0, 0, 0].tolist() == [12, 2, 12, 12]
    assert reader.num_frames == 13 and reader.info.num_frames == 13
    assert reader.opened > 1  # the broken handle was reopened
    assert reader.info.width == 2 and reader.info.height == 2


def test_intact_video_needs_no_extra_decoding():
    reader = StubReader(bad=())
    assert reader.read([5, 39, 5])[:, 0, 0, 0].tolist() == [5, 39, 5]
    assert reader.decoded == [[5, 39]]


def test_corrupt_frame_inside_the_count_is_an_error():
    reader = StubReader(bad={5})
    with pytest.raises(VideoReadError, match="cannot decode"):
        reader.read([5, 6])
    assert reader.num_frames == 40  # the last frame decodes: nothing to clamp
    assert reader.read([39])[:, 0, 0, 0].tolist() == [39]


def test_undecodable_first_frame_is_an_error():
    with pytest.raises(VideoReadError, match="first frame"):
        StubReader(bad=range(40)).read([3])


# --------------------------------------------------------------------------- unreadable files


def _bad_file(kind: str, folder, videos) -> object:
    path = folder / f"{kind}.mp4"
    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file renamed to .mp4\n" * 20)
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated-mp4":
        data = videos["h264-mp4-ntsc"][0].read_bytes()
        path.write_bytes(data[: int(len(data) * 0.3)])
    elif kind in ("png-image", "webp-image"):
        from PIL import Image

        Image.fromarray(make_frames(1, 32, 32)[0]).save(path, format=kind.split("-")[0].upper())
    elif kind == "directory":
        path.mkdir()
    elif kind == "audio-only":
        import av

        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=16000)
            for _ in range(4):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate = 16000
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    # "missing": nothing is written
    return path


BAD_KINDS = [
    "missing",
    "zero-bytes",
    "text",
    "garbage",
    "truncated-mp4",
    "png-image",
    "webp-image",
    "directory",
    "audio-only",
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unreadable_files_raise_video_read_error(tmp_path, videos, kind, backend):
    path = _bad_file(kind, tmp_path, videos)
    for call in (lambda: probe_video(path, backend=backend), lambda: read_frames(path, [0], backend=backend)):
        with pytest.raises(VideoReadError) as caught:
            call()
        assert caught.value.path == path
        assert str(path) in str(caught.value) and caught.value.reason
    # The checks shared by all backends give the same reason whatever the backend.
    shared_reasons = {
        "missing": "file does not exist",
        "zero-bytes": "file is empty",
        "directory": "not a regular file",
        "png-image": "a PNG image, not a video",
        "webp-image": "a WebP image, not a video",
    }
    if kind in shared_reasons:
        assert caught.value.reason.startswith(shared_reasons[kind])


def test_video_read_error_is_a_vlkd_error():
    assert issubclass(VideoReadError, VlkdError) and issubclass(VideoBackendError, VlkdError)


# --------------------------------------------------------------------------- backends and devices


def test_unknown_backend_and_device_raise_value_error(videos):
    path, _, _ = videos["h264-mp4"]
    with pytest.raises(ValueError, match="unknown video backend"):
        read_frames(path, [0], backend="opencv")
    with pytest.raises(ValueError, match="device"):
        read_frames(path, [0], device="tpu")


def test_unavailable_backend_says_what_to_install(videos):
    if "torchcodec" in BACKENDS:
        pytest.skip("torchcodec works here")
    path, _, _ = videos["h264-mp4"]
    with pytest.raises(VideoBackendError, match="pip install torchcodec"):
        read_frames(path, [0], backend="torchcodec")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error raised without a GPU")
@pytest.mark.parametrize("backend", [None, "torchcodec", "decord", "pyav"])
def test_cuda_without_gpu_raises_a_clear_error(videos, backend):
    path, _, _ = videos["h264-mp4"]
    with pytest.raises(VideoBackendError, match="torchcodec") as caught:
        read_frames(path, [0], backend=backend, device="cuda")
    assert "NVDEC" in str(caught.value) and "device='cpu'" in str(caught.value)
    assert available_backends("cuda") == []
    with pytest.raises(VideoBackendError):
        default_backend("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decoding_matches_cpu(videos):
    if not available_backends("cuda"):
        pytest.skip("no backend decodes on this GPU")
    path, _, _ = videos["h264-mp4"]
    on_gpu = read_frames(path, [5, 0, 5], device="cuda")
    assert on_gpu.device.type == "cuda" and frame_ids(on_gpu.cpu()) == [5, 0, 5]
    on_cpu = read_frames(path, [5, 0, 5], backend="pyav")
    assert (on_gpu.cpu().float() - on_cpu.float()).abs().mean() < 3


# --------------------------------------------------------------------------- writer


def test_writer_refuses_odd_h264_yuv420(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", make_frames(2, 63, 47))
    assert not (tmp_path / "odd.mp4").exists()


@pytest.mark.parametrize(
    "frames, suffix, codec, match",
    [
        (make_frames(2, 32, 32).astype(np.float32), ".mp4", "h264", "uint8"),
        (make_frames(2, 32, 32)[..., :2], ".mp4", "h264", "shape"),
        (make_frames(2, 32, 32), ".avi", "vp9", "webm"),
        (make_frames(2, 32, 32), ".webm", "mjpeg", "avi"),
    ],
    ids=["float", "two-channels", "vp9-in-avi", "mjpeg-in-webm"],
)
def test_writer_rejects_bad_input(tmp_path, frames, suffix, codec, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / f"clip{suffix}", frames, codec=codec)


def test_writer_takes_tensors_and_crf(tmp_path):
    frames = make_frames(6, 64, 48)
    small = write_video(tmp_path / "coarse.avi", torch.from_numpy(frames), codec="mpeg4", crf=25)
    fine = write_video(tmp_path / "fine.avi", frames, codec="mpeg4", crf=2)
    assert small.stat().st_size < fine.stat().st_size  # the quality knob takes effect
    assert frame_ids(read_frames(small, range(6), backend="pyav")) == list(range(6))
