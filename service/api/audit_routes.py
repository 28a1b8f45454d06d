"""Audit routes: a booking's hash chain, the signed checkpoints and the keys that sign them."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.params import Parameter

from service.api import metrics
from service.api.auth import READ_SCOPES, authenticated
from service.api.openapi import BOOKING_READ, KEY_REQUIRED, MAX_POSITION, V1_READ, BookingCode
from service.api.state import InjectedState
from service.ledger.proofs import CheckpointsPage, Proof, SigningKeys, read_checkpoints, read_proof, signing_keys


@get(
    "/v1/bookings/{code:str}/proof",
    summary="A booking's hash chain: each event's hash and the canonical form it covers",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "proof", "problems": BOOKING_READ},
    operation_id="get_proof",
)
async def booking_proof(
    code: BookingCode,
    app_state: InjectedState,
    from_version: Annotated[int, Parameter(ge=1, le=2**31 - 1)] = 1,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> Proof:
    with metrics.counting_read("proof"):
        return await read_proof(app_state.pool, code, from_version, limit)


@get(
    "/v1/audit/key",
    summary="The Ed25519 public keys that signed checkpoints (pin them: a verifier must not learn a key from "
            "the ledger it checks)",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "audit_key", "problems": V1_READ},
    operation_id="get_audit_key",
)
async def audit_key(app_state: InjectedState) -> SigningKeys:
    with metrics.counting_read("audit_key"):
        return await signing_keys(app_state.pool)


@get(
    "/v1/audit/checkpoints",
    summary="Signed checkpoints after a seq; with `prove`, the inclusion proof of the event at that position",
    security=KEY_REQUIRED,
    before_request=authenticated,
    opt={"scopes": READ_SCOPES, "read_route": "checkpoints", "problems": V1_READ},
    operation_id="get_checkpoints",
)
async def audit_checkpoints(
    app_state: InjectedState,
    after: Annotated[int, Parameter(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    prove: Annotated[int | None, Parameter(ge=0, le=MAX_POSITION, description="an event's position")] = None,
) -> CheckpointsPage:
    with metrics.counting_read("checkpoints"):
        return await read_checkpoints(app_state.pool, after, limit, prove)


AUDIT_ROUTES = [booking_proof, audit_key, audit_checkpoints]
