#!/usr/bin/env python3
"""The S5 limit: how fast this broker takes and hands out 1 MiB messages when the client costs
nothing but the kernel's copies. One raw connection (no client library) does what S5
(`peer_bench s5`) does: purge `bench_s5`, publish N x 1 MiB random bytes to the default exchange
(each message's frames encoded once, before the clock starts, and handed to the kernel in one
blocking `sendall`), then consume them all with prefetch 10 and one basic.ack per message, sent
as soon as the message's last body byte is read. The consumer reads into one preallocated
buffer (`recv_into`) and looks only at frame headers and the small method and header frames;
body bytes are counted, never copied or parsed. Prints S5's keys (pub_mibs, cons_mibs, rate).
Companion of ../shared/bench/consume_ceiling.py (S3) and confirm_ceiling.py (S2b).
Usage: large_ceiling.py [N]   (standard library only; RabbitMQ on 127.0.0.1:5672, guest/guest)."""
import os
import struct
import sys
import time

from raw_amqp import connect, declare_and_purge, frame, method, shortstr

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
Q = "bench_s5"
LARGE = 1 << 20
FRAME_MAX = 131072

s, r = connect(FRAME_MAX)
declare_and_purge(s, r, Q)
s.sendall(method(1, 60, 10, struct.pack(">IHB", 0, 10, 0)))
r.method()  # basic.qos-ok
assert not r.buf

body = os.urandom(LARGE)
chunk = FRAME_MAX - 8
one = (method(1, 60, 40, struct.pack(">H", 0) + shortstr("") + shortstr(Q) + b"\x00")
       + frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
       + b"".join(frame(3, 1, body[i:i + chunk]) for i in range(0, len(body), chunk)))

t0 = time.perf_counter()
for _ in range(N):
    s.sendall(one)
t1 = time.perf_counter()

s.sendall(method(1, 60, 20, struct.pack(">H", 0) + shortstr(Q) + shortstr("ceil")
                 + b"\x00" + struct.pack(">I", 0)))
buf = bytearray(1 << 20)
view = memoryview(buf)
small = b""      # a frame header, or a method or header frame, not yet whole
skip = 0         # bytes of the current body frame (and its frame-end octet) still to come
tag = 0          # the delivery tag of the message being received
left = 0         # its body bytes still to come
got = 0          # messages received whole
got_bytes = 0
while got < N:
    n = s.recv_into(buf)
    if not n:
        sys.exit("the broker closed the connection")
    pos = 0
    while pos < n:
        if skip:
            take = min(skip, n - pos)
            skip -= take
            pos += take
            if not skip and tag and not left:
                s.sendall(method(1, 60, 80, struct.pack(">QB", tag, 0)))
                got += 1
                tag = 0
            continue
        need = 7 - len(small) if len(small) < 7 else 0
        if need:
            take = min(need, n - pos)
            small += bytes(view[pos:pos + take])
            pos += take
            if len(small) < 7:
                continue
        t, _ch, size = struct.unpack(">BHI", small[:7])
        if t == 3:
            skip, left, small = size + 1, left - size, b""
            got_bytes += size
            continue
        take = min(8 + size - len(small), n - pos)
        small += bytes(view[pos:pos + take])
        pos += take
        if len(small) < 8 + size:
            continue
        p, small = small[7:7 + size], b""
        if t == 1 and p[:4] == struct.pack(">HH", 60, 60):  # basic.deliver
            ctag_len = p[4]
            tag = struct.unpack(">Q", p[5 + ctag_len:13 + ctag_len])[0]
        elif t == 2:  # content header: the body size
            left = struct.unpack(">Q", p[4:12])[0]
t2 = time.perf_counter()

mib = N * LARGE / (1 << 20)
ok = got == N and got_bytes == N * LARGE
print(f'{{"scenario": "s5-ceiling", "n": {N}, "ok": {str(ok).lower()}, "pub_s": {t1 - t0:.3f}, '
      f'"cons_s": {t2 - t1:.3f}, "total_s": {t2 - t0:.3f}, "pub_mibs": {mib / (t1 - t0):.1f}, '
      f'"cons_mibs": {mib / (t2 - t1):.1f}, "rate": {mib / (t2 - t0):.1f}}}')
s.close()
