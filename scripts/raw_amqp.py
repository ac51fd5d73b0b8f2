"""A raw AMQP 0-9-1 client for the ceiling scripts (confirm_ceiling.py, large_ceiling.py):
frame encoding, a frame reader and the opening handshake, with the standard library only, so
that what the scripts measure is the broker and the kernel, not a client library."""
import socket
import struct


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
    """Whole frames from a socket."""

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


def connect(frame_max=131072):
    """A connection to 127.0.0.1:5672 as guest/guest, vhost /, with channel 1 open."""
    s = socket.create_connection(("127.0.0.1", 5672))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = Reader(s)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    r.method()  # start
    s.sendall(method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN")
                     + longstr(b"\x00guest\x00guest") + shortstr("en_US")))
    r.method()  # tune
    s.sendall(method(0, 10, 31, struct.pack(">HIH", 2047, frame_max, 0)))
    s.sendall(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
    r.method()  # open-ok
    s.sendall(method(1, 20, 10, shortstr("")))
    r.method()  # channel.open-ok
    return s, r


def declare_and_purge(s, r, queue):
    """Declares `queue` (non-durable) and purges it."""
    s.sendall(method(1, 50, 10, struct.pack(">H", 0) + shortstr(queue) + b"\x00"
                     + struct.pack(">I", 0)))
    r.method()  # queue.declare-ok
    s.sendall(method(1, 50, 30, struct.pack(">H", 0) + shortstr(queue) + b"\x00"))
    r.method()  # queue.purge-ok
