"""``tidings org|provider|business|channel create``, ``tidings key
list|create|revoke`` and ``tidings db upgrade``: setting up the platform's
tenants and their API keys from the shell.

Each command prints one JSON object, so scripts can read what was created.
The work itself is in ``tidings.platform.tenants``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from tidings.cli.errors import CliError
from tidings.cli.secrets_key import SecretsKeyFile
from tidings.store import DEFAULT_DB_URL

T = TypeVar("T")

org_app = typer.Typer(help="Organizations and their API keys.", no_args_is_help=True)
provider_app = typer.Typer(help="PROVIDER keys, which manage several organizations.", no_args_is_help=True)
business_app = typer.Typer(help="Businesses of an organization.", no_args_is_help=True)
channel_app = typer.Typer(help="Custom channels of an organization.", no_args_is_help=True)
db_app = typer.Typer(help="The platform's database.", no_args_is_help=True)
key_app = typer.Typer(help="API keys: list them, create one (shown once), revoke one.", no_args_is_help=True)

DbOption = typer.Option(DEFAULT_DB_URL, "--db", help="database URL: sqlite:///FILE or postgresql://...")


def mount(app: typer.Typer) -> None:
    """Adds these command groups to the ``tidings`` command."""
    app.add_typer(org_app, name="org")
    app.add_typer(provider_app, name="provider")
    app.add_typer(business_app, name="business")
    app.add_typer(channel_app, name="channel")
    app.add_typer(db_app, name="db")
    app.add_typer(key_app, name="key")


def tenants():
    """The set-up functions, imported when a command runs (they pull in the web stack)."""
    from tidings.platform import tenants as module

    return module


def print_json(document: dict[str, Any]) -> None:
    typer.echo(json.dumps(document))


def in_transaction(db: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Runs ``work(conn)`` in one transaction on ``db``; expected failures become one line."""
    from tidings.platform.tenants import TenantError
    from tidings.store import create_engine

    async def run() -> T:
        try:
            engine = create_engine(db)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except TenantError as exc:
        raise CliError(str(exc)) from None
    except (OperationalError, ProgrammingError) as exc:
        text = str(exc.orig).lower()
        if "no such table" in text or "does not exist" in text:
            raise CliError(f"the database at {db} has no tidings tables yet: run `tidings db upgrade --db {db}`") from None
        raise CliError(f"database error: {exc.orig}") from None
    except (DBAPIError, OSError) as exc:
        raise CliError(f"cannot use the database at {db}: {getattr(exc, 'orig', exc)}") from None


@org_app.command("create", help="Create an organization; prints its id and its admin API key (shown once).")
def org_create(name: str = typer.Argument(..., help="the organization's name"), db: str = DbOption) -> None:
    org_id, key = in_transaction(db, lambda conn: tenants().create_organization(conn, name))
    print_json({"org_id": org_id, "api_key": key})


def parse_org_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CliError(f"--orgs takes organization ids separated by commas, like 1,2; not {text!r}") from None
    if not ids:
        raise CliError("--orgs names at least one organization")
    return ids


@provider_app.command("create", help="Create a PROVIDER key for several organizations; prints it (shown once).")
def provider_create(
    name: str = typer.Argument(..., help="the provider's name"),
    orgs: str = typer.Option(..., "--orgs", help="ids of the organizations it manages, e.g. 1,2"),
    db: str = DbOption,
) -> None:
    org_ids = parse_org_ids(orgs)
    key = in_transaction(db, lambda conn: tenants().create_provider_key(conn, name, org_ids))
    print_json({"api_key": key})


@business_app.command("create", help="Create a business; prints its id (24 hexadecimal characters).")
def business_create(
    org: int = typer.Option(..., "--org", help="the organization's id"),
    name: str = typer.Option(..., "--name"),
    city: str = typer.Option("", "--city"),
    zipcode: str = typer.Option("", "--zipcode"),
    country: str = typer.Option("", "--country"),
    address: str = typer.Option("", "--address", help="the formatted address"),
    db: str = DbOption,
) -> None:
    business_id = in_transaction(db, lambda conn: tenants().create_business(
        conn, org, name, city=city, zipcode=zipcode, country=country, formatted_address=address))
    print_json({"business_id": business_id})


