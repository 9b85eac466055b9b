//! Sticky scheduling (the default): the master reads the session id of each new connection's
//! first request and hands the connection to the worker that owns the session; a worker passes
//! a request for another worker's session, arriving later on the same keep-alive connection, to
//! its owner. Bad input stops at the master.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use serde_json::Value;
use support::{all_online, http_get, wait_for_value, workers, App, ClientScript, DEADLINE};

/// An app of two chat workers with a short request-line deadline.
fn two_workers(name: &str) -> App {
    let app = App::new(name);
    app.start_ok(&["-i", "2", "--peek-timeout", "300ms"], &[]);
    app.wait_listed("two online workers", |a| all_online(a, 2));
    app
}

/// The sid tags of the app's two workers.
fn worker_tags(app: &App) -> Vec<String> {
    let listed = app.listed().expect("the app is listed");
    workers(&listed)
        .iter()
        .map(|w| w["sid_tag"].as_str().expect("a sid tag").to_owned())
        .collect()
}

/// Handshakes on fresh connections until there is a session on each worker.
fn one_session_per_worker(app: &App, tags: &[String]) -> Vec<String> {
    let mut sids: Vec<Option<String>> = vec![None; tags.len()];
    for _ in 0..20 {
        let (status, body) =
            http_get(app.port, "/socket.io/?EIO=4&transport=polling").expect("handshake");
        assert_eq!(status, 200, "{body}");
        let open: Value = serde_json::from_str(body.trim_start_matches('0')).expect("open packet");
        let sid = open["sid"].as_str().expect("sid").to_owned();
        let owner = tags
            .iter()
            .position(|tag| sid.starts_with(tag.as_str()))
            .unwrap_or_else(|| panic!("sid {sid} names none of the workers {tags:?}"));
        sids[owner].get_or_insert(sid);
        if sids.iter().all(Option::is_some) {
            return sids.into_iter().flatten().collect();
        }
    }
    panic!("new sessions all went to one worker: {sids:?}");
}

/// A client connection that reads HTTP/1.1 responses with a Content-Length.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn open(port: u16) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        Connection {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    fn send(&mut self, method: &str, target: &str, body: &str) -> (u16, String) {
        write!(
            self.writer,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        self.response()
    }

    fn response(&mut self) -> (u16, String) {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {status_line:?}"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("length");
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn polling(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

#[test]
fn one_keep_alive_connection_carries_sessions_of_both_workers() {
    let app = two_workers("keepalive");
    let tags = worker_tags(&app);
    let sids = one_session_per_worker(&app, &tags);
    // The connection goes to the first session's worker; every other request of the second
    // session is passed to the second worker, which alone knows it.
    let mut connection = Connection::open(app.port);
    for round in 0..3 {
        for sid in &sids {
            let answer = connection.send("POST", &polling(sid), "40/chat_infra,");
            assert_eq!(answer, (200, "ok".to_owned()), "round {round}, {sid}");
            let (status, body) = connection.send("GET", &polling(sid), "");
            assert_eq!(status, 200, "round {round}, {sid}: {body}");
            // No cookie: the namespace refuses, which only the owner of the session can say.
            assert!(
                body.starts_with("44/chat_infra,") && body.contains("No cookie"),
                "round {round}, {sid}: {body}"
            );
        }
    }

    // A websocket upgrade of the second session on the same connection is tunnelled to its
    // owner: the probe of the upgrade comes back through it.
    let target = format!("/socket.io/?EIO=4&transport=websocket&sid={}", sids[1]);
    write!(
        connection.writer,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("write upgrade");
    let mut status_line = String::new();
    connection
        .reader
        .read_line(&mut status_line)
        .expect("status");
    assert!(status_line.starts_with("HTTP/1.1 101"), "{status_line}");
    loop {
        let mut line = String::new();
        connection.reader.read_line(&mut line).expect("header");
        if line.trim_end().is_empty() {
            break;
        }
    }
    connection
        .writer
        .write_all(&masked_text_frame(b"2probe"))
        .expect("write probe");
    let mut head = [0u8; 2];
    connection.reader.read_exact(&mut head).expect("frame head");
    let mut payload = vec![0; usize::from(head[1] & 0x7f)];
    connection.reader.read_exact(&mut payload).expect("payload");
    assert_eq!((head[0], payload.as_slice()), (0x81, &b"3probe"[..]));
}

#[test]
fn sessions_a_reload_moved_are_still_reached_on_a_connection_of_the_other_worker() {
    let app = two_workers("keepalive-reload");
    let tags = worker_tags(&app);
    let sids = one_session_per_worker(&app, &tags);
    // Both sessions move to the new workers, and the old ones exit (reload waits for that).
    support::succeeded(&app.run(&["reload", &app.name]));
    app.wait_listed("two online workers after the reload", |a| all_online(a, 2));
    // The connection goes to the first session's new worker; a request of the second session
    // on it is passed on by the id in its sid, that of a worker gone: its private socket went
    // to the worker that adopted its sessions, which answers.
    let mut connection = Connection::open(app.port);
    for sid in &sids {
        let answer = connection.send("POST", &polling(sid), "40/chat_infra,");
        assert_eq!(answer, (200, "ok".to_owned()), "{sid}\n{}", app.log_text());
        let (status, body) = connection.send("GET", &polling(sid), "");
        assert_eq!(status, 200, "{sid}: {body}");
        // The new worker's first ping may come first.
        let body = if body == "2" {
            connection.send("GET", &polling(sid), "").1
        } else {
            body
        };
        assert!(body.contains("No cookie"), "{sid}: {body}");
    }
}

/// A client's websocket text frame (clients mask).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn bad_input_stops_at_the_master() {
    let app = two_workers("stickybad");
    let tags = worker_tags(&app);

    // Bytes that are not HTTP: 400 and the connection closed.
    let mut garbage = TcpStream::connect(("127.0.0.1", app.port)).expect("connect");
    garbage.set_read_timeout(Some(DEADLINE)).expect("timeout");
    garbage
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n")
        .expect("write");
    let mut answer = String::new();
    garbage
        .read_to_string(&mut answer)
        .expect("read to the close");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    // Request lines that never complete: closed after the peek timeout, while the workers
    // serve everyone else as usual.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", app.port)).expect("connect");
            stream
                .write_all(b"GET /socket.io/?EIO=4&tra")
                .expect("write");
            stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
            stream
        })
        .collect();
    let (status, _) = http_get(app.port, "/healthz").expect("healthz");
    assert_eq!(status, 200);
    for stream in &mut slow {
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(
            matches!(read, Ok(0))
                || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a slow client got an answer: {rest:?}"
        );
    }
    assert!(started.elapsed() < DEADLINE);
    let listed = app.listed().expect("listed");
    for worker in workers(&listed) {
        assert_eq!(worker["restarts"], 0, "{listed}");
    }

    // A forged sid with a valid-looking tag reaches one worker, which does not know it.
    for tag in tags.iter().map(String::as_str).chain(["AAZZ"]) {
        let forged = format!("{tag}{}", "x".repeat(22));
        let mut connection = Connection::open(app.port);
        let (status, body) = connection.send("POST", &polling(&forged), "40");
        assert_eq!(status, 400, "{forged}: {body}");
        assert!(body.contains("Session ID unknown"), "{forged}: {body}");
    }
    // Nothing of that disturbed the workers.
    let still = wait_for_value("both workers still online", || {
        app.listed().filter(|a| all_online(a, 2))
    });
    assert!(still.is_some());
}

