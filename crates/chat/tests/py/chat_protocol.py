"""The chat's HTTP login and Socket.IO events (DESIGN §7), driven by real clients: `requests`
for the login form and python-socketio 5.x for /chat_infra and /chat_com.

    python chat_protocol.py <base url>

Run by crates/chat/tests/events_python.rs against an in-process ChatServer configured with
max_message_chars 100 and messages_per_second 5. Each step prints `PASS <step>` or
`FAIL <step>: <why>`; the first failure ends the script with status 1.

Users: ann and bob chat in room "lobby", cid sits alone in room "other" and must hear nothing
of the lobby, dee floods room "flood" to trip the rate limit. The limiter allows a burst of 5
messages per socket, so no socket sends more than 5 before the rate-limit step.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time

try:
    import requests
    import socketio
except ImportError as error:
    print(f"FAIL imports: {error}: run ops/test-deps.sh", flush=True)
    sys.exit(3)

INFRA = "/chat_infra"
COM = "/chat_com"
COOKIE = "chat_session"
# The offsets our server appends to events (`EPOCH-NUMBER`), see `_record`.
OFFSET = re.compile(r"^[A-Za-z0-9_-]+-[0-9]+$")
MAX_MESSAGE_CHARS = 100
# Generous: a healthy server answers in milliseconds; these only bound a broken one.
WAIT_SECONDS = 10
WATCHDOG_SECONDS = 45


class StepFailed(Exception):
    pass


def check(condition, why):
    if not condition:
        raise StepFailed(why)


def chat_line(text):
    """What the chat page sends on /chat_com: a JSON *string*, as in the book."""
    return json.dumps({"type": "userMessage", "message": text})


def parsed(data):
    """A `message` event's payload is a JSON string; anything else is a protocol error."""
    check(isinstance(data, str), f"message payload is not a JSON string: {data!r}")
    try:
        return json.loads(data)
    except ValueError:
        raise StepFailed(f"message payload is not JSON: {data!r}")


def is_line(kind, username=None, message=None):
    """A predicate on `message` payloads."""

    def matches(data):
        if not isinstance(data, str):
            return False
        try:
            line = json.loads(data)
        except ValueError:
            return False
        return (
            isinstance(line, dict)
            and line.get("type") == kind
            and (username is None or line.get("username") == username)
            and (message is None or line.get("message") == message)
        )

    return matches


class Peer:
    """One python-socketio client on both chat namespaces, and a log of everything it received.

    python-socketio runs each incoming packet's handler on a thread of its own, so the log is
    in arrival order only roughly. That is why absence is checked over the whole log once a
    later sentinel has arrived: a reordering can then only hide a leak, never fail a healthy
    server.
    """

    def __init__(self, label):
        self.label = label
        self.sio = socketio.Client(reconnection=False, handle_sigint=False)
        self.log = []  # (namespace, event, data), in (rough) arrival order
        self.taken = set()  # indexes of log entries a wait has consumed
        self.refusals = {}  # namespace -> CONNECT_ERROR payload
        self.changed = threading.Condition()
        self.sio.on("*", self._record, namespace="*")
        self.sio.on("connect_error", self._refused, namespace="*")
        self.disconnects = set()  # namespaces the server disconnected
        # On the catch-all namespace: a handler on one namespace would hide the catch-all ones.
        self.sio.on("disconnect", self._disconnected, namespace="*")

    def _disconnected(self, namespace, *_reason):
        with self.changed:
            self.disconnects.add(namespace)
            self.changed.notify_all()

    def _record(self, event, namespace, *args):
        # A server with connection-state recovery (the chat's default) appends an offset to
        # every event; python-socketio does not recover, and passes it on as an argument.
        if len(args) >= 2 and isinstance(args[-1], str) and OFFSET.match(args[-1]):
            args = args[:-1]
        data = args[0] if len(args) == 1 else list(args)
        with self.changed:
            self.log.append((namespace, event, data))
            self.changed.notify_all()

    def _refused(self, namespace, data=None):
        with self.changed:
            self.refusals[namespace] = data
            self.changed.notify_all()

    def connect(self, base, cookie=None, transports=None):
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {}
        self.sio.connect(
            base,
            headers=headers,
            transports=transports,
            namespaces=[INFRA, COM],
            wait_timeout=WAIT_SECONDS,
        )
        return self

    def emit(self, namespace, event, data=None):
        self.sio.emit(event, data, namespace=namespace)

    def wait(self, namespace, event, matches=lambda data: True, why=None):
        """The first not yet consumed `event` on `namespace` whose payload `matches`."""

        def find():
            for index, (ns, name, data) in enumerate(self.log):
                if index not in self.taken and ns == namespace and name == event:
                    if matches(data):
                        return index
            return None

        with self.changed:
            if not self.changed.wait_for(lambda: find() is not None, WAIT_SECONDS):
                seen = [entry for entry in self.log if entry[1] == event]
                raise StepFailed(
                    f"{self.label} got no {why or event} on {namespace} within "
                    f"{WAIT_SECONDS} s; its {event} events: {seen!r}"
                )
            index = find()
            self.taken.add(index)
            return self.log[index][2]

    def received(self, namespace, event, matches=lambda data: True):
        """Every payload of `event` on `namespace` that `matches`, consumed or not."""
        with self.changed:
            return [
                data
                for ns, name, data in self.log
                if ns == namespace and name == event and matches(data)
            ]

    def close(self):
        self.sio.disconnect()


