"""A bounded pool of model workers: admission first, then a thread that runs the model.

Two counts bound a server's work and memory, whatever the number of clients:

* **model slots**: at most ``workers + queue_size`` requests hold a decoded upload, waiting for a
  worker or running (:meth:`WorkerPool.admit`);
* **upload slots**: at most ``upload_slots`` request bodies arrive at once
  (:meth:`WorkerPool.admit_upload`), so that slow uploads hold upload slots only and never the
  model's queue: other clients' requests still run while they trickle in.

A request is refused at once with :class:`Busy` (with a ``Retry-After`` estimate) when the model's
queue is already full (before a byte of its body is read: :meth:`WorkerPool.check_room`), when every
upload slot is taken, or when the queue filled up while its body arrived.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator


class Busy(Exception):
    """Every worker is busy and the queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, admitted: int):
        super().__init__(f"server busy: {admitted} requests in progress or queued; retry in {retry_after} s")
        self.retry_after = retry_after


class WorkerPool:
    """``workers`` threads that run the model, and an admission count of ``workers + queue_size``.

    Args:
        workers: model threads (each runs one prediction at a time).
        queue_size: admitted requests allowed to wait for a worker.
        upload_slots: request bodies allowed to arrive at once (default ``2 * (workers + queue_size)``).
    """

    def __init__(self, workers: int, queue_size: int, upload_slots: int = 0):
        if workers < 1 or queue_size < 0 or upload_slots < 0:
            raise ValueError(f"need workers >= 1, queue_size >= 0 and upload_slots >= 0, got {workers}, {queue_size} "
                             f"and {upload_slots}")
        self.workers = workers
        self.capacity = workers + queue_size
        self.upload_slots = upload_slots or 2 * self.capacity
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-worker")
        self._lock = threading.Lock()
        self._held = {"model": 0, "upload": 0}  # slots taken now, under the lock
        self._mean_seconds = 1.0  # running mean of one prediction, for Retry-After
        self.completed = 0

    @property
    def admitted(self) -> int:
        """Requests holding a model slot now (queued or running)."""
        return self._held["model"]

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead divided among the workers, 1-60."""
        ahead = max(self._held["model"] - self.workers + 1, 1)
        return int(min(max(math.ceil(self._mean_seconds * ahead / self.workers), 1), 60))

    def _take(self, kind: str, limit: int, hold: bool = True) -> None:
        """Take one ``kind`` slot ("model" or "upload"), or raise :class:`Busy` when ``limit`` of them
        are taken; ``hold=False`` only checks."""
        with self._lock:
            if self._held[kind] >= limit:
                raise Busy(self.retry_after(), self._held["model"])
            self._held[kind] += int(hold)

    @contextmanager
    def _slot(self, kind: str, limit: int) -> Iterator[None]:
        self._take(kind, limit)
        try:
            yield
        finally:
            with self._lock:
                self._held[kind] -= 1

    def check_room(self) -> None:
        """:class:`Busy` when every model slot is taken (a request is then refused before its body)."""
        self._take("model", self.capacity, hold=False)

    def admit_upload(self) -> ContextManager[None]:
        """Hold one upload slot while a body arrives; :class:`Busy` at once when none is free."""
        return self._slot("upload", self.upload_slots)

    def admit(self) -> ContextManager[None]:
        """Hold one model slot for the ``with`` block; :class:`Busy` at once when none is free."""
        return self._slot("model", self.capacity)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a model worker thread, awaited; its exception is raised here."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, fn, args)

    def _timed(self, fn: Callable[..., Any], args: tuple) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            seconds = time.perf_counter() - start
            with self._lock:
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds
                self.completed += 1

    def stats(self) -> dict:
        """``{"workers", "capacity", "admitted", "uploading", "upload_slots", "completed"}``."""
        return {"workers": self.workers, "capacity": self.capacity, "admitted": self._held["model"],
                "uploading": self._held["upload"], "upload_slots": self.upload_slots, "completed": self.completed}

    def shutdown(self) -> None:
        """Finish running work and stop the threads."""
        self._executor.shutdown(wait=True, cancel_futures=True)
