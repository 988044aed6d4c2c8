"""From a training request to an exit status: what ``esper train`` does once its flags parse.

``launch(request)`` joins the ranks when torchrun started this process, agrees the run id and
run directory with rank 0, checks devices and output paths, opens the run's ``RunSession`` (and
refuses to train on every rank when one rank cannot), trains (on a background thread when a
foreground UI owns the main thread), applies the lost-rank policy, closes the telemetry after
the final scrape, and returns the verdict:

==========  ============================================================================
exit        meaning
==========  ============================================================================
0           the run completed and every event was kept
1           training failed (a rank that stopped because another was lost failed too)
2           bad usage: a device, a path or a checkpoint that cannot be used
3           the run completed but telemetry was lost or broke the payload catalogue
130, 143    interrupted by Ctrl-C, or by SIGTERM (128 + the signal)
==========  ============================================================================

The command line only parses flags into the request and prints what it is handed.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from esper.leyline import BackendConfigError, RankInfo, TelemetryLevel, UsageError
from esper.nissa import NissaHub, install_signal_handlers, start_daemon_thread
from esper.nissa.backends import BackendSpec, free_run_dir_name
from esper.runs import distributed
from esper.runs.config import RunConfig, StopRequest
from esper.runs.distributed import Distributed
from esper.runs.lifecycle import RunResult, describe_stop, run_host_only, run_training, stop_signal
from esper.runs.report import REPORT_FILE, make_report
from esper.runs.session import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    RunSession,
)


class ProgressSink(Protocol):
    def __call__(self, done: int, total: int, status: str) -> None: ...

    def close(self) -> None: ...


class ForegroundUI(Protocol):
    """A UI that must own the main thread (Textual) while training runs on another."""

    def attach(self, hub: NissaHub) -> None:
        """Subscribe to the run's telemetry (before training starts)."""

    def run(self, stop: Callable[[str], None]) -> BaseException | None:
        """Run until the user closes it; ``stop(reason)`` asks training to stop. Returns the
        interrupt (Ctrl-C, a signal) that closed it, or None when the user quit."""


REPORT_PEER_WAIT_SECONDS = 30.0
"""How long rank 0 waits for this node's other ranks to exit before it writes the report."""


