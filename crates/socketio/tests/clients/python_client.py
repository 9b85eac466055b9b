"""The Python Socket.IO client (PyPI python-socketio 5.x), driven by
crates/socketio/tests/interop.rs against a real server of this crate.

    python python_client.py <url> <scenario> [transport] [rooms]

transport: "polling", "websocket" or "default" (polling, then upgraded to websocket).
rooms: comma-separated rooms the server joins the client to (scenario "rooms").

It prints one JSON object per line on stdout: what it saw, for the test to check. It ends with
{"event":"done"} and status 0, or {"event":"error",...} and status 1.
"""

import json
import os
import sys
import threading
import traceback

try:
    import socketio
except ImportError as error:
    print(f"python-socketio is not installed ({error}): run ops/test-deps.sh", file=sys.stderr)
    sys.exit(3)

# A test never waits on a silent client: give up well before the Rust side's deadline.
WATCHDOG_SECONDS = 20
WAIT_SECONDS = 10

# Guards stdout (see below).
OUT = threading.Lock()


def report(event, **fields):
    # Handlers run on threads of their own: one line at a time, or two lines written at once
    # interleave into one the reader cannot parse, and both are lost.
    with OUT:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def done():
    report("done")
    # The client's threads may still be busy with the connection; the test is over.
    os._exit(0)


def fail(message):
    report("error", message=message)
    os._exit(1)


class Inbox:
    """What the client's handler threads received, for the main thread to wait on. Handlers
    must not block on the connection themselves: they run on its reader threads."""

    def __init__(self):
        self._items = []
        self._changed = threading.Condition()

    def put(self, name, data=None):
        with self._changed:
            self._items.append((name, data))
            self._changed.notify_all()

    def take(self, name, timeout=WAIT_SECONDS):
        def find():
            for index, (item, _) in enumerate(self._items):
                if item == name:
                    return index
            return None

        with self._changed:
            if not self._changed.wait_for(lambda: find() is not None, timeout):
                fail(f"no {name} within {timeout} s")
            return self._items.pop(find())[1]


def transports(transport):
    if transport == "polling":
        return ["polling"]
    if transport == "websocket":
        return ["websocket"]
    if transport == "default":
        return None
    fail(f"unknown transport {transport}")


# The binary payloads both sides agree on (the Rust test builds the same bytes).
BLOB = bytes(i % 251 for i in range(1000))
SMALL = bytes([0xFF, 0x00, 0x7F])


def scenario_namespaces(url, transport, _rooms):
    sio = socketio.Client(reconnection=False)
    inbox = Inbox()
    sio.on("finish", lambda *_: inbox.put("finish"))
    sio.connect(url, namespaces=["/", "/admin"], transports=transports(transport),
                wait_timeout=WAIT_SECONDS)
    answers = [sio.call("whoami", namespace=ns, timeout=WAIT_SECONDS) for ns in ["/", "/admin"]]
    report("ready", namespaces=[answer["ns"] for answer in answers], engine_id=sio.eio.sid)
    inbox.take("finish")
    done()


def scenario_transport(url, transport, _rooms):
    sio = socketio.Client(reconnection=False)
    inbox = Inbox()
    sio.on("finish", lambda *_: inbox.put("finish"))
    # python-engineio upgrades inside connect(): the transport is final when it returns.
    sio.connect(url, transports=transports(transport), wait_timeout=WAIT_SECONDS)
    server = sio.call("transport", timeout=WAIT_SECONDS)
    report("transport", client=sio.transport(), server=server)
    inbox.take("finish")
    done()


def scenario_acks(url, transport, _rooms):
    sio = socketio.Client(reconnection=False)
    inbox = Inbox()

    @sio.on("question")
    def question(data):
        inbox.put("question", data)
        # The return value of a handler is its ack.
        return {"answer": f"{data['q']}-pong"}

    sio.on("verdict", lambda data: inbox.put("verdict", data))
    sio.connect(url, transports=transports(transport), wait_timeout=WAIT_SECONDS)
    report("ack", data=sio.call("ask", {"n": 21}, timeout=WAIT_SECONDS))
    report("question", data=inbox.take("question"))
    report("verdict", data=inbox.take("verdict"))
    done()


