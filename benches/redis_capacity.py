#!/usr/bin/env python3
"""What one message costs Redis, for the README's capacity model.

Starts its own redis-server (no persistence) on a free port, loads the chat
server's own publish script (read from src/store/redis/client.rs, so the figures
follow the script), and sends it a pipelined stream of publishes shaped like the
server's (a ~120-byte record, a room stream trimmed to 4096 entries), while N
subscribers (redis-cli SUBSCRIBE, each standing for one instance following the
room) read the room's channel. For each N it reports Redis's CPU per message
(user + system time of the redis-server process over the run, so reading and
writing sockets included) and the script's own time per call (INFO commandstats).

Then it starts one chat server instance on the same Redis with one member in
the room (the command-line client) and publishes to the room as another instance
would: the instance's CPU per message received.

Run: cargo build --release, then
python3 benches/redis_capacity.py [--messages 200000] [--subscribers 0,1,2,10,100]
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_RS = os.path.join(HERE, "..", "src", "store", "redis", "client.rs")
WINDOW = 4096
# A line as the server logs it (src/store/record.rs): kind, sender, tag, text.
RECORD = (
    '{"k":"m","f":1,"w":"alice@127.0.0.1:53422","t":"hello, this is a line of about '
    'the length people type in a chat room"}'
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(*args):
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        self.send(command(*args))
        return self.reply()


def script(name):
    """One of the server's scripts, as src/store/redis/client.rs has it."""
    text = open(CLIENT_RS).read()
    found = re.search(r'const %s: &str = r#?"(.*?)"#?;' % name, text, re.S)
    if not found:
        sys.exit("the %s script was not found in %s" % (name, CLIENT_RS))
    return found.group(1)


def publish_script():
    return script("PUBLISH")


def heartbeat_cost(port, pid, sha, here, total, read_back, rooms=1000):
    """Redis's CPU per heartbeat: one instance renewing its `here` members in
    each of `rooms` rooms of `total` members, and reading each room's list back
    if `read_back` (as the server's heartbeat does every sixth time)."""
    admin = Conn(port)
    now_ms = int(time.time() * 1000) + 3600 * 1000
    for r in range(rooms):
        members = []
        for m in range(total):
            members += [now_ms, "%016x/%016x member%d@127.0.0.1:%d" % (r % 7, m, m, 40000 + m)]
        admin.send(command("ZADD", "bc:{r:h%d}:who" % r, *members))
        admin.reply()
    mine = ["%016x/%016x member%d@127.0.0.1:%d" % (0, m, m, 40000 + m) for m in range(here)]
    conn = Conn(port)
    start_cpu = cpu_seconds(pid)
    calls = 0
    for _ in range(5):
        data = b"".join(
            command("EVALSHA", sha, 3, "bc:{r:h%d}:who" % r, "bc:{r:h%d}:meta" % r,
                    "bc:{r:h%d}:log" % r, 15000, 86400, "1" if read_back else "", *mine)
            for r in range(rooms))
        conn.send(data)
        for _ in range(rooms):
            conn.reply()
        calls += rooms
    return (cpu_seconds(pid) - start_cpu) / calls * 1e6


