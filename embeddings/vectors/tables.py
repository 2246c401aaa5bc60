"""Vector tables in pgvector: their names, the one connection style, DDL, bulk COPY, HNSW, drop.

A model version's vectors live in ``embeddings_v<N>_item`` / ``_user`` (created by its run,
indexed after the COPY, dropped whole when it is pruned); a custom space's in
``embeddings_space_<name>``. A version's tables store ``vector`` (float32) or, for catalogues of
``RECSYS_HALFVEC_MIN_ITEMS`` items or more on pgvector ≥ 0.7, ``halfvec`` (float16: half the
bytes of each vector; the HNSW index's neighbour lists stay); the version records which
(``ModelVersion.vector_type``), and the DDL, the index's operator class, the COPY format and the
searches' query parameters follow it.
Every statement against these tables goes through ``cursor()``: a psycopg cursor on Django's own
connection (so it shares Django's transactions), with pgvector's types registered and errors
raised as Django's (the API maps those to 503). The connection is the one
``recsys.replicas.read_alias`` names: a replica inside a serving read, the primary everywhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from pgvector import HalfVector, Vector
from pgvector.psycopg import register_vector
from psycopg import sql

from recsys.db import ddl_lock_timeout, lock_not_available
from recsys.replicas import read_alias

logger = logging.getLogger(__name__)

# HNSW build parameters: pgvector's defaults; ef_construction 64 keeps recall@10 above 0.98 on the
# MovieLens benchmark while building 100k vectors in seconds.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
OWNERS = {"item": "recsys_item", "user": "recsys_user"}
# The column types a version's tables may use; custom spaces are always ``vector``.
VECTOR = "vector"
HALFVEC = "halfvec"
VECTOR_TYPES = (VECTOR, HALFVEC)
HALFVEC_SINCE = (0, 7)  # the pgvector release that added halfvec
HALF_MAX = 65504.0  # the largest finite float16


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


# ---- vector or halfvec ----------------------------------------------------------------------------


def halfvec_available() -> bool:
    """Whether this database's pgvector has ``halfvec`` (0.7 and later; the embedded server has 0.6)."""
    return pgvector_version() >= HALFVEC_SINCE


def vector_type_choose(*, items: int, values: Sequence[npt.NDArray[np.float32]] = ()) -> str:
    """``halfvec`` for a version of ``items`` items at or past ``RECSYS_HALFVEC_MIN_ITEMS`` (0: never)
    when the server has it and every one of ``values`` fits a float16; ``vector`` otherwise.

    float16 keeps 11 significant bits: recall@10 of the HNSW search barely moves (BENCHMARKS.md,
    "halfvec"), but a value past ±65,504 would not be stored at all, so such a version stays float32.
    """
    threshold = int(settings.RECSYS_HALFVEC_MIN_ITEMS)
    if threshold <= 0 or items < threshold or not halfvec_available():
        return VECTOR
    if not all(fits_half(array) for array in values):
        logger.warning("vectors of %s items exceed float16's range: stored as vector, not halfvec", items)
        return VECTOR
    return HALFVEC


def fits_half(array: npt.NDArray[np.float32]) -> bool:
    """Whether every value is finite and within float16's range."""
    return bool(np.isfinite(array).all()) and float(np.abs(array).max(initial=0.0)) <= HALF_MAX


def vector_type_checked(vector_type: str) -> str:
    if vector_type not in VECTOR_TYPES:
        raise ValueError(f"vector_type must be one of {', '.join(VECTOR_TYPES)}, not {vector_type!r}")
    return vector_type


def query_vector(vector: npt.NDArray[np.float32], vector_type: str) -> Vector | HalfVector:
    """A query vector as a parameter of the column's own type: ``halfvec <#> halfvec`` is the
    operator the halfvec HNSW index serves (the server would otherwise have to pick a cast)."""
    if vector_type_checked(vector_type) == HALFVEC:
        return HalfVector(np.asarray(vector, dtype=np.float32))
    return Vector(np.asarray(vector, dtype=np.float32))


# ---- DDL ------------------------------------------------------------------------------------------


