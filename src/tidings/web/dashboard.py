"""The platform's dashboard, served by ``tidings serve`` under ``/dashboard``.

Pages: the webhook configurations with their health, the deliveries with
filters (and, above them, the conversations that ordered delivery holds
back, with why), one delivery with every attempt. Actions: re-send a delivery,
recover failed deliveries since a time, send a test event, pause and resume
a configuration; each calls the platform's own function
(``tidings.platform.deliveries.actions``, ``tidings.platform.tryout``). Pages update themselves by server-sent
events (``/dashboard/events``, see ``tidings.web.live``).

Mount it on the platform's app with ``mount_dashboard(app)``.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tidings.contract import utcnow
from tidings.platform import configurations, tenants
from tidings.platform.api.auth import OrgContext
from tidings.platform.api.context import PlatformContext, platform_context
from tidings.platform.deliveries import actions, reads
from tidings.platform.deliveries.statuses import STATUSES
from tidings.platform.tryout import TryoutRefused, try_out
from tidings.web import session
from tidings.web.origin import check_same_origin
from tidings.web.health import AttemptOutcome, health_of, latency_of
from tidings.web.page_headers import PageHeaders
from tidings.web.held_back import hold_reason, spoken_duration
from tidings.web.live import Poll, Removal, Upsert, event_stream, order_key, poll_stream, start_position
from tidings.web.templating import STATIC_DIR, TEMPLATES, render_macro

PREFIX = "/dashboard"
STATIC_PATH = PREFIX + "/static"
HEALTH_WINDOW = timedelta(hours=24)
LATENCY_WINDOW = timedelta(hours=1)
HELD_BACK_REFRESH = 5.0  # seconds at least between two redraws of a live page's held-back section
NOTICE_COOKIE = "tidings_notice"

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def mount_dashboard(app: FastAPI) -> None:
    """Adds the dashboard's pages, its stream and its static files to the platform's ``app`` (once),
    and the pages' security headers (``tidings.web.page_headers``) to every answer under ``/dashboard``."""
    if any(getattr(route, "path", None) == STATIC_PATH for route in app.routes):
        return
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.add_exception_handler(session.SignInRequired, _sign_in_required)
    app.add_middleware(PageHeaders, prefix=PREFIX)  # CSP, nosniff, no framing: every answer under /dashboard


async def _sign_in_required(request: Request, refused: session.SignInRequired) -> Response:
    if request.url.path == PREFIX + "/events" or request.method != "GET":
        return JSONResponse({"error": refused.reason}, status_code=401)
    return session.sign_in_redirect(request)


# ---------------------------------------------------------------- pure decisions


