"""vswitch.underlay: trains of datagrams (UDP GSO) and what happens when the path refuses one."""

import errno
import socket

from vswitch.drops import Drop, new_counters
from vswitch.underlay import UnderlaySocket


class PathWithMtu:
    """A socket whose path refuses trains of segments over ``mtu`` - 28 (as the kernel does with EINVAL on
    a jumbo-frame link), and takes any single datagram (the kernel would fragment it)."""

    def __init__(self, mtu: int):
        self.mtu = mtu
        self.sent: list[bytes] = []
        self.trains: list[list[bytes]] = []

    def sendto(self, data, target):
        self.sent.append(bytes(data))

    def sendmsg(self, buffers, ancillary, flags, target):
        size = int.from_bytes(ancillary[0][2], "little")
        if size > self.mtu - 28:
            raise OSError(errno.EINVAL, "Invalid argument")
        data = bytes(buffers[0])
        self.trains.append([data[i:i + size] for i in range(0, len(data), size)])


def underlay(mtu: int) -> UnderlaySocket:
    u = UnderlaySocket("127.0.0.1", 0, new_counters())
    u.close()
    u.sock = PathWithMtu(mtu)
    u.gso = True
    return u


def test_small_datagrams_travel_as_one_train():
    u = underlay(9100)
    for i in range(5):
        u.send(bytes([i]) * 100, ("198.18.0.12", 6081))
    u.flush()
    assert [len(t) for t in u.sock.trains] == [5] and u.sock.sent == []


def test_a_refused_train_is_sent_one_by_one_and_large_datagrams_are_not_batched_again():
    u = underlay(9100)
    big = [bytes([i]) * 9500 for i in range(3)]
    for d in big:
        u.send(d, ("198.18.0.12", 6081))
    u.flush()
    assert u.sock.sent == big and u.drops[Drop.SEND_FAILED] == 0  # nothing lost
    assert u.train_limit == 9499
    for d in big:
        u.send(d, ("198.18.0.12", 6081))
    u.flush()
    assert u.sock.sent == big * 2 and u.sock.trains == []  # straight to sendto from now on
    for i in range(3):
        u.send(bytes([i]) * 1000, ("198.18.0.12", 6081))
    u.flush()
    assert [len(t) for t in u.sock.trains] == [3]  # small ones still travel in trains


def test_other_send_errors_are_counted_drops():
    u = underlay(9100)

    def refuse(*a):
        raise OSError(errno.ENOBUFS, "No buffer space available")

    u.sock.sendmsg = refuse
    for _ in range(4):
        u.send(b"x" * 100, ("198.18.0.12", 6081))
    u.flush()
    assert u.drops[Drop.SEND_FAILED] == 4


def test_a_real_socket_still_batches_on_loopback():
    u = UnderlaySocket("127.0.0.1", 0, new_counters())
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    try:
        for _ in range(3):
            u.send(b"y" * 500, r.getsockname())
        u.flush()
        r.settimeout(2)
        got = [r.recv(65535) for _ in range(3)]
        assert got == [b"y" * 500] * 3
    finally:
        u.close()
        r.close()
