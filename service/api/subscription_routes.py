"""/v1/subscriptions: a department's webhooks (scope `subscribe`). Delivery is the `deliver` worker's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import OpenAPIMediaType, Operation, Reference, RequestBody
from litestar.params import FromPath
from litestar.types import AnyCallable
from msgspec import Meta

from core import webhooks
from core.events import BOOKING_CODE_PATTERN, EVENT_TYPE_PATTERN, whole
from core.strictjson import decode_strict
from service.api.auth import authenticated
from service.api.http_rules import check_json_body, read_body
from service.api.openapi import (
    KEY_REQUIRED,
    MAX_POSITION,
    SUBSCRIPTION,
    SUBSCRIPTION_CHANGE,
    SUBSCRIPTION_CREATE,
    V1_READ,
    Problems,
)
from service.api.state import InjectedState
from service.ledger import subscriptions
from service.ledger.errors import SubscriptionNotFound, WebhookUrlRefused
from service.ledger.keys import DEPARTMENT, ApiKey
from service.ledger.subscriptions import Filters, Subscription

SUBSCRIBE_SCOPES = ("subscribe",)
MAX_BODY_BYTES = 16 * 1024


class FiltersIn(msgspec.Struct, forbid_unknown_fields=True):
    """Deliver only events that match every filter given."""

    department: Annotated[str, Meta(pattern=whole(DEPARTMENT.pattern))] | None = None
    type: Annotated[str, Meta(pattern=EVENT_TYPE_PATTERN)] | None = None
    booking_code: Annotated[str, Meta(pattern=BOOKING_CODE_PATTERN)] | None = None


class SubscriptionIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=webhooks.MAX_URL_BYTES)]
    filters: FiltersIn | None = None
    # Deliver events after this position; absent: the events committed from now on.
    after: Annotated[int, Meta(ge=0, le=MAX_POSITION)] | None = None


class SubscriptionCreated(Subscription):
    """The new subscription, with its signing secret: shown this once."""

    secret: str


class SubscriptionsOut(msgspec.Struct):
    subscriptions: list[Subscription]


@dataclass
class _CreateOperation(Operation):
    """Documents the body, which the route decodes itself (strictly) instead of the framework."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/SubscriptionIn"))},
        )


def subscription_request_schema() -> dict[str, Any]:
    """The body's JSON Schema components, for the OpenAPI document."""
    _, components = msgspec.json.schema_components((SubscriptionIn,), ref_template="#/components/schemas/{name}")
    return components


def _route(method: type[HTTPRouteHandler], path: str, problems: Problems,
           **options: Any) -> Callable[[AnyCallable], HTTPRouteHandler]:
    """`method`'s route decorator with what every subscription route shares: the key, scope
    `subscribe`, the documented problems, and the handler's name as its operation id."""

    def decorate(handler: AnyCallable) -> HTTPRouteHandler:
        return method(path, security=KEY_REQUIRED, before_request=authenticated,
                      opt={"scopes": SUBSCRIBE_SCOPES, "problems": problems}, operation_id=handler.__name__,
                      **options)(handler)

    return decorate


def _key(request: Request) -> ApiKey:
    key: ApiKey = request.scope["state"]["api_key"]  # set by `authenticated`
    return key


def _id(subscription_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(subscription_id)
    except ValueError:
        raise SubscriptionNotFound("no subscription with this id for this department") from None


@_route(post, "/v1/subscriptions", SUBSCRIPTION_CREATE,
        summary="Subscribe a receiver URL to the events that match the filters (the secret is shown once)",
        status_code=201,
        operation_class=_CreateOperation,
        request_max_body_size=MAX_BODY_BYTES)
async def create_subscription(request: Request, app_state: InjectedState) -> Response[SubscriptionCreated]:
    key = _key(request)
    check_json_body(request)
    raw = await read_body(request, MAX_BODY_BYTES, app_state.settings.http.body_timeout)
    body = decode_strict(raw, SubscriptionIn, "body")
    try:
        await webhooks.check(body.url, app_state.settings.webhook.allowed)
    except webhooks.UnsafeUrl as error:
        raise WebhookUrlRefused(str(error)) from None
    wanted = body.filters or FiltersIn()
    created, secret = await subscriptions.create_subscription(
        app_state.pool, department=key.department, key_id=key.id, url=body.url,
        filters=Filters(department=wanted.department, type=wanted.type, booking_code=wanted.booking_code),
        after=body.after, max_per_department=app_state.settings.webhook.max_per_department)
    fields = {name: getattr(created, name) for name in Subscription.__struct_fields__}
    return Response(SubscriptionCreated(**fields, secret=secret), status_code=201)


@_route(get, "/v1/subscriptions", V1_READ, summary="The subscriptions of the key's department")
async def list_subscriptions(request: Request, app_state: InjectedState) -> SubscriptionsOut:
    return SubscriptionsOut(await subscriptions.list_subscriptions(app_state.pool, _key(request).department))


@_route(get, "/v1/subscriptions/{subscription_id:str}", SUBSCRIPTION,
        summary="One subscription: status, cursor, the last error, the event it is paused on")
async def get_subscription(request: Request, subscription_id: FromPath[str], app_state: InjectedState) -> Subscription:
    return await subscriptions.get_subscription(app_state.pool, _key(request).department, _id(subscription_id))


@_route(delete, "/v1/subscriptions/{subscription_id:str}", SUBSCRIPTION,
        summary="Delete a subscription: nothing more is delivered to it")
async def delete_subscription(request: Request, subscription_id: FromPath[str], app_state: InjectedState) -> None:
    await subscriptions.delete_subscription(app_state.pool, _key(request).department, _id(subscription_id))


@_route(post, "/v1/subscriptions/{subscription_id:str}/resume", SUBSCRIPTION_CHANGE,
        summary="Resume a paused subscription: the event it is paused on is delivered again first",
        status_code=200)
async def resume_subscription(request: Request, subscription_id: FromPath[str],
                              app_state: InjectedState) -> Subscription:
    return await subscriptions.resume_subscription(app_state.pool, _key(request).department, _id(subscription_id))


@_route(post, "/v1/subscriptions/{subscription_id:str}/skip", SUBSCRIPTION_CHANGE,
        summary="Skip exactly the event a paused subscription is paused on (recorded), and deliver on",
        status_code=200)
async def skip_subscription_event(request: Request, subscription_id: FromPath[str],
                                  app_state: InjectedState) -> Subscription:
    key = _key(request)
    return await subscriptions.skip_paused_event(app_state.pool, key.department, key.id, _id(subscription_id))


SUBSCRIPTION_ROUTES = [create_subscription, list_subscriptions, get_subscription, delete_subscription,
                       resume_subscription, skip_subscription_event]
