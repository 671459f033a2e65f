"""Batches produced ahead of the trainer on a background thread.

The thread runs `sampler.next_batch()` (numpy releases the GIL in its copy loops) and, on CUDA, pins
the result so `next()` can start an asynchronous host-to-device copy that overlaps the previous
step's kernels. Each queued batch carries the sampler state right after it was drawn, so the
state this object reports is that of the last batch the trainer *consumed*, not of the ones still
in flight: saving it and loading it into a fresh Prefetcher continues with exactly the next batch.
"""

from __future__ import annotations

import queue
import threading

import torch

from train.sampler import WindowSampler


class Prefetcher:
    def __init__(self, sampler: WindowSampler, device: torch.device, depth: int = 2):
        self.sampler, self.device, self.depth = sampler, torch.device(device), depth
        self.pin = self.device.type == "cuda"
        self._state = sampler.state_dict()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                x, y = self.sampler.next_batch()
                if self.pin:
                    x, y = x.pin_memory(), y.pin_memory()
                item = (x, y, self.sampler.state_dict())
            except Exception as err:  # handed to the trainer's thread, which re-raises it
                item = err
            # Poll so that close() is never stuck behind a full queue.
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch, on `device`; the thread starts on the first call."""
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, Exception):
            self.close()
            raise item
        x, y, self._state = item
        if self.device.type == "cpu":
            return x, y
        return x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin)

    @property
    def epoch(self) -> int:
        """Completed epochs as the trainer has seen them (the sampler may be ahead by the batches in flight)."""
        return int(self._state["epoch"])

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.sampler.load_state_dict(state)
        self._state = self.sampler.state_dict()

    def close(self) -> None:
        """Stop the thread and drop the batches in flight; next() may be called again afterwards."""
        if self._thread is None:
            return
        self._stop.set()
        while True:  # drain so a put() in progress returns
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        self._thread = None
        # The thread drew batches nobody consumed: rewind so a later next() does not skip them.
        self.sampler.load_state_dict(self._state)
