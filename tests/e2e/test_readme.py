"""The README's walk-through with curl runs as written, against an API of our own."""

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.conftest import Keys

ROOT = Path(__file__).resolve().parents[2]
SET_BY_THE_TEST = ("HOTEL=", "CAR=", "API=", "curl -N")  # keys and address are the fixtures'; a stream never ends


def json_values(text: str) -> Iterator[dict]:
    decoder, at = json.JSONDecoder(), 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)
        yield value


def test_the_readme_walkthrough_runs_as_written(api: str, keys: Keys) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## A walk-through with curl", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if not line.startswith(SET_BY_THE_TEST)]
    # A code and an event id of this run's own (isolation by random codes, not by wiping tables).
    script = "\n".join(lines).replace("ABC123", f"RD-{uuid.uuid4().hex[:10]}")
    script = script.replace("3f0c6b1e-8a3c-4c7e-9f2a-1b2c3d4e5f60", str(uuid.uuid4()))
    script = f"set -e\nHOTEL={keys.hotel}\nCAR={keys.car}\nAPI={api}\n{script}"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    answers = list(json_values(done.stdout))  # curl prints no newline after a body
    created, taken, changed, retried = answers[:4]
    assert (created["version"], taken["code"], taken["department"]) == (1, "booking_code_taken", "hotel")
    assert (changed["version"], retried["version"]) == (2, 1)
    # The price at the moment the change was recorded is the change's, even right after the appends.
    at_moment, at_version = answers[-2:]
    assert (at_moment["version"], at_moment["price"]["amount"]) == (2, "99.50")
    assert (at_version["as_of_version"], at_version["price"]["amount"]) == (1, "120.00")
