"""Writing benchmark results into docs/benchmarks.md, one '## ' section per script part."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, section: str) -> None:
    """Rewrite one '## ' section of a markdown file, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach section says the command that regenerates it.\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        rest = "\n" + text[end + 1 :] if end >= 0 else ""  # a blank line before the next section
        text = text[:start] + section.rstrip("\n") + "\n" + rest
    path.write_text(text)


def machine() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and torch's thread count."""
    import platform

    import torch

    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"
