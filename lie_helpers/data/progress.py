"""Progress of long work, for a terminal that is not the one the work runs in.

The notebook chain (lie_helpers.pipeline.chain) runs each notebook in a kernel whose output only the
executed notebook sees. So long loops (drawing faces, decoding images, training steps, checkpoints
analysed, swaps, study runs) also `report` here: when the environment variable LIE_HELPERS_PROGRESS
names a file, each report appends one JSON line to it, at most one a second per task (and always the
first and the last); `note` appends a message (e.g. "Resuming from step 300"). The chain follows the
file and prints it on its terminal. Without the variable, nothing happens; a report never raises.
"""
from __future__ import annotations

import json
import os
import time

ENV = "LIE_HELPERS_PROGRESS"
EVERY_SECONDS = 1.0
_last: dict[str, float] = {}


def _append(entry: dict) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = (json.dumps({"time": round(time.time(), 3), "pid": os.getpid(), **entry}) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass                      # progress is a courtesy: it never stops the work


def report(task: str, done: int, total: int | None = None, detail: str = "", unit: str = "") -> None:
    """`done` of `total` `unit`s of `task` (e.g. "training ci", 250, 1000, "loss 0.41", "steps")."""
    if not os.environ.get(ENV):
        return
    now = time.monotonic()
    if done not in (0, total) and now - _last.get(task, -EVERY_SECONDS) < EVERY_SECONDS:
        return
    _last[task] = now
    _append({"task": task, "done": int(done), "total": None if total is None else int(total), "detail": detail,
             "unit": unit})


def note(message: str) -> None:
    """A line the person at the terminal should see (e.g. that a run resumes)."""
    _append({"note": message})
