"""The OpenAPI document as the API serves it (service/api/openapi.py), read without serving it:
what it says of errors, money, the clock and the stream. tests/e2e/test_fuzz.py compares it with
real answers; these are the parts a generator or a reader relies on."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from service.api.app import create_app
from service.api.openapi import PROBLEM_CODES, served_document
from service.api.problems import _HTTP_CODES, PROBLEM_JSON
from service.ledger import errors


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return served_document(create_app(schema_head="head"))


def valid(document: dict[str, Any], name: str, value: object) -> bool:
    """Whether `value` matches the named schema, its $refs resolved within the document."""
    registry = Registry().with_resource("urn:doc", DRAFT202012.create_resource(document))
    schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=registry).is_valid(value)


def test_every_error_answer_is_a_problem_with_its_routes_codes(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            errors_ = {status: answer for status, answer in operation["responses"].items() if int(status) >= 400}
            assert "500" in errors_, f"{method} {path}"
            for status, answer in errors_.items():
                assert list(answer["content"]) == [PROBLEM_JSON], f"{method} {path} {status}"
                assert answer["content"][PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
                assert answer["x-problem-codes"] and set(answer["x-problem-codes"]) <= set(PROBLEM_CODES)
    append = document["paths"]["/v1/bookings/{code}/events"]["post"]["responses"]
    assert append["409"]["x-problem-codes"] == ["booking_code_taken", "version_conflict", "event_id_conflict",
                                                "personal_data_erased"]
    assert append["403"]["x-problem-codes"] == ["forbidden", "not_owner"]
    feed = document["paths"]["/v1/events"]["get"]["responses"]
    assert "404" not in feed and feed["401"]["x-problem-codes"] == ["unauthorized"]


def test_the_problem_code_enum_holds_every_code_the_api_answers_with() -> None:
    answered = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(
        cls, errors.LedgerError) and cls is not errors.LedgerError}
    answered |= set(_HTTP_CODES.values()) | {"client_disconnected", "internal_error", "bad_request"}
    assert answered == set(PROBLEM_CODES)


def test_money_is_one_object_whose_fraction_digits_follow_the_currency(document: dict[str, Any]) -> None:
    price_in = document["components"]["schemas"]["PriceIn"]
    assert price_in["type"] == "object" and "anyOf" not in price_in and "oneOf" not in price_in
    assert valid(document, "PriceIn", {"amount": "129.90", "currency": "EUR"})
    assert valid(document, "PriceIn", {"amount": "1.234", "currency": "KWD"})
    assert valid(document, "PriceIn", {"amount": "1500", "currency": "JPY"})
    assert not valid(document, "PriceIn", {"amount": "1.234", "currency": "EUR"})
    assert not valid(document, "PriceIn", {"amount": "1.5", "currency": "JPY"})
    assert not valid(document, "PriceIn", {"amount": "1.00", "currency": "XYZ"})
    assert not valid(document, "PriceIn", {"amount": "-1", "currency": "EUR"})


def test_the_price_route_takes_one_clock_and_answers_one_schema(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/bookings/{code}/price"]["get"]
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert parameters["clock"] == {"$ref": "#/components/schemas/Clock"}
    assert parameters["at"]["type"] == "string" and parameters["version"]["type"] == "integer"
    assert document["components"]["schemas"]["Clock"]["enum"] == ["recorded", "occurred"]
    ok = operation["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/PriceInForce"} and ok["example"]["clock"] == "occurred"


def test_the_stream_is_text_event_stream_and_the_key_a_named_bearer_scheme(document: dict[str, Any]) -> None:
    stream = document["paths"]["/v1/events/stream"]["get"]
    assert list(stream["responses"]["200"]["content"]) == ["text/event-stream"]
    assert stream["security"] == [{"ApiKey": []}]
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