def parse_utc_input(text: str | None) -> datetime | None:
    """A time typed in a form (``2024-01-15 09:30``, or ISO 8601), read as UTC when it names no zone.

    >>> parse_utc_input("2024-01-15 09:30")
    datetime.datetime(2024, 1, 15, 9, 30, tzinfo=datetime.timezone.utc)
    >>> parse_utc_input("yesterday") is None
    True
    """
    text = (text or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utc_input_value(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def parse_positive_int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() and 0 < len(text) <= 18 and int(text) > 0 else None


def delivery_filter(params: Any) -> reads.DeliveryFilter:
    """The filters of the deliveries page from its query string; unknown or empty values mean any."""
    status = (params.get("status") or "").strip() or None
    event_type = (params.get("event_type") or "").strip() or None
    return reads.DeliveryFilter(
        status=status if status and len(status) <= 16 else None,
        event_type=event_type if event_type and len(event_type) <= 64 else None,
        config_id=parse_positive_int(params.get("config")),
        since=parse_utc_input(params.get("since")),
        until=parse_utc_input(params.get("until")),
    )


def filter_query(wanted: reads.DeliveryFilter) -> dict[str, str]:
    """The query parameters that give ``wanted`` back (for links and the stream)."""
    pairs = {
        "status": wanted.status or "",
        "event_type": wanted.event_type or "",
        "config": str(wanted.config_id or ""),
        "since": utc_input_value(wanted.since),
        "until": utc_input_value(wanted.until),
    }
    return {name: value for name, value in pairs.items() if value}


# ---------------------------------------------------------------- sessions and notices


async def signed_in(request: Request) -> OrgContext:
    return await session.signed_in_org(request)


async def acting(request: Request) -> OrgContext:
    """The organization of a form post, once the post is known to come from a dashboard page."""
    check_same_origin(request)
    return await session.signed_in_org(request)


def with_notice(response: Response, text: str, kind: str = "ok") -> Response:
    """Shows ``text`` on the next page (post, redirect, get)."""
    value = base64.urlsafe_b64encode(orjson.dumps({"text": text[:500], "kind": kind})).decode()
    response.set_cookie(NOTICE_COOKIE, value, path=PREFIX, httponly=True, samesite="strict", max_age=60)
    return response


def take_notice(request: Request) -> dict | None:
    value = request.cookies.get(NOTICE_COOKIE)
    if not value:
        return None
    try:
        notice = orjson.loads(base64.urlsafe_b64decode(value.encode()))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return notice if isinstance(notice, dict) and isinstance(notice.get("text"), str) else None


def page(request: Request, template: str, org: OrgContext | None, **context: Any) -> Response:
    notice = take_notice(request)
    response = TEMPLATES.TemplateResponse(
        request, template, {"org": org, "notice": notice, "static": STATIC_PATH, "section": "", **context}
    )
    if notice is not None:
        response.delete_cookie(NOTICE_COOKIE, path=PREFIX)
    response.headers["cache-control"] = "no-store"
    return response


def back_to(url: str, text: str, kind: str = "ok") -> Response:
    return with_notice(RedirectResponse(url, status_code=303), text, kind)


# ---------------------------------------------------------------- signing in


@router.get("", response_class=HTMLResponse)
async def home() -> Response:
    return RedirectResponse(PREFIX + "/configurations", status_code=303)


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, next: str | None = None) -> Response:
    return page(request, "sign_in.html", None, next=session.safe_next(next), error=None)


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request,
    api_key: str = Form(""),
    org_id: str = Form(""),
    next: str = Form(PREFIX),
) -> Response:
    check_same_origin(request)
    key = api_key.strip()
    chosen_org = session.parse_org_id(org_id)
    try:
        if not key:
            raise session.SignInRequired("enter an API key")
        org = await session.resolve_org(request, key, chosen_org)
    except session.SignInRequired as refused:
        response = page(request, "sign_in.html", None, next=session.safe_next(next), error=refused.reason)
        response.status_code = 401
        return response
    response = RedirectResponse(session.safe_next(next), status_code=303)
    await session.start_session(response, request, org)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    check_same_origin(request)
    response = RedirectResponse(PREFIX + "/sign-in", status_code=303)
    await session.end_session(response, request)
    return response


# ---------------------------------------------------------------- configurations


async def _configuration_rows(request: Request, platform: PlatformContext, org_id: int) -> list[dict[str, Any]]:
    since = datetime.now(UTC) - HEALTH_WINDOW
    latency_since = datetime.now(UTC) - LATENCY_WINDOW
    async with platform.engine.connect() as conn:
        configs = await configurations.of_organization(conn, org_id)
        counts = await reads.status_counts(conn, org_id)
        rows = []
        for config in configs:
            outcomes = [AttemptOutcome(row.started_at, row.duration_ms, row.status_code, row.error,
                                       row.response_excerpt)
                        for row in await reads.recent_attempts(conn, org_id, config.id, since)]
            delivered = await reads.delivered_times(conn, org_id, config.id, latency_since)
            rows.append({
                "config": config,
                "health": health_of(outcomes),
                "latency": latency_of(delivered),
                "counts": counts.get(config.id, {}),
            })
    return rows


def _configuration_change(row: dict[str, Any]) -> Upsert:
    html = render_macro("_rows.html", "configuration_row", row=row, static=STATIC_PATH)
    return Upsert(f"config-{row['config'].id}", html, "configurations", order_key(row["config"].id))


