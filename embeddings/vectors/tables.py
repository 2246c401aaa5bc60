"""Vector tables in pgvector: their names, the one connection style, DDL, bulk COPY, HNSW, drop.

A model version's vectors live in ``embeddings_v<N>_item`` / ``_user`` (created by its run,
indexed after the COPY, dropped whole when it is pruned); a custom space's in
``embeddings_space_<name>``. Every statement against these tables goes through ``cursor()``:
a psycopg cursor on Django's own connection (so it shares Django's transactions), with
pgvector's types registered and errors raised as Django's (the API maps those to 503). The
connection is the one ``recsys.replicas.read_alias`` names: a replica inside a serving read, the
primary everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from django.db import connections, transaction
from pgvector.psycopg import register_vector
from psycopg import sql

from recsys.replicas import read_alias

# HNSW build parameters: pgvector's defaults; ef_construction 64 keeps recall@10 above 0.98 on the
# MovieLens benchmark while building 100k vectors in seconds.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
OWNERS = {"item": "recsys_item", "user": "recsys_user"}


# ---- names ----------------------------------------------------------------------------------------


def table_name(version_id: int, owner: str) -> str:
    if owner not in OWNERS:
        raise ValueError(f"owner must be one of {', '.join(OWNERS)}")
    return f"embeddings_v{int(version_id)}_{owner}"


def item_table(version_id: int) -> str:
    return table_name(version_id, "item")


def user_table(version_id: int) -> str:
    return table_name(version_id, "user")


def space_table(name: str) -> str:
    """A custom space's table (``name`` is validated by the caller: [a-z][a-z0-9_]{0,39})."""
    return f"embeddings_space_{name}"


# ---- the connection -------------------------------------------------------------------------------


def raw_connection() -> Any:
    """Django's psycopg connection (of this context's database) with pgvector's types registered
    (once per connection)."""
    connection = connections[read_alias()]
    connection.ensure_connection()
    raw = connection.connection
    if not getattr(raw, "_recsys_vector_registered", False):
        register_vector(raw)
        raw._recsys_vector_registered = True
    return raw


@contextmanager
def cursor() -> Iterator[psycopg.Cursor[Any]]:
    """A psycopg cursor for statements on vector tables (see the module docstring)."""
    with connections[read_alias()].wrap_database_errors:
        raw = raw_connection()
        with psycopg.Cursor(raw) as cur:
            yield cur


def as_array(value: object) -> npt.NDArray[np.float32]:
    """A vector column's value (pgvector's Vector or a numpy array) as float32."""
    array = value.to_numpy() if hasattr(value, "to_numpy") else value
    return np.asarray(array, dtype=np.float32)


# ---- DDL ------------------------------------------------------------------------------------------


def tables_create(version_id: int, dimensions: int) -> None:
    """A collaborative version's tables, one per owner; a deleted item or user takes its vectors
    with it (ON DELETE CASCADE). ``fold_in`` holds EASE's item input vectors; ``mapped`` marks an
    item row placed from its content vector (a new item, until the next retrain learns it)."""
    with cursor() as cur:
        for owner, target in OWNERS.items():
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {table} ("
                    " {fk} bigint PRIMARY KEY REFERENCES {target} (id) ON DELETE CASCADE,"
                    " embedding vector({dims}) NOT NULL,"
                    " fold_in vector({dims}),{mapped}"
                    " updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(
                    table=sql.Identifier(table_name(version_id, owner)),
                    fk=sql.Identifier(f"{owner}_id"),
                    target=sql.Identifier(target),
                    dims=sql.Literal(int(dimensions)),
                    mapped=sql.SQL(" mapped boolean NOT NULL DEFAULT false," if owner == "item" else ""),
                )
            )


def mapped_column_add(version_id: int) -> None:
    """Give a version's item table created before mapped rows existed its ``mapped`` column (a
    constant default: no table rewrite)."""
    with cursor() as cur:
        cur.execute(
            sql.SQL(
                "ALTER TABLE IF EXISTS {table} ADD COLUMN IF NOT EXISTS mapped boolean NOT NULL DEFAULT false"
            ).format(table=sql.Identifier(item_table(version_id)))
        )


def content_table_create(version_id: int, dimensions: int) -> None:
    """A content version's item table: a NULL embedding records an item with no text to encode,
    ``source_changed_at`` the item's ``content_changed_at`` that was encoded (newer means stale)."""
    with cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {table} ("
                " item_id bigint PRIMARY KEY REFERENCES recsys_item (id) ON DELETE CASCADE,"
                " embedding vector({dims}),"
                " source_changed_at timestamptz NOT NULL,"
                " cluster integer,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(table=sql.Identifier(item_table(version_id)), dims=sql.Literal(int(dimensions)))
        )


def space_table_create(name: str, dimensions: int) -> None:
    """A custom space's table and its HNSW index: unlike model versions, custom vectors arrive one
    by one, so the index exists from the start."""
    table = space_table(name)
    with cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE {table} ("
                " item_id bigint PRIMARY KEY REFERENCES recsys_item (id) ON DELETE CASCADE,"
                " embedding vector({dims}) NOT NULL,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(table=sql.Identifier(table), dims=sql.Literal(int(dimensions)))
        )
        cur.execute(_hnsw(table))


def index_build(version_id: int, owner: str) -> None:
    """HNSW for inner product, built after the COPY (far faster than maintaining it row by row)."""
    table = table_name(version_id, owner)
    with cursor() as cur:
        cur.execute(_hnsw(table, if_not_exists=True))
        cur.execute(sql.SQL("ANALYZE {table}").format(table=sql.Identifier(table)))