class Scenario:
    def __init__(self, base):
        self.base = base.rstrip("/")
        self.cookies = {}  # nickname -> signed cookie value
        self.peers = {}

    def login(self, nickname):
        http = requests.Session()  # one cookie jar per user
        response = http.post(
            f"{self.base}/login",
            data={"nickname": nickname},
            allow_redirects=False,
            timeout=WAIT_SECONDS,
        )
        check(response.status_code == 303, f"login answered {response.status_code}, not 303")
        check(
            response.headers.get("Location") == "/rooms",
            f"login redirects to {response.headers.get('Location')!r}, not /rooms",
        )
        set_cookie = response.headers.get("Set-Cookie", "")
        attributes = [part.strip().lower() for part in set_cookie.split(";")]
        check(set_cookie.startswith(f"{COOKIE}="), f"no {COOKIE} cookie: {set_cookie!r}")
        check("httponly" in attributes, f"cookie is not HttpOnly: {set_cookie!r}")
        check("samesite=lax" in attributes, f"cookie is not SameSite=Lax: {set_cookie!r}")
        value = http.cookies.get(COOKIE)
        check(value, "the cookie jar did not keep the session cookie")
        rooms = http.get(f"{self.base}/rooms", allow_redirects=False, timeout=WAIT_SECONDS)
        check(rooms.status_code == 200, f"/rooms with the cookie answered {rooms.status_code}")
        check(nickname in rooms.text, "/rooms does not show who is logged in")
        self.cookies[nickname] = value

    def peer(self, label, nickname, transports=None):
        peer = Peer(label).connect(self.base, self.cookies[nickname], transports)
        self.peers[label] = peer
        return peer

    def join(self, peer, room, nickname, expect_users, expect_history):
        """join_room and everything the joiner must get back."""
        peer.emit(INFRA, "join_room", {"name": room})
        name_set = peer.wait(INFRA, "name_set")
        check(name_set == {"name": nickname}, f"name_set is {name_set!r}")
        welcome = parsed(peer.wait(INFRA, "message"))
        check(welcome.get("type") == "serverMessage", f"welcome is {welcome!r}")
        check(room in str(welcome.get("message")), f"welcome does not name the room: {welcome!r}")
        peer.wait(
            INFRA,
            "users_list",
            lambda users: users == expect_users,
            why=f"users_list {expect_users}",
        )
        history = peer.wait(INFRA, "history")
        check(isinstance(history, list), f"history is not a list: {history!r}")
        check(
            history == expect_history,
            f"history on joining {room} is {history!r}, expected {expect_history!r}",
        )

    def refused(self, label, cookie, expected):
        peer = Peer(label)
        try:
            peer.connect(self.base, cookie)
        except socketio.exceptions.ConnectionError:
            pass
        else:
            peer.close()
            raise StepFailed(f"{label}: the server accepted the namespaces")
        for namespace in (INFRA, COM):
            with peer.changed:
                refusal = peer.refusals.get(namespace)
            check(
                refusal == {"message": expected},
                f"{label}: CONNECT_ERROR on {namespace} is {refusal!r}, "
                f"expected {{'message': {expected!r}}}",
            )
        peer.close()

    # --- the steps, in order; later steps rely on the state earlier ones built ---

    def step_login_sets_http_only_cookie(self):
        for nickname in ("ann", "bob", "cid", "dee"):
            self.login(nickname)
        anonymous = requests.get(f"{self.base}/rooms", allow_redirects=False, timeout=WAIT_SECONDS)
        check(
            anonymous.status_code == 303 and anonymous.headers.get("Location") == "/",
            f"/rooms without a cookie answered {anonymous.status_code} "
            f"to {anonymous.headers.get('Location')!r}, not 303 to /",
        )

    def step_refused_without_cookie(self):
        self.refused("anonymous", None, "No cookie transmitted.")

    def step_refused_with_forged_cookie(self):
        session_id, expiry, _ = self.cookies["ann"].split(".")
        payload = f"{session_id}.{expiry}"
        signature = hmac.new(b"not the server's secret", payload.encode(), hashlib.sha256)
        encoded = base64.urlsafe_b64encode(signature.digest()).rstrip(b"=").decode()
        self.refused("forged", f"{payload}.{encoded}", "Invalid session")
        self.refused("unsigned", session_id, "Invalid session")
        _, _, real_signature = self.cookies["ann"].split(".")
        tampered = f"{session_id[:-1]}{'A' if session_id[-1] != 'A' else 'B'}.{expiry}"
        self.refused("tampered", f"{tampered}.{real_signature}", "Invalid session")

    def step_join_sends_name_welcome_and_empty_history(self):
        ann = self.peer("ann", "ann")
        self.join(ann, "lobby", "ann", expect_users=["ann"], expect_history=[])
        cid = self.peer("cid", "cid")
        self.join(cid, "other", "cid", expect_users=["cid"], expect_history=[])

    def step_user_entered_reaches_the_room(self):
        ann = self.peers["ann"]
        bob = self.peer("bob", "bob", transports=["websocket"])
        self.join(bob, "lobby", "bob", expect_users=["ann", "bob"], expect_history=[])
        entered = ann.wait(INFRA, "user_entered")
        check(entered == {"name": "bob"}, f"ann got user_entered {entered!r}")
        check(not bob.received(INFRA, "user_entered"), "bob got user_entered for himself")
        # The room hears the change, not the whole list again: a join costs bytes in
        # proportion to the room. (A round trip first: anything sent to ann before it is in.)
        ann.emit(INFRA, "get_rooms")
        ann.wait(INFRA, "rooms_list")
        lists = ann.received(INFRA, "users_list")
        check(lists == [["ann"]], f"ann got users_list {lists!r} besides her own on joining")

    def step_get_rooms_counts_users(self):
        ann = self.peers["ann"]
        ann.emit(INFRA, "get_rooms")
        rooms = ann.wait(INFRA, "rooms_list")
        check(rooms == {"lobby": 2, "other": 1}, f"rooms_list is {rooms!r}")

    def step_messages_reach_the_room_with_username(self):
        ann, bob = self.peers["ann"], self.peers["bob"]
        for sender, receiver, text in ((ann, bob, "hello bob"), (bob, ann, "hi ann")):
            sender.emit(COM, "message", chat_line(text))
            theirs = parsed(receiver.wait(COM, "message", is_line("userMessage", message=text)))
            check(
                theirs == {"type": "userMessage", "username": sender.label, "message": text},
                f"{receiver.label} got {theirs!r}",
            )
            mine = parsed(sender.wait(COM, "message", is_line("myMessage", message=text)))
            check(
                mine == {"type": "myMessage", "username": sender.label, "message": text},
                f"{sender.label} got back {mine!r}",
            )

    def step_private_message_reaches_only_the_named_user(self):
        ann, bob, cid = self.peers["ann"], self.peers["bob"], self.peers["cid"]
        secret = {"from": "ann", "to": "bob", "message": "psst, bob"}
        ann.emit(INFRA, "private_message", {"to": "bob", "message": "psst, bob"})
        got = bob.wait(INFRA, "private_message")
        check(got == secret, f"bob got {got!r}")
        echo = ann.wait(INFRA, "private_message")
        check(echo == secret, f"ann's echo is {echo!r}")
        # Sentinel: sent after bob had the secret, so a leaked copy would have reached cid first.
        sentinel = {"from": "bob", "to": "cid", "message": "sentinel for cid"}
        bob.emit(INFRA, "private_message", {"to": "cid", "message": "sentinel for cid"})
        got = cid.wait(INFRA, "private_message", lambda data: data == sentinel)
        leaked = cid.received(INFRA, "private_message", lambda data: data != sentinel)
        check(not leaked, f"cid, in another room, got {leaked!r}")
        check(
            ann.received(INFRA, "private_message", lambda data: data == sentinel) == [],
            "ann got the private message bob sent to cid",
        )

    def step_private_message_to_someone_offline_is_an_error(self):
        ann = self.peers["ann"]
        ann.emit(INFRA, "private_message", {"to": "nobody-here", "message": "hello?"})
        error = ann.wait(INFRA, "error", lambda data: "not online" in str(data.get("message")))
        check("nobody-here" in error["message"], f"the error does not name the user: {error!r}")

    def step_malformed_messages_get_an_error_and_go_nowhere(self):
        ann, bob = self.peers["ann"], self.peers["bob"]
        too_long = "x" * (MAX_MESSAGE_CHARS + 1)
        malformed = [
            ("not JSON", "this is not JSON"),
            ("not a string", {"type": "userMessage", "message": "an object, not a string"}),
            ("wrong type", json.dumps({"type": "serverMessage", "message": "I am the server"})),
            ("too long", chat_line(too_long)),
        ]
        for what, payload in malformed:
            bob.emit(COM, "message", payload)
            error = bob.wait(COM, "error", why=f"error for a message that is {what}")
            has_text = isinstance(error, dict) and isinstance(error.get("message"), str)
            check(has_text and error["message"], f"error for a message that is {what} is {error!r}")
        # Sentinel: ann's own line comes back after anything the server relayed of bob's.
        ann.emit(COM, "message", chat_line("sentinel after malformed"))
        ann.wait(COM, "message", is_line("myMessage", message="sentinel after malformed"))
        bob.wait(COM, "message", is_line("userMessage", message="sentinel after malformed"))
        from_bob = ann.received(COM, "message", is_line("userMessage", "bob"))
        from_bob = [parsed(line) for line in from_bob]
        check(
            from_bob == [{"type": "userMessage", "username": "bob", "message": "hi ann"}],
            f"ann got from bob {from_bob!r}; malformed messages were relayed",
        )
        well_formed = ("userMessage", "myMessage", "serverMessage")
        stray = [
            data
            for data in ann.received(COM, "message") + ann.received(INFRA, "message")
            if not any(is_line(kind)(data) for kind in well_formed)
        ]
        check(not stray, f"ann got malformed payloads {stray!r}")
        errors = ann.received(COM, "error") + ann.received(INFRA, "error")
        check(not errors, f"bob's errors reached ann: {errors!r}")

    def step_later_joiner_gets_the_history(self):
        # ann's second tab: same nickname, so lobby still counts 2 users.
        ann_tab = self.peer("ann (second tab)", "ann")
        said = (("ann", "hello bob"), ("bob", "hi ann"), ("ann", "sentinel after malformed"))
        expected = [{"type": "userMessage", "username": who, "message": text} for who, text in said]
        ann_tab.emit(INFRA, "join_room", {"name": "lobby"})
        history = ann_tab.wait(INFRA, "history")
        check(isinstance(history, list), f"history is not a list: {history!r}")
        check(
            [parsed(entry) for entry in history] == expected,
            f"history for a later joiner is {history!r}, expected {expected!r} as JSON strings",
        )
        ann_tab.emit(INFRA, "get_rooms")
        rooms = ann_tab.wait(INFRA, "rooms_list")
        check(rooms == {"lobby": 2, "other": 1}, f"a second tab changed rooms_list to {rooms!r}")
        ann_tab.close()

    def step_other_room_hears_nothing_of_the_lobby(self):
        cid = self.peers["cid"]
        cid.emit(COM, "message", chat_line("sentinel in other"))
        cid.wait(COM, "message", is_line("myMessage", "cid", "sentinel in other"))
        foreign = [
            data
            for data in cid.received(COM, "message") + cid.received(INFRA, "message")
            if not (is_line("myMessage", "cid")(data) or is_line("serverMessage")(data))
        ]
        check(not foreign, f"cid, in room other, got {foreign!r}")
        for event in ("user_entered", "user_left"):
            heard = cid.received(INFRA, event)
            check(not heard, f"cid, in room other, got {event} {heard!r}")
        lists = cid.received(INFRA, "users_list")
        check(all(users == ["cid"] for users in lists), f"cid got users_list {lists!r}")

    def step_rate_limit_answers_with_an_error(self):
        dee = self.peer("dee", "dee")
        self.join(dee, "flood", "dee", expect_users=["dee"], expect_history=[])
        sent = 15
        for n in range(sent):
            dee.emit(COM, "message", chat_line(f"flood {n}"))
        dee.wait(
            COM,
            "error",
            lambda error: isinstance(error, dict) and "too many" in str(error.get("message")),
            why="rate-limit error",
        )

        def echoed():
            return len(dee.received(COM, "message", is_line("myMessage")))

        def all_answered():
            return echoed() + len(dee.received(COM, "error")) >= sent

        # Every message is accounted for: echoed, or refused with an error.
        with dee.changed:
            answered = dee.changed.wait_for(all_answered, WAIT_SECONDS)
        check(answered, f"of {sent} messages only these came back: {dee.log!r}")
        check(5 <= echoed() < sent, f"{echoed()} of {sent} messages passed a limit of 5 per second")

    def step_user_left_when_a_member_disconnects(self):
        ann, bob = self.peers["ann"], self.peers["bob"]
        bob.close()
        left = ann.wait(INFRA, "user_left")
        check(left == {"name": "bob"}, f"ann got user_left {left!r}")
        ann.emit(INFRA, "get_rooms")
        rooms = ann.wait(INFRA, "rooms_list")
        expected = {"lobby": 1, "other": 1, "flood": 1}
        check(rooms == expected, f"after bob left, rooms_list is {rooms!r}, expected {expected!r}")

    def step_logout_ends_the_logins_connections(self):
        cid = self.peers["cid"]
        http = requests.Session()
        http.cookies.set(COOKIE, self.cookies["cid"])
        response = http.post(f"{self.base}/logout", allow_redirects=False, timeout=WAIT_SECONDS)
        check(response.status_code == 303, f"logout answered {response.status_code}")
        with cid.changed:
            ended = cid.changed.wait_for(lambda: cid.disconnects == {INFRA, COM}, WAIT_SECONDS)
        check(ended, f"after logout, cid's namespaces still connected (disconnected: {cid.disconnects})")
        self.refused("cid-after-logout", self.cookies["cid"], "Invalid session")


