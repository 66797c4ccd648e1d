"""Framing between the pool and a worker's fork server: 4-byte big-endian length + JSON."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

MAX_FRAME = 64 << 20
STDERR_TAIL = 2000  # bytes of a job's stderr an answer carries
_HEADER = struct.Struct(">I")


class ProtocolError(RuntimeError):
    pass


def encode(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd: int, obj: Any) -> None:
    write_all(fd, encode(obj))


_quote = json.encoder.encode_basestring_ascii


def encode_answer(
    tid: int, wait_status: int, timed_out: bool, elapsed: float, out: bytes, err: bytes
) -> bytes:
    """A task's answer frame, formatted by hand (``json.dumps`` allocates an encoder per call,
    and the fork server pays for every page it touches)."""
    flag = "true" if timed_out else "false"
    text, tail = _quote(out.decode("utf-8", "replace")), _quote(err.decode("utf-8", "replace"))
    body = f'{{"tid":{tid:d},"wait":{wait_status:d},"timed_out":{flag},"time":{elapsed:.6f},'
    data = (body + f'"out":{text},"err":{tail}}}').encode()
    return _HEADER.pack(len(data)) + data


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            if got:
                raise ProtocolError("stream ended inside a frame")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any:
    """Blocking read of one frame; None at a clean end of stream."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    body = _read_exact(fd, size)
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return json.loads(body)


class FrameBuffer:
    """Incremental decoder for a non-blocking reader."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        frames = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append(json.loads(bytes(self._buf[_HEADER.size : end])))
            del self._buf[:end]
        return frames
