"""The shape of the code, checked: imports run one way, and one module changes VM state.

Read from the source with ``ast`` (no imports run), so a new arrow back up or a second
place that moves VMs fails here, with the file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_PACKAGES = ("core", "images", "orchestrator", "api", "cli")
# Who may import whom (besides itself). The host sees only the guest's protocol.
ALLOWED = {
    "core": set(),
    "images": {"core", "guest_agent.protocol"},  # where the guest keeps its files
    "orchestrator": {"core", "images", "guest_agent.protocol"},
    "api": {"core", "images", "orchestrator", "guest_agent.protocol"},
    "cli": {"core", "images", "orchestrator", "api", "guest_agent.protocol"},
    "guest_agent": set(),
}
# libvirt verbs that change a domain, and the store's state write: lifecycle.py alone.
STATE_VERBS = {"start", "stop", "pause", "resume", "managed_save", "remove_managed_save",
               "snapshot_revert", "undefine", "define"}


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every Somnus module a file imports, with its line (function-local imports too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _allowed(importer: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in ALLOWED or top == importer:
        return True  # third-party, stdlib, or the package itself
    return any(module == ok or module.startswith(ok + ".") for ok in ALLOWED[importer])


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package: str) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in _modules(package) for line, module in _imports(path)
             if not _allowed(package, module)]
    assert wrong == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles_between_host_modules() -> None:
    """Module-level imports between host modules form no cycle (the API's app and routes
    included: the routes take what they share from api.context)."""
    graph: dict[str, set[str]] = {}
    for package in HOST_PACKAGES:
        for path in _modules(package):
            tree = ast.parse(path.read_text())
            targets = set()
            for node in tree.body:  # module level only: a local import is a deliberate break
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets.add(node.module)
                    targets.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names)
            graph[_module_name(path)] = targets
    graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    # A package's __init__ re-exporting its modules is not a cycle through them.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}

    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        seen[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if seen.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in seen:
                visit(target)
        stack.pop()
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module)
    assert cycles == []


def test_only_the_lifecycle_changes_vm_state() -> None:
    wrong = []
    for package in HOST_PACKAGES:
        for path in _modules(package):
            if path.relative_to(ROOT).as_posix() in ("orchestrator/lifecycle.py",
                                                     "orchestrator/hypervisor.py",
                                                     "orchestrator/store.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                owner = node.func.value
                owner_name = (owner.attr if isinstance(owner, ast.Attribute)
                              else owner.id if isinstance(owner, ast.Name) else "")
                verb = node.func.attr
                if verb in ("set_state", "set_hold") or (owner_name == "hv"
                                                         and verb in STATE_VERBS):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} calls "
                                 f"{owner_name}.{verb}")
    assert wrong == []
