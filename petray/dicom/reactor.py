"""An association's own reactor that waits for work instead of waking every millisecond.

pynetdicom 3.0.4 runs two threads per association: the DUL reactor, which reads the socket
(petray reads it itself once established: direct_receive, direct_store), and the association's
reactor, which sleeps 1 ms and looks for a decoded DIMSE message, a release or an abort request
from the peer, a dead DUL thread and the idle timeout, a thousand times a second for as long as
the association lasts. That is 2-4 % of a CPU per association doing nothing: a gateway serving
eight senders, or sending three derived series over three associations each, spends a
noticeable share of its two cores there (issue 13).

``install_waiting_reactor`` gives one association the same loop, step for step, except that it
waits on an event set whenever something it looks for arrives (the DUL's queue to the user,
where releases and aborts come; the DIMSE queue), and at most ``WAIT_S``, so a dead DUL
thread, the idle timeout and ``kill`` are still noticed within that. While it waits it counts
as paused, as at pynetdicom's checkpoint: it touches nothing until that checkpoint lets it go.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association

LOGGER = logging.getLogger("pynetdicom.assoc")  # pynetdicom's own messages, as its loop logs
WAIT_S = 0.05
PYNETDICOM_VERSION = "3.0.4"  # the loop below is that version's ``Association._run_reactor``


def install_waiting_reactor(assoc: Association) -> bool:
    """Replace ``assoc``'s reactor loop before its thread starts (EVT_CONN_OPEN); False (and
    nothing changed) when pynetdicom is not the version the loop was taken from."""
    import pynetdicom

    if pynetdicom.__version__ != PYNETDICOM_VERSION or not callable(
        getattr(assoc, "_run_reactor", None)
    ):
        return False
    wake = threading.Event()
    _wake_on_put(assoc.dul.to_user_queue, wake)
    assoc._run_reactor = lambda: _run_waiting_reactor(assoc, wake)  # type: ignore[method-assign]
    return True


def _wake_on_put(queue: Any, wake: threading.Event) -> None:
    put = queue.put

    def put_and_wake(*args: Any, **kwargs: Any) -> None:
        put(*args, **kwargs)
        wake.set()

    queue.put = put_and_wake


def _run_waiting_reactor(assoc: Association, wake: threading.Event) -> None:
    """pynetdicom 3.0.4's ``Association._run_reactor`` with its 1 ms sleep replaced by a wait."""
    # The DIMSE queue is wrapped only now: petray.dicom.scp replaces it when the connection
    # opens, after this reactor was installed.
    _wake_on_put(assoc.dimse.msg_queue, wake)
    self = cast(Any, assoc)
    self._is_paused = False
    while not self._kill:
        self._is_paused = True
        wake.wait(WAIT_S)
        wake.clear()  # before looking: whatever arrives from now on wakes the next wait
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, cast(int, context_id))

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return
