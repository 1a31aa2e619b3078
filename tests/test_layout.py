"""The package's layout holds: no import circle between modules, and the delivery
engine knows nothing of what it delivers (README "Layout"). Reads the source with
`ast`, so every import counts, those inside functions too."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mailer"
# What delivery/ may not import: what it delivers, who to, who asks, and the app
# factory that wires it all (delivery is handed the kinds of mail and the audience hooks).
NOT_FOR_DELIVERY = ("mailer.audience", "mailer.campaigns", "mailer.staff", "mailer.web", "mailer.privacy",
                    "mailer.cli", "mailer.scheduler", "mailer.demo")
# The domain never reaches for the web layer (nor its request state).
DOMAIN = ("mailer.audience", "mailer.campaigns", "mailer.delivery", "mailer.staff", "mailer.privacy", "mailer.clock")


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    deferred: bool  # made inside a function: runs when called, not when the module is imported

    def __str__(self) -> str:
        return f"{self.source} → {self.target} (line {self.line}{', in a function' if self.deferred else ''})"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every import of a mailer module in one file, with whether it is made in a function.
    Imports under `if TYPE_CHECKING:` never run and are left out."""

    def __init__(self, name: str, is_package: bool, known: set[str]):
        self.name, self.is_package, self.known = name, is_package, known
        self.depth = 0
        self.edges: list[Edge] = []

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _module_of(self, dotted: str) -> str | None:
        while dotted and dotted not in self.known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def _add(self, target: str | None, node) -> None:
        if target and target != self.name:
            self.edges.append(Edge(self.name, target, node.lineno, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "mailer":
                self._add(self._module_of(alias.name), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != "mailer":
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            # `from mailer.audience import contacts` imports a module; `from mailer.db import utcnow` a name.
            self._add(submodule if submodule in self.known else self._module_of(source), node)


def import_edges(package: Path = PACKAGE) -> list[Edge]:
    found = modules(package)
    edges = []
    for name, path in found.items():
        visitor = _Imports(name, path.name == "__init__.py", set(found))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges.extend(visitor.edges)
    return edges


def _assembles_itself(edge: Edge, package: Path) -> bool:
    """A package's __init__ importing its own modules inside a function: create_app()
    and web.register() putting the parts together at start-up. Its modules may use the
    package's shared helpers without that being a circle."""
    return (edge.deferred and modules(package)[edge.source].name == "__init__.py"
            and edge.target.startswith(edge.source + "."))


def cycles(edges: list[Edge], package: Path = PACKAGE) -> list[list[str]]:
    """Each import circle once, as the modules around it (strongly connected components)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not _assembles_itself(edge, package):
            graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_module_imports_itself_back_through_others():
    edges = import_edges()
    circles = cycles(edges)
    described = ["; ".join(str(e) for e in edges if e.source in circle and e.target in circle) for circle in circles]
    assert circles == [], "import circles:\n" + "\n".join(described)


def test_delivery_imports_nothing_of_what_it_delivers():
    wrong = [e for e in import_edges() if _within(e.source, ["mailer.delivery"])
             and (_within(e.target, NOT_FOR_DELIVERY) or e.target == "mailer")]
    assert wrong == [], "delivery imports:\n" + "\n".join(map(str, wrong))


def test_the_domain_never_imports_the_web_layer():
    wrong = [e for e in import_edges() if _within(e.source, DOMAIN) and _within(e.target, ["mailer.web"])]
    assert wrong == [], "\n".join(map(str, wrong))


def test_the_audience_imports_no_campaign():
    wrong = [e for e in import_edges() if _within(e.source, ["mailer.audience"])
             and _within(e.target, ["mailer.campaigns"])]
    assert wrong == [], "\n".join(map(str, wrong))


def test_the_checks_see_imports_in_functions_and_circles(tmp_path):
    """The checks can fail: a small package with a circle made inside a function, and
    delivery importing a campaign."""
    package = tmp_path / "mailer"
    for folder in ("", "delivery", "campaigns"):
        (package / folder).mkdir(exist_ok=True)
        (package / folder / "__init__.py").write_text("")
    (package / "delivery" / "sender.py").write_text("def send():\n    from mailer.campaigns import newsletters\n")
    (package / "campaigns" / "newsletters.py").write_text("from mailer.delivery import sender\n")
    (package / "db.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mailer import models\n")
    (package / "models.py").write_text("from mailer.db import Base\n")
    edges = import_edges(package)
    assert cycles(edges, package) == [["mailer.campaigns.newsletters", "mailer.delivery.sender"]]
    assert [str(e) for e in edges if e.source == "mailer.delivery.sender"] == [
        "mailer.delivery.sender → mailer.campaigns.newsletters (line 2, in a function)"]
