"""Host names and addresses of DICOM peers (issue 11)."""

from __future__ import annotations

import pytest

from petray.dicom.hostnames import is_valid_host, validate_host


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "pacs",
        "pacs.hospital.example",
        "PACS-01.local",
        "::1",
        "[fe80::1]",
        "pacs.example.",
        "ws_pet01",
    ],
)
def test_hosts_accepted(host: str) -> None:
    assert is_valid_host(host)


@pytest.mark.parametrize(
    "host",
    ["not a host!!", "", "  ", "-pacs", "pacs-", "a..b", "300.1.1.1", "pacs:104", "x" * 64, "h/p"],
)
def test_hosts_refused(host: str) -> None:
    assert not is_valid_host(host)
    with pytest.raises(ValueError, match="host name"):
        validate_host(host)


def test_validate_host_strips_spaces_and_brackets() -> None:
    assert validate_host(" pacs ") == "pacs"
    assert validate_host("[::1]") == "::1"
