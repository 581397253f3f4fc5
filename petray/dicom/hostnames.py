"""What counts as a host of a DICOM peer: a host name or an IPv4/IPv6 address (issue 11).

A device whose host is ``not a host!!`` was accepted and only failed at the first C-ECHO or
delivery; checked when it is entered, the mistake is shown next to the field instead.
"""

from __future__ import annotations

import ipaddress
import re

# RFC 1123 2.1: labels of letters, digits and hyphens, not starting or ending with a hyphen;
# underscores too, which Windows workstation names carry and resolvers accept.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
HOST_MAX_LENGTH = 253
HOST_RULE = "is not a host name (letters, digits, hyphens, dots) or an IP address"


def is_valid_host(value: str) -> bool:
    host = value.strip()
    if not host or len(host) > HOST_MAX_LENGTH:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return True
    labels = host.removesuffix(".").split(".")
    # All-numeric dotted names ("300.1.1.1") are mistyped addresses, not host names.
    if all(label.isdigit() for label in labels):
        return False
    return all(_LABEL.match(label) for label in labels)


def validate_host(value: str) -> str:
    """The host stripped, or ValueError saying what a host may be."""
    host = value.strip()
    if not is_valid_host(host):
        raise ValueError(f"{host!r} {HOST_RULE}")
    return host.strip("[]")
