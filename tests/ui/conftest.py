"""Dashboard test helpers: a browser-less session (a real HTTP client that signs in through the form)."""

from __future__ import annotations

import re

import httpx

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(url: str, key: str) -> httpx.Client:
    """A client holding a dashboard session signed in with `key` (through the sign-in form, as a browser)."""
    client = httpx.Client(base_url=url, timeout=60)
    form = client.get("/ui/login")
    assert form.status_code == 200, form.text
    answer = client.post("/ui/login", data={"api_key": key, "csrf_token": csrf_of(form.text), "next": ""})
    assert answer.status_code == 303, answer.text
    return client