def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def run(port, pid, sha, subscribers, messages, numbered):
    subs = [
        subprocess.Popen(
            ["redis-cli", "-p", str(port), "SUBSCRIBE", "bc:{r:bench}:pub"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(subscribers)
    ]
    admin = Conn(port)
    while int(admin.call("PUBSUB", "NUMSUB", "bc:{r:bench}:pub")[1]) < subscribers:
        time.sleep(0.01)
    admin.call("DEL", "bc:{r:bench}:meta", "bc:{r:bench}:log")
    admin.call("CONFIG", "RESETSTAT")
    record = RECORD
    token = "i:00000000000000aa" if numbered else ""
    keys = ["bc:{r:bench}:meta", "bc:{r:bench}:log", "bc:{r:bench}:pub",
            "bc:{r:bench}:acc:-", "bc:{r:bench}:who"]
    conn = Conn(port)
    batch = 256
    start_cpu, start = cpu_seconds(pid), time.perf_counter()
    sent = 0
    while sent < messages:
        n = min(batch, messages - sent)
        data = b"".join(
            command("EVALSHA", sha, 5, *keys, "0123456789abcdef", WINDOW, record, "",
                    3600, "", "", 15000, 86400, token, sent + i + 1 if numbered else "")
            for i in range(n)
        )
        conn.send(data)
        for _ in range(n):
            conn.reply()
        sent += n
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid) - start_cpu
    stats = admin.call("INFO", "commandstats").decode()
    usec = re.search(r"cmdstat_evalsha:calls=\d+,usec=\d+,usec_per_call=([\d.]+)", stats)
    for s in subs:
        s.terminate()
        s.wait()
    return cpu / messages * 1e6, float(usec.group(1)) if usec else float("nan"), wall


def instance_cost(port, sha, server_bin, client_bin, messages):
    """One instance of the chat server following the room, with one member (the
    command-line client): its CPU per message published by another instance."""
    server = subprocess.Popen(
        [server_bin, "--port", "0", "--host", "127.0.0.1", "--redis-url",
         "redis://127.0.0.1:%d" % port],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = server.stdout.readline()
        found = re.search(r"Listening on port (\d+)", line)
        if not found:
            sys.exit("the server did not say it was listening: %r" % line)
        chat_port = int(found.group(1))
        client = subprocess.Popen(
            [client_bin, "--url", "ws://127.0.0.1:%d/bench" % chat_port, "--listen"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        admin = Conn(port)
        deadline = time.time() + 10
        while int(admin.call("PUBSUB", "NUMSUB", "bc:{r:bench}:pub")[1]) < 1:
            if time.time() > deadline or client.poll() is not None:
                sys.exit("the member did not join the room")
            time.sleep(0.01)
        got = [0]
        import threading

        def count():
            # A member that falls further behind than the room's window is
            # told how many it missed: those reached it too, as far as the
            # instance's work goes.
            for out in client.stdout:
                if "hello, this is a line" in out:
                    got[0] += 1
                else:
                    missed = re.search(r"you missed (\d+) message", out)
                    if missed:
                        got[0] += int(missed.group(1))
        reader = threading.Thread(target=count, daemon=True)
        reader.start()
        keys = ["bc:{r:bench}:meta", "bc:{r:bench}:log", "bc:{r:bench}:pub",
                "bc:{r:bench}:acc:-", "bc:{r:bench}:who"]
        conn = Conn(port)
        start_cpu = cpu_seconds(server.pid)
        sent = 0
        while sent < messages:
            n = min(256, messages - sent)
            conn.send(b"".join(
                command("EVALSHA", sha, 5, *keys, "0123456789abcdef", WINDOW, RECORD, "",
                        3600, "", "", 15000, 86400, "", "")
                for _ in range(n)))
            for _ in range(n):
                conn.reply()
            sent += n
        deadline = time.time() + 60
        while got[0] < messages and time.time() < deadline:
            time.sleep(0.01)
        cpu = cpu_seconds(server.pid) - start_cpu
        client.terminate()
        client.wait()
        if got[0] < messages:
            sys.exit("the member got %d of %d" % (got[0], messages))
        return cpu / messages * 1e6
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200000)
    parser.add_argument("--subscribers", default="0,1,2,10,100")
    parser.add_argument("--server", default=os.path.join(HERE, "..", "target", "release", "server"),
                        help="the chat server binary, for an instance's cost per message")
    parser.add_argument("--client", default=os.path.join(HERE, "..", "target", "release", "client"))
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                Conn(port).call("PING")
                break
            except OSError:
                time.sleep(0.02)
        admin = Conn(port)
        sha = admin.call("SCRIPT", "LOAD", publish_script()).decode()
        print("subscribers  numbered  redis CPU us/msg  script us/call  msgs/s one core could sequence")
        for n in [int(x) for x in args.subscribers.split(",")]:
            for numbered in (False, True):
                cpu, per_call, _ = run(port, server.pid, sha, n, args.messages, numbered)
                print("%11d  %8s  %16.2f  %14.2f  %12.0f" % (n, "yes" if numbered else "no",
                                                            cpu, per_call, 1e6 / cpu), flush=True)
        hb = admin.call("SCRIPT", "LOAD", script("HEARTBEAT")).decode()
        print("heartbeat: members here, in the room  redis CPU us/call: renewing, and reading the list back",
              flush=True)
        for here, total in [(1, 10), (10, 100), (100, 1000)]:
            renew = heartbeat_cost(port, server.pid, hb, here, total, False)
            read = heartbeat_cost(port, server.pid, hb, here, total, True)
            print("%12d %12d  %16.2f %16.2f" % (here, total, renew, read), flush=True)
        if os.path.exists(args.server) and os.path.exists(args.client):
            us = instance_cost(port, sha, args.server, args.client, args.messages)
            print("an instance following the room, one member: %.2f us of CPU per message" % us)
        else:
            print("(no %s: build with cargo build --release to measure an instance)" % args.server)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
