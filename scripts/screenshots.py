"""``make screenshots``: the demo's data on a real server (web, worker, beat), then Debian's Chromium
logs in to the operator admin and saves a PNG of each main page under docs/screenshots/.

    python scripts/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium] [--reuse]

Uses the configured services (DATABASE_URL/REDIS_URL) or the embedded ones, as ``make demo`` does,
and a staff user and API key of its own that it deletes again at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.run import BASE_DIR, Supervisor, data_dir, log, manage, process_commands, services, wait_healthy

OPERATOR = "screenshots"
VIEWPORT = {"width": 1440, "height": 1000}


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@contextmanager
def operator(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A staff user and an admin-scoped API key for this run, deleted afterwards."""
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from recsys.api_keys import api_key_create
    from recsys.models import ApiKey

    password = secrets.token_urlsafe(16)
    get_user_model().objects.filter(username=OPERATOR).delete()
    get_user_model().objects.create_superuser(username=OPERATOR, email="", password=password)
    _, key = api_key_create(name=OPERATOR, scopes=list(ApiKey.SCOPES))
    try:
        yield {"username": OPERATOR, "password": password, "api_key": key}
    finally:
        get_user_model().objects.filter(username=OPERATOR).delete()
        ApiKey.objects.filter(name=OPERATOR).delete()


def pages() -> list[tuple[str, str]]:
    """(file name, path) of the pages to capture, pointing at demo items and users."""
    from embeddings.models import ActiveVersion
    from recsys.models import Item, User

    item = Item.objects.filter(external_id="item-000001").values_list("pk", flat=True).first()
    user = User.objects.filter(external_id="user-000001").values_list("pk", flat=True).first()
    version = ActiveVersion.objects.filter(kind="collaborative").values_list("version_id", flat=True).first()
    return [
        ("index", "/admin/"),
        ("dashboard", "/admin/dashboard/"),
        ("models", "/admin/embeddings/modelversion/"),
        ("version", f"/admin/embeddings/modelversion/{version}/change/"),
        ("item", f"/admin/recsys/item/{item}/change/"),
        ("user", f"/admin/recsys/user/{user}/change/"),
        ("preview", "/admin/preview/?user=user-000002&limit=10&category="),
        ("items", "/admin/recsys/item/"),
        ("interactions", "/admin/recsys/interaction/"),
    ]


def shoot(base: str, credentials: dict[str, str], out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; our ORM reads stay synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        page.set_default_timeout(60_000)
        page.goto(f"{base}/admin/login/?next=/admin/")
        page.fill("#id_username", credentials["username"])
        page.fill("#id_password", credentials["password"])
        page.click("input[type=submit]")
        page.wait_for_selector("#operations-module")
        # The maps first: computed by the worker when each version became active.
        map_shoot(page, base, out / "map.png", kind="collaborative")
        map_shoot(page, base, out / "map-content.png", kind="content")
        for name, path in pages():
            page.goto(base + path)
            page.wait_for_load_state("networkidle")
            save(page, out / f"{name}.png")
        browser.close()


def active_version(kind: str) -> int | None:
    from embeddings.models import ActiveVersion

    return ActiveVersion.objects.filter(kind=kind).values_list("version_id", flat=True).first()


def map_shoot(page: Any, base: str, path: Path, *, kind: str) -> None:
    """The map of the active version of ``kind``, once the worker has computed it."""
    version = active_version(kind)
    page.goto(f"{base}/admin/embeddings/modelversion/map/?version={version}")
    if page.locator("#compute-map").get_attribute("value", timeout=5_000).startswith("Compute"):
        page.click("#compute-map")  # no map kept (an install older than maps on activation)
    page.wait_for_selector("#embedding-map[data-points]", timeout=300_000)
    page.wait_for_timeout(500)  # the canvas paints after the data arrives
    save(page, path)


def save(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    log(f"saved {path.relative_to(BASE_DIR) if path.is_relative_to(BASE_DIR) else path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=BASE_DIR / "docs" / "screenshots")
    parser.add_argument("--chromium", default=os.environ.get("RECSYS_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument(
        "--reuse", action="store_true", help="keep the versions an earlier run activated instead of training new ones"
    )
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        log(f"no Chromium at {args.chromium}: apt-get install -y chromium (or pass --chromium)")
        return 1
    from recsys.demo import train_on_worker

    port = free_port()
    data_dir().mkdir(parents=True, exist_ok=True)  # beat keeps its schedule file there
    with services() as env:
        env = {**env, "PORT": port}
        manage(env, "migrate", "--no-input", "-v", "0")
        log("loading demo data")
        manage(env, "generate_demo_data", "--no-progress")
        with operator(env) as credentials:
            supervisor = Supervisor(env)
            supervisor.start(process_commands(port))
            try:
                if not wait_healthy(port, supervisor):
                    return 1
                for kind in ("content", "collaborative"):
                    if not (args.reuse and active_version(kind)):
                        train_on_worker(port, credentials["api_key"], kind=kind)
                shoot(f"http://127.0.0.1:{port}", credentials, args.out, args.chromium)
            finally:
                supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
