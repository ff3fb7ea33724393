"""``tidings receive`` (the service) and ``tidings receiver ...`` (its log, quarantine, dead letters)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import orjson
import typer

from tidings.cli.errors import CliError
from tidings.cli.limit_options import (
    DEFAULT_LIMITS,
    BodyTimeout,
    HeadTimeout,
    MaxBodyBytes,
    MaxConnections,
    connection_limits,
)
from tidings.contract.headers import DEFAULT_VENDOR_PREFIX

app = typer.Typer(help="Inspect and repair a receiver's store: events, quarantine, dead letters.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Authentic bodies that did not parse under the contract.", no_args_is_help=True)
dead_app = typer.Typer(help="Handler runs that failed all their tries.", no_args_is_help=True)
events_app = typer.Typer(help="The event log.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(dead_app, name="dead")

DB_OPTION = typer.Option("sqlite:///tidings-receiver.db", "--db", help="database URL: sqlite:///FILE or postgresql://...")
JSON_OPTION = typer.Option(False, "--json", help="one JSON document, for scripts")


def _key_text(value: str) -> str:
    """A key given as PEM text, a whpk_ string, or the path of a file holding one."""
    if value.lstrip().startswith(("-----BEGIN", "whpk_")):
        return value
    path = Path(value)
    try:
        return path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read the public key {value}: {exc.strerror}") from None


def receive_command(
    db: str = DB_OPTION,
    public_key: list[str] = typer.Option(
        [], "--public-key", help="the sender's Ed25519 public key: PEM file, PEM text or whpk_ string; repeat to rotate"
    ),
    signing_secret: list[str] = typer.Option([], "--signing-secret", help="a whsec_ secret for the HMAC scheme v1; repeatable"),
    path: str = typer.Option("/webhook", "--path", help="the webhook's URL path"),
    secret: str | None = typer.Option(None, "--secret", help="a token the URL must carry: ?secret=TOKEN or PATH/TOKEN"),
    org_id: list[int] = typer.Option(
        [], "--org-id", min=1, help="an organization this receiver serves; repeatable. Events of others get 403"
    ),
    any_org: bool = typer.Option(False, "--any-org", help="serve every organization the keys sign for (instead of --org-id)"),
    host: str = typer.Option("127.0.0.1", "--host", help="the public listener: the webhook and /health only"),
    port: int = typer.Option(8000, "--port"),
    fd: int | None = typer.Option(None, "--fd", help="serve the public listener on this inherited listening socket "
                                                       "(a supervisor's, systemd's) instead of binding --host/--port"),
    admin_host: str = typer.Option("127.0.0.1", "--admin-host", help="the admin listener: inbox, read API, repairs"),
    admin_port: int | None = typer.Option(None, "--admin-port", help="default: --port + 1; 0 picks a free port"),
    admin_fd: int | None = typer.Option(None, "--admin-fd", help="serve the admin listener on this inherited "
                                                                 "listening socket instead of binding its host and port"),
    admin_token: str | None = typer.Option(
        None, "--admin-token", envvar="TIDINGS_ADMIN_TOKEN", show_envvar=True,
        help="the admin listener's token (prefer the environment variable); generated and printed when absent",
    ),
    admin_allowed_host: list[str] = typer.Option(
        [], "--admin-allowed-host", help="another Host name the admin listener answers to (e.g. behind a proxy); repeatable"
    ),
    strict: bool = typer.Option(False, "--strict", help="answer 400 to an authentic body that does not parse, instead of quarantining it"),
    handler: list[str] = typer.Option([], "--handler", help="module:function (or module:Handlers registry) run on each event; repeatable"),
    forward: list[str] = typer.Option([], "--forward", help="POST each event to this URL; repeatable"),
    jsonl: list[str] = typer.Option([], "--jsonl", help="append each event to this JSON-lines file; repeatable"),
    command: list[str] = typer.Option([], "--command", help="run this command with each event on standard input; repeatable"),
    on: list[str] = typer.Option([], "--on", help="event type for --handler functions and the built-ins; repeatable"),
    where: list[str] = typer.Option([], "--where", help="field=value condition, e.g. sender_type=Consumer; repeatable"),
    max_tries: int = typer.Option(5, "--max-tries", help="tries of a handler before the event is dead-lettered"),
    max_wait: float = typer.Option(2.0, "--max-wait", help="seconds a request may wait for its commit before 503"),
    tolerance: int = typer.Option(300, "--tolerance", help="seconds a webhook-timestamp may be off"),
    workers: int = typer.Option(1, "--workers", help="worker processes (each verifies and commits)"),
    verify_threads: int = typer.Option(1, "--verify-threads", help="threads per worker that verify signatures"),
    vendor_prefix: str = typer.Option(DEFAULT_VENDOR_PREFIX, "--vendor-prefix",
                                      help="the platform's vendor prefix (its signature and sequence headers)"),
    gap_wait: float = typer.Option(
        30.0, "--gap-wait", help="seconds the inbox waits on a hole in a conversation's X-Tidings-Sequence before reporting it"
    ),
    max_connections: MaxConnections = DEFAULT_LIMITS.max_connections,
    max_body_bytes: MaxBodyBytes = DEFAULT_LIMITS.max_body_bytes,
    head_timeout: HeadTimeout = DEFAULT_LIMITS.head_timeout,
    body_timeout: BodyTimeout = DEFAULT_LIMITS.body_timeout,
) -> None:
    """Run the receiver: verify, store, acknowledge; then project the inbox and run the handlers."""
    from tidings.contract.signing import KeyFormatError
    from tidings.cli.serve import prepare_database
    from tidings.apps.receiver_admin import admin_listener
    from tidings.apps.receiver_service import ReceiverConfig, listen, run_service
    from tidings.cli.sockets import inherited_socket
    from tidings.serving.limits import raise_open_file_limit

    raise_open_file_limit()  # so that --max-connections, not EMFILE, decides; the worker processes inherit it
    if not public_key and not signing_secret:
        raise CliError("give at least one --public-key (or --signing-secret) to verify requests with")
    if not org_id and not any_org:
        raise CliError("say which organizations this receiver serves: --org-id N (repeatable), "
                       "or --any-org to take every organization the platform's key signs for")
    if org_id and any_org:
        raise CliError("give --org-id or --any-org, not both")
    config = ReceiverConfig(
        db_url=db,
        public_keys=[_key_text(key) for key in public_key],
        org_ids=sorted(set(org_id)),
        any_org=any_org,
        signing_secrets=list(signing_secret),
        path=path if path.startswith("/") else "/" + path,
        url_secret=secret,
        strict=strict,
        tolerance_seconds=tolerance,
        max_wait=max_wait,
        handler_specs=list(handler),
        forward_urls=list(forward),
        jsonl_paths=list(jsonl),
        commands=list(command),
        on_types=list(on),
        where=list(where),
        max_tries=max_tries,
        workers=workers,
        verify_threads=verify_threads,
        gap_wait=gap_wait,
        vendor_prefix=vendor_prefix,
        limits=connection_limits(max_connections, max_body_bytes, head_timeout, body_timeout),
    )
    try:
        config.verifier()
        config.handlers()  # fail now, not in a worker, on a handler that cannot be imported
        admin = admin_listener(port + 1 if admin_port is None else admin_port, admin_host, admin_token,
                               admin_allowed_host)
    except (KeyFormatError, ValueError, ImportError) as exc:
        raise CliError(str(exc)) from None
    prepare_database(db)  # migrate, and fail in one line if the database cannot be reached
    try:
        public_socket = inherited_socket(fd) if fd is not None else listen(host, port)
        admin_socket = inherited_socket(admin_fd) if admin_fd is not None else listen(admin.host, admin.port)
    except OSError as exc:
        raise CliError(f"cannot listen: {exc.strerror or exc}") from None
    host, port = public_socket.getsockname()[:2]
    admin = admin.with_port(admin_socket.getsockname()[1])
    served = "every organization" if any_org else "organization " + ", ".join(map(str, config.org_ids))
    print(f"receiving on http://{_url_host(host)}:{port}{config.path} for {served} into {db}", file=sys.stderr)
    # The token is printed once, when it was generated here; a token the operator gave stays out of the logs.
    sign_in = admin.sign_in_url() if not admin.token_given else admin.sign_in_url().replace(admin.token, "…")
    print(f"admin (inbox, read API): {sign_in}", file=sys.stderr, flush=True)
    run_service(config, handlers=None, admin=admin, public_socket=public_socket, admin_socket=admin_socket)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------- output


def _log(db: str):
    from tidings.receiver.log import EventLog

    try:
        log = EventLog(db)
        log.create_schema()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return log


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(document: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(cell) if cell is not None else "" for cell in row])
    Console().print(table)


def _excerpt(text: str, size: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1] + "…"


# ---------------------------------------------------------------- events


@events_app.command("list", help="The events of the log, oldest first, after a position.")
def events_list(
    db: str = DB_OPTION,
    after: int = typer.Option(0, "--after", help="show events after this log position"),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = JSON_OPTION,
) -> None:
    from tidings.receiver.read_api import event_document

    log = _log(db)
    events = log.events_after(after, limit)
    if as_json:
        _print_json({"events": [event_document(e) for e in events], "next_after": events[-1].id if events else after})
        return
    _table(
        f"events after {after}",
        ["id", "type", "message", "conversation", "webhook-id", "scheme", "received (UTC)"],
        [[e.id, e.event_type, e.message_id, e.conversation_id, e.webhook_id, e.scheme, _when(e.received_at)] for e in events],
    )


# ---------------------------------------------------------------- quarantine


@quarantine_app.command("list", help="Quarantined bodies and why they did not parse.")
def quarantine_list(db: str = DB_OPTION, limit: int = typer.Option(50, "--limit"), as_json: bool = JSON_OPTION) -> None:
    rows = _log(db).quarantined(limit)
    if as_json:
        _print_json(
            {
                "quarantined": [
                    {
                        "id": q.id,
                        "webhook_id": q.webhook_id,
                        "scheme": q.scheme,
                        "received_at": q.received_at,
                        "error": q.error,
                        "body": q.body.decode("utf-8", errors="replace"),
                    }
                    for q in rows
                ]
            }
        )
        return
    _table(
        "quarantine",
        ["id", "received (UTC)", "webhook-id", "error", "body"],
        [[q.id, _when(q.received_at), q.webhook_id, _excerpt(q.error), _excerpt(q.body.decode("utf-8", "replace"), 40)] for q in rows],
    )


@quarantine_app.command("reprocess", help="Parse quarantined bodies again; those that parse now move into the log.")
def quarantine_reprocess(
    db: str = DB_OPTION,
    ids: list[int] = typer.Option([], "--id", help="only these quarantine ids (default: all)"),
    as_json: bool = JSON_OPTION,
) -> None:
    from tidings.contract import parse_event
    from tidings.receiver.core import classify

    log = _log(db)
    outcome = log.reprocess_quarantine(lambda body: classify(parse_event, body), ids or None)
    if as_json:
        _print_json({"moved": outcome.moved, "still_failing": {str(k): v for k, v in outcome.still_failing.items()}})
        return
    print(f"moved into the log: {len(outcome.moved)}; still failing: {len(outcome.still_failing)}")
    for quarantine_id, error in outcome.still_failing.items():
        print(f"  {quarantine_id}: {error}")


# ---------------------------------------------------------------- sequence gaps


@app.command("gaps", help="Holes in conversations' X-Tidings-Sequence waited on past --gap-wait (reported).")
def gaps_list(
    db: str = DB_OPTION,
    waiting: bool = typer.Option(False, "--waiting", help="also the holes still waited on"),
    as_json: bool = JSON_OPTION,
) -> None:
    from tidings.receiver.inbox import list_gaps

    log = _log(db)
    with log.engine.connect() as conn:
        gaps = list_gaps(conn, include_waiting=waiting)
    if as_json:
        _print_json({"gaps": gaps})
        return
    _table(
        "sequence gaps",
        ["org", "event type", "conversation", "missing", "waiting since (UTC)", "reported (UTC)"],
        [
            [g["key"]["org_id"], g["key"]["event_type"], g["key"]["conversation_id"],
             _missing_text(g["missing"]["first"], g["missing"]["last"]), _when(g["waiting_since"]),
             _when(g["reported_at"]) or "still waiting"]
            for g in gaps
        ],
    )


def _missing_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


# ---------------------------------------------------------------- dead letters


@dead_app.command("list", help="Events whose handler failed all its tries.")
def dead_list(
    db: str = DB_OPTION,
    handler: str | None = typer.Option(None, "--handler", help="only this handler"),
    waiting: bool = typer.Option(False, "--waiting", help="show failures still being retried instead"),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = JSON_OPTION,
) -> None:
    from tidings.receiver.handler_runner import list_failures

    rows = list_failures(_log(db), dead=not waiting, handler=handler, limit=limit)
    if as_json:
        _print_json({"dead" if not waiting else "waiting": [row.__dict__ for row in rows]})
        return
    _table(
        "dead letters" if not waiting else "failures being retried",
        ["id", "handler", "event", "tries", "last error", "dead since (UTC)" if not waiting else "next try (UTC)"],
        [
            [r.id, r.handler, r.event_id, r.attempts, _excerpt(r.last_error), _when(r.dead_at if not waiting else r.next_attempt_at)]
            for r in rows
        ],
    )


@dead_app.command("replay", help="Make dead letters due again; the running receiver retries them.")
def dead_replay(
    db: str = DB_OPTION,
    ids: list[int] = typer.Option([], "--id", help="only these dead-letter ids"),
    replay_all: bool = typer.Option(False, "--all", help="every dead letter"),
    as_json: bool = JSON_OPTION,
) -> None:
    from tidings.receiver.handler_runner import replay_dead

    if not ids and not replay_all:
        raise CliError("say which: --id N (repeatable) or --all")
    log = _log(db)
    with log.transaction() as conn:
        count = replay_dead(conn, ids or None)
    if as_json:
        _print_json({"replayed": count})
    else:
        print(f"replayed: {count}")
