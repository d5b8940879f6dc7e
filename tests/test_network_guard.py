import socket

import pytest


def test_outside_connections_fail():
    with pytest.raises(RuntimeError, match="must not use the network"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
