"""What pynetdicom itself puts on the wire for a DIMSE message: the reference the direct
sender and receiver (petray.dicom.direct_store, direct_receive) are compared with."""

from __future__ import annotations

from typing import Any

from pynetdicom.pdu import P_DATA_TF


def pynetdicom_pdus(message: Any, context_id: int, max_pdu: int) -> bytes:
    """A pynetdicom DIMSE message encoded as the P-DATA-TF PDUs pynetdicom would send."""
    encoded = []
    for pdata in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        encoded.append(pdu.encode())
    return b"".join(encoded)
