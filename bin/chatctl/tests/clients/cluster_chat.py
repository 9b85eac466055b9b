"""A room of chat users spread over the workers of one chatctl app (PyPI python-socketio 5.x),
driven by bin/chatctl/tests/cluster.rs.

    python cluster_chat.py <base url> <count>

Phase 1: every user logs in (the session lives in the master's store, so any worker accepts the
cookie), joins "lobby" over websocket, and keeps the room's member list the way a client does
(the whole list on joining, then user_entered and user_left) until it lists everyone. Each user
sends one message, and must get every other user's message exactly once, as userMessage, and
its own back as myMessage; get_rooms must count all users, whichever worker answers; a private
message from one user reaches users on the other worker. Prints {"event": "ready", "sids":
[...]} (each user's Engine.IO session id), then waits for lines on stdin: `probe` (Redis was
restarted: one user speaks until every other user hears it again; prints {"event": "probed"}),
then the number of users on the worker the test is about to kill (prints {"event": "armed"});
the test kills it. Phase 2: once that many users have lost their connection, every survivor
must hear user_left for each of them and end up with a member list of the survivors only, and
get_rooms counts the survivors only. Prints {"event": "done"} and exits 0; on any failure
prints {"event": "error", "message": ...} and exits 1.
"""

import json
import sys
import threading
import time

import requests
import socketio

DEADLINE = 20.0

# Guards stdout (see below).
OUT = threading.Lock()


def report(event, **fields):
    # Handlers run on threads of their own: one line at a time, or two lines written at once
    # interleave into one the reader cannot parse, and both are lost.
    with OUT:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def fail(message):
    report("error", message=message)
    sys.exit(1)


class User:
    def __init__(self, base, name):
        self.name = name
        self.lock = threading.Condition()
        self.messages = []
        self.left = []
        self.users = []
        # Who entered or left before the member list came (users joining at the same time):
        # applied again on top of the list.
        self.changes = []
        self.rooms = None
        self.disconnected = False
        self.private = []
        session = requests.Session()
        response = session.post(base + "/login", data={"nickname": name}, allow_redirects=False)
        if response.status_code != 303:
            fail(f"login of {name} answered {response.status_code}")
        cookie = "chat_session=" + session.cookies["chat_session"]
        self.client = socketio.Client(reconnection=False)
        self.client.on("message", self.on_message, namespace="/chat_com")
        self.client.on("user_entered", self.on_entered, namespace="/chat_infra")
        self.client.on("user_left", self.on_left, namespace="/chat_infra")
        self.client.on("users_list", self.on_users, namespace="/chat_infra")
        self.client.on("rooms_list", self.on_rooms, namespace="/chat_infra")
        self.client.on("disconnect", self.on_disconnect, namespace="/chat_infra")
        self.client.on("private_message", self.on_private, namespace="/chat_infra")
        self.client.connect(base, namespaces=["/chat_com", "/chat_infra"], headers={"Cookie": cookie},
                            transports=["websocket"], wait_timeout=DEADLINE)

    def notify(self, update):
        with self.lock:
            update()
            self.lock.notify_all()

    def on_message(self, text, *_offset):
        self.notify(lambda: self.messages.append(json.loads(text)))

    # `users` is the room's member list as a client keeps it: the whole list on joining, then
    # who enters and who leaves.
    def change(self, name, present):
        if name in self.users:
            self.users.remove(name)
        if present:
            self.users.append(name)

    def on_entered(self, data, *_offset):
        def update():
            if self.changes is not None:
                self.changes.append((data["name"], True))
            self.change(data["name"], True)
        self.notify(update)

    def on_left(self, data, *_offset):
        def update():
            self.left.append(data["name"])
            if self.changes is not None:
                self.changes.append((data["name"], False))
            self.change(data["name"], False)
        self.notify(update)

    def on_users(self, names, *_offset):
        def update():
            self.users = list(names)
            for name, present in self.changes or []:
                self.change(name, present)
            self.changes = None
        self.notify(update)

    def on_private(self, data, *_offset):
        self.notify(lambda: self.private.append(data))

    def on_disconnect(self, *_reason):
        self.notify(lambda: setattr(self, "disconnected", True))

    def on_rooms(self, rooms, *_offset):
        self.notify(lambda: setattr(self, "rooms", rooms))

    def wait(self, what, condition):
        with self.lock:
            if not self.lock.wait_for(condition, timeout=DEADLINE):
                fail(f"{self.name}: timed out waiting for {what}")


