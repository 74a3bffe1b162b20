"""One worker thread owns the model: concurrent searches are embedded together, one model call a batch.

A request puts its prepared image on a queue and waits on a future. The worker takes the
first waiting request, then whatever else arrives within `batch_wait_seconds` (up to
`max_batch`), embeds them in one call with the index's test-time augmentation
(`phases.views.embed_views`), searches the index for all of them (`search_catalog`: each
query's results depend on it alone, so batching changes no answer) and answers each future.
Under load the wait costs nothing: while the model runs, the next batch is queueing.
"""

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from pipeline.catalog.index import CatalogIndex, search_catalog


@dataclass
class Search:
    """What a request asks the worker: one prepared image (float32 [size, size, 3] in [0, 255])
    and how many results; `answer` gets (rows [top], similarities [top]) or the worker's error."""

    image: np.ndarray
    top: int
    answer: Future


class SearchBatcher:
    """The model's owner. `submit` from any thread; `start` once, `stop` at shutdown."""

    def __init__(self, index: CatalogIndex, model, max_batch: int, batch_wait_seconds: float):
        self.index = index
        self.model = model
        self.max_batch = max_batch
        self.batch_wait_seconds = batch_wait_seconds
        self.requests = 0  # searches answered by the model
        self.model_calls = 0  # batches embedded
        self.largest_batch = 0
        self._queue: queue.Queue[Search | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="pvs-serve-model", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the batch in progress; searches still queued are answered with an error."""
        self._queue.put(None)
        self._worker.join(timeout)
        while True:
            try:
                search = self._queue.get_nowait()
            except queue.Empty:
                return
            if search is not None:
                search.answer.set_exception(RuntimeError("the service is stopping"))

    def submit(self, image: np.ndarray, top: int) -> Future:
        search = Search(image, top, Future())
        self._queue.put(search)
        return search.answer

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings [n, dim] of prepared images [n, size, size, 3]; called by the worker only
        (and at start, before it runs, to warm the model)."""
        from phases.views import embed_views

        # Through the traced predict step, unlike `pvs search`'s eager call: EfficientNet-Lite0
        # at 96 px on 2 cores embeds one image in ~25 ms traced, ~240 ms eager. Keras traces it
        # again for a second batch size, then with the batch dimension left open: `warm`.
        return embed_views(self.model, images, self.index.test_time_augmentation)[0]

    def warm(self, image: np.ndarray) -> None:
        """Trace the model for any batch size (batches of 1 then 2 images; ~3 s) before requests come."""
        for count in (1, 2):
            self.embed(np.stack([image] * count))

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._answer(batch)

    def _next_batch(self) -> list[Search] | None:
        """The first waiting search and those arriving within the wait, up to max_batch; None: stop."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_seconds
        while len(batch) < self.max_batch:
            try:
                search = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if search is None:
                self._queue.put(None)  # answer this batch, then stop
                break
            batch.append(search)
        return batch

    def _answer(self, batch: list[Search]) -> None:
        try:
            vectors = self.embed(np.stack([search.image for search in batch]))
            rows, similarities = search_catalog(self.index, vectors, max(search.top for search in batch))
        except Exception as error:  # a bug or an exhausted machine: every waiting request hears of it
            for search in batch:
                search.answer.set_exception(error)
            return
        self.model_calls += 1
        self.requests += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for search, found, scores in zip(batch, rows, similarities):
            search.answer.set_result((found[: search.top], scores[: search.top]))
