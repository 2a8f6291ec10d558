"""safetensors files written a block of rows at a time, and read back as memory maps.

A safetensors file is an 8-byte header length, a JSON header giving each tensor's dtype, shape and byte
range, then the raw bytes. With every shape known up front, the header can be written first and the rows
streamed after it, so peak memory does not grow with the number of rows. The files are ordinary
safetensors: `safetensors.torch.load_file` reads them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8"}
_NUMPY = {name: dtype for dtype, name in _DTYPES.items()}


class StreamingTensorFile:
    """Write a safetensors file whose tensors are filled row block by row block, in declaration order."""

    def __init__(
        self, stream, tensors: dict[str, tuple[np.dtype, tuple[int, ...]]], metadata: dict[str, str]
    ):
        header, offset = {"__metadata__": metadata}, 0
        self._remaining = []
        for name, (dtype, shape) in tensors.items():
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            header[name] = {
                "dtype": _DTYPES[np.dtype(dtype)],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            self._remaining.append([name, np.dtype(dtype), shape[1:], shape[0]])
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        stream.write(struct.pack("<Q", len(encoded)) + encoded)
        self._stream = stream
        self._drop_full()

    def _drop_full(self) -> None:
        while self._remaining and self._remaining[0][3] == 0:
            self._remaining.pop(0)

    def write(self, rows: np.ndarray) -> None:
        """The next rows of the first tensor not yet full."""
        if len(rows) == 0:
            return
        if not self._remaining:
            raise ValueError("every tensor is already full")
        name, dtype, row_shape, left = self._remaining[0]
        rows = np.ascontiguousarray(rows, dtype=dtype)
        if rows.shape[1:] != row_shape or len(rows) > left:
            raise ValueError(f"{name}: {len(rows)} rows of {rows.shape[1:]}; {left} left of {row_shape}")
        self._stream.write(rows.tobytes())
        self._remaining[0][3] -= len(rows)
        self._drop_full()

    def close(self) -> None:
        if self._remaining:
            raise ValueError(f"tensors not filled: {[name for name, *_ in self._remaining]}")


@contextmanager
def tensor_file(
    path: Path, tensors: dict[str, tuple[np.dtype, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> Iterator[StreamingTensorFile]:
    """Stream a safetensors file to `path`; the caller writes it inside an atomic output or gives a
    temporary name, so a crash never leaves a readable half-file."""
    with path.open("wb") as stream:
        writer = StreamingTensorFile(stream, tensors, metadata or {})
        yield writer
        writer.close()


def tensor_start(path: Path, name: str) -> tuple[dict, int]:
    """A tensor's header entry (dtype, shape) and the file offset of its first byte."""
    with path.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        entry = json.loads(stream.read(length))[name]
    return entry, 8 + length + entry["data_offsets"][0]


def open_rows(path: Path, name: str) -> np.ndarray:
    """One tensor of a safetensors file as a read-only memory map: rows are read from disk when indexed."""
    entry, offset = tensor_start(path, name)
    start, end = entry["data_offsets"]
    if end == start:
        return np.zeros(entry["shape"], _NUMPY[entry["dtype"]])
    return np.memmap(path, _NUMPY[entry["dtype"]], "r", offset=offset, shape=tuple(entry["shape"]))
