"""Executing one notebook of the chain: papermill in a worker thread, so that Ctrl-C reaches the chain.

papermill's notebook client installs its own SIGINT handler (it only shuts the kernel down, and the
kernel, started in its own session, never sees the terminal's Ctrl-C), so a chain that ran papermill
in its main thread could not be stopped. Here papermill runs in a worker thread (signal handlers can
only be installed in the main thread, so the client installs none), and the main thread waits, follows
the kernel's progress file (lie_helpers.data.progress) and prints it, and on KeyboardInterrupt stops
the kernel: SIGINT to its process group (the running cell raises KeyboardInterrupt; atomic writes leave
no half file), then SIGKILL if it is still there after INTERRUPT_GRACE_SECONDS. The stage then raises
StageInterrupted, saying where it was.

The kernel starts in notebooks/ (papermill's `resources` path, not its `cwd`, which would change the
chain's own working folder), so the notebooks' relative paths mean what they mean in Jupyter.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import papermill
from jupyter_client.manager import AsyncKernelManager

from ..data import progress

INTERRUPT_GRACE_SECONDS = 3.0     # how long the kernel gets to stop after SIGINT before it is killed
KILL_WAIT_SECONDS = 5.0           # how long papermill gets to notice the dead kernel
PRINT_EVERY_SECONDS = 10.0        # progress of one task is printed at most this often


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a stage; `where` says how far it had come."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


class ProgressRelay:
    """Follows a progress file (lie_helpers.data.progress) and prints what the person at the terminal should see:
    every note, and each task's progress at its start, its end and at most every PRINT_EVERY_SECONDS between."""

    def __init__(self, path: Path, log, indent: str = "      "):
        self.path, self.log, self.indent = Path(path), log, indent
        self.offset, self.partial = 0, b""
        self.printed: dict[str, float] = {}
        self.last: dict | None = None      # the latest progress entry: where the stage is

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            self._show(entry)

    def _show(self, entry: dict) -> None:
        if "note" in entry:
            self.log(f"{self.indent}{entry['note']}")
            return
        self.last = entry
        task, now = entry["task"], time.monotonic()
        ends = entry["done"] in (0, entry.get("total"))
        if ends or now - self.printed.get(task, -PRINT_EVERY_SECONDS) >= PRINT_EVERY_SECONDS:
            self.printed[task] = now
            self.log(f"{self.indent}{describe(entry)}")

    def where(self) -> str:
        return f"last progress: {describe(self.last)}" if self.last else "no progress reported yet"


def describe(entry: dict) -> str:
    total = f" of {entry['total']}" if entry.get("total") is not None else ""
    unit = f" {entry['unit']}" if entry.get("unit") else ""
    detail = f" ({entry['detail']})" if entry.get("detail") else ""
    return f"{entry['task']}: {entry['done']}{total}{unit}{detail}"


def execute(source: Path, output: Path, parameters: dict | None, *, cwd: Path, kernel_name: str, progress_bar: bool,
            progress_file: Path, log) -> None:
    """Execute notebook `source` into `output` with papermill (the kernel started in `cwd`), printing its progress;
    raises what papermill raises, or StageInterrupted on Ctrl-C."""
    kernels = []

    class KernelManager(AsyncKernelManager):      # nbclient's default, remembered so that it can be stopped
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            kernels.append(self)

    outcome, finished = {}, threading.Event()    # an Event, not Thread.join: a join cut by Ctrl-C can leave the
                                                   # thread looking stopped while it runs (Python 3.11)

    def work():
        try:
            papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                                       progress_bar=progress_bar, kernel_manager_class=KernelManager,
                                       resources={"metadata": {"path": str(cwd)}})
        except BaseException as err:      # noqa: BLE001 - handed to the main thread
            outcome["error"] = err
        finally:
            finished.set()

    progress_file = Path(progress_file)
    progress_file.unlink(missing_ok=True)
    relay = ProgressRelay(progress_file, log)
    previous = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = str(progress_file)      # the kernel inherits it
    worker = threading.Thread(target=work, name=f"papermill {source.name}", daemon=True)
    try:
        worker.start()
        while not finished.wait(0.25):
            relay.poll()
        relay.poll()
    except KeyboardInterrupt:
        _stop(kernels, finished)
        relay.poll()
        raise StageInterrupted(relay.where()) from None
    finally:
        if previous is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = previous
        progress_file.unlink(missing_ok=True)
    if "error" in outcome:
        raise outcome["error"]


def _stop(kernels: list, finished: threading.Event) -> None:
    """Stop the kernel(s) papermill started: SIGINT to the process group, SIGKILL after INTERRUPT_GRACE_SECONDS (at once
    on a second Ctrl-C), each kernel as soon as it has a process (one that starts meanwhile too), until papermill has
    `finished` or KILL_WAIT_SECONDS more have passed."""
    started = time.monotonic()
    interrupted, force = set(), False
    while not finished.is_set() and time.monotonic() - started < INTERRUPT_GRACE_SECONDS + KILL_WAIT_SECONDS:
        force = force or time.monotonic() - started > INTERRUPT_GRACE_SECONDS
        for group in _groups(kernels):
            if group not in interrupted:
                interrupted.add(group)
                _signal(group, signal.SIGINT)
            elif force:
                _signal(group, signal.SIGKILL)
        try:
            finished.wait(0.1)
        except KeyboardInterrupt:       # a second Ctrl-C: no more grace
            force = True


def _groups(kernels: list) -> list[int]:
    groups = []
    for kernel in kernels:
        provisioner = getattr(kernel, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        if pid:
            groups.append(getattr(provisioner, "pgid", None) or pid)
    return groups


def _signal(group: int, signum) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass
