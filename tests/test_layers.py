"""Dependencies run one way: application -> library -> plugin API, and plugins use the plugin API only.

Every module of ``sdeplug/`` is placed in exactly one layer here, so a new module must be
placed before the test passes; its imports (at the top or inside functions) are read with ast.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "sdeplug"

#: The plugin API: what a plugin codes against.
PLUGIN_API = {
    "sdeplug",
    "sdeplug.errors",
    "sdeplug.tensors",
    "sdeplug.interfaces",
    "sdeplug.hookspecs",
    "sdeplug.registry",
    "sdeplug.grids",
    "sdeplug.extras",
    "sdeplug.moments",
    "sdeplug.files",
    "sdeplug.conditioning",
}
#: The library: sampling, likelihood, guidance, training and the testing kit, usable from Python.
LIBRARY = {
    "sdeplug.sampling",
    "sdeplug.likelihood",
    "sdeplug.guidance",
    "sdeplug.oracle",
    "sdeplug.parameterization",
    "sdeplug.losses",
    "sdeplug.trainer",
    "sdeplug.data",
    "sdeplug.denoisers",
    "sdeplug.score_sde_checkpoints",
    "sdeplug.metrics",
    "sdeplug.grid_tuning",
    "sdeplug.compiling",
    "sdeplug.checkpoint",
    "sdeplug.distributed",
    "sdeplug.stats",
    "sdeplug.testing",
}
#: The application: configs, the command line and what they assemble.
APPLICATION = {"sdeplug.app"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    for layer, members in (("plugin API", PLUGIN_API), ("library", LIBRARY), ("application", APPLICATION)):
        if module in members or any(module.startswith(m + ".") for m in members if m != "sdeplug"):
            return layer
    return None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from sdeplug import sampling`` imports a module; ``from sdeplug import SDE`` a name
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if node.module == "sdeplug"
                and ((PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir())
            }
    return {name for name in found if name == "sdeplug" or name.startswith("sdeplug.")}


MODULES = sorted(PACKAGE.rglob("*.py"))
ALLOWED = {
    "plugin API": {"plugin API"},
    "library": {"plugin API", "library"},
    "application": {"plugin API", "library", "application"},
}


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in MODULES if _layer(_module_name(p)) is None]
    assert not unplaced, f"place these modules in a layer in tests/test_layers.py: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_imports_point_down_the_layers(path):
    layer = _layer(_module_name(path))
    for imported in _imports(path):
        target = _layer(imported)
        assert target in ALLOWED[layer], f"{_module_name(path)} ({layer}) imports {imported} ({target})"


PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "docs" / "examples").rglob("*.py"))


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=[str(p.relative_to(ROOT)) for p in PLUGIN_FILES])
def test_plugins_use_the_plugin_api_only(path):
    for imported in _imports(path):
        if imported.startswith("sdeplug.testing"):
            continue  # a plugin's own tests use the kit
        assert _layer(imported) == "plugin API", (
            f"{path.relative_to(ROOT)} imports {imported}, which is not the plugin API"
        )


def test_the_check_sees_a_violation(tmp_path):
    """The reader of imports finds one inside a function too, and the layers refuse it."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sdeplug import SDE, sampling\n\ndef f():\n    from sdeplug.app.cli import main\n    return main\n"
    )
    assert _imports(bad) == {"sdeplug", "sdeplug.sampling", "sdeplug.app.cli"}
    assert _layer("sdeplug.sampling") == "library"
    assert _layer("sdeplug.app.cli") not in ALLOWED["library"]
