"""Decode frames from video files with decord, PyAV or torchcodec, addressed the same way by all three.

Frame indices
    Frame ``i`` is the ``i``-th frame the decoder outputs, in presentation order,
    counted from 0. Timestamps never enter the index arithmetic, so every backend
    returns the same frame for the same index. Pixel values could differ by a
    rounding step where the FFmpeg builds convert colours differently; decord 0.6,
    PyAV 18 and torchcodec 0.17 (on FFmpeg 5.1) agree exactly.

Frame count
    Frame counts from files can over-report: a truncated AVI keeps its header's
    count (PyAV's ``stream.frames``), and decord's and torchcodec's ``len`` count
    indexed packets, which includes packets that fail to decode (a truncated or
    damaged MP4). :attr:`VideoInfo.num_frames` is the number of frames that decode
    from the start of the file, up to the first decoding error:

    * decord and torchcodec: the last indexed frame is decoded to check it; if
      that fails a bisection over the index finds the last frame that decodes (the
      file is reopened after each failure, since a decord reader stays broken
      after one). Reads trust the index and run this check only when they fail.
    * PyAV: the whole stream is decoded, without colour conversion, and counted;
      exact for any container but proportional to the video's length.

    On damaged files (a corrupt middle, a truncated MP4 whose index survived)
    backends recover different numbers of frames; on intact files they agree.

Clamping
    Indices at or past the frame count return the last decodable frame, so a
    sampler working from an over-reported count still gets frames of the video.
    Negative indices are refused.

Errors
    A missing, empty, non-video, still-image or undecodable file raises
    :class:`~vlkd.errors.VideoReadError` naming the file and the reason, from every
    backend: backend exceptions are wrapped. A backend or device that cannot work
    here raises :class:`VideoBackendError` saying what to install. decord did not
    crash the process on any input tried (garbage, zero-byte, text, images,
    audio-only files, truncations at 10-98 % of the bytes, 60 randomly mutated
    MP4, AVI and WebM files), so files are not pre-validated with a second
    library; only the cheap checks of :func:`_check_file` run first.

Threads and workers
    decord's tensor bridge is a thread-local setting, so frames leave decord as
    numpy arrays (``asnumpy``) and are wrapped with ``torch.from_numpy``. Every
    reader decodes with :data:`DECODER_THREADS` threads (1), so DataLoader
    workers do not oversubscribe the CPU.

GPU decoding
    ``device="cuda"`` (or ``"cuda:N"``) decodes with torchcodec (NVDEC) when it
    works on that device, else with a CUDA build of decord; the frames come back
    on that device. Without either, :class:`VideoBackendError` explains what to
    install.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from vlkd.errors import VideoReadError, VlkdError

__all__ = [
    "BACKENDS",
    "DECODER_THREADS",
    "VideoBackendError",
    "VideoInfo",
    "VideoReader",
    "available_backends",
    "default_backend",
    "open_video",
    "probe_video",
    "read_clip",
    "read_frames",
]

_LOG = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "torchcodec")

# Decoder threads per open file, for every backend. One thread keeps DataLoader
# workers (one reader each) from oversubscribing the CPU; a single process
# reading long videos can raise it (PyAV then uses frame and slice threading).
DECODER_THREADS = 1

_INSTALL = {
    "decord": "pip install decord",
    "pyav": "pip install av",
    "torchcodec": (
        "pip install torchcodec, and make FFmpeg's shared libraries (a version torchcodec supports) loadable, "
        "e.g. apt install ffmpeg or conda install ffmpeg"
    ),
}
_CUDA_INSTALL = (
    "install torchcodec with CUDA support: pip install torchcodec (the CUDA build matching your torch), "
    "and an FFmpeg with NVDEC (built with --enable-cuvid/--enable-nvdec) plus an NVIDIA driver; "
    "or build decord from source with -DUSE_CUDA=ON. Or decode on the CPU with device='cpu'"
)


class VideoBackendError(VlkdError, RuntimeError):
    """A decoding backend or device cannot be used on this machine (a setup problem, not a bad file)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds.

    Attributes:
        num_frames: frames that decode from the start of the file (see the module docstring).
        fps: average frame rate from the container.
        width: frame width in pixels.
        height: frame height in pixels.
        duration: ``num_frames / fps`` in seconds, so that it agrees with the frame count.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


