"""Who gets the CPU first: the processes that answer users, then media work.

Ray starts every worker at nice 15 unless the worker's environment says otherwise
(``RAY_worker_niceness``, which Ray itself sets to 0 for its job supervisors). Left so, the
API replica, the status actor, the coordinator and the prober compete on equal terms with
whatever else runs at 15: concat actors, worker start-ups (~2 CPU-s of imports each). With
10 exports running on 2 cores, status polls then stalled for 150-600 ms at a time
(``tests/bench/measure_status.py``: p99 260-605 ms; the replica set to nice 0 by hand: 17 ms).

So:

- the control plane (``CONTROL_PLANE_ENV``: API replica, status actor, coordinator,
  prober) runs at nice 0;
- every task and actor the control plane starts gets ``WORKER_ENV``, Ray's default, said
  out loud: runtime environments are inherited, and a piece must not inherit nice 0;
- media work runs in a thread at ``BATCH_NICE`` (``at_batch_priority``; x264/x265 and
  decoder threads inherit it): encoding, audio, the concat actor's assembly and the
  coordinator's planning of a job it starts.

Neither needs a privilege: a control-plane worker is started at 0 rather than lowered to
it, and a thread may always lower its own priority to 19.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

#: Ray's environment variable for the niceness a worker gives itself at start.
NICENESS_VAR = "RAY_worker_niceness"
#: Ray's default worker niceness.
WORKER_NICE = 15
#: Nice value of media work (19 is the lowest priority).
BATCH_NICE = 19

#: Runtime environment of the processes that answer users.
CONTROL_PLANE_ENV: dict[str, Any] = {"env_vars": {NICENESS_VAR: "0"}}
#: Runtime environment of pieces, audio, probes and concat actors.
WORKER_ENV: dict[str, Any] = {"env_vars": {NICENESS_VAR: str(WORKER_NICE)}}

T = TypeVar("T")


def at_batch_priority(work: Callable[[], T]) -> T:
    """``work()`` in a thread at ``BATCH_NICE``; its result, or its exception re-raised.

    A thread, so the worker's own priority never changes: lowering it cannot be undone
    without privileges, and a worker later running a preflight probe must not be slow.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        with contextlib.suppress(OSError):  # not permitted here: normal priority, still works
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BATCH_NICE)
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="cutfarm-batch", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result
