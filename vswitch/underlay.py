"""The underlay socket: one UDP socket per agent, batched with UDP GSO and GRO.

On a software underlay (veth, a bridge) one ``sendto`` carries the datagram through the whole path
to the receiving socket inside that system call, so small packets cost a full kernel traversal each
(two-thirds of an agent's time at 64-byte packets). UDP segmentation offload amortises it:

- send: consecutive datagrams of the same size to the same host, within one drain of an ENI, are
  copied back to back into one buffer and sent with a single ``sendmsg`` carrying ``UDP_SEGMENT``
  (the size of each). The kernel keeps them as one buffer through veth and the bridge.
- receive: with ``UDP_GRO`` on, such a train arrives in one ``recvmsg`` with a control message giving
  the segment size; we hand each datagram to the data path in turn. A receiver without GRO (another
  implementation) still gets ordinary datagrams: the kernel splits them on delivery.

Both are probed at start (kernel ≥ 4.18 / 5.0) and the socket falls back to plain datagrams.
Python has no ``sendmmsg``/``recvmmsg``; this is the batching primitive it can reach.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys

from .drops import Drop

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels
MAX_TRAIN = 65000  # bytes of UDP payload in one train (IPv4 datagram limit 65,507)
# Enough for ~60 TSO super-packets in flight; larger only builds a standing queue (over a second of
# 64-byte packets at 16 MB), which is latency, not throughput.
SOCKET_BUFFER = 4 << 20
_U16 = struct.Struct("=H")  # the UDP_SEGMENT control message: the size of each datagram of a train


class UnderlaySocket:
    def __init__(self, ip: str, port: int, drops: list[int], batching: bool = True):
        self.sock = s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE as root
            try:
                s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        s.bind((ip, port))
        s.setblocking(False)
        self.fileno = s.fileno()
        self.drops = drops
        self.gso = self.gro = False
        if batching:
            try:
                s.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
                self.gso = True
            except OSError:
                pass
            try:
                s.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        # The train being built.
        self.train = bytearray(MAX_TRAIN)
        self.train_view = memoryview(self.train)
        self.pos = 0
        self.count = 0
        self.size = 0
        self.target = None
        self.trains = 0  # sends that carried more than one datagram
        # Datagrams larger than this are never batched. A train's segments must each fit the path's MTU
        # (the kernel refuses the whole train with EINVAL otherwise, while a lone datagram that large is
        # just IP-fragmented): on a real jumbo-frame underlay, a train of TSO super-packets is refused.
        # Learned from the first refusal, so no MTU needs configuring.
        self.train_limit = MAX_TRAIN
        # Receiving.
        self.rbuf = bytearray(65536)
        self.rview = memoryview(self.rbuf)
        self.seg = bytearray(65536)  # one datagram of a received train, copied to offset 0
        self.segview = memoryview(self.seg)
        self.ancsize = socket.CMSG_SPACE(4)

    def close(self) -> None:
        self.sock.close()

    @staticmethod
    def kernel_counters() -> dict:
        """UDP counters of this network namespace (/proc/net/snmp): ``RcvbufErrors`` are datagrams the
        kernel dropped because we did not read fast enough."""
        try:
            with open("/proc/net/snmp") as f:
                rows = [line.split() for line in f if line.startswith("Udp:")]
            return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:]) if k in ("InErrors", "RcvbufErrors",
                                                                                  "SndbufErrors")}
        except (OSError, IndexError, ValueError):
            return {}

    # --- sending -------------------------------------------------------------------------------
    def send(self, data, target: tuple[str, int]) -> None:
        """Send one datagram, possibly later as part of a train: call ``flush`` after a batch."""
        n = len(data)
        if self.count and (n != self.size or target != self.target or self.count == MAX_SEGMENTS
                           or self.pos + n > MAX_TRAIN):
            self.flush()
        if not self.gso or n * 2 > MAX_TRAIN or n > self.train_limit:
            try:
                self.sock.sendto(data, target)
            except OSError:
                self.drops[Drop.SEND_FAILED] += 1
            return
        pos = self.pos
        self.train[pos:pos + n] = data
        self.pos = pos + n
        self.count += 1
        self.size = n
        self.target = target

    def flush(self) -> None:
        count = self.count
        if not count:
            return
        try:
            if count == 1:
                self.sock.sendto(self.train_view[:self.pos], self.target)
            else:
                self.sock.sendmsg([self.train_view[:self.pos]], [(SOL_UDP, UDP_SEGMENT, _U16.pack(self.size))],
                                  0, self.target)
                self.trains += 1
        except OSError as e:
            if e.errno == errno.EINVAL and count > 1:  # segments over the path MTU: one by one, from now on
                self.train_limit = min(self.train_limit, self.size - 1)
                size = self.size
                for off in range(0, self.pos, size):
                    try:
                        self.sock.sendto(self.train_view[off:off + size], self.target)
                    except OSError:
                        self.drops[Drop.SEND_FAILED] += 1
            else:
                self.drops[Drop.SEND_FAILED] += count
        self.pos = self.count = 0

    # --- receiving -----------------------------------------------------------------------------
    def receive(self, handle, budget: int) -> int:
        """Receive up to ``budget`` datagrams, calling ``handle(view, n, outer_ip)`` for each (a
        memoryview of a reused buffer: valid during the call). Returns how many were handled."""
        sock, rbuf, rview, seg, segview = self.sock, self.rbuf, self.rview, self.seg, self.segview
        done = 0
        while done < budget:
            try:
                if self.gro:
                    n, anc, _flags, addr = sock.recvmsg_into((rbuf,), self.ancsize)
                else:
                    n, addr = sock.recvfrom_into(rbuf)
                    anc = None
            except OSError:  # BlockingIOError: drained; anything else: try again on the next wake-up
                break
            size = int.from_bytes(anc[0][2][:4], sys.byteorder) if anc else 0
            if not size or size >= n:
                handle(rview, n, addr[0])
                done += 1
                continue
            ip = addr[0]
            for off in range(0, n, size):
                m = min(size, n - off)
                seg[:m] = rview[off:off + m]
                handle(segview, m, ip)
                done += 1
        return done
