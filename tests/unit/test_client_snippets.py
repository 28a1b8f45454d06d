"""docs/api.md shows the Java and TypeScript code the conformance tests run
(tests/e2e/test_generated_clients.py): each snippet is the part of the scenario between its
`docs/api.md: begin` and `docs/api.md: end` lines, word for word."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {"java": ROOT / "clients/java/src/main/java/ledger/Conformance.java",
             "typescript": ROOT / "clients/typescript/conformance.mts"}


def scenario_part(source: str) -> str:
    match = re.search(r"^[ \t]*// docs/api\.md: begin\n(.*?)^[ \t]*// docs/api\.md: end\n", source, re.M | re.S)
    assert match is not None, "the scenario marks no part for docs/api.md"
    return textwrap.dedent(match.group(1))


def doc_snippet(doc: str, language: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```\n", doc, re.M | re.S)
    assert len(blocks) == 1, f"docs/api.md has {len(blocks)} {language} blocks"
    return str(blocks[0])


def test_the_docs_show_the_code_the_conformance_tests_run() -> None:
    doc = (ROOT / "docs/api.md").read_text()
    for language, path in SCENARIOS.items():
        assert doc_snippet(doc, language) == scenario_part(path.read_text()), f"{language}: {path}"


def test_a_changed_line_is_noticed() -> None:
    source = "x\n    // docs/api.md: begin\n    a();\n    // docs/api.md: end\n"
    assert scenario_part(source) == "a();\n"
    assert doc_snippet("```java\na();\n```\n", "java") == scenario_part(source)
    assert doc_snippet("```java\nb();\n```\n", "java") != scenario_part(source)
