"""A small MCP server offering read-only SQL over a demo SQLite sales database.

    python sales_mcp.py               # stdio, e.g. `command: [python, sales_mcp.py]`
    python sales_mcp.py --http 8000   # streamable HTTP at http://127.0.0.1:8000/mcp

The database lives at $SALES_DB (default: sales.db next to this file). It is created with
deterministic demo data on first start: one `orders` table (id, quarter, category, product,
amount, customer). Queries run on a read-only connection behind an authorizer that only lets
reads through, so `read_only_query` really is read-only.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

QUARTERS = ("Q1 2023", "Q2 2023", "Q3 2023", "Q4 2023")
PRODUCTS = {
    "Electronics": ("Laptop", "Monitor", "Headphones", "Webcam"),
    "Furniture": ("Desk", "Office Chair", "Bookshelf"),
    "Office Supplies": ("Paper", "Pens", "Stapler", "Notebooks"),
    "Software": ("Analytics Suite", "Antivirus", "Design Tool"),
}
CUSTOMERS = ("Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries")
ORDERS_PER_QUARTER = 40
# Authorizer actions a plain SELECT (with joins, CTEs and functions) needs; anything else is denied.
# The demo data never changes, so answers are safe to replay: StepChain caches tools marked so
# (a tool reading live state would leave openWorldHint unset, or the pipeline says cache: false).
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}


def database_path() -> Path:
    """$SALES_DB, or sales.db next to this script."""
    return Path(os.environ.get("SALES_DB") or Path(__file__).with_name("sales.db"))


def demo_orders() -> list[tuple[int, str, str, str, float, str]]:
    """The same rows on every machine: a seeded generator, never the clock."""
    rng = random.Random(2023)
    rows = []
    for quarter in QUARTERS:
        for _ in range(ORDERS_PER_QUARTER):
            category = rng.choice(sorted(PRODUCTS))
            product = rng.choice(PRODUCTS[category])
            amount = round(rng.uniform(20, 2500), 2)
            rows.append((len(rows) + 1, quarter, category, product, amount, rng.choice(CUSTOMERS)))
    return rows


def ensure_database(path: Path) -> None:
    """Create the demo database unless it exists (atomically, so concurrent starts are safe)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sales-", suffix=".db", dir=path.parent)
    os.close(fd)
    try:
        with sqlite3.connect(tmp) as db:
            db.execute(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, quarter TEXT NOT NULL,"
                " category TEXT NOT NULL, product TEXT NOT NULL, amount REAL NOT NULL,"
                " customer TEXT NOT NULL)"
            )
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", demo_orders())
        db.close()
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _authorize(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _connect(*, reads_only: bool = True) -> sqlite3.Connection:
    db = sqlite3.connect(f"{database_path().resolve().as_uri()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    if reads_only:
        db.set_authorizer(_authorize)
    return db


mcp = MCPServer(
    "sales", instructions="Read-only SQL over a demo sales database.", log_level="WARNING"
)


@mcp.tool(annotations=READ_ONLY)
def read_only_query(
    sql: Annotated[str, Field(description="One SELECT statement; use ? placeholders for values.")],
    params: Annotated[
        list[str | int | float | None], Field(description="Values for the ? placeholders.")
    ] = [],  # noqa: B006 -- never mutated; the default shows up in the input schema
) -> list[dict[str, Any]]:
    """Run one read-only SELECT against the sales database and return the rows."""
    words = sql.strip().split(None, 1)
    keyword = words[0].upper() if words else ""
    if keyword not in ("SELECT", "WITH"):
        raise ToolError(f"only a single SELECT statement is allowed, not {keyword or 'nothing'!r}")
    db = _connect()
    try:
        return [dict(row) for row in db.execute(sql, params)]
    except sqlite3.ProgrammingError as exc:
        raise ToolError(f"only a single SELECT statement is allowed: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise ToolError(f"query failed: {exc}") from exc
    finally:
        db.close()


@mcp.tool(annotations=READ_ONLY)
def list_tables() -> list[dict[str, Any]]:
    """List the tables and their columns."""
    db = _connect(reads_only=False)  # PRAGMA table_info needs more than reads; the SQL is ours
    try:
        names = [
            row["name"]
            for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
        ]
        return [
            {
                "name": name,
                "columns": [row["name"] for row in db.execute(f"PRAGMA table_info({name})")],
            }
            for name in names
        ]
    finally:
        db.close()


@mcp.tool()
def drop_everything() -> str:
    """Drop every table. (A demo of a dangerous tool: it does nothing; `allowed_tools` refuses it.)"""
    return "Nothing was dropped: this demo tool only exists to show allowed_tools refusing it."


@mcp.tool()
def whoami() -> dict[str, Any]:
    """Whether SALES_MCP_TOKEN reached this server (never its value), and the server's pid."""
    return {"token_set": bool(os.environ.get("SALES_MCP_TOKEN")), "pid": os.getpid()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1"
    )
    args = parser.parse_args(argv)
    ensure_database(database_path())
    if args.http is None:
        mcp.run()
    else:
        mcp.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