/// Users in the room of the npm-client tests.
const USERS: usize = 50;

#[test]
fn long_polling_users_spread_over_two_workers_chat_and_survive_a_kill() {
    room_across_a_worker_kill("polling");
}

#[test]
fn upgrading_users_spread_over_two_workers_chat_and_survive_a_kill() {
    room_across_a_worker_kill("upgrade");
}

/// 50 npm socket.io-client users in one room on a two-worker app: everyone hears everyone,
/// whichever worker holds them; after a `kill -9` of one worker its users reconnect to a live
/// worker and the room works again.
fn room_across_a_worker_kill(transports: &str) {
    let app = App::new(&format!("sticky-{transports}"));
    app.start_ok(&["-i", "2"], &[]);
    app.wait_listed("two online workers", |a| all_online(a, 2));
    let tags = worker_tags(&app);
    let (mut room, ready) = room_in_chat(&app, USERS, transports);
    let sids: Vec<&str> = ready["sids"]
        .as_array()
        .expect("sids")
        .iter()
        .map(|sid| sid.as_str().unwrap_or(""))
        .collect();
    let per_worker: Vec<usize> = tags
        .iter()
        .map(|tag| {
            sids.iter()
                .filter(|sid| sid.starts_with(tag.as_str()))
                .count()
        })
        .collect();
    assert_eq!(per_worker.iter().sum::<usize>(), USERS, "{tags:?} {sids:?}");
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "one worker has everyone: {per_worker:?}"
    );

    let listed = app.listed().expect("listed");
    let victim = &workers(&listed)[0];
    let victim_tag = victim["sid_tag"].as_str().expect("tag").to_owned();
    let pid = victim["pid"].as_u64().expect("pid") as u32;
    support::signal(pid, libc::SIGKILL);
    room.tell(&victim_tag);
    let done = room.next_report();
    assert_eq!(done["event"], "done", "users: {done}\n{}", app.log_text());
    let moved = sids
        .iter()
        .filter(|sid| sid.starts_with(&victim_tag))
        .count();
    assert_eq!(done["moved"], moved as u64, "{done}");
    room.wait_success();
}

/// `--scheduling shared`: the kernel spreads connections over the workers, so requests of one
/// long-polling session arrive at any worker; each passes them to the session's owner.
#[test]
fn shared_scheduling_serves_long_polling_users_by_passing_requests_on() {
    let app = App::new("shared-polling");
    app.start_ok(&["-i", "2", "--scheduling", "shared"], &[]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    assert_eq!(listed["scheduling"], "shared", "{listed}");
    room_in_chat(&app, 20, "polling");
}

/// `count` users of `polling_room.mjs` on `app`, once every one has heard every other
/// (its `ready` report, with their sids).
fn room_in_chat(app: &App, count: usize, transports: &str) -> (ClientScript, Value) {
    let node = support::node_program();
    let mut room = ClientScript::polling_room(&node, &app.url(), count, transports);
    let ready = room.next_report();
    assert_eq!(
        ready["event"],
        "ready",
        "users: {ready}\n{}",
        app.log_text()
    );
    (room, ready)
}
