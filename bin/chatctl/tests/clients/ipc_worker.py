"""A worker of a chatctl master that speaks the IPC channel (fd 4, JSON lines) by hand, for
the master's bounds tests. Workers with an odd CHATCTL_WORKER_ID publish a broadcast storm;
the others are busy: they read relayed broadcasts slower than the storm comes, answer pings,
and ask the master's service a question every 20 ms. They print "answered N" every 10
replies and "LOST reply ID" for a question unanswered after 10 s."""

import json
import os
import sys
import threading
import time

channel_out = os.fdopen(4, "wb", buffering=0)
channel_in = os.fdopen(os.dup(4), "rb")
writing = threading.Lock()


def send(message):
    line = (json.dumps(message) + "\n").encode()
    with writing:
        channel_out.write(line)


def answer_pings():
    for raw in channel_in:
        if raw.startswith(b'{"type":"ping"'):
            message = json.loads(raw)
            send({"type": "pong", "seq": message["seq"], "connections": 0})
    os._exit(0)


def storm():
    threading.Thread(target=answer_pings, daemon=True).start()
    body = "x" * 1000
    line = (json.dumps({"type": "publish", "body": body}) + "\n").encode()
    batch = line * 100
    while True:
        with writing:
            channel_out.write(batch)
        # At most about 30 000 a second: three times what the busy worker reads.
        time.sleep(0.003)


def busy():
    outstanding = {}
    answered = 0
    guard = threading.Lock()

    def read():
        nonlocal answered
        relayed = 0
        for raw in channel_in:
            if raw.startswith(b'{"type":"message"'):
                # Busy: every relayed broadcast costs time.
                relayed += 1
                if relayed % 10 == 0:
                    time.sleep(0.001)
                continue
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "ping":
                send({"type": "pong", "seq": message["seq"], "connections": 0})
            elif kind == "reply":
                with guard:
                    outstanding.pop(message["id"], None)
                    answered += 1
                    if answered % 10 == 0:
                        print(f"answered {answered}", flush=True)
        os._exit(0)

    threading.Thread(target=read, daemon=True).start()
    next_id = 1
    while True:
        with guard:
            outstanding[next_id] = time.monotonic()
            late = [i for i, sent in outstanding.items() if time.monotonic() - sent > 10]
            for i in late:
                print(f"LOST reply {i}", flush=True)
                del outstanding[i]
        send({"type": "request", "id": next_id, "body": {"op": "ping"}})
        next_id += 1
        time.sleep(0.02)


send({"type": "ready"})
if int(os.environ.get("CHATCTL_WORKER_ID", "0")) % 2 == 1:
    storm()
else:
    busy()
sys.exit(0)
