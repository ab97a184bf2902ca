"""The caller's webhook endpoint: where notifications are POSTed, and the key that signs them.

``PUT /v1/preferences/webhook`` sets the URL (a new signing secret the first time, or with
``rotate_secret``) and switches the ``webhook`` channel on in ``/v1/preferences``; ``GET`` shows
it; ``DELETE`` removes it and switches the channel off (pending deliveries then fail). Which
kinds are sent follows ``/v1/preferences`` (``projections.delivery``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import CurrentUser, ServicesDep
from api.errors import ERROR_RESPONSES, ApiError, not_found
from api.schemas import Body
from projections import delivery
from projections.webhooks import refused_target

router = APIRouter(prefix="/v1/preferences", tags=["notifications"], responses=ERROR_RESPONSES)


class WebhookUpdate(Body):
    url: Annotated[str, Field(min_length=8, max_length=2000, examples=["https://example.com/spotex"])]
    rotate_secret: bool = False


class WebhookPublic(BaseModel):
    url: str
    secret: str = Field(description="HMAC-SHA256 key of the X-Spotex-Signature header")
    created_at: str
    updated_at: str


def _store(services: Any) -> Any:
    return services.reads.store


def _public(endpoint: delivery.Endpoint) -> WebhookPublic:
    return WebhookPublic(url=endpoint.url, secret=endpoint.secret, created_at=endpoint.created_at,
                         updated_at=endpoint.updated_at)


@router.get("/webhook", response_model=WebhookPublic, summary="Your webhook endpoint")
def get_webhook(user: CurrentUser, services: ServicesDep) -> WebhookPublic:
    endpoint = delivery.get_webhook(_store(services), user.user_id)
    if endpoint is None:
        raise not_found("webhook endpoint")
    return _public(endpoint)


@router.put("/webhook", response_model=WebhookPublic,
            summary="Set your webhook URL; notifications are POSTed there, signed, at least once")
def put_webhook(body: WebhookUpdate, user: CurrentUser, services: ServicesDep) -> WebhookPublic:
    refused = refused_target(body.url, allow_private=True)
    if refused is not None:
        raise ApiError(422, "invalid_value", f"url: {refused}", [{"field": "url", "message": refused}])
    store = _store(services)
    current = delivery.get_webhook(store, user.user_id)
    secret = None if current is None or body.rotate_secret else current.secret
    return _public(delivery.set_webhook(store, user.user_id, body.url, secret))


@router.delete("/webhook", status_code=204, response_class=Response, summary="Remove your webhook")
def delete_webhook(user: CurrentUser, services: ServicesDep) -> Response:
    if not delivery.delete_webhook(_store(services), user.user_id):
        raise not_found("webhook endpoint")
    return Response(status_code=204)