# --------------------------------------------------------------------------- public functions


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends, among :data:`BACKENDS`, that import and decode a test clip on ``device``.

    Importing is not enough: torchcodec imports without FFmpeg's shared libraries
    and fails only when decoding. The check runs once per process and device.
    """
    dev = _parse_device(device)
    return [name for name in BACKENDS if _self_test(name, str(dev))[0]]


def default_backend(device: str | torch.device = "cpu") -> str:
    """The backend used when none is named.

    CPU: decord when it works, else PyAV (torchcodec only when asked for by name).
    CUDA: torchcodec, else a CUDA build of decord; :class:`VideoBackendError` if neither works.
    """
    dev = _parse_device(device)
    order = ("torchcodec", "decord") if dev.type == "cuda" else ("decord", "pyav")
    working = available_backends(dev)
    for name in order:
        if name in working:
            return name
    if dev.type == "cuda":
        raise VideoBackendError(f"no backend decodes video on {dev} here ({_failures(order, dev)}): {_CUDA_INSTALL}")
    raise VideoBackendError(f"no video decoding backend works ({_failures(order, dev)}): pip install decord av")


def open_video(path: str | Path, backend: str | None = None, device: str | torch.device = "cpu") -> VideoReader:
    """Open ``path`` for reading frames; use as a context manager to close it.

    Opening once and calling :attr:`VideoReader.info` then :meth:`VideoReader.read`
    avoids opening (and for decord and torchcodec, indexing) the file twice.
    """
    dev = _parse_device(device)
    name = _resolve_backend(backend, dev)
    path = Path(path)
    _check_file(path)
    return _READERS[name](path, dev)


def probe_video(path: str | Path, backend: str | None = None) -> VideoInfo:
    """Frame count, frame rate, size and duration of ``path`` (see the module docstring for the count)."""
    with open_video(path, backend) as video:
        return video.info


def read_frames(
    path: str | Path,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    backend: str | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Frames ``indices`` of ``path`` as a uint8 RGB tensor ``(T, C, H, W)`` on ``device``.

    One output frame per requested index, in the requested order; duplicates are
    allowed and decoded once. Indices past the last decodable frame return that frame.
    """
    with open_video(path, backend, device) as video:
        return video.read(indices)


def read_clip(
    path: str | Path,
    choose: Callable[[VideoInfo], Sequence[Sequence[int]]],
    backend: str | None = None,
    device: str | torch.device = "cpu",
) -> list[torch.Tensor]:
    """Open ``path`` once, let ``choose(info)`` pick views of frame indices, and decode them.

    Returns one uint8 RGB tensor ``(T_v, C, H, W)`` per view; frames shared by
    several views are decoded once.
    """
    with open_video(path, backend, device) as video:
        views = [list(view) for view in choose(video.info)]
        if not views or any(not view for view in views):
            raise ValueError(f"choose() must return non-empty lists of frame indices, got {views}")
        frames = video.read([index for view in views for index in view])
        return list(frames.split([len(view) for view in views]))


# --------------------------------------------------------------------------- readers


