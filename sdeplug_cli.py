"""The ``sdeplug`` console command's entry point, kept outside the package so that Ctrl-C at any
moment, even while torch is still being imported, ends in one line and exit status 130."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

#: The exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130
#: The exit status when the reader of the output closed the pipe (128 + SIGPIPE).
BROKEN_PIPE = 141


@contextlib.contextmanager
def _interrupts_held() -> Iterator[list[int]]:
    """Hold Ctrl-C back for the block (its signals are listed, not raised): an import cut short
    leaves half-made modules behind, which fail later in ways that hide the interrupt."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; Ctrl-C anywhere is one line on stderr and INTERRUPTED."""
    try:
        with _interrupts_held() as held:  # start-up: torch, sdeplug and every plugin are imported
            from sdeplug.app.cli import main as run
            from sdeplug.registry import get_registry

            get_registry()
        if held:
            raise KeyboardInterrupt
        return run(argv)
    except KeyboardInterrupt:
        print("sdeplug: interrupted (Ctrl-C); files are written whole or not at all", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (`sdeplug plugins | head -2`): stop quietly, as
        # Unix tools do; stdout goes to /dev/null so that Python's own flush at exit says nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE


def console() -> NoReturn:
    """The process entry point. An interrupted run leaves at once with INTERRUPTED: the
    interpreter's own shutdown would turn a Ctrl-C that struck inside an import into death by
    SIGINT, which callers see as another status."""
    code = main()
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
