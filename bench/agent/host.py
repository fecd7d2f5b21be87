#!/usr/bin/env python3
"""A minimal infinibay host for the agent benchmark: connects to the agent's UNIX socket,
does the handshake, and then either reads everything for N seconds (idle) or runs one command
and waits for its response. Prints one JSON object with what it saw."""

import json
import socket
import sys
import time


def connect(path, timeout=10.0):
    deadline = time.time() + timeout
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def lines(sock, until):
    buf = b""
    while time.time() < until:
        sock.settimeout(max(0.01, until - time.time()))
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            # The agent leads its identification with a newline (docs/agent.md): receivers
            # skip empty lines.
            if line.strip():
                yield line


def main():
    mode, path = sys.argv[1], sys.argv[2]
    sock = connect(path)
    sock.sendall(b'\xff{"type":"hello","protocol_version":1}\n')
    if mode == "idle":
        seconds = float(sys.argv[3])
        counts = {}
        total_bytes = 0
        for line in lines(sock, time.time() + seconds):
            total_bytes += len(line) + 1
            kind = json.loads(line).get("type", "?")
            counts[kind] = counts.get(kind, 0) + 1
        print(json.dumps({"messages": counts, "bytes": total_bytes}))
    elif mode == "command":
        raw = sys.argv[3]
        sent = time.time()
        cmd = {"type": "UnsafeCommand", "id": "bench", "raw_command": raw, "timeout": 120}
        if len(sys.argv) > 4:
            cmd["shell"] = sys.argv[4]
        sock.sendall((json.dumps(cmd) + "\n").encode())
        for line in lines(sock, time.time() + 150):
            msg = json.loads(line)
            if msg.get("type") == "response" and msg.get("id") == "bench":
                print(json.dumps({
                    "success": msg.get("success"),
                    "stdout_len": len(msg.get("stdout", "")),
                    "stdout_truncated": msg.get("stdout_truncated", False),
                    "line_bytes": len(line) + 1,
                    "seconds": round(time.time() - sent, 3),
                }))
                return
        print(json.dumps({"error": "no response"}))
        sys.exit(1)
    else:
        sys.exit("usage: host.py idle SOCK SECONDS | command SOCK 'shell command' [SHELL]")


if __name__ == "__main__":
    main()
