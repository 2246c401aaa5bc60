"""Make the database itself cascade deletes of users and items to their interactions.

Django emulates CASCADE in Python; doing it in PostgreSQL as well means a raw or bulk delete
(or an operator's psql session) can never leave orphaned interactions behind.
"""

from __future__ import annotations

from django.db import migrations

SQL = """
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT con.conname, att.attname, ref.relname AS target
        FROM pg_constraint con
        JOIN pg_class rel ON rel.oid = con.conrelid
        JOIN pg_class ref ON ref.oid = con.confrelid
        JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = con.conkey[1]
        WHERE con.contype = 'f' AND rel.relname = 'recsys_interaction'
          AND ref.relname IN ('recsys_user', 'recsys_item')
    LOOP
        EXECUTE format('ALTER TABLE recsys_interaction DROP CONSTRAINT %I', fk.conname);
        EXECUTE format(
            'ALTER TABLE recsys_interaction ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES %I (id) '
            'ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED', fk.conname, fk.attname, fk.target);
    END LOOP;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("recsys", "0002_default_event_types")]
    operations = [migrations.RunSQL(SQL, migrations.RunSQL.noop)]