def scenario_binary(url, transport, _rooms):
    sio = socketio.Client(reconnection=False)
    inbox = Inbox()
    sio.on("binary-back", lambda *args: inbox.put("binary-back", args))
    sio.connect(url, transports=transports(transport), wait_timeout=WAIT_SECONDS)

    def check(args):
        first, second = (list(args) + [None, None])[:2]
        first = first if isinstance(first, dict) else {}
        return {
            "label": first.get("label"),
            "blob_equal": first.get("data") == BLOB,
            "small_equal": second == SMALL,
        }

    # With several arguments, call() returns the ack's arguments as a tuple.
    ack = sio.call("binary", ({"label": "blob", "data": BLOB}, SMALL), timeout=WAIT_SECONDS)
    report("binary-ack", **check(ack if isinstance(ack, (list, tuple)) else [ack]))
    report("binary-back", **check(inbox.take("binary-back")))
    done()


def scenario_rooms(url, transport, rooms):
    sio = socketio.Client(reconnection=False)
    inbox = Inbox()
    news = []
    sio.on("news", lambda data: news.append(data))
    sio.on("finish", lambda *_: inbox.put("finish"))
    listed = [room for room in rooms.split(",") if room]
    sio.connect(url, auth={"rooms": listed}, transports=transports(transport),
                wait_timeout=WAIT_SECONDS)
    report("connected", rooms=listed)
    inbox.take("finish")
    report("finish", news=news)
    done()


def scenario_kick(url, transport, _rooms):
    sio = socketio.Client(reconnection=False)
    inbox = Inbox()
    sio.on("disconnect", lambda reason: inbox.put("disconnect", reason), namespace="/")
    sio.connect(url, namespaces=["/", "/admin"], transports=transports(transport),
                wait_timeout=WAIT_SECONDS)
    sio.emit("kick-me")
    reason = inbox.take("disconnect")
    report("disconnect", ns="/", reason=reason,
           server_disconnect=reason == socketio.Client.reason.SERVER_DISCONNECT)
    answer = sio.call("whoami", namespace="/admin", timeout=WAIT_SECONDS)
    report("admin-alive", ns=answer["ns"], connected="/admin" in sio.namespaces)
    done()


def scenario_reconnect(url, transport, _rooms):
    sio = socketio.Client(reconnection=True, reconnection_delay=0.1,
                          reconnection_delay_max=0.3, randomization_factor=0)
    inbox = Inbox()
    sio.on("connect", lambda: inbox.put("connect"))
    sio.on("disconnect", lambda reason: report("disconnect", reason=reason))
    sio.connect(url, transports=transports(transport), wait_timeout=WAIT_SECONDS)
    while True:
        inbox.take("connect", timeout=WATCHDOG_SECONDS)
        generation = sio.call("generation", timeout=WAIT_SECONDS)
        report("generation", value=generation)
        if generation >= 2:
            done()


SCENARIOS = {
    "namespaces": scenario_namespaces,
    "transport": scenario_transport,
    "acks": scenario_acks,
    "binary": scenario_binary,
    "rooms": scenario_rooms,
    "kick": scenario_kick,
    "reconnect": scenario_reconnect,
}


def main():
    url, scenario = sys.argv[1], sys.argv[2]
    transport = sys.argv[3] if len(sys.argv) > 3 else "default"
    rooms = sys.argv[4] if len(sys.argv) > 4 else ""
    watchdog = threading.Timer(
        WATCHDOG_SECONDS,
        lambda: fail(f"scenario {scenario} did not finish within {WATCHDOG_SECONDS} s"))
    watchdog.daemon = True
    watchdog.start()
    if scenario not in SCENARIOS:
        fail(f"unknown scenario {scenario}")
    try:
        SCENARIOS[scenario](url, transport, rooms)
    except Exception:
        fail(traceback.format_exc())


if __name__ == "__main__":
    main()
