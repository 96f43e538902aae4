"""What the sim and Touch evaluation nodes share: the loop on its own thread, its exit code, Ctrl-C.

The loop runs beside the executor (which keeps serving the node's callbacks) and shuts the context
down when it ends, which ends the node. Stopped from outside (Ctrl-C, ``ros2 launch`` shutting the
graph down), whatever the loop was doing fails on the dead context: that is part of stopping, not an
error, and the node says in one line where the evaluation stands and exits 0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from gf_eval.evaluation import Evaluation


class EvaluationLoop:
    """Mixin for an rclpy Node with an ``evaluation`` and a ``_run()`` returning the exit code."""

    evaluation: Evaluation
    _run: Callable[[], int]

    def start_loop(self, thread_name: str) -> None:
        self.finished = threading.Event()  # set when the loop ended on its own (done, refused or failed)
        self.exit_code = 1
        self._loop_thread = threading.Thread(target=self._run_loop, name=thread_name, daemon=True)
        self._loop_thread.start()

    def _run_loop(self) -> None:
        code = None
        try:
            code = self._run()
        except Exception as exc:  # noqa: BLE001 - reported in one line; the node exits non-zero
            if self.context.ok():
                self.get_logger().fatal(f"{self._loop_thread.name} failed: {type(exc).__name__}: {exc}")
                code = 2
        finally:
            self.evaluation.close()
            if code is not None and self.context.ok():
                self.exit_code = code
                self.finished.set()
            self.context.try_shutdown()

    def stopped_from_outside(self) -> bool:
        """Call from ``close()``: True (and the one-line summary printed) if the loop did not end on its own."""
        if self.finished.is_set():
            return False
        self.exit_code = 0
        if not self.evaluation.complete:
            print(self.evaluation.interrupted_line(), flush=True)  # the context, and /rosout with it, is gone
        return True
