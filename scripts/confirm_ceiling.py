#!/usr/bin/env python3
"""The S2b limit: how fast this broker confirms 64 B publishes in windows when the client costs
nothing. One raw connection (no client library) puts its channel in confirm mode; each window's
publish frames are encoded before the clock starts, each window goes out in one sendall, and the
next starts when the broker's basic.ack (usually `multiple`) covers the window's last tag, as S2b
(`peer_bench s2b`) waits with wait_for_confirms. Prints the rate over that loop, as S2b does.
Companion of ../shared/bench/broker_ceiling.py (S1). Usage: confirm_ceiling.py [N] [WINDOW]
(standard library only; RabbitMQ on 127.0.0.1:5672, guest/guest)."""
import socket
import struct
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
WINDOW = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
Q = "bench_limit_s2"


def shortstr(s):
    b = s.encode()
    return struct.pack("B", len(b)) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def frame(t, ch, p):
    return struct.pack(">BHI", t, ch, len(p)) + p + b"\xce"


def method(ch, c, m, a=b""):
    return frame(1, ch, struct.pack(">HH", c, m) + a)


class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def method(self):
        """The next method frame's (class, method) and arguments."""
        while True:
            while len(self.buf) < 7:
                self.buf += self.sock.recv(65536)
            t, _ch, size = struct.unpack(">BHI", self.buf[:7])
            while len(self.buf) < 8 + size:
                self.buf += self.sock.recv(65536)
            p, self.buf = self.buf[7:7 + size], self.buf[8 + size:]
            if t == 1:
                return struct.unpack(">HH", p[:4]), p[4:]


s = socket.create_connection(("127.0.0.1", 5672))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
r = Reader(s)
s.sendall(b"AMQP\x00\x00\x09\x01")
r.method()  # start
s.sendall(method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN")
                 + longstr(b"\x00guest\x00guest") + shortstr("en_US")))
r.method()  # tune
s.sendall(method(0, 10, 31, struct.pack(">HIH", 2047, 131072, 0)))
s.sendall(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
r.method()  # open-ok
s.sendall(method(1, 20, 10, shortstr("")))
r.method()  # channel.open-ok
s.sendall(method(1, 50, 10, struct.pack(">H", 0) + shortstr(Q) + b"\x00" + struct.pack(">I", 0)))
r.method()  # queue.declare-ok
s.sendall(method(1, 50, 30, struct.pack(">H", 0) + shortstr(Q) + b"\x00"))
r.method()  # queue.purge-ok
s.sendall(method(1, 85, 10, b"\x00"))
r.method()  # confirm.select-ok

body = b"x" * 64
one = (method(1, 60, 40, struct.pack(">H", 0) + shortstr("") + shortstr(Q) + b"\x00")
       + frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0)) + frame(3, 1, body))
windows = [one * min(WINDOW, N - start) for start in range(0, N, WINDOW)]
nacks = 0
t0 = time.perf_counter()
sent = 0
for data in windows:
    s.sendall(data)
    sent += len(data) // len(one)
    confirmed = 0
    while confirmed < sent:
        (c, m), args = r.method()
        if (c, m) in ((60, 80), (60, 120)):  # basic.ack, basic.nack
            tag, flags = struct.unpack(">QB", args[:9])
            nacks += (c, m) == (60, 120)
            confirmed = max(confirmed, tag)
t1 = time.perf_counter()
print(f'{{"n": {N}, "window": {WINDOW}, "nacks": {nacks}, "loop_s": {t1 - t0:.3f}, '
      f'"rate": {N / (t1 - t0):.0f}}}')
s.sendall(method(1, 50, 40, struct.pack(">H", 0) + shortstr(Q) + b"\x00"))
r.method()  # queue.delete-ok
s.close()
