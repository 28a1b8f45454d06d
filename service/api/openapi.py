"""What every route file uses to document itself in the OpenAPI document: the key's security
scheme, the problem answers, and the parameter types shared by several routes."""

from __future__ import annotations

from typing import Annotated

from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.params import Parameter

from core.events import BOOKING_CODE_PATTERN
from service.api.problems import PROBLEM_JSON
from service.api.schemas import Problem

API_KEY_SCHEME = "apiKey"
# The `security` of every /v1 route: `Authorization: Bearer <api-key>`.
KEY_REQUIRED: list[SecurityRequirement] = [{API_KEY_SCHEME: []}]

# Below 2**63 and exact as a JSON Schema float, so validators agree on the bound.
MAX_POSITION = 9 * 10**18

# Path parameter: validated (422 on mismatch) and documented with its pattern.
BookingCode = Annotated[str, Parameter(pattern=BOOKING_CODE_PATTERN, description="the booking code", max_length=64)]


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem+json answers a route documents, one per status."""
    return {
        s: ResponseSpec(Problem, description="problem details", media_type=PROBLEM_JSON, generate_examples=False)
        for s in statuses
    }


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="booking-ledger",
        version="1",
        description="The booking price ledger. Every /v1 route takes 'Authorization: Bearer <api-key>'.",
        path="/schema",
        components=Components(security_schemes={API_KEY_SCHEME: SecurityScheme(type="http", scheme="bearer")}),
    )
