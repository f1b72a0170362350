"""Write RGB frames to a video file with PyAV (tests, synthetic datasets, demos).

Four codecs are named here and checked against the container suffix:

=========  ==================  ===========================  ==========================
``codec``  FFmpeg encoder      suffixes                     what ``crf`` sets
=========  ==================  ===========================  ==========================
h264       libx264             .mp4 .mkv .mov .avi          x264 CRF (0-51)
mpeg4      mpeg4               .avi .mp4 .mkv .mov          quantiser scale (1-31)
vp9        libvpx-vp9          .webm .mkv .mp4              VP9 CRF (0-63), constant quality
mjpeg      mjpeg               .avi .mkv .mov               quantiser scale (1-31)
=========  ==================  ===========================  ==========================

Any other name is passed to FFmpeg as an encoder name, with PyAV picking the
container from the suffix and ``crf`` left unused.

Odd frame sizes: libx264 refuses odd widths or heights with chroma-subsampled
pixel formats (yuv420p, yuv422p), so that combination raises a ``ValueError``
before anything is written, suggesting an even crop or ``pix_fmt="yuv444p"``.
Frames are never padded or cropped behind the caller's back: a reader must get
back exactly the size that was written. The other named codecs encode odd sizes
as they are (checked empirically with FFmpeg's encoders shipped in PyAV).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

# codec name -> (FFmpeg encoder, container suffixes it is written to here)
_CODECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "h264": ("libx264", (".mp4", ".mkv", ".mov", ".avi")),
    "mpeg4": ("mpeg4", (".avi", ".mp4", ".mkv", ".mov")),
    "vp9": ("libvpx-vp9", (".webm", ".mkv", ".mp4")),
    "mjpeg": ("mjpeg", (".avi", ".mkv", ".mov")),
}

# Quality used when crf is None: high enough that a decoded frame stays close to
# the written one, so tests can identify frames by their content.
_DEFAULT_QUALITY = {"libx264": 18, "libvpx-vp9": 24, "mpeg4": 2, "mjpeg": 2}


def write_video(
    path: str | Path,
    frames: np.ndarray | torch.Tensor,
    fps: float | Fraction = 25,
    codec: str = "h264",
    crf: int | None = None,
    pix_fmt: str = "yuv420p",
    gop_size: int | None = None,
) -> Path:
    """Encode ``frames`` into the video file ``path`` and return the path.

    Args:
        path: output file; its suffix picks the container (.mp4, .avi, .webm, ...).
        frames: uint8 RGB frames, ``(T, H, W, 3)``, as a numpy array or a CPU tensor.
        fps: frame rate; an int, a float (29.97) or an exact ``Fraction(30000, 1001)``.
        codec: ``h264``, ``mpeg4``, ``vp9``, ``mjpeg`` or any FFmpeg encoder name.
        crf: quality knob of the codec (see the module docstring; lower is better);
            ``None`` uses a high-quality default.
        pix_fmt: encoder pixel format. For mjpeg the limited-range ``yuv420p``/``yuv444p``
            are replaced by their full-range JPEG twins ``yuvj420p``/``yuvj444p``, the
            formats that encoder accepts.
        gop_size: keyframe interval in frames (``None``: the encoder's default). Short
            intervals make random access seek, which tests use to exercise seeking.

    Raises:
        ValueError: bad frame array, suffix not suited to the codec, or odd size with
            h264 and a chroma-subsampled ``pix_fmt``.
    """
    import av  # imported here so that importing vlkd.data stays cheap

    path = Path(path)
    array = _as_frame_array(frames)
    _, height, width, _ = array.shape
    encoder, suffixes = _CODECS.get(codec, (codec, None))
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"codec {codec!r} is written to {', '.join(suffixes)} files, not {path.name!r}")
    if encoder == "mjpeg":
        pix_fmt = {"yuv420p": "yuvj420p", "yuv422p": "yuvj422p", "yuv444p": "yuvj444p"}.get(pix_fmt, pix_fmt)
    if encoder == "libx264" and (width % 2 or height % 2) and pix_fmt.startswith(("yuv420", "yuv422", "nv12")):
        raise ValueError(
            f"h264 with pix_fmt={pix_fmt!r} needs even frame sizes, got {width}x{height}: "
            "crop the frames to even sizes or pass pix_fmt='yuv444p'"
        )
    rate = _as_fraction(fps)

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=rate, options=_quality_options(encoder, crf))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop_size is not None:
            stream.codec_context.gop_size = int(gop_size)
        if encoder in ("mpeg4", "mjpeg"):
            # These encoders read a fixed quantiser from each frame's quality field,
            # which PyAV does not expose; pinning qmin = qmax has the same effect.
            quantiser = _DEFAULT_QUALITY[encoder] if crf is None else int(crf)
            stream.codec_context.qmin = stream.codec_context.qmax = quantiser
        for index, rgb in enumerate(array):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            # Explicit timestamps: frame i is shown at i / fps in every container.
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush frames the encoder still holds
    return path


def _as_frame_array(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Check and convert frames to a contiguous uint8 numpy array ``(T, H, W, 3)``."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    array = np.asarray(frames)
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {array.dtype}")
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3) (RGB, channels last), got {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"frames must be non-empty, got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array)


def _as_fraction(fps: float | Fraction) -> Fraction:
    """The frame rate as an exact fraction (PyAV's stream rate); 29.97 stays 2997/100."""
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _quality_options(encoder: str, crf: int | None) -> dict[str, str]:
    """Encoder options for the CRF-style codecs (the quantiser codecs are set on the context)."""
    quality = _DEFAULT_QUALITY.get(encoder) if crf is None else crf
    if encoder == "libx264":
        # x264's macroblock tree and frame threads made the same frames encode to
        # different bitstreams run to run; without them a seed reproduces the file.
        return {"crf": str(quality), "x264-params": "mbtree=0", "threads": "1"}
    if encoder == "libvpx-vp9":
        # b:v 0 turns libvpx's CRF into constant quality instead of a bitrate cap.
        return {"crf": str(quality), "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
    return {}
