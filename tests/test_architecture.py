"""The layout rules of docs/architecture.md, checked on the source: import arrows point down the layers, no
import circle, every module under 400 lines, README a front page whose links reach every docs page, and no code
or test citing a README section or a file outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_README_LINES = 400

# Lowest first. A module may import its own layer or lower ones; the first matching prefix decides.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("rlr_core.config", "rlr_core.hosted", "rlr_core.hub", "rlr_core.images", "rlr_core.cancel",
         "rlr_core.tokenizer", "rlr_core.prompts", "rlr_core.chain", "rlr_core.safe_files")),
    (1, ("rlr_core.distributed", "rlr_core.sampling", "rlr_core.memory.meter")),
    (2, ("rlr_core.models", "rlr_core.tiny", "rlr_core.diffusers_chain", "rlr_core.sd_arch")),
    (3, ("rlr_core.rewards",)),
    (4, ("rlr_core.estimators",)),
    (5, ("rlr_core.memory", "rlr_core.memory_model", "rlr_core.diagnostics", "rlr_core.kl")),
    (6, ("rlr_core.training", "rlr_core.trainer", "rlr_core.checkpoints", "rlr_core.tracking")),
    (7, ("rlr_core.run", "rlr_core.cli")),
    (8, ("app",)),
]
LOWEST_FIRST = sorted(((layer, prefix) for layer, prefixes in LAYERS for prefix in prefixes), key=lambda lp: -len(lp[1]))


def layer_of(module: str) -> int:
    if module == "rlr_core":  # the package maps its top-level names to modules lazily (PEP 562)
        return 0
    if module == "rlr_core.memory":  # the package re-exports the meter only
        return 1
    for layer, prefix in LOWEST_FIRST:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} has no layer: add it to LAYERS and docs/architecture.md")


def source_modules() -> dict[str, Path]:
    modules = {}
    for package in ("rlr_core", "app"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``module`` imports anywhere in its file (lazy imports inside functions count)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:  # "a.b.func" -> "a.b"
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_imports_point_down_the_layers(graph):
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in graph.items() if m != "rlr_core" for d in deps if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circle(graph):
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                circles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state and module != "rlr_core":
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_every_module_is_under_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in source_modules().values()
            if (n := len(p.read_text().splitlines())) >= MAX_MODULE_LINES}
    assert not long, long


def test_readme_is_a_front_page_linking_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= MAX_README_LINES
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", readme))
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert pages and pages <= linked, sorted(pages - linked)


def test_markdown_links_resolve():
    broken = []
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks" / "results").rglob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            target = target.split("#")[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


CITATION = re.compile(r"README(\.md)?\s*[,:(']|README's|\(README|SPEC-RLR|DESIGN\.md|\.\./shared")


def test_no_code_or_test_cites_readme_sections_or_files_outside_the_repository():
    files = [p for folder in ("rlr_core", "app", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files if p.name != Path(__file__).name
            for i, line in enumerate(p.read_text().splitlines(), 1) if CITATION.search(line)]
    assert not hits, "\n".join(hits)
