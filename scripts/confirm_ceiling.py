#!/usr/bin/env python3
"""The S2b limit: how fast this broker confirms 64 B publishes in windows when the client costs
nothing. One raw connection (no client library) puts its channel in confirm mode; each window's
publish frames are encoded before the clock starts, each window goes out in one sendall, and the
next starts when the broker's basic.ack (usually `multiple`) covers the window's last tag, as S2b
(`peer_bench s2b`) waits with wait_for_confirms. Prints the rate over that loop, as S2b does.
Companion of ../shared/bench/broker_ceiling.py (S1). Usage: confirm_ceiling.py [N] [WINDOW]
(standard library only; RabbitMQ on 127.0.0.1:5672, guest/guest)."""
import struct
import sys
import time

from raw_amqp import connect, declare_and_purge, frame, method, shortstr

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
WINDOW = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
Q = "bench_limit_s2"

s, r = connect()
declare_and_purge(s, r, Q)
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