def _hnsw(table: str, *, if_not_exists: bool = False) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX {exists} {index} ON {table} USING hnsw (embedding vector_ip_ops)"
        " WITH (m = {m}, ef_construction = {ef})"
    ).format(
        exists=sql.SQL("IF NOT EXISTS" if if_not_exists else ""),
        index=sql.Identifier(f"{table}_hnsw"),
        table=sql.Identifier(table),
        m=sql.Literal(HNSW_M),
        ef=sql.Literal(HNSW_EF_CONSTRUCTION),
    )


def tables_drop(version_id: int) -> None:
    with cursor() as cur:
        for owner in OWNERS:
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {table}").format(table=sql.Identifier(table_name(version_id, owner)))
            )


def space_table_drop(name: str) -> None:
    with cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {table}").format(table=sql.Identifier(space_table(name))))


def pgvector_version() -> tuple[int, ...]:
    with cursor() as cur:
        row = cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return tuple(int(part) for part in row[0].split(".")) if row else (0,)


# ---- bulk writes ----------------------------------------------------------------------------------


def vectors_copy(
    version_id: int,
    owner: str,
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    fold_in: npt.NDArray[np.float32] | None = None,
) -> int:
    """Bulk-load (id, vector[, fold-in vector]) rows with binary COPY; ids must exist in the owner table.

    Parameters
    ----------
    ids : (n,) int64 database ids of the items or users
    vectors : (n, d) float32
    fold_in : (n, d) float32 item input vectors of models that fold users in as a weighted sum
    """
    if len(ids) != len(vectors) or (fold_in is not None and len(fold_in) != len(ids)):
        raise ValueError("ids and vectors differ in length")
    columns = sql.SQL(", fold_in" if fold_in is not None else "")
    statement = sql.SQL("COPY {table} ({fk}, embedding{columns}) FROM STDIN WITH (FORMAT BINARY)").format(
        table=sql.Identifier(table_name(version_id, owner)), fk=sql.Identifier(f"{owner}_id"), columns=columns
    )
    with cursor() as cur, cur.copy(statement) as copy:
        if fold_in is None:  # binary rows built by numpy: 1M user vectors in ~1 s instead of ~10 s row by row
            copy.write(vector_rows_binary(ids, vectors))
        else:
            copy.set_types(["int8", "vector", "vector"])
            for row_id, vector, extra in zip(ids.tolist(), vectors, fold_in, strict=True):
                copy.write_row((row_id, vector, extra))
    return len(ids)


def vector_rows_binary(ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> bytes:
    """A whole binary COPY of (int8, vector) rows; pgvector's binary vector is int16 dimensions, int16
    unused, then big-endian float4s."""
    dims = vectors.shape[1] if vectors.ndim == 2 else 0
    row = np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("vec_len", ">i4"),
            ("dims", ">i2"),
            ("unused", ">i2"),
            ("values", ">f4", (dims,)),
        ]
    )
    rows = np.zeros(len(ids), dtype=row)
    rows["fields"], rows["id_len"], rows["vec_len"], rows["dims"] = 2, 8, 4 + 4 * dims, dims
    rows["id"], rows["values"] = ids, vectors
    return b"PGCOPY\n\xff\r\n\x00" + bytes(8) + rows.tobytes() + b"\xff\xff"


def content_vectors_write(
    version_id: int,
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    has_vector: npt.NDArray[np.bool_],
    source_changed_at: list[datetime],
    clusters: npt.NDArray[np.int64] | None,
) -> int:
    """Insert or replace content rows through a binary COPY into a temporary table.

    Parameters
    ----------
    ids : (n,) int64 item ids
    vectors : (n, d) float32, L2-normalised; rows where ``has_vector`` is False are stored as NULL
    has_vector : (n,) bool, False for items without text
    source_changed_at : the items' ``content_changed_at`` that was encoded, one per row
    clusters : (n,) int64 cluster per row, or None
    """
    table = sql.Identifier(item_table(version_id))
    with transaction.atomic(), cursor() as cur:
        # Dropped first as well as on commit: inside an outer transaction (tests) commit is later.
        cur.execute("DROP TABLE IF EXISTS content_rows")
        cur.execute(
            sql.SQL("CREATE TEMPORARY TABLE content_rows (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                table=table
            )
        )
        with cur.copy(
            "COPY content_rows (item_id, embedding, source_changed_at, cluster) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "vector", "timestamptz", "int4"])
            for n, row_id in enumerate(ids.tolist()):
                vector = vectors[n] if has_vector[n] else None
                cluster = int(clusters[n]) if clusters is not None and has_vector[n] else None
                copy.write_row((row_id, vector, source_changed_at[n], cluster))
        cur.execute(
            sql.SQL(
                "INSERT INTO {table} (item_id, embedding, source_changed_at, cluster, updated_at)"
                " SELECT r.item_id, r.embedding, r.source_changed_at, r.cluster, now()"
                " FROM content_rows r JOIN recsys_item i ON i.id = r.item_id"  # items deleted meanwhile
                " ON CONFLICT (item_id) DO UPDATE SET embedding = EXCLUDED.embedding,"
                " source_changed_at = EXCLUDED.source_changed_at, cluster = EXCLUDED.cluster, updated_at = now()"
            ).format(table=table)
        )
        return cur.rowcount