def _print(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class TrainRequest:
    """What the command line asks of a run."""

    config: RunConfig
    """The run; its device and rank are filled in for this process by ``launch``."""
    spec: Callable[[str, RankInfo, str | None], BackendSpec]
    """The backends for (run id, this rank, the run directory's name rank 0 chose)."""
    device: str | None = None
    """The ``--device`` asked for (None: the CPU, or cuda:LOCAL_RANK under torchrun)."""
    collective_timeout: float = distributed.DEFAULT_COLLECTIVE_TIMEOUT
    """Under torchrun: how long a collective waits for the other ranks before the run fails."""
    telemetry_dir: Path | None = None
    preflight: Callable[[], None] = lambda: None
    """Checks every output path before any work (raises UsageError naming the flag)."""
    linger_seconds: float = 0.0
    baseline: bool = False
    ui: ForegroundUI | None = None
    progress: Callable[[], ProgressSink] | None = None
    report: Callable[[RunResult, list[float] | None], None] = lambda _r, _b: None
    """Prints the training summary (rank 0 only)."""
    write_report: bool = True
    """Rank 0 writes ``report.html`` into its run directory at the end (``--no-report``)."""
    say: Callable[[str], None] = field(default=_print)
    warn: Callable[[str], None] = field(default=_warn)
    prog: str = "esper train"


def launch(request: TrainRequest) -> int:
    """Run ``request`` to its end and return the exit status (see the module docstring)."""
    try:
        ranks = distributed.start(request.device, request.collective_timeout)
    except UsageError as exc:
        request.warn(f"{request.prog}: error: {exc}")
        return EXIT_USAGE
    job = _Launch(request, ranks)
    try:
        code = job.run()
    finally:
        if ranks is not None:
            ranks.close()
    job.write_report()
    return code


class _Launch:
    def __init__(self, request: TrainRequest, ranks: Distributed | None) -> None:
        self.request = request
        self.ranks = ranks
        base = request.config
        if ranks is None:
            self.config = replace(base, device=request.device or "cpu")
        else:
            self.config = replace(base, device=ranks.device, ranks=ranks.info)
        self.started = threading.Event()
        """Set once TRAINING_STARTED is in the record."""
        self.run_dir: Path | None = None
        """This process's run directory, once its telemetry is open."""

    @property
    def who(self) -> str:
        """``rank 1: `` in a multi-rank run (every rank writes to the same terminal)."""
        c = self.config
        return f"rank {c.ranks.rank}: " if c.ranks.distributed else ""

    def error(self, message: str) -> None:
        self.request.warn(f"{self.request.prog}: error: {self.who}{message}")

    def note(self, message: str) -> None:
        self.request.warn(f"{self.request.prog}: {self.who}{message}")

    def run(self) -> int:
        try:
            session = self.open_session()
        except (KeyboardInterrupt, SystemExit) as exc:  # a stop signal while it opened
            return self.stopped(exc)
        if session is None:
            return EXIT_USAGE
        self.run_dir = session.setup.run_dir
        session.warn_if_telemetry_is_off(self.config.telemetry)
        c = self.config
        if c.mode == "ppo" and c.escalate_epochs and c.telemetry.level < TelemetryLevel.NORMAL:
            self.note(f"telemetry level {c.telemetry.level.name.lower()}: anomalies will not "
                      "raise any env to debug (--escalate-epochs works at normal)")  # fmt: skip
        code = EXIT_FAILURE
        try:
            result = self.train(session.hub)
            baseline = run_host_only(self.config) if self.request.baseline else None
            if self.config.ranks.rank == 0:
                self.request.report(result, baseline)
            code = EXIT_OK
        except UsageError as exc:
            self.error(str(exc))
            code = EXIT_USAGE
        except BaseException as exc:  # noqa: BLE001 - reported and recorded; see stopped()
            code = self.stopped(exc)
        finally:
            session.close(
                linger_seconds=self.request.linger_seconds,
                interrupted=code >= EXIT_INTERRUPTED,
                account=self.started.is_set(),
            )
            summary = session.summary()
            code = summary.exit_status(code)
            # The record is closed and the verdict made: a stop signal now changes neither.
            with contextlib.suppress(KeyboardInterrupt, SystemExit):
                self.request.say(summary.text)
        return code

    def write_report(self) -> None:
        """Rank 0 writes the run's report into its run directory, once the record is closed
        (in a multi-rank run, once this node's other ranks have exited). Never changes the
        exit status: a failure, or Ctrl-C while it writes, is a warning, and no partial file
        is left."""
        if not self.request.write_report or self.run_dir is None or not self.started.is_set():
            return
        if self.config.ranks.rank != 0:
            return
        note = ""
        try:
            if self.ranks is not None:
                running = self.ranks.wait_for_local_peers(REPORT_PEER_WAIT_SECONDS)
                if running:
                    note = (f" (ranks {', '.join(map(str, running))} were still running: "
                            f"make it again with esper report {self.run_dir})")  # fmt: skip
            result = make_report(self.run_dir, self.run_dir / REPORT_FILE)
        except (KeyboardInterrupt, SystemExit):
            self.request.warn(f"{self.request.prog}: report not written (interrupted); make it "
                              f"with: esper report {self.run_dir}")  # fmt: skip
            return
        except Exception as exc:  # noqa: BLE001 - the run's verdict is made; never fail it here
            self.request.warn(f"{self.request.prog}: warning: report not written: {exc}; make "
                              f"it with: esper report {self.run_dir}")  # fmt: skip
            return
        where = ""
        if self.ranks is not None and len({p.node_rank for p in self.ranks.peers}) > 1:
            where = " (this node's ranks; give every node's run directory to esper report)"
        self.request.say(f"  run report: {result.path} ({result.bytes / 1024:.0f} KiB, "
                         f"{result.seconds:.1f} s){where}{note}")  # fmt: skip

    def open_session(self) -> RunSession | None:
        """Agree the run with rank 0, check devices and paths, and open the telemetry; None
        (after saying why) when this rank, or under torchrun any rank, cannot."""
        config, ranks = self.config, self.ranks
        run_dir: str | None = None
        if ranks is not None:
            tdir = self.request.telemetry_dir
            mine = free_run_dir_name(tdir) if ranks.info.rank == 0 and tdir else None
            config.run_id, run_dir = ranks.agree((config.run_id, mine))
            ranks.join_run(config.run_id)
            ranks.watch_stalls(self.note)
        failure: str | None = None
        session: RunSession | None = None
        try:
            for device in config.devices:
                distributed.check_device(device)
            self.request.preflight()
            spec = self.request.spec(config.run_id, config.ranks, run_dir)
            session = RunSession(spec, run_id=config.run_id, ranks=config.ranks)
        except (UsageError, BackendConfigError) as exc:
            failure = str(exc)
            self.error(failure)
        if ranks is not None and not ranks.all_ok(failure is None):
            if session is not None:
                self.error("another rank could not start (its error says why)")
                session.close()
            return None
        return session

    def train(self, hub: NissaHub) -> RunResult:
        ui = self.request.ui
        if ui is not None:
            return self.train_beside(ui, hub)
        lead = self.config.ranks.rank == 0
        bar = self.request.progress() if lead and self.request.progress else None
        try:
            return run_training(
                self.config, hub=hub, progress=bar, ranks=self.ranks, on_started=self.started.set
            )
        finally:
            if bar is not None:
                bar.close()

    def train_beside(self, ui: ForegroundUI, hub: NissaHub) -> RunResult:
        """Train on a worker thread while ``ui`` runs on the main one. Ctrl-C in the UI, or
        SIGTERM, stops training at the next epoch boundary (the run ends ``interrupted``);
        quitting the UI lets training finish, and Ctrl-C or SIGTERM then stop it the same way.
        The process never exits while training still runs."""
        ui.attach(hub)
        stop = self.config.stop = StopRequest()
        outcome: dict[str, Any] = {}
        # An Event, not Thread.join: on Python 3.11 a join interrupted by a signal marks the
        # thread stopped while it still runs, and exiting then aborts inside torch.
        finished = threading.Event()

        def work() -> None:
            try:
                outcome["result"] = run_training(self.config, hub=hub, on_started=self.started.set)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                outcome["error"] = exc
            finally:
                finished.set()

        # The worker must not take Ctrl-C or SIGTERM: the main thread turns them into `stop`.
        start_daemon_thread(work, "esper-training")
        stopped_by: BaseException | None = None
        try:
            try:
                stopped_by = ui.run(stop.request)
            finally:
                install_signal_handlers()  # the UI's event loop took SIGTERM while it ran
            if stopped_by is None and not finished.is_set():
                self.request.say("UI closed; training continues (Ctrl-C stops it)...")
        except (KeyboardInterrupt, SystemExit) as exc:
            stop.request(describe_stop(exc)[1])
            stopped_by = exc
        except Exception as exc:  # noqa: BLE001 - a broken UI must not end the run under it
            self.request.warn(f"{self.request.prog}: the UI failed ({type(exc).__name__}: "
                              f"{exc}); training continues (Ctrl-C stops it)")  # fmt: skip
        while not finished.is_set():
            try:
                finished.wait()
            except (KeyboardInterrupt, SystemExit) as exc:
                stop.request(describe_stop(exc)[1])
                stopped_by = stopped_by or exc
                self.request.warn("stopping at the next epoch boundary...")
        if stopped_by is not None:
            raise stopped_by
        if "error" in outcome:
            raise outcome["error"]
        result: RunResult = outcome["result"]
        return result

    def stopped(self, exc: BaseException) -> int:
        """Say why the run stopped (recorded so by the lifecycle) and choose the exit status:
        a rank that stopped because another rank was lost failed (1), whatever stopped it."""
        ranks, who = self.ranks, self.who

        def recorded(status: str) -> str:
            if self.started.is_set():
                return f"the run is recorded as {status}"
            return "it stopped before training started, so the record holds no run"

        if ranks is not None and ranks.lost:
            _status, why = describe_stop(exc)
            lost = ranks.describe(ranks.lost)
            self.request.warn(f"\n{self.request.prog}: {who}training failed: lost {lost} "
                              f"({why}); {recorded('failed')}")  # fmt: skip
            return EXIT_FAILURE
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            _status, why = describe_stop(exc)
            self.request.warn(f"\n{self.request.prog}: {who}interrupted ({why}); "
                              f"{recorded('interrupted')}")  # fmt: skip
            signum = stop_signal(exc)
            return EXIT_INTERRUPTED if signum is None else 128 + signum
        if not isinstance(exc, Exception):
            raise exc
        self.request.warn("".join(traceback.format_exception(exc)).rstrip())
        self.request.warn(f"{self.request.prog}: {who}training failed: "
                          f"{type(exc).__name__}: {exc}")  # fmt: skip
        return EXIT_FAILURE
