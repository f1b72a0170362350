"""The byte formats of the teacher service, shared by the server and its client.

Arrays travel as ``.npy`` files (``application/x-npy``): a short header naming
dtype and shape, then the raw bytes, never a pickle. :func:`read_npy` checks
the header against the payload before reading it, so a header that promises
more bytes than were sent costs nothing.
"""

from __future__ import annotations

import io

import numpy as np

NPY = "application/x-npy"


class WireError(ValueError):
    """Bytes that are not the ``.npy`` array the sender claimed."""


def write_npy(array: np.ndarray) -> bytes:
    """``array`` as the bytes of an ``.npy`` file."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def read_npy(data: bytes, what: str = "body") -> np.ndarray:
    """The array in ``.npy`` bytes; :class:`WireError` naming ``what`` if they are not one."""
    buffer = io.BytesIO(data)
    try:
        major, minor = np.lib.format.read_magic(buffer)
        if (major, minor) == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buffer)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buffer)
    except Exception as error:  # numpy raises ValueError, OSError or SyntaxError for bad headers
        raise WireError(f"{what} is not an .npy array ({' '.join(str(error).split())[:200]})") from None
    if dtype.hasobject:
        raise WireError(f"{what}: object arrays are not accepted")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - buffer.tell()
    if payload != expected:
        raise WireError(f"{what}: the .npy header promises {expected} bytes of {dtype} {shape}, but {payload} came")
    array = np.frombuffer(data, dtype=dtype, offset=buffer.tell()).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array)
