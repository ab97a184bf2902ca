"""From a validated command to an acknowledged request, and (``?wait=true``) to its outcome.

``submit`` appends the command to the requests log under its idempotency id and wakes the
engine. The api never decides a command's fate: the answer at once is the request's id and
position (202). With ``wait`` it then waits, within the server's limit, until the engine has
committed the request's outcome and every read model has projected it, so the resource read
next reflects the command (read your writes). One poller per app watches the positions for
all waiting requests, so a thousand waiters cost one query per tick.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from fastapi.responses import JSONResponse

from api.errors import ApiError
from api.reads_extra import outcome_at
from api.services import Services
from domain.commands import Command, request_id_for
from engine.log import Appended, RecordedOutcome, RequestConflict

POLL_MIN, POLL_MAX = 0.001, 0.02
# Requests appended in one transaction at most (group commit; see ``Appender``).
APPEND_BATCH = 256
# Placements this process appended, kept so a cancel or amend that follows finds its order's
# owner without a query (requests never change once appended).
RECENT_PLACEMENTS = 65_536
log = logging.getLogger("spotex.api")


@dataclass(frozen=True, slots=True)
class Submitted:
    request_id: str
    position: int
    created: bool
    outcome: RecordedOutcome | None  # set when waited for: committed and projected

    def receipt(self, **ids: Any) -> dict[str, Any]:
        return {"event_id": self.request_id, "position": self.position, **ids}


async def submit(
    services: Services,
    command: Command,
    actor: str | None,
    *,
    wait: bool = False,
    conflict: tuple[str, str] = ("idempotency_conflict", "this idempotency key was used with another body"),
) -> Submitted:
    request_id = request_id_for(command, actor) or uuid.uuid4()
    body = command.to_log()
    try:
        appended = await appender(services).append(request_id, actor, body, services.clock())
    except RequestConflict as exc:
        code, message = conflict
        details = {"event_id": str(exc.request_id), "position": exc.position}
        raise ApiError(409, code, message, details) from None
    outcome = None
    if wait:
        outcome = await watcher(services).outcome(
            str(appended.request_id), appended.position, services.wait_limit
        )
    return Submitted(str(appended.request_id), appended.position, appended.created, outcome)


def accepted(sub: Submitted, http_status: int = 202, **ids: Any) -> JSONResponse:
    return JSONResponse(sub.receipt(**ids), status_code=http_status)


def done(resource: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(resource, status_code=status)


REJECTION_STATUS = {
    "not_allowed": 403,
    "unknown_user": 404,
    "unknown_asset": 404,
    "unknown_market": 404,
    "unknown_order": 404,
    "unknown_withdrawal": 404,
    "asset_exists": 409,
    "market_exists": 409,
    "user_exists": 409,
    "duplicate": 409,
}
REJECTIONS = {"RequestRejected", "OrderRejected", "AmendRejected", "CancelRejected"}


def rejection(outcome: RecordedOutcome) -> dict[str, Any] | None:
    for fact in outcome.facts:
        if fact.get("type") in REJECTIONS:
            return fact
    return None


def raise_if_rejected(sub: Submitted) -> None:
    """With ``wait``, a command the engine refused answers its reason as an error."""
    assert sub.outcome is not None
    fact = rejection(sub.outcome)
    if fact is not None:
        reason = str(fact.get("reason"))
        raise ApiError(
            REJECTION_STATUS.get(reason, 422),
            reason,
            str(fact.get("message") or reason),
            {"event_id": sub.request_id, "position": sub.position},
        )


def _projected_outcome(services: Services, request_id: str) -> RecordedOutcome | None:
    """The outcome of a request the read models show (one thread hop for both reads)."""
    found = services.reads.outcome_of(request_id)
    if found is None:
        return None
    return outcome_at(services.logs, int(found["position"]))


class Watcher:
    """Resolves waits on positions: the engine's tracking position, then the read models'."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._engine: list[tuple[int, asyncio.Future[None]]] = []
        self._projected: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kicked: asyncio.Event | None = None

    def kick(self) -> None:
        """Look at the positions now (thread-safe): an in-process engine committed a batch."""
        loop, kicked = self._loop, self._kicked
        if loop is not None and kicked is not None and (self._engine or self._projected):
            loop.call_soon_threadsafe(kicked.set)

    async def _engine_position(self) -> int:
        known = self.services.engine_positions
        if known is not None:
            return known()[0]
        return await to_thread.run_sync(self.services.logs.engine_position)

    async def _outcome_head(self) -> int:
        known = self.services.engine_positions
        if known is not None:
            return known()[1]
        return await to_thread.run_sync(self.services.logs.last_outcome_position)

    async def outcome(self, request_id: str, request_position: int, limit: float
                      ) -> RecordedOutcome | None:
        """The request's outcome once every read model shows it; None past ``limit`` seconds."""
        services = self.services
        try:
            async with asyncio.timeout(limit):
                await self._wait(self._engine, request_position)
                # Committed: the exchange log's head is at or past its outcome now.
                head = await self._outcome_head()
                await self._wait(self._projected, head)
                return await to_thread.run_sync(_projected_outcome, services, request_id)
        except TimeoutError:
            return None

    async def _wait(self, queue: list[tuple[int, asyncio.Future[None]]], position: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append((position, future))
        if self._kicked is None:
            self._loop, self._kicked = asyncio.get_running_loop(), asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    async def _poll(self) -> None:
        delay = POLL_MIN
        while self._engine or self._projected:
            progressed = False
            try:
                if self._engine:
                    at = await self._engine_position()
                    progressed |= self._release(self._engine, at)
                if self._projected:
                    hint = self.services.projected_hint
                    pushed = hint() if hint is not None else None
                    if pushed is None:
                        at = await to_thread.run_sync(self.services.reads.projected_position)
                    else:  # reported after each pass, with a kick: no query per look
                        at = pushed
                    progressed |= self._release(self._projected, at)
            except Exception:  # a store unreachable: waiters answer 202 at their limit
                log.exception("waiting for outcomes: cannot read positions")
                progressed = False
            # Without kicks (another process's engine) a tick that released someone looks
            # again soon; with them (``kick`` on every committed batch) the looks thin out
            # until the next batch: each look is a query and a thread hop.
            kicks = self.services.engine_positions is not None
            delay = POLL_MIN if progressed and not kicks else min(delay * 2, POLL_MAX)
            kicked = self._kicked
            assert kicked is not None
            try:  # the next look: after ``delay``, or at once when an engine batch committed
                async with asyncio.timeout(delay):
                    await kicked.wait()
                delay = POLL_MIN
            except TimeoutError:
                pass
            kicked.clear()

    @staticmethod
    def _release(queue: list[tuple[int, asyncio.Future[None]]], at: int) -> bool:
        keep, released = [], False
        for position, future in queue:
            if future.done():
                continue
            if position <= at:
                future.set_result(None)
                released = True
            else:
                keep.append((position, future))
        queue[:] = keep
        return released


def watcher(services: Services) -> Watcher:
    if services.watcher is None:
        services.watcher = Watcher(services)
    w: Watcher = services.watcher
    return w


@dataclass(frozen=True, slots=True)
class Placement:
    """A PlaceOrder request as appended: what ``engine.log.Request`` says of it."""

    request_id: uuid.UUID
    actor: str | None
    command: dict[str, Any]
    timestamp: Any


def recent_placement(services: Services, order_id: uuid.UUID) -> Placement | None:
    """The placement request of ``order_id`` if this process appended it lately, else None."""
    if services.appender is None:
        return None
    found = services.appender.placements.get(order_id.int)
    return None if found is None else Placement(order_id, *found)


class Appender:
    """Group commit of the requests log: one transaction for the requests that arrive together.

    Each append of the requests log is a transaction that waits for its commit to reach disk,
    and the store serialises appends (it locks the table so positions are given in commit
    order), so one request per transaction bounds the whole api at one commit per request.
    Here the first request to arrive starts a commit of its own at once; every request that
    arrives while a commit is in flight waits for the next one, which takes them all (up to
    ``APPEND_BATCH``) together. Nothing waits for a timer: under light load each request
    commits alone as before, under heavy load the batches grow with the load. A request is
    answered only after the transaction that holds it committed, so an acknowledged request is
    in the log, as before.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        # order id (as an int) → (actor, command, timestamp): ints, strings, a dict of strings
        # and a datetime, none of which the cyclic collector tracks, so a full cache costs the
        # collector nothing (Placement and UUID objects are tracked: 65,536 of each made
        # every full collection walk them)
        self.placements: OrderedDict[int, tuple[str | None, dict[str, Any], Any]] = OrderedDict()
        self._pending: list[tuple[tuple[uuid.UUID, str | None, dict[str, Any], Any],
                                  asyncio.Future[Appended]]] = []
        self._task: asyncio.Task[None] | None = None

    async def append(self, request_id: uuid.UUID, actor: str | None, body: dict[str, Any], time: Any
                     ) -> Appended:
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._pending.append(((request_id, actor, body, time), future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._commit_all())
        # Shielded: a client that goes away does not cancel the commit of the others' requests.
        return await asyncio.shield(future)

    async def _commit_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:APPEND_BATCH], self._pending[APPEND_BATCH:]
            try:
                results = await to_thread.run_sync(
                    self.services.logs.append_requests, [item for item, _ in batch]
                )
            except Exception as exc:  # the store failed: every request of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.services.notify()
            self.services.metrics.observe_append(len(batch))
            for (item, future), result in zip(batch, results, strict=True):
                if isinstance(result, Appended) and result.created and item[2].get("command") == "PlaceOrder":
                    self._remember(Placement(item[0], item[1], item[2], item[3]))
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _remember(self, placement: Placement) -> None:
        self.placements[placement.request_id.int] = (placement.actor, placement.command, placement.timestamp)
        if len(self.placements) > RECENT_PLACEMENTS:
            self.placements.popitem(last=False)


def appender(services: Services) -> Appender:
    if services.appender is None:
        services.appender = Appender(services)
    a: Appender = services.appender
    return a
