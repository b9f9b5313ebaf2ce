"""Backing memory for ring buffers: process memory or POSIX shared memory.

``multiprocessing.shared_memory`` has one trap for readers: before Python 3.13
every process that *attaches* to a segment registers it with the resource
tracker, which unlinks it when that process exits, destroying it for everyone
(CPython gh-82300). Readers here therefore map the segment without the tracker:
``SharedMemory(track=False)`` on 3.13+, and on older Pythons the segment's file
in ``/dev/shm`` (Linux) mapped directly. Only the creating process owns the
segment, is tracked (so a crashed owner does not leak it), and unlinks it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import sys
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

_DEV_SHM = Path("/dev/shm")


class Backing:
    """A writable byte buffer plus how to release it."""

    def __init__(self, buf: memoryview, *, name: str | None = None) -> None:
        self.buf = buf
        self.name = name

    @property
    def shared(self) -> bool:
        """True when other processes can attach by ``name``."""
        return self.name is not None

    def close(self) -> None:
        """Release this process's mapping (views into ``buf`` must be gone)."""
        self.buf.release()

    def unlink(self) -> None:
        """Remove the segment's name (owner only). No-op for process memory."""


class ProcessMemory(Backing):
    """Plain process memory: one writer and readers in the same process."""

    def __init__(self, size: int) -> None:
        super().__init__(memoryview(bytearray(size)))


class SharedSegment(Backing):
    """A named POSIX shared-memory segment, created by its owner or attached by readers."""

    def __init__(
        self,
        shm: shared_memory.SharedMemory | None,
        buf: memoryview,
        name: str,
        *,
        owner: bool,
        mm: mmap.mmap | None = None,
    ) -> None:
        super().__init__(buf, name=name)
        self._shm = shm
        self._mm = mm
        self.owner = owner

    @classmethod
    def create(cls, size: int, name: str | None = None) -> SharedSegment:
        """Create a new segment (``FileExistsError`` if ``name`` is taken); pre-fault its pages."""
        name = name or f"demuse_{os.getpid()}_{secrets.token_hex(4)}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        buf = shm.buf[:size]
        # Touch every page now so the first lap of the writer takes no page faults.
        page_view = np.frombuffer(buf, dtype=np.uint8)
        page_view.fill(0)
        del page_view
        return cls(shm, buf, name, owner=True)

    @classmethod
    def attach(cls, name: str) -> SharedSegment:
        """Map an existing segment without registering it with the resource tracker."""
        if sys.version_info >= (3, 13):
            shm = shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
            return cls(shm, shm.buf, name, owner=False)
        path = _DEV_SHM / name.lstrip("/")
        if not _DEV_SHM.is_dir():  # pragma: no cover - non-Linux POSIX on Python < 3.13
            shm = shared_memory.SharedMemory(name=name)
            from multiprocessing import resource_tracker

            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
            return cls(shm, shm.buf, name, owner=False)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no shared-memory ring named {name!r} ({path} does not exist): is the writer "
                "process running, and was the name copied from it?"
            ) from None
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(None, memoryview(mm), name, owner=False, mm=mm)

    def close(self) -> None:
        self.buf.release()
        if self._shm is not None:
            self._shm.close()
        if self._mm is not None:
            self._mm.close()

    def unlink(self) -> None:
        if self.owner and self._shm is not None:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()