def tables_create(version_id: int, dimensions: int, vector_type: str = VECTOR) -> None:
    """A collaborative version's tables, one per owner, of ``vector_type`` columns; a deleted item or
    user takes its vectors with it (ON DELETE CASCADE). ``fold_in`` holds EASE's item input vectors;
    ``mapped`` marks an item row placed from its content vector (a new item, until the next retrain
    learns it)."""
    column = sql.SQL(vector_type_checked(vector_type))
    with cursor() as cur:
        for owner, target in OWNERS.items():
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {table} ("
                    " {fk} bigint PRIMARY KEY REFERENCES {target} (id) ON DELETE CASCADE,"
                    " embedding {type}({dims}) NOT NULL,"
                    " fold_in {type}({dims}),{mapped}"
                    " updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(
                    table=sql.Identifier(table_name(version_id, owner)),
                    fk=sql.Identifier(f"{owner}_id"),
                    target=sql.Identifier(target),
                    type=column,
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


def content_table_create(version_id: int, dimensions: int, vector_type: str = VECTOR) -> None:
    """A content version's item table: a NULL embedding records an item with no text to encode,
    ``source_changed_at`` the item's ``content_changed_at`` that was encoded (newer means stale)."""
    with cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {table} ("
                " item_id bigint PRIMARY KEY REFERENCES recsys_item (id) ON DELETE CASCADE,"
                " embedding {type}({dims}),"
                " source_changed_at timestamptz NOT NULL,"
                " cluster integer,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(
                table=sql.Identifier(item_table(version_id)),
                type=sql.SQL(vector_type_checked(vector_type)),
                dims=sql.Literal(int(dimensions)),
            )
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
        cur.execute(_hnsw(table, VECTOR))


def index_build(version_id: int, owner: str, vector_type: str = VECTOR) -> None:
    """HNSW for inner product on the table's ``vector_type`` column, built after the COPY (far
    faster than maintaining it row by row)."""
    table = table_name(version_id, owner)
    with cursor() as cur:
        cur.execute(_hnsw(table, vector_type, if_not_exists=True))
        cur.execute(sql.SQL("ANALYZE {table}").format(table=sql.Identifier(table)))


def _hnsw(table: str, vector_type: str, *, if_not_exists: bool = False) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX {exists} {index} ON {table} USING hnsw (embedding {opclass})"
        " WITH (m = {m}, ef_construction = {ef})"
    ).format(
        exists=sql.SQL("IF NOT EXISTS" if if_not_exists else ""),
        opclass=sql.SQL(f"{vector_type_checked(vector_type)}_ip_ops"),
        index=sql.Identifier(f"{table}_hnsw"),
        table=sql.Identifier(table),
        m=sql.Literal(HNSW_M),
        ef=sql.Literal(HNSW_EF_CONSTRUCTION),
    )


class TablesBusy(Exception):
    """A version's tables could not be dropped within DROP_LOCK_TIMEOUT_MS; try again later."""


# Dropping a version's table removes its foreign keys' triggers from recsys_item and recsys_user,
# which takes an ACCESS EXCLUSIVE lock on those too; a DROP waiting for one (behind a long
# transaction: an export, a slow ingest) would queue every query on the catalogue behind it. So a
# DROP waits this long at most, and whoever asked for it tries again later.
DROP_LOCK_TIMEOUT_MS = 500
_CATALOGUE_HELD = """
    SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.relation = ANY (%s::regclass[]) AND l.pid <> pg_backend_pid() AND l.granted
      AND a.backend_type = 'client backend' AND a.xact_start < clock_timestamp() - interval '1 second'
    LIMIT 1
"""


def tables_drop(version_id: int) -> None:
    """Drop a version's tables (in the caller's transaction, if any); raises TablesBusy when their
    locks are not granted within DROP_LOCK_TIMEOUT_MS."""
    try:
        with transaction.atomic(), cursor() as cur:
            # A transaction that has held a lock on the catalogue for a while is likely to go on (an
            # export): do not queue behind it at all, rather than hold every query back for the timeout.
            if cur.execute(_CATALOGUE_HELD, [list(OWNERS.values())]).fetchone():
                raise TablesBusy(f"version {version_id}'s tables wait: a long transaction reads the catalogue")
            with ddl_lock_timeout(cur, DROP_LOCK_TIMEOUT_MS):
                for owner in OWNERS:
                    table = sql.Identifier(table_name(version_id, owner))
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {table}").format(table=table))
    except DatabaseError as error:
        if lock_not_available(error):
            raise TablesBusy(f"version {version_id}'s tables are in use; dropping them is left for later") from error
        raise


