"""Which signal a stop is named after (imgtrain/engine/signals.py). Issue 20: an external `scontrol
requeue` sometimes logged "stopped by SIGUSR1" although SLURM sent TERM: the workers get SLURM's TERM and,
a moment later, the batch script's forwarded USR1; when both are pending together CPython runs their
handlers in signal-number order (USR1 = 10 first), and the first handler used to name the stop."""
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from imgtrain.engine.signals import StopRequest

BOTH = {signal.SIGUSR1, signal.SIGTERM}


def deliver_together(*signums):
    """Send `signums` in this order while both are blocked, then unblock: they are pending at once, as
    during a long native call, and CPython runs their handlers in its own (numeric) order."""
    signal.pthread_sigmask(signal.SIG_BLOCK, BOTH)
    try:
        for s in signums:
            os.kill(os.getpid(), s)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, BOTH)


@pytest.mark.parametrize("order", [(signal.SIGTERM, signal.SIGUSR1), (signal.SIGUSR1, signal.SIGTERM)])
def test_term_names_the_stop_whatever_the_order(order):
    stop = StopRequest().install()
    try:
        deliver_together(*order)
        assert stop and stop.name == "SIGTERM"
    finally:
        stop.uninstall()


def test_term_after_usr1_renames_it_and_usr1_after_term_does_not():
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.name == "SIGUSR1"  # the time-limit warning alone stays USR1
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.name == "SIGTERM"
    finally:
        stop.uninstall()


def in_a_process(*lines: str) -> list[str]:
    """Run these lines in a fresh Python process (they replace signal handlers) and return its printed words."""
    code = "\n".join(("import os, signal, sys", "sys.path.insert(0, sys.argv[1])",
                       "from imgtrain.engine.signals import StopRequest, catch_early, early_signal", *lines))
    return subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60,
                          check=True).stdout.split()


def test_a_signal_during_start_up_is_named_the_same_way():
    """catch_early() (jobs/train.py, before torch is imported): a separate process, it replaces handlers."""
    assert in_a_process("catch_early()",
                        "os.kill(os.getpid(), signal.SIGUSR1)",
                        "os.kill(os.getpid(), signal.SIGTERM)",
                        "print(StopRequest().install().name)") == ["SIGTERM"]


def test_a_worker_keeps_signals_between_runs_and_those_a_run_saw_too_late():
    """catch_early(keep=True) (an ASHA worker: one trainer after another). A signal the trainer's StopRequest
    took after its last step is handed back at uninstall; one between two runs is recorded, not fatal; the
    next run's StopRequest starts with it. Without keep, a TERM after uninstall would kill the process."""
    assert in_a_process("catch_early(keep=True)",
                        "stop = StopRequest().install()",
                        "os.kill(os.getpid(), signal.SIGUSR1)",
                        "stop.uninstall()",
                        "print(early_signal() == signal.SIGUSR1)",
                        "os.kill(os.getpid(), signal.SIGTERM)",
                        "print(early_signal() == signal.SIGTERM)",
                        "print(StopRequest().install().name, early_signal())") == ["True", "True", "SIGTERM", "None"]