class VideoReader(ABC):
    """One open video file in one backend. Frames are addressed as the module docstring says."""

    name: ClassVar[str]

    def __init__(self, path: Path, device: torch.device):
        self.path = path
        self.device = device
        self._num_frames: int | None = None  # the decodable count, once known
        self._info: VideoInfo | None = None

    @property
    def info(self) -> VideoInfo:
        """:class:`VideoInfo` of the file; computing the reliable count may decode (see the module docstring)."""
        if self._info is None:
            num_frames = self.num_frames
            fps, width, height = self._metadata()
            if not fps > 0:  # also NaN
                raise self._fail("unknown frame rate")
            self._info = VideoInfo(num_frames, fps, width, height, num_frames / fps)
        return self._info

    @property
    def num_frames(self) -> int:
        """Frames that decode from the start of the file."""
        if self._num_frames is None:
            self._num_frames = self._count_frames()
        return self._num_frames

    def read(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames at ``indices`` as uint8 RGB ``(T, C, H, W)`` on this reader's device, in the requested order."""
        wanted = _as_index_list(indices)
        unique = sorted(set(wanted))
        with self._errors("decoding frames"):
            frames = self._load(unique)  # (len(unique), C, H, W); row k is frame unique[k], clamped
        return _gather(frames, unique, wanted)

    def read_chunks(self, indices: Sequence[int] | np.ndarray | torch.Tensor, chunk_size: int) -> Iterator[torch.Tensor]:
        """Frames at ``indices`` as consecutive uint8 ``(t, C, H, W)`` chunks of at most ``chunk_size``.

        For encoding a long video with bounded memory: only one chunk of frames is
        held at a time. Backends that decode sequentially decode the file once for
        non-decreasing ``indices`` instead of once per chunk.
        """
        wanted = _as_index_list(indices)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return self._chunks(wanted, chunk_size)

    def _chunks(self, wanted: list[int], chunk_size: int) -> Iterator[torch.Tensor]:
        """:meth:`read_chunks` of validated indices; a backend may serve them faster."""
        for start in range(0, len(wanted), chunk_size):
            yield self.read(wanted[start : start + chunk_size])

    def close(self) -> None:  # noqa: B027 - readers holding no handle need not override it
        """Release the backend's file handle (a later read opens the file again)."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Backend hooks ----------------------------------------------------------------

    @abstractmethod
    def _metadata(self) -> tuple[float, int, int]:
        """``(fps, width, height)`` of the video stream."""

    @abstractmethod
    def _count_frames(self) -> int:
        """The number of frames that decode from the start (at least 1, else VideoReadError)."""

    @abstractmethod
    def _load(self, unique: list[int]) -> torch.Tensor:
        """Frames at sorted distinct ``unique`` (indices past the end clamped): uint8 ``(N, C, H, W)``."""

    # Shared helpers ---------------------------------------------------------------

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return _wrap_errors(self.path, f"{action} failed ({self.name})")

    def _fail(self, reason: str) -> VideoReadError:
        return VideoReadError(self.path, f"{reason} ({self.name})")


class _IndexedReader(VideoReader):
    """Backends that index every frame when opening and decode any frame directly (decord, torchcodec)."""

    def __init__(self, path: Path, device: torch.device):
        super().__init__(path, device)
        self._size: tuple[int, int] | None = None  # (width, height), from the first decoded frame
        with self._errors("opening"):
            self._handle = self._open()
            self._indexed = int(self._length(self._handle))
            self._fps = float(self._frame_rate(self._handle))
        if self._indexed <= 0:
            raise self._fail("no video frames")

    @abstractmethod
    def _open(self):
        """A new backend handle for ``self.path`` on ``self.device``."""

    @abstractmethod
    def _length(self, handle) -> int:
        """The backend's frame count (from its packet index; can over-report)."""

    @abstractmethod
    def _frame_rate(self, handle) -> float:
        """The backend's average frame rate."""

    @abstractmethod
    def _decode(self, handle, indices: list[int]) -> torch.Tensor:
        """Frames at sorted distinct valid ``indices``: uint8 ``(N, C, H, W)`` on ``self.device``."""

    def close(self) -> None:
        self._handle = None  # neither library has a close(); dropping the handle frees it

    def _metadata(self) -> tuple[float, int, int]:
        if self._size is None:
            with self._errors("decoding"):
                self._load([0])
        width, height = self._size
        return self._fps, width, height

    def _decode_checked(self, indices: list[int]) -> torch.Tensor:
        """Decode, reopening first when an earlier failure may have left the handle broken."""
        if self._handle is None:
            self._handle = self._open()
        try:
            frames = self._decode(self._handle, indices)
        except Exception:
            self._handle = None  # a decord reader stays broken after a decoding error
            raise
        self._size = (frames.shape[-1], frames.shape[-2])
        return frames

    def _decodes(self, index: int) -> bool:
        try:
            self._decode_checked([index])
        except Exception as error:
            _LOG.debug("%s: frame %d does not decode with %s: %s", self.path, index, self.name, _describe(error))
            return False
        return True

    def _count_frames(self) -> int:
        last = self._indexed - 1
        if self._decodes(last):
            return self._indexed
        if not self._decodes(0):
            raise self._fail("the first frame cannot be decoded")
        good, bad = 0, last  # invariant: frame `good` decodes, frame `bad` does not
        while bad - good > 1:
            middle = (good + bad) // 2
            if self._decodes(middle):
                good = middle
            else:
                bad = middle
        _LOG.warning("%s: %s indexes %d frames, only %d decode", self.path, self.name, self._indexed, good + 1)
        return good + 1

    def _load(self, unique: list[int]) -> torch.Tensor:
        # First trust the backend's own count; find the decodable count only if that fails,
        # so intact files pay for no extra decoding.
        limit = self._num_frames or self._indexed
        try:
            return self._load_clamped(unique, limit)
        except Exception:
            if self._num_frames is not None:
                raise  # the frames lie within the decodable count: the file is corrupt there
        # A retry within an unchanged count fails again, reporting the corrupt frame.
        return self._load_clamped(unique, self.num_frames)

    def _load_clamped(self, unique: list[int], count: int) -> torch.Tensor:
        clamped = [min(index, count - 1) for index in unique]
        distinct = sorted(set(clamped))
        return _gather(self._decode_checked(distinct), distinct, clamped)


class _DecordReader(_IndexedReader):
    name = "decord"

    def _open(self):
        import decord

        ctx = decord.gpu(self.device.index or 0) if self.device.type == "cuda" else decord.cpu(0)
        return decord.VideoReader(str(self.path), ctx=ctx, num_threads=DECODER_THREADS)

    def _length(self, handle) -> int:
        return len(handle)

    def _frame_rate(self, handle) -> float:
        return handle.get_avg_fps()

    def _decode(self, handle, indices: list[int]) -> torch.Tensor:
        # get_batch returns an (N, H, W, 3) decord array; leave decord through numpy
        # (CPU) or DLPack (GPU) rather than its thread-local bridge setting.
        batch = handle.get_batch(indices)
        if self.device.type == "cuda":
            frames = torch.utils.dlpack.from_dlpack(batch.to_dlpack())
        else:
            frames = torch.from_numpy(batch.asnumpy())
        return frames.permute(0, 3, 1, 2)


class _TorchcodecReader(_IndexedReader):
    name = "torchcodec"

    def _open(self):
        from torchcodec.decoders import VideoDecoder

        # "exact" scans the file, so frame i is the i-th frame in presentation order.
        return VideoDecoder(
            str(self.path), device=str(self.device), seek_mode="exact", num_ffmpeg_threads=DECODER_THREADS
        )

    def _length(self, handle) -> int:
        return len(handle)

    def _frame_rate(self, handle) -> float:
        return handle.metadata.average_fps or 0.0  # None when unknown; info() reports it

    def _decode(self, handle, indices: list[int]) -> torch.Tensor:
        return handle.get_frames_at(indices).data  # already (N, C, H, W)


class _PyAVReader(VideoReader):
    """Sequential decoding from the start; stops after the last requested frame."""

    name = "pyav"

    def __init__(self, path: Path, device: torch.device):
        super().__init__(path, device)
        with self._errors("opening"), self._open() as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self._fps_size = (float(rate or 0), stream.codec_context.width, stream.codec_context.height)

    def _open(self):
        import av

        container = av.open(str(self.path))
        if not container.streams.video:
            container.close()
            raise self._fail("no video stream")
        return container

    def _metadata(self) -> tuple[float, int, int]:
        return self._fps_size

    def _count_frames(self) -> int:
        with self._errors("decoding"):
            count, _, _ = self._scan(stop_after=None, keep=set())
        return count

    def _load(self, unique: list[int]) -> torch.Tensor:
        _, kept, last = self._scan(stop_after=unique[-1], keep=set(unique))
        if last is not None:  # the stream ended first: later requests get its last frame
            last_rgb = last.to_ndarray(format="rgb24")
            kept = {index: kept.get(index, last_rgb) for index in unique}
        return torch.from_numpy(np.stack([kept[index] for index in unique])).permute(0, 3, 1, 2)

    def _chunks(self, wanted: list[int], chunk_size: int) -> Iterator[torch.Tensor]:
        if any(later < earlier for earlier, later in zip(wanted, wanted[1:])):
            yield from super()._chunks(wanted, chunk_size)  # out of order: decode per chunk
        elif wanted:
            yield from self._stream(wanted, chunk_size)

    def _stream(self, wanted: list[int], chunk_size: int) -> Iterator[torch.Tensor]:
        """One sequential decode serving non-decreasing ``wanted`` chunk by chunk (see :meth:`read_chunks`)."""
        kept: dict[int, np.ndarray] = {}  # decoded frames a chunk still needs
        position, last, ended = 0, None, False  # next frame index, last decoded frame, end reached
        decoded = self._frames()
        with self._errors("decoding frames"), contextlib.closing(decoded):
            for start in range(0, len(wanted), chunk_size):
                chunk = wanted[start : start + chunk_size]
                kept = {index: rgb for index, rgb in kept.items() if index >= chunk[0]}
                needed = set(chunk)
                while not ended and position <= chunk[-1]:
                    frame = next(decoded, None)
                    if frame is None:
                        ended = True
                        break
                    if position in needed:
                        kept[position] = frame.to_ndarray(format="rgb24")
                    last, position = frame, position + 1
                if ended:  # requests past the end get the last frame
                    last_rgb = last.to_ndarray(format="rgb24")
                    kept.update({index: last_rgb for index in needed if index not in kept})
                yield torch.from_numpy(np.stack([kept[index] for index in chunk])).permute(0, 3, 1, 2)

    def _scan(self, stop_after: int | None, keep: set[int]) -> tuple[int, dict[int, np.ndarray], object]:
        """Decode from the start until frame ``stop_after`` (``None``: the end).

        Returns the number of frames decoded, the ``(H, W, 3)`` RGB arrays of the
        frames in ``keep``, and the last decoded ``av.VideoFrame`` if decoding
        reached the end of the stream before ``stop_after`` (else ``None``).
        """
        kept: dict[int, np.ndarray] = {}
        count, last = 0, None
        decoded = self._frames()
        with contextlib.closing(decoded):
            for last in decoded:
                if count in keep:
                    kept[count] = last.to_ndarray(format="rgb24")
                count += 1
                if stop_after is not None and count > stop_after:
                    return count, kept, None
        return count, kept, last

    def _frames(self) -> Iterator[object]:
        """Every decodable ``av.VideoFrame`` of the file in order, from one pass.

        A decoding error after at least one frame ends the stream, as for a
        truncated file; a file without a decodable frame fails. Reaching the end
        records the frame count. Close the generator to stop early.
        """
        import av

        count = 0
        with self._open() as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = DECODER_THREADS
            try:
                for frame in container.decode(stream):
                    yield frame
                    count += 1
            except av.FFmpegError as error:
                if count == 0:
                    raise
                _LOG.warning("%s: decoding stopped after %d frames (%s)", self.path, count, _describe(error))
        if count == 0:
            raise self._fail("no decodable frames")
        self._num_frames = count  # reached the end: the count is known for free


_READERS: dict[str, type[VideoReader]] = {
    "decord": _DecordReader,
    "pyav": _PyAVReader,
    "torchcodec": _TorchcodecReader,
}


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _wrap_errors(path: Path, action: str) -> Iterator[None]:
    """Turn any backend exception into a VideoReadError naming the file; ours pass through."""
    try:
        yield
    except (VlkdError, MemoryError):
        raise
    except Exception as error:
        raise VideoReadError(path, f"{action}: {_describe(error)}") from error


# decord prefixes messages with "[hh:mm:ss] /src/file.cc:123: ", torchcodec with
# "Function, /src/file.cpp:45, " and PyAV with "[Errno 123] ": keep only the message.
_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\]\s*|(?:\w+, )?/\S+\.(?:cc|cpp|c|h):\d+[:,]?\s*|\[Errno -?\d+\]\s*")


