"""One python-socketio user (PyPI python-socketio 5.x) in the chat room of legacy_room.mjs, which
starts it and speaks through it:

    python legacy_room_user.py <base url> <nickname>

Logs in, opens /chat_infra and /chat_com over websocket and joins "lobby" on every (re)connect.
Prints one JSON line per thing it hears ({"kind": "messages"|"users"|"entered"|"left", "value":
...}, and "gone" when the connection is lost);
every line on stdin is sent as a chat message (the JSON string /chat_com expects).
"""

import json
import sys
import threading

import requests
import socketio

ROOM = "lobby"
DEADLINE = 20.0

# Guards stdout (see below).
OUT = threading.Lock()


def out(kind, value):
    # Handlers run on threads of their own: one line at a time, or two lines written at once
    # interleave into one the reader cannot parse, and both are lost.
    with OUT:
        sys.stdout.write(json.dumps({"kind": kind, "value": value}) + "\n")
        sys.stdout.flush()


def main():
    base, name = sys.argv[1], sys.argv[2]
    session = requests.Session()
    response = session.post(base + "/login", data={"nickname": name}, allow_redirects=False)
    if response.status_code != 303:
        out("error", f"login of {name} answered {response.status_code}")
        sys.exit(1)
    cookie = "chat_session=" + session.cookies["chat_session"]
    client = socketio.Client(reconnection=True, reconnection_delay=0.2)
    # python-socketio reconnects with connect()'s default wait of 1 s for every namespace,
    # then drops the connection and tries again: on a busy machine a namespace that connects
    # a little later (the room joined meanwhile) would cost every message of the next attempt's
    # delay. Reconnect with the same patience as the first connection.
    first_connect = client.connect

    def patient_connect(*args, **kwargs):
        kwargs["wait_timeout"] = DEADLINE
        return first_connect(*args, **kwargs)

    client.connect = patient_connect
    client.on("message", lambda text, *_offset: out("messages", json.loads(text)), namespace="/chat_com")
    client.on("users_list", lambda names, *_offset: out("users", names), namespace="/chat_infra")
    client.on("user_entered", lambda data, *_offset: out("entered", data["name"]), namespace="/chat_infra")
    client.on("user_left", lambda data, *_offset: out("left", data["name"]), namespace="/chat_infra")
    # Reported on its own: python-socketio may call this handler after the reconnection's
    # (a run saw it come after the rejoin's users_list), so it must not touch the list.
    client.on("disconnect", lambda *_reason: out("gone", True), namespace="/chat_infra")
    client.on(
        "connect",
        lambda: client.emit("join_room", {"name": ROOM}, namespace="/chat_infra"),
        namespace="/chat_infra",
    )
    client.connect(base, namespaces=["/chat_com", "/chat_infra"], headers={"Cookie": cookie},
                   transports=["websocket"], wait_timeout=DEADLINE)
    for line in sys.stdin:
        client.emit("message", line.rstrip("\n"), namespace="/chat_com")
    client.disconnect()


if __name__ == "__main__":
    main()
