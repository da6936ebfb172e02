"""A second hostile pass over issue 20 as it landed: each test reproduces a defect found in it."""
from __future__ import annotations

import time

from lib import remote
from lib.hosts import Host
from lib.remote import HostUnreachable
from tests.test_hosts_robust import banner_only_port  # noqa: F401  (a fixture)


def test_a_stalled_handshake_waits_the_hosts_connect_timeout_not_paramikos_15s(tmp_path, banner_only_port):
    """connect_timeout bounds the whole handshake: with 20 s, a host that sent its banner is given 20 s,
    and the message's "for 20s" is true (the host-key transport factory once dropped the handshake bound)."""
    host = Host("mute", "127.0.0.1", str(tmp_path), port=banner_only_port, connect_timeout=20,
                known_hosts=tmp_path / "known_hosts")
    started = time.monotonic()
    try:
        remote.connect(host)
    except HostUnreachable as err:
        message = str(err)
    waited = time.monotonic() - started
    assert "host sent its banner, then nothing for 20s" in message
    assert waited >= 19.5, f"gave up after {waited:.1f}s, not the host's 20s"