def _describe(error: BaseException) -> str:
    """A one-line reason for a backend exception."""
    lines = [_NOISE.sub("", line).strip() for line in str(error).splitlines()]
    text = next((line for line in lines if line), "")
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Still-image formats FFmpeg (so PyAV and torchcodec) would open as a one-frame
# video: (name, signature, offset of the signature in the file).
_IMAGE_SIGNATURES = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("BMP", b"BM", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
    ("WebP", b"WEBP", 8),  # after "RIFF" and the chunk size
)


def _check_file(path: Path) -> None:
    """Cheap checks every backend shares, so that they all fail the same way on these files."""
    if not path.exists():
        raise VideoReadError(path, "file does not exist")
    if not path.is_file():
        raise VideoReadError(path, "not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise VideoReadError(path, f"cannot open the file: {error.strerror or error}") from error
    if not head:
        raise VideoReadError(path, "file is empty (0 bytes)")
    for kind, signature, offset in _IMAGE_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            raise VideoReadError(path, f"a {kind} image, not a video")


def _as_index_list(indices: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
    """Validate frame indices and return them as Python ints."""
    if isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    elif isinstance(indices, np.ndarray):
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"frame indices must be a 1-d integer array, got {indices.dtype} {indices.shape}")
        indices = indices.tolist()
    result = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"frame indices must be integers, got {index!r}")
        if index < 0:
            raise ValueError(f"frame indices must be >= 0, got {index}")
        result.append(int(index))
    if not result:
        raise ValueError("no frame indices given")
    return result


