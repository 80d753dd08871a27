#!/usr/bin/env python3
"""What a Redis crash loses of the writes it acknowledged, for each `appendfsync`.

For each policy and run: start `redis-server` on a free loopback port with an
append-only file in a temporary directory, write at a steady rate what the chat
server writes for a line (one script per line: take the room's next offset with
HINCRBY, XADD the message at that offset), pipelined as the server's publisher
does, and count the offsets Redis answered. At a random moment `kill -9` it
(the process crashes; the machine does not), start it again on the same AOF,
and count the answered offsets it no longer has.

    python3 benches/redis_aof_loss.py                    # everysec and always, 3 runs each
    python3 benches/redis_aof_loss.py --runs 5 --rate 20000 --policies everysec always no

Needs only Python 3 and redis-server (Debian: apt-get install redis-server).
Every process it starts is on 127.0.0.1 and is ended before it exits.
"""

import argparse
import os
import random
import socket
import subprocess
import tempfile
import threading
import time

# One chat line, as the server logs it: the offset comes from the room's counter.
SCRIPT = (
    "local o = redis.call('HINCRBY', KEYS[1], 'offset', 1) "
    "redis.call('XADD', KEYS[2], '0-' .. o, 'd', ARGV[1]) "
    "return o"
)
META, LOG = "bc:{r:bench}:meta", "bc:{r:bench}:log"
# A message of the usual size: the record's JSON, about 150 bytes.
PAYLOAD = '{"e":"3f9a0c12d4e5b678","k":"m","w":"alice@127.0.0.1:53430","t":"' + "x" * 80 + '"}'
# How long to wait for Redis to start or to load its AOF.
START_TIMEOUT = 30.0


def command(*args):
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port, directory, policy):
    """Starts redis-server with an AOF in `directory`; returns once it answers PING
    (after loading the AOF, when there is one)."""
    log = open(os.path.join(directory, "redis.log"), "ab")
    child = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
         "--save", "", "--appendonly", "yes", "--appendfsync", policy],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"redis-server exited with {child.returncode}; see {directory}/redis.log")
        try:
            if ask(port, command("PING")).startswith(b"+PONG"):
                return child
        except OSError:
            pass
        time.sleep(0.02)
    child.kill()
    raise SystemExit(f"redis-server did not answer within {START_TIMEOUT} s")


def ask(port, request):
    """Sends one command on a fresh connection and returns the raw reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        return s.recv(65536)


def integer(reply):
    """An integer reply (`:N`), or a bulk string holding one (`$n N`)."""
    lines = reply.split(b"\r\n")
    if lines[0].startswith(b":"):
        return int(lines[0][1:])
    if lines[0].startswith(b"$") and lines[0] != b"$-1":
        return int(lines[1])
    return 0


class Writer:
    """Sends one script call per line at `rate` a second, without waiting for the
    answers (a thread reads them, as they come, into `acked`)."""

    def __init__(self, port, rate):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rate = rate
        self.sent = 0
        self.acked = 0
        self.refused = None
        self.stop = threading.Event()
        self.call = command("EVAL", SCRIPT, 2, META, LOG, PAYLOAD)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.sender = threading.Thread(target=self.send, daemon=True)

    def start(self):
        self.begun = time.monotonic()
        self.reader.start()
        self.sender.start()

    def send(self):
        while not self.stop.is_set():
            due = int((time.monotonic() - self.begun) * self.rate) - self.sent
            if due > 0:
                try:
                    self.sock.sendall(self.call * due)
                except OSError:
                    return
                self.sent += due
            time.sleep(0.0005)

    def read(self):
        """Counts the answers: each is `:OFFSET`, in order, so the last one read is
        the highest offset acknowledged."""
        pending = b""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            pending += data
            *answers, pending = pending.split(b"\r\n")
            for answer in answers:
                if answer.startswith(b":"):
                    self.acked = int(answer[1:])
                elif answer.startswith(b"-"):
                    self.refused = answer.decode()
                    return

    def finish(self):
        self.stop.set()
        self.sender.join()
        self.reader.join(timeout=5)
        self.sock.close()


def run(policy, rate, seconds):
    """One run: returns (acknowledged, acknowledged a second, kept after the
    restart)."""
    with tempfile.TemporaryDirectory(prefix="aof-loss-") as directory:
        port = free_port()
        redis = start_redis(port, directory, policy)
        try:
            writer = Writer(port, rate)
            writer.start()
            time.sleep(random.uniform(1.0, seconds))
            elapsed = time.monotonic() - writer.begun
        finally:
            redis.kill()
            redis.wait()
        writer.finish()
        if writer.refused:
            raise SystemExit(f"Redis refused a write: {writer.refused}")
        acked = writer.acked
        redis = start_redis(port, directory, policy)
        try:
            offset = integer(ask(port, command("HGET", META, "offset")))
            entries = integer(ask(port, command("XLEN", LOG)))
        finally:
            redis.kill()
            redis.wait()
        if offset != entries:
            raise SystemExit(f"the AOF kept offset {offset} but {entries} entries")
        return acked, acked / elapsed, entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=10000, help="lines a second")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="the kill comes at a random moment between 1 s and this")
    parser.add_argument("--policies", nargs="+", default=["everysec", "always"])
    args = parser.parse_args()
    print(f"kill -9 of redis-server under {args.rate} lines/s, {args.runs} runs per policy")
    print(f"{'appendfsync':<12}{'run':>4}{'acked':>9}{'acked/s':>9}{'kept':>9}{'lost':>6}"
          f"{'kept unacked':>14}")
    for policy in args.policies:
        worst = 0
        for number in range(1, args.runs + 1):
            acked, per_second, kept = run(policy, args.rate, args.seconds)
            lost = max(0, acked - kept)
            worst = max(worst, lost)
            print(f"{policy:<12}{number:>4}{acked:>9}{per_second:>9.0f}{kept:>9}{lost:>6}"
                  f"{max(0, kept - acked):>14}")
        print(f"{policy:<12} worst: {worst} acknowledged lines lost "
              f"({worst / args.rate * 1000:.1f} ms of writes at {args.rate} lines/s)")


if __name__ == "__main__":
    main()
