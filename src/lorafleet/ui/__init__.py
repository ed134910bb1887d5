"""The web dashboard at `/ui`, served by `lorafleet serve` beside the API.

Pages are rendered on the server (Jinja2 templates in `templates/`), so every list and report reads
without JavaScript; htmx (paging in place, the job's event list) and uPlot (the loss curve, fed by
server-sent events, and the usage chart) are vendored under `static/vendor/` — nothing is fetched from
the internet and there is no JavaScript build. Each page reads through the API's own route functions
with the signed-in tenant (`pages.py`), so the scoping and the errors are the API's.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from lorafleet.ui.session import Signer

STATIC = Path(__file__).parent / "static"


def install_ui(app: FastAPI, *, secret: str | None) -> None:
    """Serve the dashboard's pages and static files on `app`, signing its cookies with `secret`."""
    from lorafleet.ui.routes import adapters, admin, files, jobs, monitors, signin, usage

    app.state.ui_signer = Signer(secret)
    home = APIRouter(include_in_schema=False)

    @home.get("/ui")
    def dashboard() -> RedirectResponse:
        return RedirectResponse("/ui/adapters", status_code=303)

    app.include_router(home)
    for module in (signin, adapters, jobs, files, usage, monitors, admin):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
