"""The layering rules of the code, read from its imports (including imports inside functions).

- `service/` and `cdc/` are two libraries over `core/` and never import each other;
- `core/` imports nothing of ours;
- only `entrypoints/` (the composition root) knows both libraries, and nothing imports it;
- within `service/`, the ledger is the layer under the API and the console: it imports neither;
- the web framework is imported only by the API and the console.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("entrypoints", "service", "cdc", "core", "migrations", "devstack")
FRAMEWORK_ALLOWED = ("service/api/", "service/console/", "entrypoints/")

# package -> packages of ours it must not import
FORBIDDEN = {
    "service": {"cdc", "entrypoints", "devstack", "migrations"},
    "cdc": {"service", "entrypoints", "devstack", "migrations"},
    "core": {"service", "cdc", "entrypoints", "devstack", "migrations"},
    "migrations": {"service", "cdc", "entrypoints", "devstack"},
    "devstack": {"entrypoints"},
    "entrypoints": set(),
}
# folder -> modules of ours that files under it must not import (with their submodules)
FORBIDDEN_WITHIN = {
    "service/ledger/": ("service.api", "service.console"),
}


def imported_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            # `from service import api` imports service.api: name what each alias may be.
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def violations(relative_path: str, source: str) -> list[str]:
    package = relative_path.split("/", 1)[0]
    found = []
    reported: list[str] = []
    for module in sorted(imported_modules(source)):  # a module sorts before its attributes
        if any(module.startswith(parent + ".") for parent in reported):
            continue  # `from cdc.relay import Relay`: cdc.relay is reported already
        top = module.split(".", 1)[0]
        banned_within = [b for folder, banned in FORBIDDEN_WITHIN.items() if relative_path.startswith(folder)
                         for b in banned]
        if top in FORBIDDEN.get(package, set()) or any(
                module == b or module.startswith(b + ".") for b in banned_within):
            found.append(f"{relative_path} imports {module}")
            reported.append(module)
        if top == "litestar" and not relative_path.startswith(FRAMEWORK_ALLOWED):
            found.append(f"{relative_path} imports the web framework ({module})")
            reported.append(module)
    return found


def test_no_forbidden_import_edge() -> None:
    found = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            found += violations(relative, path.read_text())
    assert found == []


def test_the_rule_catches_an_added_edge() -> None:
    """The check above can fail: an edge added on purpose (top level or lazy) is reported."""
    assert violations("service/ledger/x.py", "def f():\n    from cdc.relay import Relay\n") == [
        "service/ledger/x.py imports cdc.relay"]
    assert violations("cdc/x.py", "import service.ledger.db\n") == ["cdc/x.py imports service.ledger.db"]
    assert violations("core/x.py", "from entrypoints import cli\n") == ["core/x.py imports entrypoints"]
    assert violations("service/ledger/x.py", "from litestar import get\n") == [
        "service/ledger/x.py imports the web framework (litestar)"]
    assert violations("service/api/x.py", "from litestar import get\n") == []
    assert violations("service/ledger/x.py", "from service.api.schemas import PriceIn\n") == [
        "service/ledger/x.py imports service.api.schemas"]
    assert violations("service/ledger/x.py", "from service import console\n") == [
        "service/ledger/x.py imports service.console"]
    assert violations("service/api/x.py", "from service.ledger.keys import KeyCache\n") == []
