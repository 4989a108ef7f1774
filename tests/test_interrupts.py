"""SIGTERM inside ``sigterm_unwinds``: raised as SystemExit(143), and not lost when the handler
happens to run inside a finalizer, where Python swallows exceptions."""

from __future__ import annotations

import os
import signal

import pytest

from robopolicy.interrupts import raise_if_terminated, sigterm_unwinds


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecode boundaries where the handler runs
        pass


def test_sigterm_in_the_block_raises_system_exit_143() -> None:
    with pytest.raises(SystemExit) as exit_info, sigterm_unwinds():
        _sigterm_self()
    assert exit_info.value.code == 143


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point
def test_a_sigterm_swallowed_by_a_finalizer_still_ends_the_loop() -> None:
    class SignalledWhileFinalised:
        def __del__(self) -> None:
            _sigterm_self()  # the handler's SystemExit is "ignored" here

    finished = []
    with pytest.raises(SystemExit) as exit_info, sigterm_unwinds():
        for unit in range(3):
            raise_if_terminated()
            SignalledWhileFinalised()  # dropped at once
            finished.append(unit)
    assert exit_info.value.code == 143
    assert finished == [0]  # the lost signal ended the loop at the next unit of work


def test_a_new_block_starts_without_an_earlier_sigterm() -> None:
    with pytest.raises(SystemExit), sigterm_unwinds():
        _sigterm_self()
    with sigterm_unwinds():
        raise_if_terminated()  # nothing pending
