"""The docs' Python blocks as tests: README.md and docs/*.md are collected by
pytest-markdown-docs's collector (its own `--markdown-docs` flag would also import every
module under tests/ to search its docstrings), and each block runs from the repository's root."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parent
#: The pages whose blocks run; the example plugin's folder is a package with tests of its own.
DOC_PAGES = {ROOT / "README.md", *(ROOT / "docs").glob("*.md")}
collect_ignore = ["docs/examples", "docs/gen_reference.py"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path in DOC_PAGES:
        from pytest_markdown_docs.plugin import MarkdownTextFile

        return MarkdownTextFile.from_parent(parent, path=file_path)
    return None


@pytest.fixture(autouse=True)
def _docs_run_from_the_root(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("markdown-docs"):
        monkeypatch.chdir(ROOT)
