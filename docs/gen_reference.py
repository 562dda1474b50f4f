"""Writes the configuration and command-line references from the code itself: the config
schema's attrs classes, the registry's parts with their options, and the argument parser.

Run by mkdocs-gen-files while `make docs` builds the site (so the pages cannot fall behind
the code); the test suite imports it to check that every key, part and command is listed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

import sdeplug
from sdeplug.app import cli, config, datasets
from sdeplug.trainer import TrainSettings

#: Each config section, the schema class of its table, and the kind of part a name in it picks.
SECTIONS: dict[str, tuple[type | None, str | None]] = {
    "sde": (None, "sde"),
    "sampler": (config.SamplerConfig, None),
    "sampler.predictor": (None, "predictor"),
    "sampler.corrector": (None, "corrector"),
    "sampler.solver": (None, "ode_solver"),
    "sampler.grid": (None, "time_grid"),
    "model": (None, "score_model"),
    "data": (None, "data"),
    "sample": (config.RunConfig, None),
    "output": (config.OutputConfig, None),
    "likelihood": (config.LikelihoodConfig, None),
    "likelihood.solver": (None, "ode_solver"),
    "train": (TrainSettings, None),
    "classifier": (config.ClassifierConfig, None),
    "classifier.network": (None, "classifier"),
    "classifier.train": (TrainSettings, None),
    "guidance": (config.GuidanceConfig, None),
    "evaluate": (config.EvaluateConfig, None),
    "evaluate.features": (None, "feature_extractor"),
}


def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines above each field of an attrs class, joined into one sentence."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            comments[match.group(1)] = " ".join(pending)
        pending = []
    return comments


def _toml_value(value: Any) -> str:
    """A default as it is written in TOML: true, "text", [1, 2], { order = 2 }."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    return str(value)


def _default(field: attrs.Attribute) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return "depends on other keys"
        default = default.factory()
    if isinstance(default, config.PartSpec):
        default = default.name
    elif attrs.has(type(default)):
        return "its table"
    if default is None:
        return "none"
    return f"`{_toml_value(default)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


#: How the schema's Python types read in TOML.
TOML_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "PartSpec": "name or table",
    "TrainSettings": "table",
    "tuple[int, ...]": "list of integers",
    "tuple[float, ...]": "list of numbers",
    "tuple[str, ...]": "list of strings",
    "tuple[float, float]": "[low, high]",
    "Mapping[str, Any]": "table",
    "Any": "any",
}


def toml_type(annotation: Any) -> str:
    """A field's type as a TOML author reads it: `int | None` is "integer, optional"."""
    if isinstance(annotation, str):
        text = annotation
    else:
        text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    parts = [part.strip().rpartition(".")[2] if "[" not in part else part.strip() for part in text.split("|")]
    optional = "None" in parts
    named = [TOML_TYPES.get(part, part) for part in parts if part != "None"]
    return " or ".join(named) + (", optional" if optional else "")


def _section_table(cls: type) -> Iterator[str]:
    comments = field_comments(cls)
    yield "| key | type | default | what it is |"
    yield "|---|---|---|---|"
    for field in attrs.fields(cls):
        kind = toml_type(field.type)
        yield f"| `{field.name}` | {_cell(kind)} | {_default(field)} | {_cell(comments.get(field.name, ''))} |"


def _option(name: str, default: Any) -> str:
    if default is inspect.Parameter.empty:
        return f"`{name}` (required)"
    return f"`{name}` (none)" if default is None else f"`{name} = {_toml_value(default)}`"


def _options(options: dict[str, Any]) -> str:
    return ", ".join(_option(name, default) for name, default in options.items()) or "none"


def _parts_table(kind: str) -> Iterator[str]:
    yield "| name | plugin | options and defaults |"
    yield "|---|---|---|"
    if kind == "data":
        names = ["digits", "file", "images", *datasets.TOYS, *datasets.PRESETS]
        for name in names:
            yield f"| `{name}` | built in | {_cell(_options(datasets.data_options(name)))} |"
        return
    registry = sdeplug.get_registry()
    for info in sorted(registry.parts(), key=lambda part: part.name):
        if info.kind == kind:
            options = registry.options(kind, info.name)
            yield f"| `{info.name}` | `{info.plugin}` | {_cell(_options(options))} |"


def config_reference() -> str:
    """The configuration reference: every section's keys, types, defaults and meanings, and the
    parts each ``name`` may pick, with their options."""
    lines = [
        "# Configuration keys and parts",
        "",
        "Generated from the config schema (`sdeplug.app.config`) and the plugins installed when the",
        "site was built. A table that picks a part by `name` takes that part's options as its other",
        "keys; any other key is an error naming what is accepted. An annotated example of a whole",
        "config is in [Configuration](../config.md).",
        "",
    ]
    for section, (cls, kind) in SECTIONS.items():
        lines += [f"## `[{section}]`", ""]
        if cls is not None:
            doc = inspect.getdoc(cls) or ""
            lines += [doc.split("\n\n")[0].replace("\n", " "), "", *_section_table(cls), ""]
        if kind is not None:
            what = "data set" if kind == "data" else f"registered `{kind}` part"
            lines += [f"`name` picks a {what}; the other keys are its options.", "", *_parts_table(kind), ""]
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """The command-line reference: each command's help, as its argument parser prints it."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix it, so the page does not depend on one
    try:
        parser = cli.build_parser()
        lines = [
            "# Command-line options",
            "",
            "Generated from `sdeplug`'s argument parser. What each command does is described in",
            "[The command line](../command-line.md).",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        for name, sub in _subcommands(parser).items():
            lines += [f"## `sdeplug {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(lines)


def _write_pages() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("reference/config.md", "w") as page:
        page.write(config_reference())
    with mkdocs_gen_files.open("reference/cli.md", "w") as page:
        page.write(cli_reference())


if __name__ in ("__main__", "<run_path>"):
    _write_pages()