@channel_app.command("create", help="Create a custom channel; prints its id.")
def channel_create(
    org: int = typer.Option(..., "--org", help="the organization's id"),
    name: str = typer.Option(..., "--name"),
    icon: str = typer.Option("", "--icon", help="URL of the channel's icon"),
    readonly: bool = typer.Option(False, "--readonly", help="the channel only brings messages in"),
    db: str = DbOption,
) -> None:
    channel_id = in_transaction(db, lambda conn: tenants().create_custom_channel(
        conn, org, name, icon=icon, is_readonly=readonly))
    print_json({"channel_id": channel_id})


def key_listing(row: Any) -> dict[str, Any]:
    """A key as a list shows it: never the key, only its first characters."""
    return {"id": row.id, "name": row.name, "prefix": row.key_prefix, "kind": row.kind, "org_id": row.org_id,
            "created_at": row.created_at.isoformat(),
            "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None}


@key_app.command("list", help="List the live API keys (of one organization with --org): names, prefixes, "
                              "creation and last use; never the keys.")
def key_list(org: int | None = typer.Option(None, "--org", help="only this organization's keys"),
             db: str = DbOption) -> None:
    from tidings.platform import api_keys

    async def work(conn):
        return await (api_keys.list_all_keys(conn) if org is None else api_keys.list_org_keys(conn, org))

    print_json({"items": [key_listing(row) for row in in_transaction(db, work)]})


@key_app.command("create", help="Create an API key of an organization; prints it (shown once).")
def key_create(name: str = typer.Argument(..., help="the key's name, e.g. who uses it"),
               org: int = typer.Option(..., "--org", help="the organization's id"), db: str = DbOption) -> None:
    row, key = in_transaction(db, lambda conn: tenants().create_org_key_row(conn, org, name))
    print_json({**key_listing(row), "api_key": key})


@key_app.command("revoke", help="Revoke an API key: every server refuses it within a second; its dashboard "
                                "sessions end.")
def key_revoke(key_id: int = typer.Argument(..., help="the key's id, from `tidings key list`"),
               db: str = DbOption) -> None:
    from tidings.contract import utcnow
    from tidings.platform import api_keys

    if not in_transaction(db, lambda conn: api_keys.revoke(conn, key_id=key_id, org_id=None, now=utcnow())):
        raise CliError(f"no live API key with id {key_id}")
    print_json({"revoked": key_id})


@db_app.command("reencrypt", help="Encrypt every webhook secret and custom-header value under the newest "
                                  "secrets key (after `tidings keys secrets-key --rotate`, or for rows in clear).")
def db_reencrypt(
    db: str = DbOption,
    secrets_key_file: SecretsKeyFile = None,
    data_dir: Path = typer.Option(Path(".tidings"), "--data-dir", help="where `tidings serve` keeps secrets.key"),
) -> None:
    from tidings.cli.secrets_key import use_secrets_keys
    from tidings.platform.sealed import UnreadableSecret, reseal_configurations

    use_secrets_keys(secrets_key_file, data_dir, create=False)
    try:
        changed = in_transaction(db, lambda conn: reseal_configurations(conn))
    except UnreadableSecret as exc:
        raise CliError(f"{exc}: keep the older key in the file until every row is re-encrypted") from None
    print_json({"reencrypted": changed})


@db_app.command("upgrade", help="Bring the database to the newest schema.")
def db_upgrade(db: str = DbOption) -> None:
    from tidings.store.migrate import upgrade

    try:
        revision = upgrade(db)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except (DBAPIError, OSError) as exc:
        raise CliError(f"cannot migrate the database at {db}: {getattr(exc, 'orig', exc)}") from None
    print_json({"revision": revision})
