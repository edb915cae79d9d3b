"""Progress of a training loop: a tqdm bar on a terminal; elsewhere (under `dvc repro`, in a
log file or CI) one short line every PIPELINE_PROGRESS_SECONDS seconds (default 10, 0: every
epoch) and one for the last epoch, since a bar redrawn in a pipe is noise or nothing."""

from __future__ import annotations

import os
import sys
import time

SECONDS = "PIPELINE_PROGRESS_SECONDS"


class EpochProgress:
    def __init__(self, desc: str, done: int, total: int, metric: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.desc, self.total, self.metric = desc, total, metric
        self.start_epoch, self.start = done, time.perf_counter()
        self.every = float(os.environ.get(SECONDS) or 10)
        self.last = self.start
        self.enabled = enabled
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = None
        if enabled and not self.lines:
            self.bar = tqdm(desc=desc, unit="epoch", initial=done, total=total)

    def update(self, epoch: int, row: dict, last: bool) -> None:
        """After epoch `epoch` (1-based) with its history `row`; `last`: training ends now."""
        loss, score = row["train/loss"], row[self.metric]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({"loss": f"{loss:.4f}", self.metric: f"{score:.4f}"})
            if last:
                self.bar.close()
            return
        now = time.perf_counter()
        if not self.lines or not (last or now - self.last >= self.every):
            return
        self.last = now
        elapsed = now - self.start
        per_epoch = elapsed / max(epoch - self.start_epoch, 1)
        eta = "done" if last else f"ETA {per_epoch * (self.total - epoch):.0f} s"
        print(
            f"{self.desc}: epoch {epoch}/{self.total}, loss {loss:.4f}, {self.metric} "
            f"{score:.4f}, {elapsed:.0f} s, {eta}",
            flush=True,
        )

    def finish(self, summary: str) -> None:
        """The closing line, on a terminal and off it: how training ended and what it kept."""
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            print(
                f"{self.desc}: {summary}", file=sys.stderr if self.bar else sys.stdout, flush=True
            )


class CountProgress:
    """Progress of work counted in items (images decoded, rows written), as for epochs: a
    bar on a terminal, else a line every few seconds once the work has lasted that long."""

    def __init__(self, desc: str, total: int, unit: str):
        from tqdm.auto import tqdm

        self.desc, self.total, self.unit = desc, total, unit
        self.every = float(os.environ.get(SECONDS) or 10)
        self.start = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(desc=desc, unit=unit, total=total)
        self.done = 0

    def update(self, done: int) -> None:
        """`done` items of `total` are done."""
        if self.bar is not None:
            self.bar.update(done - self.done)
            if done >= self.total:
                self.bar.close()
        else:
            now = time.perf_counter()
            if now - self.last >= self.every or (done >= self.total and self.last > self.start):
                self.last = now
                print(f"{self.desc}: {done}/{self.total} {self.unit}", flush=True)
        self.done = done
