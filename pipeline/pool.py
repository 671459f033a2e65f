"""Phase 1's worker processes: run pipeline/chunks.py's `run_chunk` over the plan on all cores and
hand back each chunk's summary as it finishes.

What this file exists to get right is stopping. A run must end promptly, with the error that
stopped it and without leftover processes, whether a worker dies (an OOM kill), the consumer stops
(a bad file), or the user presses Ctrl-C, once or several times:

* concurrent.futures, not multiprocessing.Pool: a Pool silently replaces a worker that dies and then
  waits forever for the chunk it held; an executor reports a broken pool.
* On any stop the workers are killed at once (their unfinished chunks are redone by the rerun; the
  finished ones are on disk). Waiting for them instead, or cancelling futures while the executor's
  manager thread is marking them broken, can leave that thread dead or the workers waiting for it
  forever (CPython 3.11's executor), and a Ctrl-C during its shutdown join has the same effect.
* Workers end themselves when the parent is gone (a `kill -9`, which no handler sees): each watches
  a pipe whose only writing end the parent holds, and exits at its EOF. Without that they waited
  forever for work, holding memory, since each also holds the writing end of its own task queue.
* Workers ignore SIGINT from birth (the forkserver is started with SIGINT ignored, and the pool's
  initializer ignores it again), so a terminal's Ctrl-C reaches the parent alone instead of
  printing a traceback per worker. The forkserver is one per process: children that the same
  process later starts through it ignore SIGINT too, and a Ctrl-C in the ~10 ms of its start is
  lost. While the executor starts or joins its workers, a Ctrl-C is held until it is done.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection

from pipeline.assemble import PrepareError
from pipeline.chunks import ChunkDone, Settings, init_worker, run_chunk
from pipeline.sources import Chunk


def chunk_results(todo: list[tuple[int, Chunk, str]], settings: Settings, workers: int) -> Iterator[ChunkDone]:
    """Run phase 1 on `todo`, yielding each chunk's summary as it finishes (any order)."""
    if workers <= 1 or len(todo) <= 1:
        init_worker(settings)
        yield from map(run_chunk, todo)
        return
    pool, n_workers = None, min(workers, len(todo))
    context = _context()
    alive_r, alive_w = context.Pipe(duplex=False)
    try:
        with _sigint_deferred():  # the first submits start the workers and the executor's thread
            pool = ProcessPoolExecutor(n_workers, mp_context=context, initializer=_init_worker,
                                       initargs=(settings, alive_r))
            futures = [pool.submit(run_chunk, job) for job in todo[:n_workers]]
        futures += [pool.submit(run_chunk, job) for job in todo[n_workers:]]
        for n_done, future in enumerate(as_completed(futures)):
            try:
                yield future.result()
            except BrokenProcessPool as err:
                raise PrepareError(f"a worker process died (killed, or out of memory?) with {len(todo) - n_done} "
                                   "chunks unfinished; finished chunks are kept: rerun to resume") from err
    except BaseException:  # an error, Ctrl-C, or the consumer stopped early
        if pool is not None:
            _kill_workers(pool)
        raise
    finally:
        if pool is not None:
            with _sigint_deferred():
                pool.shutdown(wait=True)
        alive_r.close()
        alive_w.close()


def _init_worker(settings: Settings, alive: Connection) -> None:
    """The pool's initializer: exit when the parent is gone (see the module docstring), then load."""

    def exit_when_parent_is_gone() -> None:
        with contextlib.suppress(EOFError, OSError):
            alive.recv()  # nothing is ever sent: this returns only at EOF, when the parent's end closes
        os._exit(1)

    threading.Thread(target=exit_when_parent_is_gone, daemon=True).start()
    init_worker(settings)


@contextlib.contextmanager
def _sigint_handler(handler: Callable | int) -> Iterator[None]:
    """SIGINT handled by `handler` inside the block (main thread only: signal handlers belong to it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it. A Ctrl-C inside the executor while it
    starts a worker or its thread, or joins them, leaves a worker it never recorded (which outlives
    us, holding the forkserver and our stderr) or a half-started thread."""
    caught: list[int] = []
    with _sigint_handler(lambda signum, _frame: caught.append(signum)):
        yield
    if caught:
        raise KeyboardInterrupt


def _context() -> mp.context.BaseContext:
    """forkserver where there is one (workers never inherit the parent's threads or open files, unlike
    fork), started with SIGINT ignored so that every worker forked from it ignores SIGINT too."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    from multiprocessing import forkserver

    with _sigint_handler(signal.SIG_IGN):
        forkserver.ensure_running()
    return mp.get_context("forkserver")


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # private, there since 3.2
        process.kill()
