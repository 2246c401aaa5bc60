#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Commands that work without PostgreSQL and Redis (the rest are refused with a hint when the
# embedded services they would use are not running; importing settings never starts them).
NO_SERVICES = {"services", "help", "version", "check", "makemigrations", "diffsettings", "--help", "-h", "--version"}


def services_hint(argv: list[str]) -> str:
    """Why this command cannot run and how to run it, or "" when it can."""
    from recsys import embedded

    if len(argv) < 2 or argv[1] in NO_SERVICES:
        return ""
    raw = os.environ.get("RECSYS_DATA_DIR")
    data_dir = Path(raw).expanduser().resolve() if raw else Path(__file__).resolve().parent / ".data"
    gone = embedded.missing(data_dir, dict(os.environ))
    if not gone:
        return ""
    command = " ".join(["manage.py", *argv[1:]])
    return (
        f"recsys: `{command}` needs {' and '.join(gone)}, and the embedded "
        f"{'server is' if len(gone) == 1 else 'servers are'} not running under {data_dir} "
        "(DATABASE_URL / REDIS_URL are unset, so the embedded ones are used).\n"
        "  Run it with them started and stopped again around it:\n"
        f"    .venv/bin/python -m recsys.run exec -- .venv/bin/python {command}\n"
        "  or start them and leave them running (`make services-stop` stops them):\n"
        "    make services-start"
    )


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
    hint = services_hint(sys.argv)
    if hint:
        print(hint, file=sys.stderr)
        sys.exit(2)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
