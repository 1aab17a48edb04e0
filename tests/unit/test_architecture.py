"""docs/architecture.md stays true: its layer list matches the imports, whylogs stays behind one adapter, the CLI
stays parsing and dispatch, and the README sends no user outside the repository."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ray_app"


def layers() -> list[list[str]]:
    """The fenced block under "## Layers", top layer first; each line names modules or packages of ray_app."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"## Layers\n.*?```\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no fenced layer list under '## Layers'"
    return [line.split() for line in block.group(1).strip().splitlines()]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] != "__init__":
            found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every `ray_app` module a file imports, at the top or inside a function, without the `ray_app.` prefix."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray_app"):
            base = node.module.removeprefix("ray_app").lstrip(".")
            names |= {f"{base}.{a.name}".lstrip(".") for a in node.names} | ({base} if base else set())
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("ray_app.") for a in node.names if a.name.startswith("ray_app.")}
    return names


def layer_of(module: str, levels: dict[str, int]) -> int | None:
    """The layer of a module: its own entry, else its package's (`serve.router` is in `serve`)."""
    head = module.split(".")[0]
    return levels.get(module, levels.get(head))


def test_the_layer_list_names_every_module_once():
    names = [name for layer in layers() for name in layer]
    assert len(names) == len(set(names)), names
    levels = {name: i for i, layer in enumerate(reversed(layers())) for name in layer}
    unplaced = sorted(m for m in modules() if layer_of(m, levels) is None)
    assert not unplaced, f"modules missing from docs/architecture.md's layer list: {unplaced}"


def test_imports_only_go_down_the_layers():
    levels = {name: i for i, layer in enumerate(reversed(layers())) for name in layer}
    upward = []
    for module, path in modules().items():
        for target in imports_of(path):
            own, other = layer_of(module, levels), layer_of(target, levels)
            if other is not None and other > own:
                upward.append(f"{module} -> {target}")
    assert not upward, f"imports that reach up a layer (see docs/architecture.md): {upward}"


def test_lower_stages_never_import_the_orchestration():
    for module, path in modules().items():
        if module.split(".")[0] in ("tune", "data", "train", "serve", "monitor"):
            reached = {t.split(".")[0] for t in imports_of(path)} & {"pipeline", "rollout", "loop"}
            assert not reached, f"{module} imports {reached}"


def test_exactly_one_module_imports_whylogs():
    importers = [m for m, path in modules().items() if re.search(r"^\s*(import|from) whylogs", path.read_text(), re.M)]
    assert importers == ["profiles"]


def test_the_cli_is_parsing_and_dispatch():
    assert len((PACKAGE / "cli.py").read_text().splitlines()) < 300


def test_the_readme_names_no_path_outside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme and "shared/DESIGN" not in readme
    assert "docs/architecture.md" in readme
