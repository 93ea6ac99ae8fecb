"""``saliency-audit keys create|list|revoke``: API keys managed from a shell on the server, against the
job store the service uses (SALIENCY_DATABASE_URL, or the SQLite file in the data directory)."""

import argparse
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from workers.core.config import Settings
from workers.core.store.database import make_engine, migrate
from workers.core.store.keys import KeyStore, Scope


def add_key_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys of the REST service",
        description="API keys for the REST service. A key belongs to one tenant, whose jobs and artifacts it "
        "sees; its scopes say what it may do: read (list, poll, download), submit (upload, submit, cancel, "
        "delete), admin (everything, and the tenant's keys over HTTP). The key is printed once; only its "
        "hash is stored.",
    )
    actions = keys.add_subparsers(dest="key_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data-dir", type=Path, help="the service's data directory (default: $SALIENCY_DATA_DIR)"
    )
    create = actions.add_parser("create", parents=[where], help="create a key and print it (once)")
    create.add_argument("--tenant", required=True, help="tenant name: lower-case letters, digits, - and _")
    create.add_argument("--name", default="", help="what the key is for, shown in lists")
    create.add_argument(
        "--scopes", default="read,submit", help="comma-separated: read, submit, admin (default: read,submit)"
    )
    listing = actions.add_parser("list", parents=[where], help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = actions.add_parser(
        "revoke", parents=[where], help="revoke a key for good (the API stops accepting it within 5 s)"
    )
    revoke.add_argument("key_id", help="the key's id, as 'list' shows it (the 12 hex digits after 'sa_')")


def run_key_command(args: argparse.Namespace) -> int:
    settings = Settings() if args.data_dir is None else Settings(data_dir=args.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite store's folder, on a first run
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
    except SQLAlchemyError as error:
        print(
            f"saliency-audit: error: the job store is unreachable ({type(error).__name__})",
            file=sys.stderr,
        )
        engine.dispose()
        return 2
    try:
        keys = KeyStore(engine)
        if args.key_command == "create":
            try:
                scopes = frozenset(Scope(name.strip()) for name in args.scopes.split(",") if name.strip())
                key, token = keys.create(args.tenant, args.name, scopes)
            except ValueError as error:
                print(f"saliency-audit: error: {error}", file=sys.stderr)
                return 2
            print(
                f"created key {key.id} for tenant {key.tenant} ({', '.join(sorted(key.scopes))})",
                file=sys.stderr,
            )
            print(token)
            return 0
        if args.key_command == "list":
            print(f"{'id':12}  {'tenant':20}  {'scopes':18}  {'created':20}  {'revoked':20}  name")
            for key in keys.list(args.tenant):
                revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "-"
                created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
                scopes = ",".join(sorted(key.scopes))
                print(f"{key.id:12}  {key.tenant:20}  {scopes:18}  {created:20}  {revoked:20}  {key.name}")
            return 0
        revoked_key = keys.revoke(args.key_id)
        if revoked_key is None:
            print(f"saliency-audit: error: no key {args.key_id}", file=sys.stderr)
            return 2
        print(f"revoked key {revoked_key.id} of tenant {revoked_key.tenant}")
        return 0
    finally:
        engine.dispose()
