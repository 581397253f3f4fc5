"""Deflate on several threads, pigz's way (issue 13: packing after the last slice).

A zip entry's deflate stream need not come from one compressor: chunks compressed apart, each
but the last ending in a sync flush (byte-aligned, no final block), concatenate into one valid
stream, and priming each chunk with the last 32 KiB of the one before (deflate's window) keeps
back references across the seam, so the ratio stays within a hair of one compressor's. zlib
releases the GIL while it compresses, so the chunks compress at once on as many cores.

``ParallelDeflate`` has the two methods of a ``zlib.compressobj`` that ``zipfile`` calls while
writing an entry (``compress``, ``flush``); any reader of deflate reads its output.
"""

from __future__ import annotations

import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

WINDOW = 32 * 1024  # deflate's back-reference window (RFC 1951 3.2.5)
CHUNK = 4 * 1024 * 1024
RAW_DEFLATE = -15  # wbits: raw deflate, no zlib header, as zip entries hold it


def _deflate(chunk: bytes, level: int, primer: bytes, final: bool) -> bytes:
    if primer:
        compressor = zlib.compressobj(
            level, zlib.DEFLATED, RAW_DEFLATE, zlib.DEF_MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, primer
        )
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, RAW_DEFLATE)
    return compressor.compress(chunk) + compressor.flush(
        zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH
    )


class ParallelDeflate:
    """A raw deflate compressor compressing ``chunk``-byte pieces on ``threads`` threads.

    ``compress`` returns what is ready, in order (at most ``2 * threads`` chunks are in
    flight, so memory stays bounded); ``flush`` returns the rest and ends the stream.
    """

    def __init__(self, level: int, *, threads: int = 2, chunk: int = CHUNK) -> None:
        if not 0 <= level <= 9:
            raise ValueError("compression level must be between 0 and 9")
        if threads < 1 or chunk < WINDOW:
            raise ValueError("needs at least one thread and chunks of at least 32 KiB")
        self._level = level
        self._threads = threads
        self._chunk = chunk
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="petray-deflate")
        self._pending: deque[Future[bytes]] = deque()
        self._buffer = bytearray()
        self._primer = b""
        self._finished = False

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._finished:
            raise ValueError("the stream is already flushed")
        self._buffer += data
        while len(self._buffer) >= self._chunk:
            chunk = bytes(memoryview(self._buffer)[: self._chunk])
            del self._buffer[: self._chunk]
            self._submit(chunk, final=False)
        ready = []
        while self._pending and (self._pending[0].done() or len(self._pending) > 2 * self._threads):
            ready.append(self._pending.popleft().result())
        return b"".join(ready)

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        """The rest of the stream, ended (``zipfile`` calls it once, when the entry closes)."""
        if mode != zlib.Z_FINISH:
            raise ValueError("only Z_FINISH is supported")
        if self._finished:
            return b""
        self._finished = True
        try:
            self._submit(bytes(self._buffer), final=True)
            self._buffer = bytearray()
            return b"".join(future.result() for future in self._pending)
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, chunk: bytes, *, final: bool) -> None:
        primer = self._primer
        self._primer = chunk[-WINDOW:] if len(chunk) >= WINDOW else (primer + chunk)[-WINDOW:]
        self._pending.append(self._pool.submit(_deflate, chunk, self._level, primer, final))
