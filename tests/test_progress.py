"""Progress bars: shown on a terminal, off when a caller asked for none, its callees' bars included."""

from __future__ import annotations

import io
import sys

import pytest

from neuroomics_bridge.progress import progress, silenced


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_silenced_block_keeps_the_bars_of_what_it_calls_off_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())

    def shown(**options) -> bool:
        bar = progress([1], desc="work", **options)
        on = not bar.disable
        bar.close()
        return on

    assert shown()  # a terminal: on
    with silenced():
        assert not shown()
        assert shown(show=True)  # asked for by name
        with silenced(False):
            assert not shown()  # an inner block does not undo the outer one
    with silenced(False):
        assert shown()
    assert shown()
