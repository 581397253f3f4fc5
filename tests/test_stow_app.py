"""STOW-RS devices in the HTTP API and the console's device form (issue 15).

The token and password are write-only: never in an API answer, a page, an edit form or the
audit trail; only the kind of credentials is shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from petray.db.engine import unit_of_work
from petray.db.models import AuditEvent, Device
from petray.site.users import create_api_token, get_user_by_name
from tests.support.app import AppHarness, build_harness, csrf_of

URL = "https://vna.example.org/dicom-web"
TOKEN = "tok-s3cret-value"
PASSWORD = "pw-s3cret-value"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[AppHarness]:
    yield from build_harness(tmp_path)


def _admin(h: AppHarness) -> dict[str, str]:
    with unit_of_work(h.sessions) as session:
        user = get_user_by_name("admin", session=session)
        assert user is not None
        return {"Authorization": f"Bearer {create_api_token(user, session=session)[1]}"}


def _no_secret(text: str) -> None:
    assert "s3cret" not in text


def test_api_creates_edits_and_masks_a_stow_destination(harness: AppHarness) -> None:
    headers = _admin(harness)
    body = {"name": "vna", "stow_url": URL + "/", "stow_token": TOKEN, "is_destination": True}
    created = harness.client.post("/api/v1/devices", headers=headers, json=body)
    assert created.status_code == 201, created.text
    _no_secret(created.text)
    shown = created.json()
    assert (shown["stow_url"], shown["stow_auth"], shown["tls"]) == (URL, "bearer ****", True)
    assert (shown["ae_title"], shown["port"], shown["is_source"]) == ("", 0, False)
    device_id = shown["id"]

    changed = harness.client.patch(
        f"/api/v1/devices/{device_id}",
        headers=headers,
        json={"stow_basic": f"petray:{PASSWORD}"},
    )
    assert changed.status_code == 200, changed.text
    _no_secret(changed.text)
    assert changed.json()["stow_auth"] == "basic petray:****"
    with harness.sessions() as session:
        device = session.get(Device, device_id)
        assert device is not None
        # The new credentials replaced the token rather than joining it.
        assert (device.stow_token, device.stow_basic) == ("", f"petray:{PASSWORD}")
    listing = harness.client.get("/api/v1/devices", headers=headers)
    _no_secret(listing.text)
    assert (
        harness.client.post(f"/api/v1/devices/{device_id}/echo", headers=headers).status_code == 409
    )
    with harness.sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(["device.create", "device.update"]))
        ).all()
    assert len(events) == 2
    _no_secret(str([e.detail for e in events]))
    assert events[0].detail["values"]["stow_url"] == URL


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"stow_url": URL, "ae_title": "PACS"}, "has no ae_title"),
        ({"stow_url": URL, "is_source": True}, "destination only"),
        ({"stow_url": URL, "stow_token": "t", "stow_basic": "a:b"}, "not both"),
        ({"stow_url": "ftp://vna/dicom-web"}, "http:// or https://"),
        ({"stow_url": "http://a:b@vna/dw"}, "user:password"),
        ({"stow_url": URL, "stow_basic": "nocolon"}, "user:password"),
        ({"ae_title": "PACS", "is_destination": True}, "needs host, port"),
        (
            {"ae_title": "P", "host": "h", "port": 1, "is_destination": True, "stow_token": "t"},
            "for a STOW-RS device",
        ),
    ],
)
def test_api_refuses_mixed_or_bad_stow_devices(
    harness: AppHarness, body: dict[str, object], words: str
) -> None:
    response = harness.client.post(
        "/api/v1/devices", headers=_admin(harness), json={"name": "x", **body}
    )
    assert response.status_code == 422
    assert words in response.text


def test_a_dicom_device_is_unchanged_by_stow_fields(harness: AppHarness) -> None:
    headers = _admin(harness)
    body = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    created = harness.client.post(
        "/api/v1/devices", headers=headers, json={**body, "is_destination": True}
    )
    assert created.status_code == 201, created.text
    assert (created.json()["stow_url"], created.json()["stow_auth"]) == ("", "")
    device_id = created.json()["id"]
    refused = harness.client.patch(
        f"/api/v1/devices/{device_id}", headers=headers, json={"stow_token": "t"}
    )
    assert refused.status_code == 409 and "give its URL" in refused.text


def test_console_form_adds_and_edits_a_stow_destination_without_echoing_secrets(
    harness: AppHarness,
) -> None:
    client = harness.login("admin")
    form = {
        "csrf_token": csrf_of(client.get("/devices").text),
        "name": "vna",
        "ae_title": "",
        "host": "",
        "port": "",
        "stow_url": URL,
        "stow_basic": f"petray:{PASSWORD}",
        "tls_ca": "/etc/petray/site-ca.pem",
    }
    added = client.post("/devices", data=form)
    assert added.status_code in (200, 303), added.text
    page = client.get("/devices").text
    _no_secret(page)
    assert URL in page and "basic petray:****" in page and "TLS</span>" in page
    with harness.sessions() as session:
        device = session.scalars(select(Device)).one()
        assert (device.stow_basic, device.is_destination, device.tls_ca) == (
            f"petray:{PASSWORD}",
            True,
            "/etc/petray/site-ca.pem",
        )
        device_id = device.id
    edit = client.get(f"/devices/{device_id}/edit").text
    _no_secret(edit)
    assert f'value="{URL}"' in edit
    # Saving with the secret fields left empty keeps the credentials; a new URL is taken.
    saved = client.post(
        f"/devices/{device_id}/edit",
        data={
            "csrf_token": csrf_of(edit),
            "name": "vna",
            "stow_url": "http://127.0.0.1:8042/dicom-web",
            "stow_token": "",
            "stow_basic": "",
            "tls_ca": "",
        },
    )
    assert saved.status_code in (200, 303), saved.text
    with harness.sessions() as session:
        device = session.get(Device, device_id)
        assert device is not None
        assert device.stow_url == "http://127.0.0.1:8042/dicom-web"
        assert device.host == device.stow_url and not device.tls
        assert device.stow_basic == f"petray:{PASSWORD}"
    bad = client.post(
        "/devices",
        data={
            **form,
            "csrf_token": csrf_of(client.get("/devices").text),
            "name": "b",
            "ae_title": "X",
        },
    )
    assert bad.status_code == 422 and "has no ae_title" in bad.text
