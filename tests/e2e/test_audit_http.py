"""The audit routes over HTTP: a booking's hash chain and the signed checkpoints, checkable by anyone with a
read key and the signer's public key."""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import datetime

import httpx

from core import merkle
from core.checkpoints import Checkpoint, Signer
from devstack.harness import CLI, as_role
from devstack.processes import wait_until
from tests import scratch
from tests.conftest import random_code
from tests.e2e.conftest import Keys, auth
from tests.e2e.test_http import assert_problem, events_url, priced


def test_the_proof_is_the_chain_of_the_events_read(api: str, keys: Keys) -> None:
    code = random_code("PROOF")
    with httpx.Client(timeout=10) as client:
        body = {"expected_version": 0, "events": [priced(data={"guest": "room 12", "n": 1.5}),
                                                  {"type": "Note", "occurred_at": "2026-11-26T10:00:00.5+01:00"}]}
        assert client.post(events_url(api, code), json=body, headers=auth(keys.hotel)).status_code == 201
        more = {"events": [priced("99.50")]}
        assert client.post(events_url(api, code), json=more, headers=auth(keys.hotel)).status_code == 201
        events = client.get(events_url(api, code), headers=auth(keys.reader)).json()["events"]

        proof = client.get(f"{api}/v1/bookings/{code}/proof", headers=auth(keys.reader))
        assert proof.status_code == 200, proof.text
        chain = proof.json()
        assert (chain["booking_code"], chain["version"], chain["next_from_version"]) == (code, 3, None)
        previous = bytes.fromhex(chain["previous"])
        assert previous == bytes(32)
        for link, event in zip(chain["links"], events, strict=True):
            lines = link["canonical"].split("\n")
            assert lines[:7] == ["booking-ledger event v1", str(event["position"]), event["event_id"], code,
                                 str(event["version"]), event["type"], "hotel"]
            assert link["hash"] == event["hash"] == hashlib.sha256(previous + link["canonical"].encode()).hexdigest()
            previous = bytes.fromhex(link["hash"])
        assert chain["head"] == previous.hex()
        assert chain["links"][0]["canonical"].split("\n")[7:9] == ["120.00", "EUR"]
        assert chain["links"][1]["canonical"].split("\n")[9] == "1795683600500000"  # 2026-11-26T09:00:00.5Z in µs

        page = client.get(f"{api}/v1/bookings/{code}/proof?from_version=2&limit=1", headers=auth(keys.reader)).json()
        assert (page["previous"], [link["version"] for link in page["links"]]) == (events[0]["hash"], [2])
        assert page["next_from_version"] == 3

        missing = client.get(f"{api}/v1/bookings/{random_code('NONE')}/proof", headers=auth(keys.reader))
        assert_problem(missing, 404, "booking_not_found")
        assert_problem(client.get(f"{api}/v1/bookings/{code}/proof"), 401, "unauthorized")


def test_checkpoints_are_signed_linked_and_prove_an_event(api: str, keys: Keys, database_url: str) -> None:
    key_file = scratch.folder("booking-ledger-key-") / "checkpoint.pem"
    signer = Signer.create(key_file)
    code = random_code("CKPT")
    with httpx.Client(timeout=10) as client:
        created = client.post(events_url(api, code), json={"expected_version": 0, "events": [priced()]},
                              headers=auth(keys.hotel))
        event = created.json()["events"][0]
        env = as_role({**os.environ, "LEDGER_DATABASE_URL": database_url,
                       "LEDGER_CHECKPOINT_KEY_FILE": str(key_file)}, "checkpoint")

        def proven() -> dict | None:
            subprocess.run([CLI, "checkpoint"], env=env, check=True, capture_output=True, timeout=60)
            page = client.get(f"{api}/v1/audit/checkpoints?after=0&limit=1000&prove={event['position']}",
                              headers=auth(keys.reader)).json()
            return page if page["inclusion"] is not None else None

        # Another test's transaction held open keeps the fence (and so the checkpoint) below the event.
        page = wait_until(proven, 30, interval=0.5, what="a checkpoint over the event")
        published = client.get(f"{api}/v1/audit/key", headers=auth(keys.reader)).json()

    assert published["algorithm"] == "Ed25519" and published["current"] == signer.key_id
    assert published["keys"][-1]["public_key"] == signer.public_key.hex()
    previous = None
    for checkpoint in page["checkpoints"]:  # the suite's other checkpoints were made by this test's key too
        signed = Checkpoint(**{**checkpoint, "created_at": datetime.fromisoformat(checkpoint["created_at"])})
        assert signed.signed_by(signer.public_key) or signed.key_id != signer.key_id
        expected = previous.digest().hex() if previous is not None else "00" * 32
        assert (signed.previous, signed.after_position) == (expected, previous.through_position if previous else 0)
        previous = signed
    proof = page["inclusion"]
    covering = next(c for c in page["checkpoints"] if c["seq"] == proof["seq"])
    assert proof["hash"] == event["hash"] and proof["leaf"] == merkle.leaf(event["position"],
                                                                             bytes.fromhex(event["hash"])).hex()
    assert merkle.included(proof["index"], covering["events"], bytes.fromhex(proof["leaf"]),
                           [bytes.fromhex(step) for step in proof["path"]], bytes.fromhex(covering["root"]))
    assert covering["after_position"] < event["position"] <= covering["through_position"]
