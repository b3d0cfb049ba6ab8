"""A background poller shared by the benchmarks (worker RSS in bench_spark_inject, GPU
utilisation in bench_trainer)."""

from __future__ import annotations

import threading


class PollingThread:
    """Calls :meth:`poll` every ``every_s`` seconds on a daemon thread while inside ``with``.

    ``poll`` returning False stops the polling (e.g. the probe is not available).
    """

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> bool | None:
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            if self.poll() is False:
                return
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