def probe(users):
    """After a Redis restart: one user says something every 250 ms until every other user has
    heard at least one of those lines (delivery across workers works again), then asks for the
    room list until the restarted Redis counts every user again (each worker has put its
    members back)."""
    sender, others = users[0], users[1:]
    start = {u.name: len(u.messages) for u in others}
    heard = lambda u: any(m.get("message") == "probe" for m in u.messages[start[u.name]:])
    deadline = time.monotonic() + DEADLINE
    while not all(heard(u) for u in others):
        if time.monotonic() > deadline:
            deaf = [u.name for u in others if not heard(u)]
            fail(f"after the Redis restart, {len(deaf)} users never heard the sender: {deaf}")
        sender.client.emit("message", json.dumps({"type": "userMessage", "message": "probe"}), namespace="/chat_com")
        time.sleep(0.25)
    while True:
        with sender.lock:
            sender.rooms = None
        sender.client.emit("get_rooms", namespace="/chat_infra")
        sender.wait("rooms_list", lambda: sender.rooms is not None)
        if sender.rooms == {"lobby": len(users)}:
            return
        if time.monotonic() > deadline:
            fail(f"after the Redis restart the rooms stay {sender.rooms}, expected lobby with {len(users)}")
        time.sleep(0.25)


def main():
    base, count = sys.argv[1], int(sys.argv[2])
    users = [User(base, f"user{i:02d}") for i in range(count)]
    everyone = sorted(u.name for u in users)
    for user in users:
        user.client.emit("join_room", {"name": "lobby"}, namespace="/chat_infra")
    for user in users:
        user.wait("everyone in the member list", lambda: sorted(user.users) == everyone)

    for user in users:
        user.client.emit("message", json.dumps({"type": "userMessage", "message": f"hi from {user.name}"}),
                         namespace="/chat_com")
    for user in users:
        user.wait("every message", lambda: len(user.messages) >= count)
    # Exactly once: a second round proves nothing arrived twice in the meantime.
    for user in users:
        user.client.emit("message", json.dumps({"type": "userMessage", "message": "round 2"}), namespace="/chat_com")
    for user in users:
        user.wait("round 2", lambda: len(user.messages) >= 2 * count)
    for user in users:
        first = user.messages[:count]
        mine = [m for m in first if m["type"] == "myMessage"]
        theirs = sorted(m["username"] for m in first if m["type"] == "userMessage")
        if len(mine) != 1 or theirs != sorted(n for n in everyone if n != user.name):
            fail(f"{user.name} got {first}")
        if len(user.messages) != 2 * count:
            fail(f"{user.name} got {len(user.messages)} messages, expected {2 * count}")

    for user in users:
        user.client.emit("get_rooms", namespace="/chat_infra")
    for user in users:
        user.wait("rooms_list", lambda: user.rooms is not None)
        if user.rooms != {"lobby": count}:
            fail(f"{user.name} got rooms {user.rooms}")

    # A private message crosses workers: the sender's session id names its worker slot.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    slot = lambda user: alphabet.index(user.client.eio.sid[2]) * 64 + alphabet.index(user.client.eio.sid[3])
    sender = users[0]
    targets = [u for u in users if slot(u) != slot(sender)][:10]
    if not targets:
        fail("every user is on the sender's worker")
    for target in targets:
        sender.client.emit("private_message", {"to": target.name, "message": "psst"}, namespace="/chat_infra")
    for target in targets:
        target.wait("the private message", lambda: len(target.private) >= 1)
        if target.private != [{"from": sender.name, "to": target.name, "message": "psst"}]:
            fail(f"{target.name} got private messages {target.private}")

    report("ready", sids=[u.client.eio.sid for u in users])
    command = sys.stdin.readline().strip()
    while command == "probe":
        probe(users)
        report("probed")
        command = sys.stdin.readline().strip()
    expected = int(command)
    # Only what happens from now on counts: a worker thought dead under load and back since
    # may have caused earlier user_left events.
    for user in users:
        with user.lock:
            user.left.clear()
    report("armed")
    deadline = time.monotonic() + DEADLINE
    while sum(u.disconnected for u in users) < expected:
        if time.monotonic() > deadline:
            fail(f"only {sum(u.disconnected for u in users)} of {expected} users lost their connection")
        time.sleep(0.02)
    killed = {u.name for u in users if u.disconnected}
    if len(killed) != expected:
        fail(f"{len(killed)} users lost their connection, expected {expected}")
    survivors = [u for u in users if u.name not in killed]
    remaining = sorted(u.name for u in survivors)
    for user in survivors:
        user.wait("user_left of every user of the killed worker", lambda: killed <= set(user.left))
        user.wait("a member list of the survivors", lambda: sorted(user.users) == remaining)
    witness = survivors[0]
    while True:
        with witness.lock:
            witness.rooms = None
        witness.client.emit("get_rooms", namespace="/chat_infra")
        witness.wait("rooms_list after the kill", lambda: witness.rooms is not None)
        if witness.rooms == {"lobby": len(survivors)}:
            break
        if time.monotonic() > deadline:
            fail(f"rooms after the kill: {witness.rooms}, expected lobby with {len(survivors)}")
        time.sleep(0.1)
    for user in survivors:
        user.client.disconnect()
    report("done", survivors=len(survivors))


if __name__ == "__main__":
    threading.Timer(60, lambda: (report("error", message="watchdog"), sys.stdout.flush(), __import__("os")._exit(1))).start()
    main()
    __import__("os")._exit(0)
