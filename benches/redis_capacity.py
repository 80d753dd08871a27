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

Run: python3 benches/redis_capacity.py [--messages 200000] [--subscribers 0,1,2,10,100]
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


def publish_script():
    text = open(CLIENT_RS).read()
    found = re.search(r'const PUBLISH: &str = r#"(.*?)"#;', text, re.S)
    if not found:
        sys.exit("the publish script was not found in " + CLIENT_RS)
    return found.group(1)


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
    record = (
        '{"f":1,"w":"alice@127.0.0.1:53422","t":"hello, this is a line of about '
        'the length people type in a chat room","a":1700000000000000}'
    )
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200000)
    parser.add_argument("--subscribers", default="0,1,2,10,100")
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
                cpu, script, _ = run(port, server.pid, sha, n, args.messages, numbered)
                print("%11d  %8s  %16.2f  %14.2f  %12.0f" % (n, "yes" if numbered else "no",
                                                            cpu, script, 1e6 / cpu))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