def tables_drop_patiently(version_id: int, *, seconds: float = 1_800) -> None:
    """``tables_drop`` tried again every few seconds while the tables are busy, for up to ``seconds``
    (a run replacing its own tables: each try holds the catalogue's queries back at most
    DROP_LOCK_TIMEOUT_MS)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            tables_drop(version_id)
            return
        except TablesBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(5)


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
    vector_type: str = VECTOR,
    updated_at: datetime | None = None,
) -> int:
    """Bulk-load (id, vector[, fold-in vector]) rows with binary COPY; returns the rows stored. A row
    whose owner was deleted since ``ids`` were read (a training run's snapshot is minutes old) is
    skipped: the COPY is tried again without the owners gone (before, the run failed).

    Parameters
    ----------
    ids : (n,) int64 database ids of the items or users
    vectors : (n, d) float32
    fold_in : (n, d) float32 item input vectors of models that fold users in as a weighted sum
    vector_type : the tables' column type (``vector`` or ``halfvec``: sent as float16)
    updated_at : the rows' ``updated_at`` (default: now), for vectors learnt from older data
    """
    if len(ids) != len(vectors) or (fold_in is not None and len(fold_in) != len(ids)):
        raise ValueError("ids and vectors differ in length")
    if vector_type_checked(vector_type) == HALFVEC and not all(
        fits_half(a) for a in (vectors, fold_in) if a is not None
    ):
        raise ValueError("vectors outside float16's range cannot be stored as halfvec")
    table = sql.Identifier(table_name(version_id, owner))
    stamp = sql.SQL("ALTER TABLE {table} ALTER COLUMN updated_at SET DEFAULT {value}")
    with transaction.atomic(), cursor() as cur:
        if updated_at is not None:  # the binary rows carry no time: the column's default, for this COPY
            cur.execute(stamp.format(table=table, value=sql.Literal(updated_at)))
        for attempt in range(COPY_ATTEMPTS):
            try:
                with transaction.atomic():  # a savepoint: a failed COPY leaves the transaction usable
                    _rows_copy(cur, table, owner, ids, vectors, fold_in, vector_type)
                break
            except (DatabaseError, psycopg.Error) as error:  # Django's wrapper or psycopg's own
                violation = psycopg.errors.ForeignKeyViolation
                if not isinstance(error, violation) and not isinstance(error.__cause__, violation):
                    raise
                if attempt == COPY_ATTEMPTS - 1:
                    raise
            present = _present(cur, owner, ids)
            logger.info(
                "%s: %d %ss deleted while the run trained are skipped",
                table_name(version_id, owner),
                len(ids) - int(present.sum()),
                owner,
            )
            ids, vectors = ids[present], vectors[present]
            fold_in = fold_in[present] if fold_in is not None else None
        if updated_at is not None:
            cur.execute(stamp.format(table=table, value=sql.SQL("now()")))
    return len(ids)


COPY_ATTEMPTS = 3  # owners deleted during a COPY's retry too: give up after this many


def _rows_copy(
    cur: Any,
    table: sql.Identifier,
    owner: str,
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    fold_in: npt.NDArray[np.float32] | None,
    vector_type: str,
) -> None:
    columns = sql.SQL(", fold_in" if fold_in is not None else "")
    statement = sql.SQL("COPY {table} ({fk}, embedding{columns}) FROM STDIN WITH (FORMAT BINARY)").format(
        table=table, fk=sql.Identifier(f"{owner}_id"), columns=columns
    )
    with cur.copy(statement) as copy:
        # Binary rows built by numpy: 1M user vectors in ~1 s instead of ~10 s row by row.
        for first in range(0, max(len(ids), 1), COPY_ROWS):
            rows = slice(first, first + COPY_ROWS)
            extra = fold_in[rows] if fold_in is not None else None
            copy.write(vector_rows_binary(ids[rows], vectors[rows], extra, vector_type=vector_type, header=first == 0))
        copy.write(b"\xff\xff")


def _present(cur: Any, owner: str, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """(n,) whether each of ``ids`` is still in the owner's table."""
    cur.execute(
        sql.SQL("SELECT id FROM {target} WHERE id = ANY(%s)").format(target=sql.Identifier(OWNERS[owner])),
        [ids.tolist()],
    )
    return np.isin(ids, np.array([row[0] for row in cur.fetchall()], np.int64))


# Rows per COPY buffer: 100,000 rows of 64 float32 dimensions are ~27 MB, so storing 1M users' vectors
# never holds a second copy of the whole matrix.
COPY_ROWS = 100_000


def vector_rows_binary(
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    fold_in: npt.NDArray[np.float32] | None = None,
    *,
    vector_type: str = VECTOR,
    header: bool = True,
) -> bytes:
    """Binary COPY rows of (int8, vector[, vector]) or the same with halfvec, preceded by COPY's
    header when ``header`` (the caller writes the trailer, ``\\xff\\xff``). pgvector's binary
    ``vector`` is int16 dimensions, int16 unused, then big-endian float4s; ``halfvec`` the same with
    big-endian float2s."""
    dims = vectors.shape[1] if vectors.ndim == 2 else 0
    value = ">f2" if vector_type_checked(vector_type) == HALFVEC else ">f4"
    size = np.dtype(value).itemsize
    fields: list[tuple[Any, ...]] = [("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8")]
    for column in ("values", "fold_in") if fold_in is not None else ("values",):
        fields += [(f"{column}_len", ">i4"), (f"{column}_dims", ">i2"), (f"{column}_unused", ">i2")]
        fields += [(column, value, (dims,))]
    rows = np.zeros(len(ids), dtype=np.dtype(fields))
    rows["fields"], rows["id_len"], rows["id"] = 3 if fold_in is not None else 2, 8, ids
    rows["values_len"], rows["values_dims"], rows["values"] = 4 + size * dims, dims, vectors
    if fold_in is not None:
        rows["fold_in_len"], rows["fold_in_dims"], rows["fold_in"] = 4 + size * dims, dims, fold_in
    return (b"PGCOPY\n\xff\r\n\x00" + bytes(8) if header else b"") + rows.tobytes()


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
        # float32 ``vector`` here whatever the version's column is: the INSERT below casts to a
        # halfvec column (pgvector's assignment cast), so one COPY format serves both.
        cur.execute(
            "CREATE TEMPORARY TABLE content_rows (item_id bigint, embedding vector, source_changed_at timestamptz,"
            " cluster integer) ON COMMIT DROP"
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
