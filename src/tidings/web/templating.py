"""The Jinja2 templates of the dashboard and the inbox, and the filters they use.

Autoescaping is on for every template: names, message texts, answers of
subscribers' endpoints and event bodies all come from outside.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tidings.contract import parse_date
from tidings.web import message_view

WEB_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"


def when(value: Any) -> str:
    """A time as people read it, in UTC, to the second: datetimes, Unix seconds or contract dates."""
    moment = as_datetime(value)
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    try:
        return parse_date(str(value)).astimezone(UTC)
    except ValueError:
        return None


def milliseconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def percent(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f} %" if 0 < value < 1 else f"{value * 100:.0f} %"


def pretty_json(value: Any) -> str:
    """Bytes or text of JSON, indented; anything that is not JSON as it is."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        try:
            return orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            return value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def templates() -> Jinja2Templates:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        when=when,
        ms=milliseconds,
        percent=percent,
        pretty_json=pretty_json,
    )
    environment.globals.update(
        shown_content=message_view.shown_content,
        preview=message_view.preview,
        sender_role=message_view.sender_role,
        sender_type_label=message_view.sender_type_label,
        status_class=message_view.status_class,
        channel_name=message_view.channel_name,
        consumer_name=message_view.consumer_name,
        initials=message_view.initials,
        conversation_order=message_view.conversation_order,
        message_order=message_view.message_order,
    )
    return Jinja2Templates(env=environment)


TEMPLATES = templates()


def render_macro(template: str, macro: str, **arguments: Any) -> str:
    """One macro of a template, rendered alone: the HTML of one row for a live update."""
    module = TEMPLATES.env.get_template(template).make_module({})
    return str(getattr(module, macro)(**arguments))
