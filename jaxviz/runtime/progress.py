"""Progress for long work: a tqdm bar (throughput, ETA) on a terminal, plain periodic log lines
when stderr is not a TTY (schedulers, CI logs)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Counts units of work; `update(n)`; `close()`. Use as a context manager."""

    def __init__(self, total: int | None, desc: str, unit: str = "img", interval: float = 10.0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self._t0 = self._last = time.time()
        self._bar = (
            tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
            if sys.stderr.isatty()
            else None
        )

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.time()
        if now - self._last >= self.interval:
            self._last = now
            print(self._line(now), file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        rate = self.n / max(now - self._t0, 1e-9)
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            return (
                f"{self.desc}: {self.n}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s, "
                f"ETA {eta:.0f}s)"
            )
        return f"{self.desc}: {self.n} {self.unit} ({rate:.1f} {self.unit}/s)"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.n:
            print(self._line(time.time()) + " done", file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
