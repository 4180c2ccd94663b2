"""SIGTERM as Ctrl-C for the long commands (ingest, one-process pretraining): raised in the block as
Terminated, a KeyboardInterrupt, and the previous handler back after it."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from shards.stop_signal import Terminated, sigterm_as_interrupt


def test_sigterm_in_the_block_raises_terminated_and_the_handler_is_put_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as raised:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler
    assert isinstance(raised.value, KeyboardInterrupt)  # every Ctrl-C path takes it
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_the_block_runs_as_it_was():
    seen = []

    def run():
        with sigterm_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]