def main():
    if len(sys.argv) != 2:
        print("usage: chat_protocol.py <base url>", file=sys.stderr)
        sys.exit(2)

    def watchdog():
        print(f"FAIL watchdog: the scenario did not finish within {WATCHDOG_SECONDS} s", flush=True)
        os._exit(4)

    timer = threading.Timer(WATCHDOG_SECONDS, watchdog)
    timer.daemon = True
    timer.start()

    scenario = Scenario(sys.argv[1])
    steps = [
        scenario.step_login_sets_http_only_cookie,
        scenario.step_refused_without_cookie,
        scenario.step_refused_with_forged_cookie,
        scenario.step_join_sends_name_welcome_and_empty_history,
        scenario.step_user_entered_reaches_the_room,
        scenario.step_get_rooms_counts_users,
        scenario.step_messages_reach_the_room_with_username,
        scenario.step_private_message_reaches_only_the_named_user,
        scenario.step_malformed_messages_get_an_error_and_go_nowhere,
        scenario.step_later_joiner_gets_the_history,
        scenario.step_other_room_hears_nothing_of_the_lobby,
        scenario.step_rate_limit_answers_with_an_error,
        scenario.step_private_message_to_someone_offline_is_an_error,
        scenario.step_user_left_when_a_member_disconnects,
        scenario.step_logout_ends_the_logins_connections,
    ]
    started = time.monotonic()
    status = 0
    for step in steps:
        name = step.__name__[len("step_"):]
        try:
            step()
        except StepFailed as failure:
            print(f"FAIL {name}: {failure}", flush=True)
            status = 1
            break
        except Exception as error:  # a client library error is a failure too, with its type
            print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
            status = 1
            break
        print(f"PASS {name}", flush=True)
    for peer in scenario.peers.values():
        try:
            peer.close()
        except Exception:
            pass
    print(f"{'ok' if status == 0 else 'failed'} in {time.monotonic() - started:.2f} s", flush=True)
    # The clients' threads may still be winding down their connections; the scenario is over.
    os._exit(status)


if __name__ == "__main__":
    main()
