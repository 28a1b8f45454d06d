"""docker-compose.yml (production topology) speaks the settings' language and runs real commands."""

import re
from pathlib import Path

import yaml

from core.settings import READ_ELSEWHERE, markdown, setting_names
from entrypoints.cli import parser

ROOT = Path(__file__).resolve().parents[2]
AWS_CHAIN = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # read by boto3 itself


def ledger_services() -> dict[str, dict]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("booking-ledger")}


def test_every_variable_a_ledger_service_sets_is_a_real_setting() -> None:
    known = setting_names() | AWS_CHAIN
    services = ledger_services()
    assert set(services) == {"migrate", "api", "relay", "sink", "deliver"}
    for name, service in services.items():
        unknown = set(service["environment"]) - known
        assert not unknown, f"{name} sets {unknown}, which no setting reads"


def test_every_ledger_service_runs_an_existing_command() -> None:
    commands = set(parser()._subparsers._group_actions[0].choices)  # the CLI's subcommands
    for name, service in ledger_services().items():
        program, command = service["command"][:2]
        assert program == "booking-ledger" and command in commands, f"{name}: {service['command']}"


def test_docs_settings_is_what_the_settings_generate() -> None:
    # Regenerate with: .venv/bin/python -m core.settings --markdown > docs/settings.md
    assert (ROOT / "docs" / "settings.md").read_text() == markdown()


def test_every_variable_the_service_reads_is_documented() -> None:
    read = set()
    for package in ("core", "service", "cdc", "entrypoints"):
        for path in (ROOT / package).rglob("*.py"):
            read |= set(re.findall(r'"(LEDGER_[A-Z0-9_]+)"', path.read_text()))
    assert sorted(read - setting_names() - set(READ_ELSEWHERE)) == []
    assert set(READ_ELSEWHERE) <= read
