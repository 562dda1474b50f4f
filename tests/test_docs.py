"""The docs cannot rot: every TOML block is read by the config schema and its parts found in the
registry, every `sdeplug` command shown is parsed by the argument parser, the generated references
list every key, part and command, and the site builds strictly. (The Python blocks run as tests
of their own, collected by pytest-markdown-docs through the root conftest.py.)"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from markdown_it import MarkdownIt

import sdeplug
from sdeplug.app import cli
from sdeplug.app.config import Config, PartSpec, SamplerConfig, tomllib
from sdeplug.app.datasets import check_data_options
from sdeplug.app.sweep import read_sweep

REPO = Path(__file__).parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
SHELL = ("sh", "bash", "shell", "console", "")
#: Parts of the plugins the docs write as examples (not installed where the docs are tested).
EXAMPLE_PARTS = {"ou", "ou2", "ou_fast", "cosine_vp", "ddim_example", "noise_scaled_langevin"}


def _load_generator():
    """docs/gen_reference.py, which mkdocs-gen-files runs as a script, as a module."""
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
#: Which kind of part each table that picks one by name holds (data sets are checked apart).
PART_KINDS = {section: kind for section, (_, kind) in GEN.SECTIONS.items() if kind not in (None, "data")}


def fences(page: Path) -> list[tuple[list[str], str, int]]:
    """(words of the info string, text, line) of each fenced block of a page."""
    tokens = MarkdownIt("commonmark").parse(page.read_text())
    return [(t.info.split(), t.content, t.map[0] + 1) for t in tokens if t.type == "fence"]


def blocks(language: tuple[str, ...]) -> list:
    found = []
    for page in PAGES:
        for words, text, line in fences(page):
            if (words[0] if words else "") in language:
                found.append(pytest.param(text, id=f"{page.relative_to(REPO)}:{line}"))
    return found


def _check_part(where: str, spec: PartSpec) -> None:
    if spec.name in EXAMPLE_PARTS or (where == "model" and spec.name == "oracle"):  # the oracle is the data's own
        return
    sdeplug.get_registry().check_options(PART_KINDS[where], spec.name, spec.options)


def check_config_parts(config: Config) -> None:
    """Every part a config names exists and takes the options it is given."""
    for section in PART_KINDS:
        owner, _, key = section.rpartition(".")
        table = getattr(config, owner) if owner else config
        value = getattr(table, key or section) if table is not None else None
        if isinstance(value, PartSpec):
            _check_part(section, value)
    if config.data_named:
        check_data_options(config.data.name, config.data.options)


@pytest.mark.parametrize("text", blocks(("toml",)))
def test_every_toml_block_is_read_by_the_config_schema(text, tmp_path):
    document = tomllib.loads(text)
    keys = set(document)
    if keys <= {"build-system", "project", "tool"}:  # a plugin's pyproject.toml
        assert "sdeplug" in document.get("project", {}).get("entry-points", {}) or "build-system" in keys
    elif keys == {"sweep"}:
        (tmp_path / "sweep.toml").write_text(text)
        read_sweep(tmp_path / "sweep.toml")
    else:
        assert keys <= set(Config.SECTIONS), f"not config sections: {sorted(keys - set(Config.SECTIONS))}"
        whole = {"sde": {"name": "vp"}, **document}  # a sampler or guidance file holds one section
        config = Config.from_dict(whole)
        assert isinstance(config.sampler, SamplerConfig)
        check_config_parts(config)


def test_a_python_block_that_is_not_run_says_so_in_its_first_line():
    for page in PAGES:
        for words, text, line in fences(page):
            if words[:1] == ["python"] and "notest" in words:
                first = text.lstrip().splitlines()[0]
                included = first.startswith("--8<--")  # a file of the example plugin, tested by its own tests
                assert included or (first.startswith("#") and "not run" in first.lower()), (page.name, line)


def commands(text: str) -> list[list[str]]:
    """The `sdeplug` command lines of a shell block, as argument lists after `sdeplug`."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        if "sdeplug " not in line:
            continue
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word == "sdeplug" or word.endswith("/sdeplug"):
                found.append(words[i + 1 :])
                break
    return found


@pytest.mark.parametrize("text", blocks(SHELL))
def test_every_sdeplug_command_shown_is_parsed(text):
    parser = cli.build_parser()
    for arguments in commands(text):
        try:
            parser.parse_args(arguments)
        except SystemExit:
            pytest.fail(f"sdeplug {shlex.join(arguments)}: not accepted by the argument parser")


def test_the_command_parser_check_can_fail():
    assert commands("sdeplug sample x.toml --stepz 4  # comment") == [["sample", "x.toml", "--stepz", "4"]]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sample", "x.toml", "--stepz", "4"])


@pytest.mark.slow
def test_the_config_reference_lists_every_key_and_every_part():
    page = GEN.config_reference()
    for section, (cls, _) in GEN.SECTIONS.items():
        assert f"## `[{section}]`" in page
        fields = attrs.fields(cls) if cls else ()
        for field in fields:
            assert f"| `{field.name}` |" in page, (section, field.name)
        # a field's `#:` comment is its description, and every key has one
        undocumented = [f.name for f in fields if f.name not in GEN.field_comments(cls)]
        assert not undocumented, f"[{section}] keys without a #: comment: {undocumented}"
    for info in sdeplug.get_registry().parts():
        assert f"| `{info.name}` | `{info.plugin}` |" in page, info.name
    assert set(GEN.SECTIONS) >= set(Config.SECTIONS)
    assert "The budget in score evaluations per sample" in page
    assert GEN.toml_type("int | None") == "integer, optional"
    assert GEN.toml_type("sdeplug.app.config.PartSpec | None") == "name or table, optional"


def test_the_cli_reference_lists_every_command_and_option():
    page = GEN.cli_reference()
    parser = cli.build_parser()
    for name, sub in GEN._subcommands(parser).items():
        assert f"## `sdeplug {name}`" in page
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, (name, option)


MKDOCS = shutil.which("mkdocs", path=str(Path(sys.executable).parent))


@pytest.mark.slow
@pytest.mark.skipif(MKDOCS is None, reason="needs the docs extra")
def test_the_site_builds_strictly(tmp_path):
    """A broken link, a missing page or an API name that no longer exists fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    run = subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "api" / "index.html").exists()
