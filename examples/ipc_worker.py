#!/usr/bin/env python3
"""A program that speaks chatctl's worker channel (docs/IPC.md), with nothing but Python's
standard library:

    chatctl start -i 2 -- python3 examples/ipc_worker.py

It serves HTTP on the socket the master passes (fd 3), tells the master it is ready once it
serves, answers the master's health pings (so a hung worker is replaced), finishes its request
in hand when asked to drain, and tells its sibling workers about every request it serves:

    GET /      ->  {"pid": 123, "served": 4, "heard": 7}

"served" counts this worker's requests, "heard" the requests its siblings told it about.
"""

import http.server
import json
import os
import socket
import threading

channel = socket.socket(fileno=int(os.environ["CHATCTL_IPC_FD"]))
send_lock = threading.Lock()
counts = {"served": 0, "heard": 0}
draining = threading.Event()


def send(message):
    line = (json.dumps(message) + "\n").encode()
    with send_lock:
        channel.sendall(line)


def listen_to_master():
    """Reads the master's messages, one JSON object per line, until the channel closes."""
    for line in channel.makefile("r", encoding="utf-8"):
        message = json.loads(line)
        kind = message["type"]
        if kind == "ping":
            send({"type": "pong", "seq": message["seq"], "connections": 0})
        elif kind == "drain":
            draining.set()
        elif kind == "message" and message["body"].get("event") == "served":
            counts["heard"] += 1
        elif kind == "query":
            send({"type": "answer", "id": message["id"], "body": counts})
    draining.set()  # the master is gone


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        counts["served"] += 1
        send({"type": "publish", "body": {"event": "served", "pid": os.getpid()}})
        body = json.dumps({"pid": os.getpid(), **counts}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.HTTPServer):
    def get_request(self):
        connection, address = self.socket.accept()
        connection.setblocking(True)
        return connection, address


server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)  # the listening socket the workers share
# Every worker waits on the shared socket and one of them wins each connection: the others
# must not block in accept() (they would miss the drain).
server.socket.setblocking(False)
server.timeout = 0.1
threading.Thread(target=listen_to_master, daemon=True).start()
send({"type": "ready"})
print("worker %d ready" % os.getpid(), flush=True)
while not draining.is_set():
    server.handle_request()
print("worker %d drained after %d requests" % (os.getpid(), counts["served"]), flush=True)
