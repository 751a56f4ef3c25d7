"""Micro-batching: many concurrent requests, one model call at a time.

Requests hand their texts to a ``MicroBatcher`` and await the vectors. One worker task
takes texts off the queue in arrival order, up to ``max_batch`` at a time (a large request
is split across batches, small ones are packed together), and runs ``encode`` in a
dedicated thread so the event loop keeps serving HTTP. While the model works on one batch
the next one fills up, so under load batches are full without any waiting; when the model
is idle and the queue is short, the worker waits ``max_wait_s`` for company first::

    batcher = MicroBatcher(encoder.encode, max_batch=128, max_wait_s=0.002)
    vectors = await batcher.embed(["a text", "another"])   # (2, d) float32
    await batcher.aclose()
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MicroBatcher"]


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future[np.ndarray]
    taken: int = 0  # texts already handed to a batch
    filled: int = 0  # rows already written to ``out``
    out: np.ndarray | None = field(default=None, repr=False)


class MicroBatcher:
    """Gathers texts from concurrent callers into batches for one encode function."""

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        *,
        max_batch: int = 128,
        max_wait_s: float = 0.002,
        name: str = "encoder",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._encode = encode
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"vectorfill-{name}")
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._closed = False

    async def embed(self, texts: list[str]) -> np.ndarray:
        """The vectors for ``texts``, in order, as one float32 array."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="vectorfill-batcher")
        job = _Job(list(texts), loop.create_future())
        if not job.texts:
            return np.empty((0, 0), dtype=np.float32)
        self._queue.append(job)
        self._queued_texts += len(job.texts)
        assert self._wakeup is not None
        self._wakeup.set()
        return await job.future

    async def aclose(self) -> None:
        """Stop the worker, fail whatever is still queued, and release the thread."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the embeddings server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _take(self) -> tuple[list[str], list[tuple[_Job, int, int]]]:
        """Up to ``max_batch`` texts from the head of the queue, and where each came from."""
        batch: list[str] = []
        segments: list[tuple[_Job, int, int]] = []
        while self._queue and len(batch) < self._max_batch:
            job = self._queue[0]
            if job.future.done():  # the caller went away
                self._queue.popleft()
                self._queued_texts -= len(job.texts) - job.taken
                continue
            start = job.taken
            stop = min(len(job.texts), start + self._max_batch - len(batch))
            batch.extend(job.texts[start:stop])
            segments.append((job, start, stop))
            job.taken = stop
            self._queued_texts -= stop - start
            if stop == len(job.texts):
                self._queue.popleft()
        return batch, segments

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._max_wait_s > 0 and self._queued_texts < self._max_batch:
                await asyncio.sleep(self._max_wait_s)
            batch, segments = self._take()
            if not batch:
                continue
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the model failed: fail every request in this batch
                for job, _, _ in segments:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            offset = 0
            for job, start, stop in segments:
                rows = vectors[offset : offset + stop - start]
                offset += stop - start
                if job.future.done():
                    continue
                if start == 0 and stop == len(job.texts):  # the whole job in one batch
                    job.future.set_result(rows)
                    continue
                if job.out is None:
                    job.out = np.empty((len(job.texts), vectors.shape[1]), dtype=np.float32)
                job.out[start:stop] = rows
                job.filled += stop - start
                if job.filled == len(job.texts):
                    job.future.set_result(job.out)
