"""The ``spotex`` command line: one entry point, each command wired in its own module.

Commands import their modules lazily so that ``spotex audit`` never loads the web stack, and so
that nothing is built before the configuration is read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _anchor(text: str) -> tuple[int, str]:
    from spotex.audit_cli import parse_anchor  # lazily: the parser must not load the audit

    return parse_anchor(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spotex", description="An event-sourced, ledger-first spot exchange.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="api, engine and projections in one process (embedded default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data", metavar="DIR", help="data directory (default ./spotex-data)")
    serve.add_argument("--demo", action="store_true", help="list demo markets, fund users, run a maker")

    sub.add_parser("migrate", help="create or upgrade the event store tables and read tables")
    api = sub.add_parser("api", help="the api process (production)")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    sub.add_parser("engine", help="the engine process: the single writer (production)")
    sub.add_parser("worker", help="the projection worker process (production)")

    audit = sub.add_parser("audit", help="replay from position 0, re-execute, check everything")
    audit.add_argument("--until", type=int, metavar="POSITION")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--jobs", type=int, metavar="N", help="processes for the segments (default: CPUs)")
    audit.add_argument(
        "--anchor", action="append", metavar="POSITION:HASH", type=_anchor,
        help="a head hash published earlier: the outcome at POSITION must still have it (repeatable)",
    )

    replay = sub.add_parser("replay", help="balances and book as of a position or time")
    replay.add_argument("--at", required=True, metavar="POSITION|TIME")
    replay.add_argument("--user", metavar="NAME")
    replay.add_argument("--market", metavar="SYMBOL")
    replay.add_argument("--json", action="store_true", help="print the state as JSON")

    proj = sub.add_parser("projections", help="read models: status, rebuild, verify")
    proj_sub = proj.add_subparsers(dest="action", required=True, metavar="ACTION")
    proj_sub.add_parser("status", help="position and lag of each projection")
    rebuild = proj_sub.add_parser("rebuild", help="rebuild one from position 0 and swap it in")
    rebuild.add_argument("name")
    verify = proj_sub.add_parser("verify", help="rebuild beside the live tables and diff")
    verify.add_argument("name", nargs="?")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = args.command
    from spotex.config import ConfigError, Settings

    try:  # the environment is read once here first, so every command refuses it the same way
        Settings.from_env()
    except ConfigError as exc:
        print(f"spotex {command}: {exc}", file=sys.stderr)
        return 2
    if command == "serve":
        from spotex.serve import serve

        return serve(args)
    if command == "engine":
        from spotex.processes import run_engine

        return run_engine(args)
    if command == "api":
        from spotex.processes import run_api

        return run_api(args)
    if command in ("migrate", "worker", "projections"):
        from spotex import projections_cli

        return int(getattr(projections_cli, command)(args))
    if command in ("audit", "replay"):
        from spotex import audit_cli

        return int(getattr(audit_cli, command)(args))
    raise AssertionError(command)


if __name__ == "__main__":
    sys.exit(main())
