"""The ``sdeplug`` console command's entry point, kept outside the package so that Ctrl-C at any
moment, even while torch is still being imported, ends in one line and exit status 130."""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: The exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from sdeplug.app.cli import main as run

        return run(argv)
    except KeyboardInterrupt:
        print("sdeplug: interrupted (Ctrl-C); files are written whole or not at all", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
