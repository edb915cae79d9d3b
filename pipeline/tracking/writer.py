"""The MLflow writer: the process that talks to the tracking store for a stage.

A stage used to wait for `import mlflow` (1.0-1.6 s on 2 cores) and for opening the store
(0.7 s) before it could start, on top of its own imports (torch: 1-2 s) and data. In a process
of its own, started as the stage starts (`start` in stages/__init__.stage_main), MLflow loads
and opens the store while the stage loads torch and its data. A stage's `run` called from
Python (a test, a notebook) runs the same `Server` in its own process: a writer started then
would compete with the training that follows (OpenMP threads that find a core taken wait).

The stage holds a `Writer`: one pickled message per call over a socket pair, handled in order.
A call whose result the stage needs (the run id, a registered model version, a registry
decision) waits for it; the others return at once. The first error the writer meets ends the
run FAILED and is raised in the stage at its next waiting call or at the end, as a
TrackingError naming MLflow's message.

With PIPELINE_TRACKING_TIMES naming a file, each run appends one JSON line to it: the seconds
the stage waited for the writer, and what the writer spent on each kind of call ("open":
importing MLflow and opening the store). `make bench` reports them.

The writer ignores Ctrl-C and SIGTERM: the stage handles them and says how the run ends. If
the stage dies without a word (kill -9), the writer reads the end of the socket and ends the
run KILLED.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from pipeline import cores
from pipeline.errors import TrackingError
from pipeline.params.training import TrackingParams
from pipeline.shutdown import signals_held

TIMES = "PIPELINE_TRACKING_TIMES"


class Server:
    """Runs a stage's tracking calls against MLflow, in order, and keeps the first error."""

    def __init__(self):
        self.run = None
        self.error: str | None = None
        self.spent: dict[str, float] = {}  # seconds per kind of call

    def handle(self, method: str, payload: bytes) -> tuple[str, object]:
        """('ok', result) or ('error', the first error of this run)."""
        if self.error is not None and method != "end":
            return "error", self.error
        start = time.perf_counter()
        try:
            args, kwargs = pickle.loads(payload)
            own = method in ("open", "start", "run_id", "end")
            return "ok", getattr(self if own else self.run, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - kept, then raised in the stage
            traceback.print_exc()
            self.error = f"{type(err).__name__}: {err}".strip().splitlines()[0]
            return "error", self.error
        finally:
            self.spent[method] = self.spent.get(method, 0.0) + time.perf_counter() - start

    def open(self, tracking: dict, logs_model: bool) -> None:
        """Import MLflow and open the store (the first message, sent as the stage starts);
        for a stage that logs a model, also load what that needs while the stage starts."""
        from pipeline.tracking.store import open_store, warm_model_logging

        open_store(TrackingParams(**tracking))
        if logs_model:
            warm_model_logging()

    def start(self, tracking: dict, **run) -> str:
        from pipeline.tracking.store import StageRun

        self.run = StageRun.start(TrackingParams(**tracking), **run)
        return self.run.run_id

    def run_id(self) -> str:
        return self.run.run_id

    def end(self, status: str) -> dict:
        """End the run (FAILED if a call failed); returns its id, the first error, if any,
        and the seconds spent per kind of call."""
        run_id = None
        if self.run is not None:
            start = time.perf_counter()
            run_id = self.run.run_id
            self.run.end("FAILED" if self.error and status == "FINISHED" else status)
            self.run = None
            self.spent["end"] = time.perf_counter() - start
        return {"run_id": run_id, "error": self.error, "spent": self.spent}


class Writer:
    """The stage's side: `send` returns at once, `call` waits for the result. Messages go
    out from a thread of their own: a large one (the report's HTML) waits there, not in the
    stage, while the writer is still loading MLflow."""

    def __init__(self, conn=None, proc=None, server: Server | None = None):
        self._conn, self._proc, self._server = conn, proc, server
        self.waited = 0.0  # seconds the stage spent waiting for answers
        if conn is not None:
            self._outbox: queue.SimpleQueue = queue.SimpleQueue()
            self._poster = threading.Thread(target=self._post, daemon=True, name="mlflow-post")
            self._poster.start()

    def _post(self) -> None:
        """Send the outbox in order until None, then close the socket (the writer reads its
        end). A writer gone shows in the stage's next answer."""
        while (message := self._outbox.get()) is not None:
            try:
                self._conn.send(message)
            except OSError:
                break
        self._conn.close()

    @classmethod
    def spawn(cls, tracking: TrackingParams, logs_model: bool = False) -> Writer:
        """A writer process that starts opening `tracking`'s store right away (and with
        `logs_model`, loading what logging a model needs)."""
        import subprocess
        from multiprocessing import Pipe

        ours, theirs = Pipe()  # a socket pair
        root = Path(__file__).resolve().parents[2]  # the folder holding this `pipeline`
        env = {
            **os.environ,
            # one thread: the stage keeps its share of the cores
            **dict.fromkeys(cores.THREAD_VARS, "1"),
            cores.SHARED: "",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per model load is noise
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.Popen(
            # -P: this `pipeline` (PYTHONPATH), not one in the working directory
            [sys.executable, "-P", "-m", __name__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        writer = cls(conn=ours, proc=proc)
        writer.send("open", tracking.model_dump(mode="json"), logs_model)
        return writer

    @classmethod
    def in_process(cls) -> Writer:
        return cls(server=Server())

    def send(self, method: str, *args, **kwargs) -> None:
        self._exchange(False, method, args, kwargs)

    def call(self, method: str, *args, **kwargs):
        start = time.perf_counter()
        try:
            status, value = self._exchange(True, method, args, kwargs)
        finally:
            self.waited += time.perf_counter() - start
        if status == "error":
            raise TrackingError(f"MLflow: {value}")
        return value

    def _exchange(self, wait: bool, method: str, args: tuple, kwargs: dict):
        payload = pickle.dumps((args, kwargs))
        if self._server is not None:
            return self._server.handle(method, payload)
        self._outbox.put((wait, method, payload))
        if not wait:
            return None
        # held: a signal while waiting would leave the answer unread for the next call
        with signals_held():
            try:
                return self._conn.recv()
            except (EOFError, OSError):
                raise TrackingError(self._gone()) from None

    def _gone(self) -> str:
        code = self._proc.wait()
        return f"the MLflow writer process ended (exit code {code}) before the run did"

    def close(self, status: str) -> dict:
        """End the run with `status` and stop the writer; returns the run's id and its first
        error (None if none)."""
        try:
            ended = self.call("end", status)
        except TrackingError as err:
            ended = {"run_id": None, "error": str(err), "spent": {}}
        start = time.perf_counter()
        if self._proc is not None:
            self._outbox.put(None)
            self._poster.join()
            self._proc.wait()
        self.waited += time.perf_counter() - start
        if os.environ.get(TIMES):
            spent = {k: round(v, 3) for k, v in ended["spent"].items()}
            line = {"waited_s": round(self.waited, 3), "process": self._proc is not None, **spent}
            with open(os.environ[TIMES], "a") as f:
                f.write(json.dumps(line) + "\n")
        return ended

    def discard(self) -> None:
        """Stop a writer no run was started on (it sees the socket close and exits)."""
        if self._conn is not None:
            self._outbox.put(None)


def main(argv: list[str]) -> int:
    from multiprocessing.connection import Connection

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the stage says how its run ends
    conn = Connection(int(argv[0]))
    server = Server()
    while True:
        try:
            wait, method, payload = conn.recv()
        except EOFError:  # the stage is gone: a run it left open was killed with it
            server.end("KILLED")
            return 0
        answer = server.handle(method, payload)
        if wait:
            conn.send(answer)
        if method == "end":
            return 0


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main(sys.argv[1:]))
