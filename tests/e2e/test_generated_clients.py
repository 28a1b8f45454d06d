"""Clients generated from the OpenAPI document the API serves, in Java, TypeScript, Go and Python, each
run the conformance scenario (clients/*/conformance.*) against one running API: create a booking, the
collision answered as booking_code_taken naming the owner, an append at a stale version answered as
version_conflict with the current version, a read-back, the price as of a moment.

The generators are pinned by the project's files (clients/java/pom.xml, clients/typescript's
package-lock.json, clients/go/go.mod, constraints.txt) and fetched by `make install`, with the
workspaces under .local/clients; nothing is downloaded here (Maven runs offline, Go with GOPROXY=off).
The four languages run at once, each in its own thread, so the module takes about as long as the
slowest (Java); each test reports its own language's time. Every generator must run without a
warning; the only one allowed is openapi-generator's notice that its OpenAPI 3.1 support is in beta,
which it prints for every 3.1 document.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.conftest import random_code
from tests.e2e.conftest import Keys

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
WORK = ROOT / ".local" / "clients"  # the workspaces `make install` prepared
BIN = Path(sys.executable).parent
TIMEOUT = 300
OWNER = "hotel"  # the department of keys.hotel
JAVA_31_NOTICE = "OpenAPI 3.1 support is still in beta"


@dataclass
class Run:
    language: str
    seconds: float
    output: str  # every step's stdout and stderr, in order


def _run(language: str, env: dict[str, str], *steps: tuple[list[str], Path]) -> Run:
    """The steps (command, working directory) one after the other; stops at the first that fails."""
    started = time.monotonic()
    output = []
    for command, cwd in steps:
        step = time.monotonic()
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        output.append(f"$ {' '.join(command)}   ({time.monotonic() - step:.1f} s)\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            output.append(f"exit {done.returncode}")
            break
    return Run(language, time.monotonic() - started, "\n".join(output))


def _copy(names: list[str], source: Path, workspace: Path) -> None:
    for name in names:
        shutil.copy(source / name, workspace / name)


def _java(document: Path, env: dict[str, str]) -> Run:
    # One Maven invocation, offline: generate, compile, run. The JVM's first-tier compiler alone
    # halves the CPU time of a build this short.
    maven = ["mvn", "-B", "-o", "-f", str(CLIENTS / "java" / "pom.xml"), f"-Dopenapi.document={document}"]
    return _run("java", {**env, "MAVEN_OPTS": "-XX:TieredStopAtLevel=1"}, ([*maven, "compile", "exec:java"], ROOT))


def _typescript(document: Path, env: dict[str, str]) -> Run:
    # The generated types are a .ts file, type-checked with the scenario; the libraries' own .d.ts
    # files (the DOM's is large) are not checked again (skipLibCheck).
    workspace = WORK / "typescript"
    _copy(["conformance.mts", "tsconfig.json"], CLIENTS / "typescript", workspace)
    tools = workspace / "node_modules" / ".bin"
    return _run("typescript", env,
                ([str(tools / "openapi-typescript"), str(document), "-o", "ledger-api.ts"], workspace),
                ([str(tools / "tsc"), "-p", "."], workspace),
                (["node", "conformance.mjs"], workspace))


def _go(document: Path, env: dict[str, str]) -> Run:
    workspace = WORK / "go"
    _copy(["go.mod", "go.sum", "conformance.go", "oapi-codegen.yaml"], CLIENTS / "go", workspace)
    offline = {**env, "GOFLAGS": "-mod=readonly", "GOPROXY": "off"}
    return _run("go", offline,
                (["go", "tool", "oapi-codegen", "-config", "oapi-codegen.yaml", str(document)], workspace),
                (["go", "build", "-o", "conformance", "."], workspace),
                ([str(workspace / "conformance")], workspace))


def _python(document: Path, env: dict[str, str]) -> Run:
    workspace = WORK / "python"
    shutil.rmtree(workspace / "ledger_api_client", ignore_errors=True)
    workspace.mkdir(parents=True, exist_ok=True)
    return _run("python", {**env, "PYTHONPATH": str(workspace)},
                ([str(BIN / "openapi-python-client"), "generate", "--path", str(document), "--meta", "none",
                  "--output-path", str(workspace / "ledger_api_client"),
                  "--config", str(CLIENTS / "python" / "openapi-python-client.yaml")], ROOT),
                ([sys.executable, str(CLIENTS / "python" / "conformance.py")], ROOT))


@pytest.fixture(scope="module")
def document(api: str) -> dict[str, object]:
    return httpx.get(f"{api}/schema/openapi.json", timeout=30).raise_for_status().json()


@pytest.fixture(scope="module")
def runs(api: str, keys: Keys, document: dict[str, object]) -> Iterator[dict[str, Future[Run]]]:
    """The four languages' runs, started together (each test waits for its own)."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "openapi.json"
    path.write_text(json.dumps(document))
    base = {**os.environ, "LEDGER_URL": api, "LEDGER_KEY": keys.hotel, "LEDGER_OTHER_KEY": keys.car,
            "LEDGER_OWNER": OWNER}
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {
            language: pool.submit(run, path, {**base, "LEDGER_CODE": random_code(language)})
            for language, run in (("java", _java), ("typescript", _typescript), ("go", _go), ("python", _python))
        }


def _passed(run: Run) -> str:
    print(f"{run.language}: generated, built and ran the scenario in {run.seconds:.1f} s")
    print("\n".join(line for line in run.output.splitlines() if line.startswith("$ ")))
    assert f"{run.language} conformance: ok" in run.output, run.output[-8000:]
    return run.output


def test_the_document_is_valid_openapi(document: dict[str, object]) -> None:
    validate(document)  # raises on the first error


def test_java_client(runs: dict[str, Future[Run]]) -> None:
    output = _passed(runs["java"].result(timeout=2 * TIMEOUT))
    warnings = [line for line in output.splitlines() if "[WARNING]" in line and JAVA_31_NOTICE not in line]
    assert not warnings, "\n".join(warnings)


def test_typescript_client(runs: dict[str, Future[Run]]) -> None:
    output = _passed(runs["typescript"].result(timeout=2 * TIMEOUT))
    assert "warn" not in output.lower() and "⚠" not in output, output


def test_go_client(runs: dict[str, Future[Run]]) -> None:
    output = _passed(runs["go"].result(timeout=2 * TIMEOUT))
    lines = [line for line in output.splitlines() if line and not line.startswith("$ ")]
    assert lines == ["go conformance: ok"], output  # oapi-codegen and go build print nothing else


def test_python_client(runs: dict[str, Future[Run]]) -> None:
    output = _passed(runs["python"].result(timeout=2 * TIMEOUT))
    assert "warning" not in output.lower(), output