def _gather(frames: torch.Tensor, frame_indices: list[int], wanted: list[int]) -> torch.Tensor:
    """Rows of ``frames`` (``(N, C, H, W)``, row k holding frame ``frame_indices[k]``) for ``wanted``."""
    row = {index: k for k, index in enumerate(frame_indices)}
    if wanted == frame_indices:
        return frames.contiguous()
    return frames[torch.tensor([row[index] for index in wanted], device=frames.device)].contiguous()


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from error
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"videos decode on 'cpu' or 'cuda' devices, not {dev.type!r}")
    return dev


def _resolve_backend(backend: str | None, dev: torch.device) -> str:
    if backend is None:
        return default_backend(dev)
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if dev.type == "cuda" and backend == "pyav":
        raise VideoBackendError(f"pyav decodes on the CPU only: use device='cpu', or for GPU decoding {_CUDA_INSTALL}")
    ok, reason = _self_test(backend, str(dev))
    if not ok:
        hint = _CUDA_INSTALL if dev.type == "cuda" else _INSTALL[backend]
        raise VideoBackendError(f"video backend {backend!r} does not work on {dev} here ({reason}): {hint}")
    return backend


def _failures(names: Sequence[str], dev: torch.device) -> str:
    return "; ".join(f"{name}: {_self_test(name, str(dev))[1]}" for name in names)


