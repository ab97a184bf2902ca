"""The caller's notifications and notification preferences."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, Limit, ServicesDep
from api.errors import ERROR_RESPONSES
from api.schemas import Notification, Page, Preferences, PreferencesUpdate

router = APIRouter(prefix="/v1", tags=["notifications"], responses=ERROR_RESPONSES)


@router.get("/notifications", response_model=Page[Notification],
            summary="Your notifications, ascending; continue with after=next_cursor")
def list_notifications(user: CurrentUser, services: ServicesDep,
                       after: Annotated[int | None, Query(ge=0)] = None, limit: Limit = 100
                       ) -> Page[Notification]:
    return Page[Notification].model_validate(services.reads.notifications(user.user_id, after, limit))


@router.get("/preferences", response_model=Preferences)
def get_preferences(user: CurrentUser, services: ServicesDep) -> Preferences:
    return Preferences.model_validate(services.reads.preferences(user.user_id))


@router.put("/preferences", response_model=Preferences,
            summary="Which notification kinds you want, on which channels")
def put_preferences(body: PreferencesUpdate, user: CurrentUser, services: ServicesDep) -> Preferences:
    return Preferences.model_validate(services.reads.set_preferences(user.user_id, body.kinds, body.channels))
