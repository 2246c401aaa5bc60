"""The references of interactions and attributions to users and items are kept by the writer and by delete
triggers instead of foreign keys, the id CHECK constraint takes the `+` form of the id rule (keeping every row), and the
impressions get an index on shown_at (attribution's "any impression in the window?").

Why: the foreign keys were checked row by row at commit, two probes and two row locks per stored event,
~40% of PostgreSQL's CPU for an API batch (BENCHMARKS.md, Ingestion). The guarantee they gave is kept:

* **No orphan is written.** ``recsys.ingestion.writer`` is the one door to ``recsys_interaction``. In the
  events' transaction it first takes ``recsys_references_share()`` (a shared transaction advisory lock),
  then, in its next statement, checks that every distinct user and item of the batch exists; if one
  does not (deleted since its id was resolved), the transaction is rolled back and the batch is resolved
  again (``ReferencesGone``). A file import takes the lock before it resolves a chunk's ids, and skips the
  check when no delete ran since the ids it remembers were known to exist: every delete draws from
  ``recsys_references_deletes`` while it holds the lock exclusively, and ``recsys_references_share()``
  returns the sequence's value (read under the shared lock, so no delete is in progress).
* **Attributions** are written in the same transactions: the interactions' (their users and items were
  checked under the lock), and the impressions' late attributions, which take the lock before they read
  the interactions they credit (a deleted user's are gone from that snapshot).
* **A delete removes the interactions and attributions.** A DELETE on recsys_user or recsys_item first takes the same
  lock exclusively (BEFORE … FOR EACH STATEMENT), so it waits for every events transaction in flight and
  holds off new ones until it commits; an AFTER … FOR EACH STATEMENT trigger then deletes the deleted
  rows' interactions and attributions with a fresh snapshot (READ COMMITTED), which sees every events transaction that
  committed before the lock was granted. A writer that was waiting for the lock checks after it is
  granted, so it sees the delete. Deletes under REPEATABLE READ or SERIALIZABLE are refused: their
  snapshot could predate a writer that committed meanwhile (the foreign keys' cross-check snapshot has
  no plpgsql equivalent). Changing a user's or item's row id is refused as a foreign key refused it.

Django's state keeps the fields as foreign keys (``db_constraint=False``), so the ORM still joins and
cascades through them.
"""

from __future__ import annotations

from django.db import migrations, models

# The lock that orders events transactions (shared) against deletes of users and items (exclusive).
REFERENCES_LOCK_KEY = 7_265_637_379_735_372  # any constant: 'recsys' references

FUNCTIONS = f"""
CREATE SEQUENCE recsys_references_deletes;

CREATE FUNCTION recsys_references_share() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock_shared({REFERENCES_LOCK_KEY});
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM recsys_references_deletes;  -- 1 both before and
    -- after the first nextval otherwise
$$;

CREATE FUNCTION recsys_references_take() RETURNS void LANGUAGE sql VOLATILE AS
$$ SELECT pg_advisory_xact_lock({REFERENCES_LOCK_KEY}) $$;

CREATE FUNCTION recsys_references_delete_begin() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'users and items are deleted in READ COMMITTED transactions only (% is %)',
            TG_TABLE_NAME, current_setting('transaction_isolation')
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'their interactions are removed by a trigger that needs a fresh snapshot';
    END IF;
    PERFORM recsys_references_take();
    PERFORM nextval('recsys_references_deletes');
    RETURN NULL;
END $$;

CREATE FUNCTION recsys_user_interactions_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM recsys_interaction x USING gone WHERE x.user_id = gone.id;
    DELETE FROM recsys_attribution a USING gone WHERE a.user_id = gone.id;
    RETURN NULL;
END $$;

CREATE FUNCTION recsys_item_interactions_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM recsys_interaction x USING gone WHERE x.item_id = gone.id;
    DELETE FROM recsys_attribution a USING gone WHERE a.item_id = gone.id;
    RETURN NULL;
END $$;

CREATE FUNCTION recsys_row_id_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the id of a row of % never changes (interactions refer to it)', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation';
END $$;
"""
TRIGGERS = """
CREATE TRIGGER {table}_delete_begin BEFORE DELETE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION recsys_references_delete_begin();
CREATE TRIGGER {table}_interactions_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();
CREATE TRIGGER {table}_id_keep BEFORE UPDATE OF id ON {table}
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION recsys_row_id_keep();
"""
FOREIGN_KEYS = {  # (table, column): the names 0007 and 0005 gave them
    ("recsys_interaction", "user"): "recsys_interaction_user_id_a93ccf36_fk_recsys_user_id",
    ("recsys_interaction", "item"): "recsys_interaction_item_id_32611a0e_fk_recsys_item_id",
    ("recsys_attribution", "user"): "recsys_attribution_user_id_fk",
    ("recsys_attribution", "item"): "recsys_attribution_item_id_fk",
}

FORWARD = (
    "".join(f"ALTER TABLE {table} DROP CONSTRAINT {name};\n" for (table, _), name in FOREIGN_KEYS.items())
    + FUNCTIONS
    + "".join(
        TRIGGERS.format(table=f"recsys_{kind}", function=f"recsys_{kind}_interactions_delete")
        for kind in ("user", "item")
    )
)
BACKWARD = (
    "".join(
        f"DROP TRIGGER {t}_delete_begin ON {t}; DROP TRIGGER {t}_interactions_delete ON {t}; "
        f"DROP TRIGGER {t}_id_keep ON {t};\n"
        for t in ("recsys_user", "recsys_item")
    )
    + "DROP FUNCTION recsys_references_share(), recsys_references_take(), recsys_references_delete_begin(), recsys_user_interactions_delete(), "
    "recsys_item_interactions_delete(), recsys_row_id_keep();\nDROP SEQUENCE recsys_references_deletes;\n"
    + "".join(
        f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({kind}_id) REFERENCES recsys_{kind} (id) "
        "ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;\n"
        for (table, kind), name in FOREIGN_KEYS.items()
    )
)


def _check(model: str, pattern: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=models.Q(external_id__regex=pattern), name=f"{model}_external_id_format")


# The id CHECK as 0001 wrote it, `^[A-Za-z0-9_.:@/-]{1,128}$`, made PostgreSQL's regex engine count (0.80 s per
# 100,000 new ids against 0.09 s for `+`); the length is the column's varchar(128). recsys.ids.STORED_ID_PATTERN
# as of this migration (frozen here: a migration does not follow later edits).
STORED_ID_PATTERN = "^[A-Za-z0-9_.:@/-]+$"


class Migration(migrations.Migration):
    dependencies = [("recsys", "0008_admin_id_rule")]
    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FORWARD, BACKWARD)],
            state_operations=[
                migrations.AlterField(
                    model_name=model,
                    name=field,
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.CASCADE,
                        related_name=related_name,
                        to=f"recsys.{field}",
                    ),
                )
                for model, related_name in (("interaction", "interactions"), ("attribution", "+"))
                for field in ("user", "item")
            ],
        ),
        *(
            operation
            for model in ("user", "item")
            for operation in (
                migrations.RemoveConstraint(model_name=model, name=f"{model}_external_id_format"),
                migrations.AddConstraint(model_name=model, constraint=_check(model, STORED_ID_PATTERN)),
            )
        ),
        migrations.AddIndex(
            model_name="impression",
            index=models.Index(fields=["shown_at"], name="impression_shown_at"),
        ),
    ]
