"""The code's large-scale shape, checked: no import cycle between the project's modules (counting imports inside
functions too: a lazy import that holds a cycle apart is still a cycle), sub-packages that import only what the layer
table below allows (annotation-only imports too) and never each other in a circle, few modules loose at the top of
agent/ and controller/, and no module far over ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "targets", "converters", "controller", "edgectl", "protocol", "daemon", "stats")
MAX_LINES = 430  # "about 400": one concept per module


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, name: str, known: set[str], annotations: bool = False) -> set[str]:
    """Project modules `name` imports anywhere; under `if TYPE_CHECKING:` (annotations only, never run) only when
    `annotations` is set."""
    tree = ast.parse(path.read_text())
    skipped = (
        set()
        if annotations
        else {id(n) for block in ast.walk(tree) if _type_checking_only(block) for n in ast.walk(block)}
    )
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("annotations", [False, True], ids=["run", "annotations-too"])
def test_no_import_cycles(annotations):
    """No cycle between modules, lazy imports counted; nor once annotation-only imports are (a circle of names)."""
    known = modules()
    graph = {name: imports(path, name, set(known), annotations) for name, path in known.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle between concepts
    graph = {n: {t for t in ts if not (n in known and t.startswith(n + "."))} for n, ts in graph.items()}
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_far_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


# Which sub-package (or module at the top of agent/ and controller/) may import which. Everything may import
# `protocol` (the wire contract) and its own package's face (`agent`, `controller`: the version). A new sub-package
# or a new arrow is a decision: add it here, in the layer it belongs to.
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "daemon": set(),
    "targets": set(),
    # small statistics shared below the controller and the converters (the Wilson interval): not the wire contract,
    # so not imported by all; an arrow names each user
    "stats": set(),
    "converters": {"targets", "stats"},
    # the agent, bottom up: the store and the telemetry counters know nothing of serving; serving knows no deploy
    "agent.fetch": set(),
    "agent.telemetry": set(),
    "agent.serving": {"agent.telemetry", "targets"},
    "agent.status_board": {"agent.fetch", "agent.serving"},
    "agent.api": {"agent.serving", "agent.status_board", "targets"},
    "agent.config": {"agent.api"},
    "agent.doctor": {"agent.config"},
    "agent.deploy": {
        "agent.fetch",
        "agent.serving",
        "agent.telemetry",
        "agent.status_board",
        "agent.config",
        "targets",
    },
    "agent.service": {
        "agent.fetch",
        "agent.telemetry",
        "agent.serving",
        "agent.status_board",
        "agent.api",
        "agent.config",
        "agent.deploy",
        "targets",
        "daemon",
    },
    "agent.cli": {"agent.config", "agent.doctor", "agent.service", "targets", "daemon"},
    # the controller: storage and the broker at the bottom; the registry never reaches the devices (fleet)
    "controller.errors": set(),
    "controller.db": set(),
    "controller.broker": set(),
    "controller.telemetry": {"controller.db"},
    "controller.registry": {"controller.db", "controller.errors", "converters", "targets"},
    "controller.replicas": {"controller.db", "controller.telemetry"},
    "controller.fleet": {
        "controller.db",
        "controller.errors",
        "controller.registry",
        "controller.replicas",
        "controller.telemetry",
    },
    "controller.rollouts": {
        "controller.db",
        "controller.errors",
        "controller.fleet",
        "controller.registry",
        "controller.replicas",
        "controller.telemetry",
        "stats",
    },
    "controller.api": {
        "controller.db",
        "controller.errors",
        "controller.fleet",
        "controller.registry",
        "controller.replicas",
        "controller.rollouts",
        "controller.telemetry",
    },
    "controller.service": {
        "controller.api",
        "controller.broker",
        "controller.db",
        "controller.fleet",
        "controller.registry",
        "controller.replicas",
        "controller.rollouts",
        "controller.telemetry",
        "daemon",
    },
    "controller.settings_check": {"controller.service"},
    "controller.help_format": set(),
    "controller.cli": {
        "controller.service",
        "controller.settings_check",
        "controller.help_format",
        "controller.broker",
        "controller.db",
        "controller.registry",
        "daemon",
    },
    "edgectl": {"controller.service", "converters", "targets"},
}
MAX_LOOSE_MODULES = 12  # modules directly in agent/ and in controller/, beside their sub-packages


def layer(module: str) -> str:
    """The unit the table speaks of: a sub-package of agent/ or controller/, a module at their top, or a package."""
    parts = module.split(".")
    if parts[0] in ("agent", "controller") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def layer_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        for target in imports(path, name, set(known), annotations=True):
            if layer(target) != layer(name) and target not in ("agent", "controller"):
                graph.setdefault(layer(name), set()).add(layer(target))
    return graph


def test_sub_packages_import_only_what_the_layer_table_allows():
    graph = layer_graph()
    unknown = sorted(set(graph) - set(ALLOWED))
    assert unknown == [], f"not in the layer table of {__file__}: {unknown}"
    extra = {unit: sorted(targets - ALLOWED[unit] - {"protocol"}) for unit, targets in graph.items()}
    assert {unit: targets for unit, targets in extra.items() if targets} == {}


def test_no_cycle_between_sub_packages_annotations_included():
    assert cycles(layer_graph()) == []


def test_layer_table_has_no_cycle_and_names_only_real_units():
    real = {layer(name) for name in modules()} - {"agent", "controller"}
    assert cycles(ALLOWED) == []
    assert sorted(set(ALLOWED) - real) == [], "the table names units that no longer exist"


def test_few_modules_loose_at_the_top_of_agent_and_controller():
    for package in ("agent", "controller"):
        loose = sorted(p.name for p in (REPO / package).glob("*.py") if p.name != "__init__.py")
        assert len(loose) <= MAX_LOOSE_MODULES, f"{package}/: {loose}"