@router.get("/configurations", response_class=HTMLResponse)
async def configurations_page(
    request: Request, org: OrgContext = Depends(signed_in), platform: PlatformContext = Depends(platform_context)
) -> Response:
    rows = await _configuration_rows(request, platform, org.org_id)
    async with platform.engine.connect() as conn:
        now = await reads.head(conn)
        org_name = await tenants.organization_name(conn, org.org_id)
    return page(
        request, "configurations.html", org, section="configurations", rows=rows,
        window_hours=int(HEALTH_WINDOW.total_seconds() // 3600), position=now.spelled(),
        any_derived=any(row["health"].circuit_derived for row in rows), org_name=org_name,
    )


async def _own_configuration(platform: PlatformContext, org_id: int, config_id: int) -> Any:
    async with platform.engine.connect() as conn:
        config = await configurations.get(conn, config_id=config_id, org_id=org_id)
    if config is None:
        raise HTTPException(404, "no such configuration in this organization")
    return config


@router.post("/configurations/{config_id}/pause")
async def pause(
    config_id: int, reason: str = Form(""), org: OrgContext = Depends(acting),
    platform: PlatformContext = Depends(platform_context),
) -> Response:
    await _own_configuration(platform, org.org_id, config_id)
    async with platform.engine.begin() as conn:
        held = await actions.pause_configuration(
            conn, config_id=config_id, reason=reason.strip() or "paused from the dashboard", now=utcnow())
    if held is None:
        return back_to(PREFIX + "/configurations", f"Configuration #{config_id} was already paused.", "error")
    return back_to(PREFIX + "/configurations",
                   f"Configuration #{config_id} is paused; {held} waiting deliveries are held.")


@router.post("/configurations/{config_id}/resume")
async def resume(
    request: Request, config_id: int, org: OrgContext = Depends(acting), platform: PlatformContext = Depends(platform_context)
) -> Response:
    await _own_configuration(platform, org.org_id, config_id)
    async with platform.engine.begin() as conn:
        released = await actions.resume_configuration(
            conn, config_id=config_id, now=time.time(), updated_at=utcnow())
    if released is None:
        return back_to(PREFIX + "/configurations", f"Configuration #{config_id} was not paused.", "error")
    return back_to(PREFIX + "/configurations",
                   f"Configuration #{config_id} is resumed; {released} held deliveries are queued.")


@router.post("/configurations/{config_id}/test")
async def test_send(
    config_id: int, org: OrgContext = Depends(acting), platform: PlatformContext = Depends(platform_context)
) -> Response:
    """Sends a test event to the configuration's URL, as ``POST /v2/webhooks/test`` does (the same function)."""
    config = await _own_configuration(platform, org.org_id, config_id)
    try:
        outcome = await try_out(platform.engine, platform.signer, platform.settings.delivery, org_id=org.org_id,
                                url=config.url, event_type=config.event_type,
                                custom_headers=configurations.clear_headers(config))
    except TryoutRefused as refused:
        return back_to(PREFIX + "/configurations", f"Test event to {config.url} refused: {refused}", "error")
    text, kind = tryout_summary(dataclasses.asdict(outcome))
    return back_to(PREFIX + "/configurations", f"Test event to {config.url}: {text}", kind)


def tryout_summary(result: dict[str, Any]) -> tuple[str, str]:
    """One sentence for a test send's result, and whether it went well (``ok``) or not (``error``).

    >>> tryout_summary({"status_code": 200, "duration_ms": 12.4, "error": None})
    ('answered HTTP 200 in 12 ms.', 'ok')
    >>> tryout_summary({"status_code": None, "duration_ms": 3.0, "error": "connection: refused"})
    ('no answer after 3 ms: connection: refused.', 'error')
    """
    status, error, duration = result.get("status_code"), result.get("error"), result.get("duration_ms")
    timing = f" in {duration:.0f} ms" if isinstance(duration, (int, float)) else ""
    if status is None:
        after = f" after {duration:.0f} ms" if isinstance(duration, (int, float)) else ""
        return f"no answer{after}: {error or 'unknown error'}.", "error"
    kind = "ok" if 200 <= status < 300 and not error else "error"
    return f"answered HTTP {status}{timing}.", kind


# ---------------------------------------------------------------- deliveries


def held_back_rows(found: reads.HeldBack, now: float) -> list[dict[str, Any]]:
    """Each held-back conversation with why it waits and for how long, at Unix time ``now``."""
    return [{
        "item": item,
        "reason": hold_reason(item.head, paused=bool(item.config.paused), paused_reason=item.config.paused_reason,
                              now=now),
        "waited": spoken_duration(now - item.waiting_since.timestamp()),
    } for item in found.conversations]


def _held_back_change(found: reads.HeldBack, config_id: int | None) -> Upsert:
    html = render_macro("_rows.html", "held_back_section", held=found, rows=held_back_rows(found, time.time()),
                        config_id=config_id)
    return Upsert("held-back", html, "held-back", "0")


def _delivery_change(row: Any, wanted: reads.DeliveryFilter) -> Upsert | Removal:
    key = f"delivery-{row.id}"
    if not wanted.matches(row):
        return Removal(key)
    html = render_macro("_rows.html", "delivery_row", delivery=row)
    return Upsert(key, html, "deliveries", order_key(row.id))


@router.get("/deliveries", response_class=HTMLResponse)
async def deliveries_page(
    request: Request, org: OrgContext = Depends(signed_in), platform: PlatformContext = Depends(platform_context)
) -> Response:
    wanted = delivery_filter(request.query_params)
    before = parse_positive_int(request.query_params.get("before"))
    async with platform.engine.connect() as conn:
        now = await reads.head(conn)
        rows = await reads.delivery_page(conn, org.org_id, wanted, before)
        held = await reads.held_back(conn, org.org_id, wanted.config_id)
        configs = await configurations.of_organization(conn, org.org_id)
        event_types = await configurations.event_types(conn, org.org_id)
        org_name = await tenants.organization_name(conn, org.org_id)
    query = filter_query(wanted)
    return page(
        request, "deliveries.html", org, section="deliveries", rows=rows, configs=configs,
        held=held, held_rows=held_back_rows(held, time.time()),
        event_types=event_types, statuses=STATUSES, wanted=wanted, query=query,
        since_value=utc_input_value(wanted.since), until_value=utc_input_value(wanted.until),
        position=now.spelled(), live=before is None,
        older=rows[-1].id if len(rows) == reads.PAGE_SIZE else None,
        recover_since=utc_input_value(datetime.now(UTC) - timedelta(hours=1)), org_name=org_name,
    )


@router.get("/deliveries/{delivery_id}", response_class=HTMLResponse)
async def delivery_page(
    request: Request, delivery_id: int, org: OrgContext = Depends(signed_in),
    platform: PlatformContext = Depends(platform_context),
) -> Response:
    async with platform.engine.connect() as conn:
        now = await reads.head(conn)
        row = await reads.delivery(conn, org.org_id, delivery_id)
        if row is None:
            raise HTTPException(404, "no such delivery in this organization")
        tries = await reads.delivery_attempts(conn, delivery_id)
        org_name = await tenants.organization_name(conn, org.org_id)
        behind = await _waits_behind(conn, org.org_id, row)
    return page(
        request, "delivery.html", org, section="deliveries", delivery=row, attempts=tries,
        position=now.spelled(), org_name=org_name, behind=behind,
    )


async def _waits_behind(conn: Any, org_id: int, row: Any) -> dict[str, Any] | None:
    """For a queued delivery: the head of its conversation it waits behind, and why that one is not done."""
    if row.status != "queued" or row.conversation_id is None:
        return None
    pair = (row.webhook_config_id, row.conversation_id)
    head = (await reads.conversation_heads(conn, org_id, [pair])).get(pair)
    config = await configurations.get(conn, config_id=row.webhook_config_id, org_id=org_id)
    reason = hold_reason(head, paused=bool(config.paused), paused_reason=config.paused_reason, now=time.time())
    return {"head": head, "reason": reason}


@router.post("/deliveries/{delivery_id}/resend")
async def resend(
    request: Request, delivery_id: int, org: OrgContext = Depends(acting), platform: PlatformContext = Depends(platform_context)
) -> Response:
    async with platform.engine.begin() as conn:
        row = await reads.delivery(conn, org.org_id, delivery_id)
        if row is None:
            raise HTTPException(404, "no such delivery in this organization")
        config = await configurations.get(conn, config_id=row.webhook_config_id, org_id=org.org_id)
        paused = config is not None and bool(config.paused)
        queued = await actions.resend(conn, delivery_id=delivery_id, now=time.time())
    here = f"{PREFIX}/deliveries/{delivery_id}"
    if not queued:
        return back_to(here, f"Delivery #{delivery_id} is not finished: it is {row.status}.", "error")
    held = " It is held until its configuration is resumed." if paused else ""
    return back_to(here, f"Delivery #{delivery_id} is queued to be sent again.{held}")


@router.post("/recover")
async def recover(
    request: Request, since: str = Form(""), config: str = Form(""), org: OrgContext = Depends(acting),
    platform: PlatformContext = Depends(platform_context),
) -> Response:
    moment = parse_utc_input(since)
    if moment is None:
        return back_to(PREFIX + "/deliveries", "Recover needs a time (UTC) to start from.", "error")
    config_id = parse_positive_int(config)
    async with platform.engine.begin() as conn:
        configs = await configurations.of_organization(conn, org.org_id)
        chosen = [c for c in configs if config_id is None or c.id == config_id]
        if config_id is not None and not chosen:
            raise HTTPException(404, "no such configuration in this organization")
        count = 0
        for config_row in chosen:
            count += await actions.recover(conn, config_id=config_row.id, since=moment, now=time.time())
    where = f" of configuration #{config_id}" if config_id else ""
    return back_to(
        PREFIX + "/deliveries",
        f"{count} failed deliveries{where} since {utc_input_value(moment)} UTC are queued again.",
    )


# ---------------------------------------------------------------- live updates


async def _deliveries_poll(platform: PlatformContext, org_id: int, since: reads.Head,
                           wanted: reads.DeliveryFilter) -> tuple[list, reads.Head]:
    async with platform.engine.connect() as conn:
        found = await reads.changes_since(conn, org_id, since)
        rows = await reads.deliveries_by_id(conn, org_id, [*found.new_ids, *found.attempted_ids])
    return rows, found.head


@router.get("/events")
async def events(
    request: Request, org: OrgContext = Depends(signed_in), platform: PlatformContext = Depends(platform_context)
) -> Response:
    """The stream of one page: ``view`` is ``deliveries``, ``delivery`` or ``configurations``."""
    params = request.query_params
    view = params.get("view", "deliveries")
    start = reads.Head.parse(start_position(request, params.get("after", "")))
    if start is None:
        async with platform.engine.connect() as conn:
            start = await reads.head(conn)
    if view == "deliveries":
        poll = _deliveries_stream(platform, org.org_id, delivery_filter(params))
    elif view == "delivery":
        delivery_id = parse_positive_int(params.get("id"))
        if delivery_id is None:
            raise HTTPException(400, "the delivery view needs id=")
        async with platform.engine.connect() as conn:
            if await reads.delivery(conn, org.org_id, delivery_id) is None:
                raise HTTPException(404, "no such delivery in this organization")
        poll = _delivery_stream(platform, org.org_id, delivery_id)
    elif view == "configurations":
        poll = _configurations_stream(request, platform, org.org_id)
    else:
        raise HTTPException(400, "view is deliveries, delivery or configurations")
    return event_stream(poll_stream(request, start.spelled(), poll))


def _deliveries_stream(platform: PlatformContext, org_id: int, wanted: reads.DeliveryFilter):
    # The held-back section is drawn again after deliveries changed (a new
    # one, a new attempt), at most every HELD_BACK_REFRESH seconds: it is a
    # grouped query, not a range scan like the rows'. An empty section is
    # sent once, not again while it stays empty.
    held_back = {"stale": False, "next": 0.0, "sent_empty": False}

    async def poll(position: str) -> Poll:
        rows, now = await _deliveries_poll(platform, org_id, reads.Head.parse(position), wanted)
        changes: list = [_delivery_change(row, wanted) for row in rows]
        held_back["stale"] = held_back["stale"] or bool(rows)
        if held_back["stale"] and time.monotonic() >= held_back["next"]:
            async with platform.engine.connect() as conn:
                found = await reads.held_back(conn, org_id, wanted.config_id)
            empty = not found.conversations
            if not (empty and held_back["sent_empty"]):
                changes.append(_held_back_change(found, wanted.config_id))
            held_back.update(stale=False, next=time.monotonic() + HELD_BACK_REFRESH, sent_empty=empty)
        return Poll(changes, now.spelled())

    return poll


def _delivery_stream(platform: PlatformContext, org_id: int, delivery_id: int):
    async def poll(position: str) -> Poll:
        since = reads.Head.parse(position)
        async with platform.engine.connect() as conn:
            now = await reads.head(conn)
            tries = await reads.delivery_attempts(conn, delivery_id, after_id=since.attempt_id)
            tries = [attempt for attempt in tries if attempt.id <= now.attempt_id]
            row = await reads.delivery(conn, org_id, delivery_id) if tries else None
        if row is None:  # nothing new, or not this organization's delivery
            return Poll([], now.spelled())
        changes: list = [Upsert("delivery-summary", render_macro("_rows.html", "delivery_summary", delivery=row),
                                "delivery", "0")]
        for attempt in tries:
            html = render_macro("_rows.html", "attempt_block", attempt=attempt)
            changes.append(Upsert(f"attempt-{attempt.id}", html, "attempts", order_key(attempt.id)))
        return Poll(changes, now.spelled())

    return poll


def _configurations_stream(request: Request, platform: PlatformContext, org_id: int):
    async def poll(position: str) -> Poll:
        since = reads.Head.parse(position)
        async with platform.engine.connect() as conn:
            found = await reads.changes_since(conn, org_id, since)
        if not found.attempted_ids and not found.new_ids:
            return Poll([], found.head.spelled())
        rows = await _configuration_rows(request, platform, org_id)
        return Poll([_configuration_change(row) for row in rows], found.head.spelled())

    return poll