@functools.cache
def _self_test(backend: str, device: str) -> tuple[bool, str]:
    """Whether ``backend`` decodes a freshly written two-frame clip on ``device``, and why not."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    if dev.type == "cuda" and backend == "pyav":
        return False, "pyav decodes on the CPU only"
    try:
        from vlkd.data.writer import write_video

        with tempfile.TemporaryDirectory(prefix="vlkd-video-selftest-") as folder:
            # h264 for NVDEC, which may lack MPEG-4 part 2; mpeg4 is the cheapest CPU check.
            codec, suffix = ("h264", ".mp4") if dev.type == "cuda" else ("mpeg4", ".avi")
            clip = write_video(Path(folder) / f"clip{suffix}", np.zeros((2, 64, 64, 3), np.uint8), codec=codec)
            with _READERS[backend](clip, dev) as reader:
                frames = reader.read([0, 1])
        if tuple(frames.shape) != (2, 3, 64, 64) or frames.device.type != dev.type:
            return False, f"test clip decoded to {tuple(frames.shape)} on {frames.device}"
    except Exception as error:  # any failure means "not usable here"; the reason is reported
        reason = error.reason if isinstance(error, VideoReadError) else _describe(error)
        _LOG.debug("video backend %s unusable on %s: %s", backend, device, reason)
        return False, reason
    return True, ""
