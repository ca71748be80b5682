"""Continuous batching for the embedded server: sequences join the decode batch between steps and
leave when they finish or their client goes away; a bounded waiting queue turns overload into 503.

One asyncio task owns the batch. Each pass either runs the prompts of newly admitted sequences (each
alone, then joining the batch) or one decode step of the whole batch, on the one model thread so the
event loop keeps accepting and streaming. Every tensor operation (dropping rows included) runs on
that same thread: each thread that enters torch's OpenMP kernels gets its own thread team, and two
teams on 2 cores halved decode speed (measured: steps hopping between a pool's threads, and rows
dropped on the event loop's thread, both slowed every later request about 2x). Cancelling only raises a flag; the loop drops flagged
sequences before its next pass, so nothing touches a sequence while the model runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .decode_batch import DecodeBatch
from .generation import Delta, Generation, LanguageModel
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The batch and the waiting queue are full: the client should retry later."""


@dataclass(eq=False)
class Submission:
    """One request's sequences and the events they produce, in order, for its handler."""

    gens: list[Generation]
    events: asyncio.Queue[tuple[int, Delta] | BaseException | None] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    unfinished: int = 0

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """(sequence index, delta) until every sequence has ended; a model failure is raised here."""
        while (event := await self.events.get()) is not None:
            if isinstance(event, BaseException):
                raise event
            yield event


@dataclass(eq=False)
class _Slot:
    """Where a sequence belongs and when it produced tokens (for the latency metrics)."""

    submission: Submission
    index: int
    arrived: float
    last_token: float | None = None
    tokens: int = 0


class Scheduler:
    """Admits up to `max_num_seqs` sequences into the decode batch; up to `max_waiting` more wait."""

    def __init__(self, lm: LanguageModel, metrics: ServerMetrics, max_num_seqs: int, max_waiting: int) -> None:
        if max_num_seqs < 1 or max_waiting < 0:
            raise ValueError(f"max_num_seqs must be >= 1 and max_waiting >= 0, got {max_num_seqs} and {max_waiting}")
        reason = DecodeBatch.batchable(lm.model.config)
        if reason is not None and max_num_seqs > 1:
            logger.warning("decoding one sequence at a time: %s", reason)
            max_num_seqs = 1
        self.lm, self.metrics = lm, metrics
        self.max_num_seqs, self.max_waiting = max_num_seqs, max_waiting
        self._batch = DecodeBatch(lm)
        self._waiting: deque[Generation] = deque()
        self._starting: list[Generation] = []  # admitted, prompt running: they hold slots already
        self._slots: dict[Generation, _Slot] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpq-model")

    @property
    def running(self) -> int:
        return sum(gen.finish_reason is None for gen in self._batch.gens) + len(self._starting)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, gens: Sequence[Generation]) -> Submission:
        """Queue a request's sequences, or raise `Overloaded` if they do not fit in the waiting queue."""
        free = self.max_num_seqs - self.running + self.max_waiting - self.waiting
        if len(gens) > free:
            self.metrics.rejected()
            raise Overloaded(
                f"The server is busy: {self.running} sequences running and {self.waiting} waiting "
                f"(--max-num-seqs {self.max_num_seqs}, --max-waiting {self.max_waiting})."
            )
        submission = Submission(list(gens), unfinished=len(gens))
        now = time.monotonic()
        for index, gen in enumerate(gens):
            self._slots[gen] = _Slot(submission, index, now)
            self._waiting.append(gen)
        self._report_queues()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="mpq-scheduler")
        self._wake.set()
        return submission

    def cancel(self, submission: Submission) -> None:
        """The client went away: its sequences leave before the next step (no-op once all ended)."""
        if submission.unfinished:
            submission.cancelled = True
            self._wake.set()

    async def close(self) -> None:
        """Stop the loop (server shutdown)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._model_thread.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            admitted = self._starting
            while self._waiting and self.running < self.max_num_seqs:
                admitted.append(self._waiting.popleft())
            self._report_queues()
            if not admitted and not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                work = self._prefill if admitted else self._decode
                results = await asyncio.get_running_loop().run_in_executor(self._model_thread, work, admitted)
            except Exception as exc:  # a model failure ends the sequences it touched, not the server
                logger.exception("generation failed")
                for gen in admitted or list(self._batch.gens):
                    gen.abort()
                    self._fail(gen, exc)
            else:
                for gen, delta in results:
                    self._deliver(gen, delta)
            self._starting = []

    def _prefill(self, gens: list[Generation]) -> list[tuple[Generation, Delta | None]]:
        """Run each admitted prompt alone and let the still-going sequences join the batch."""
        self._batch.drop_finished()
        results = []
        for gen in gens:
            results.append((gen, gen.begin()))
            self.metrics.prompt_tokens(gen.prompt_len)
            if gen.finish_reason is None:
                self._batch.join(gen)
        return results

    def _decode(self, _: list[Generation]) -> list[tuple[Generation, Delta | None]]:
        """One step of the batch, after dropping the rows that ended (here, on the model thread)."""
        self._batch.drop_finished()
        return list(zip(list(self._batch.gens), self._batch.step(), strict=True))

    def _drop_cancelled(self) -> None:
        gone = [gen for gen in self._slots if self._slots[gen].submission.cancelled and gen.finish_reason is None]
        for gen in gone:
            gen.abort()  # its batch row goes at the next step, on the model thread
            self._end(gen)
        if gone:
            self._waiting = deque(gen for gen in self._waiting if gen.finish_reason is None)

    def _deliver(self, gen: Generation, delta: Delta | None) -> None:
        slot = self._slots.get(gen)
        if slot is None:
            return
        now, new_tokens = time.monotonic(), gen.num_generated - slot.tokens
        if new_tokens:
            self.metrics.generation_tokens(new_tokens)
            if slot.last_token is None:
                self.metrics.first_token(now - slot.arrived)
            else:
                self.metrics.next_token(now - slot.last_token)
            slot.tokens, slot.last_token = gen.num_generated, now
        if delta is not None and not slot.submission.cancelled:
            slot.submission.events.put_nowait((slot.index, delta))
        if gen.finish_reason is not None:
            self._end(gen)

    def _fail(self, gen: Generation, exc: Exception) -> None:
        slot = self._slots.get(gen)
        if slot is not None:
            slot.submission.events.put_nowait(exc)
            self._end(gen)

    def _end(self, gen: Generation) -> None:
        slot = self._slots.pop(gen)
        self.metrics.finished(gen.finish_reason or "abort", time.monotonic() - slot.arrived)
        slot.submission.unfinished -= 1
        if not slot.submission.unfinished:
            slot.submission.events.put_nowait(None)

    def _report_queues(self) -> None:
        self.metrics.queues(self.running, self.waiting)
