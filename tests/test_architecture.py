"""The house's shape, read from the source (ast): layers, no cycles, no hidden imports, seams only.

docs/architecture.md describes it; CI also runs import-linter over the same contract (pyproject.toml).
This test reads imports inside functions too, which import-linter counts as well but a reader does not
see: an import inside a function is allowed only in `AppConfig.ready()` (Django's place for wiring).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top to bottom; a module may import its own package and any package below it. Same rank: independent.
LAYERS = [["b24widget"], ["openlines"], ["placements"], ["portals"], ["inbox"], ["bitrix24", "vault"]]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
APPS = {"b24widget", "openlines", "placements", "portals", "inbox", "vault"}


def _modules():
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


MODULES = dict(_modules())


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Imports(ast.NodeVisitor):
    """(imported module, line, inside a function other than ready()) for every import of a module."""

    def __init__(self, module: str, is_package: bool):
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, int, bool]] = []
        self._functions: list[str] = []

    def visit_FunctionDef(self, node):
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _hidden(self) -> bool:
        return bool(self._functions) and self._functions[-1] != "ready"

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self._hidden()))

    def visit_ImportFrom(self, node):
        target = _resolve(self.module, node, self.is_package)
        for alias in node.names:
            # `from pkg import mod` imports pkg.mod when that is a module of ours.
            candidate = f"{target}.{alias.name}"
            self.found.append((candidate if candidate in MODULES else target, node.lineno, self._hidden()))


def _imports(module: str) -> list[tuple[str, int, bool]]:
    path = MODULES[module]
    visitor = _Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return [(target, line, hidden) for target, line, hidden in visitor.found if target.split(".")[0] in RANK]


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_modules_were_found():
    assert {"bitrix24.client", "inbox.queue", "portals.tokens", "placements.registry", "vault.fields"} <= set(MODULES)


def test_layers_only_import_downwards():
    wrong = []
    for module, imports in GRAPH.items():
        own = module.split(".")[0]
        for target, line, _hidden in imports:
            other = target.split(".")[0]
            if other != own and RANK[other] <= RANK[own]:
                wrong.append(f"{module}:{line} imports {target}")
    assert wrong == []


def test_the_platform_client_imports_no_app():
    wrong = [
        f"{module}:{line} imports {target}"
        for module, imports in GRAPH.items()
        if module.startswith("bitrix24")
        for target, line, _hidden in imports
        if target.split(".")[0] in APPS
    ]
    assert wrong == []


def test_no_module_imports_another_apps_views():
    wrong = [
        f"{module}:{line} imports {target}"
        for module, imports in GRAPH.items()
        if module != "b24widget.urls"
        for target, line, _hidden in imports
        if target.endswith(".views") and target.split(".")[0] != module.split(".")[0]
    ]
    assert wrong == []


def test_no_import_hides_inside_a_function():
    hidden = [
        f"{module}:{line} imports {target}"
        for module, imports in GRAPH.items()
        for target, line, inside in imports
        if inside
    ]
    assert hidden == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    edges = {m: sorted({t for t, _l, _h in imports if t in MODULES and t != m}) for m, imports in GRAPH.items()}

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    assert _cycles() == []


@pytest.mark.parametrize("package", sorted(RANK))
def test_every_package_has_a_docstring_or_is_an_app(package):
    """A package says what it is: its __init__ docstring, or its AppConfig's verbose_name."""
    init = ROOT / package / "__init__.py"
    has_doc = ast.get_docstring(ast.parse(init.read_text())) is not None
    assert has_doc or (ROOT / package / "apps.py").exists()
