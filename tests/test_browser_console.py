"""Browser tests of the console for daily use (issue 11): API docs, task list, forms, logs.

Same set-up as test_browser.py (Debian's Chromium, Playwright, the app on uvicorn with the
FakePipeline); the fixtures are shared from there.
"""

from __future__ import annotations

import re

import pytest

from petray.db.engine import unit_of_work
from petray.users import create_api_token, get_user_by_name
from tests.test_browser import CHROMIUM, Served, browser, page, served

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]
pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Page, expect  # noqa: E402

__all__ = ["browser", "page", "served"]  # fixtures, imported for pytest


def _token(served: Served, role: str) -> str:
    with unit_of_work(served.harness.sessions) as session:
        user = get_user_by_name(role, session=session)
        assert user is not None
        return create_api_token(user, session=session, label="docs test")[1]


def test_docs_render_openapi_31_and_try_it_out_with_a_token(page: Page, served: Served) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto("/docs")
    # The operations list, not Swagger UI's "Unable to render this definition".
    expect(page.locator(".opblock-tag-section").first).to_be_visible()
    expect(page.locator(".opblock-summary-path[data-path='/api/v1/tasks']").first).to_be_visible()
    assert page.locator("text=Unable to render this definition").count() == 0
    expect(page.locator(".info .title")).to_contain_text("petray")

    page.click("button.authorize")
    page.fill(".auth-container input[type=text]", _token(served, "viewer"))
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.btn-done")

    operation = page.locator("#operations-tasks-api_list_tasks_api_v1_tasks_get")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    expect(status).to_have_text(re.compile(r"^\s*200"))
    expect(operation.locator(".live-responses-table .microlight").first).to_contain_text('"total"')
    assert not [e for e in errors if "Content Security Policy" in e], errors
