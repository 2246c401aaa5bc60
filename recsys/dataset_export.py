"""The whole data set as one JSON Lines stream (event types, users, items, custom vectors, interactions).

Each line is a JSON object with a ``kind``; the first is a ``header``, the last an ``end`` line
with the rows of each kind, so a reader can tell a complete file from a cut one. PostgreSQL
writes the JSON itself and COPY streams it out, so memory stays flat at any size and one
consistent snapshot (a repeatable-read transaction) covers every section. Model versions are
left out: they are derived, and retraining rebuilds them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

from django.db import connection, transaction
from psycopg import sql

from embeddings.models import VectorSpace

FORMAT = "recsys-dataset"
FORMAT_VERSION = 1
KINDS = ("event_type", "user", "item", "vector", "interaction", "hidden_item")
# Bytes gathered before a chunk is handed on: COPY delivers one message per row, and a write per
# ~130-byte row would cost more than the row itself. 1 MiB chunks keep memory flat.
CHUNK_BYTES = 1 << 20

# Each section is a SELECT whose rows become JSON objects with the columns as keys, in order.
_SECTIONS: dict[str, str] = {
    "event_type": """
        SELECT 'event_type' AS kind, name, weight, uses_value, description, counts_as_click
        FROM recsys_eventtype ORDER BY name
    """,
    "user": """
        SELECT 'user' AS kind, external_id AS id, attributes FROM recsys_user ORDER BY external_id
    """,
    # Stub items (created by an interaction, never described) are only their id and the flag.
    "item": """
        SELECT 'item' AS kind, external_id AS id, title, text, categories, attributes, is_hidden, published_at,
               available_from, available_until
        FROM recsys_item WHERE NOT is_stub ORDER BY external_id
    """,
    "stub": """
        SELECT 'item' AS kind, external_id AS id, true AS stub FROM recsys_item WHERE is_stub ORDER BY external_id
    """,
    # In table order: sorting 10 million rows would cost the server a disk sort for nothing.
    "interaction": """
        SELECT 'interaction' AS kind, u.external_id AS "user", i.external_id AS item, x.event_type AS type,
               x.value, x.timestamp
        FROM recsys_interaction x JOIN recsys_user u ON u.id = x.user_id JOIN recsys_item i ON i.id = x.item_id
    """,
    # What a user asked never to be recommended again: after users and items, which it names.
    "hidden_item": """
        SELECT 'hidden_item' AS kind, u.external_id AS "user", i.external_id AS item
        FROM recsys_hiddenitem h JOIN recsys_user u ON u.id = h.user_id JOIN recsys_item i ON i.id = h.item_id
        ORDER BY u.external_id, i.external_id
    """,
}
_VECTORS = """
    SELECT 'vector' AS kind, {space} AS space, i.external_id AS item, v.embedding::real[] AS vector
    FROM {table} v JOIN recsys_item i ON i.id = v.item_id ORDER BY i.external_id
"""
# COPY's text format would escape every backslash of the JSON; CSV with a quote and delimiter
# that JSON text never contains raw (it escapes all control characters) passes it through as is.
_COPY = (
    "COPY (SELECT row_to_json(r)::text FROM ({query}) r) TO STDOUT"
    " WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
)


def dataset_export() -> Iterator[bytes]:
    """The data set as chunks of JSON Lines (UTF-8), read in one snapshot."""
    outermost = not connection.in_atomic_block  # inside a caller's transaction, that one is the snapshot
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SET LOCAL statement_timeout = 0")  # a 10 million row export takes minutes
        header = {"kind": "header", "format": FORMAT, "version": FORMAT_VERSION, "exported_at": _now()}
        yield _line(header)
        counts = dict.fromkeys(KINDS, 0)
        for kind, query in _queries():
            for chunk in _copied(cursor, query):
                counts[kind] += chunk.count(b"\n")
                yield chunk
        yield _line({"kind": "end", "counts": counts})


def _queries() -> Iterator[tuple[str, sql.Composable]]:
    """Sections in the order an import needs them: vectors after their items, then interactions, then
    the hidden items (which name users and items)."""
    for name, query in _SECTIONS.items():
        if name == "interaction":
            for space in VectorSpace.objects.order_by("name"):
                table = sql.Identifier(space.table)
                yield "vector", sql.SQL(_VECTORS).format(space=sql.Literal(space.name), table=table)
        yield ("item" if name == "stub" else name), sql.SQL(query)  # type: ignore[arg-type]


def _copied(cursor: object, query: sql.Composable) -> Iterator[bytes]:
    raw = cursor.cursor  # type: ignore[attr-defined]  # Django's wrapper around the psycopg cursor
    pending: list[bytes] = []
    size = 0
    with raw.copy(sql.SQL(_COPY).format(query=query)) as copy:
        for block in copy:
            pending.append(bytes(block))
            size += len(block)
            if size >= CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _line(document: dict[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _now() -> str:
    return datetime.now(UTC).isoformat()
