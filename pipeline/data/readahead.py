"""Producing on a thread while the caller consumes: the corpus reader and the tokenizer overlap.

    for batch in read_ahead(batches_of(corpus)):   # the generator runs on its own thread
        tokenizer.encode_batch_fast(batch)
"""
from __future__ import annotations

import queue
import threading
from contextlib import closing
from typing import Generator, Iterator, TypeVar

T = TypeVar("T")


def read_ahead(items: Generator[T, None, None], depth: int = 2) -> Iterator[T]:
    """Yield from `items`, which a thread produces up to `depth` ahead. Reading the corpus is
    Python and holds the GIL; the tokenizer releases it while it works, so the two overlap."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with closing(items):   # closes the corpus files when the consumer stops early
                for item in items:
                    if not _put(slots, (True, item), stop):
                        return
            _put(slots, (False, None), stop)
        except BaseException as exc:   # handed to the consumer, which raises it
            _put(slots, (False, exc), stop)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            more, item = slots.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _put(slots: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            slots.put(entry, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False
