//! The master never waits for ever on a worker and never holds unbounded data for one: a
//! worker that stops taking connections is skipped, a worker that writes an endless IPC line
//! is replaced, and a paused worker in a broadcast storm still gets its pings and replies.
//! Real processes: a daemonized master with `chatctl serve` workers or small programs that
//! speak (or abuse) the IPC channel.

mod support;

use std::io::Write;

use support::{alive, all_online, signal, workers, App};

#[test]
fn connections_for_a_stopped_worker_do_not_pile_up_in_the_master() {
    let app = App::new("handoff");
    // The stopped worker is not replaced during the test: only the hand-off is looked at.
    let flags = [
        "-i",
        "2",
        "--handoff-timeout",
        "200ms",
        "--health-misses",
        "1000",
    ];
    app.start_ok(&flags, &[]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let master = app.master_pid().expect("the master's pid");
    let stopped = workers(&listed)[0]["pid"].as_u64().expect("a pid") as u32;
    let tag = workers(&listed)[0]["sid_tag"]
        .as_str()
        .expect("a sid tag")
        .to_owned();
    let baseline = open_descriptors(master);

    let _resume = Resume(stopped);
    signal(stopped, libc::SIGSTOP);
    // Requests of sessions of the stopped worker: its hand-off socket fills up (a few hundred
    // descriptors), and every further one must go elsewhere instead of waiting in the master.
    let request = format!(
        "GET /socket.io/?EIO=4&transport=polling&sid={tag}AAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let mut clients = Vec::new();
    for _ in 0..800 {
        let mut client =
            std::net::TcpStream::connect(("127.0.0.1", app.port)).expect("the master accepts");
        client
            .write_all(request.as_bytes())
            .expect("send a request");
        clients.push(client);
    }
    // New users are served meanwhile; the master accepts in order, so by the time this
    // handshake is answered, it has accepted every connection above.
    let (status, body) = support::http_get(app.port, "/socket.io/?EIO=4&transport=polling")
        .expect("a handshake while worker 0 is stopped");
    assert_eq!(status, 200, "{body}");
    let mut held = 0;
    let settled = support::wait_for_value("the master to let go of the connections", || {
        held = open_descriptors(master).saturating_sub(baseline);
        (held < 50).then_some(())
    });
    assert!(
        settled.is_some(),
        "the master still holds {held} connections meant for a stopped worker"
    );
}

#[test]
fn a_worker_writing_an_endless_ipc_line_is_replaced_and_the_master_stays_small() {
    let app = App::new("endless");
    // fd 4 is the worker's IPC channel: 100 MB without a newline.
    let program = [
        "sh",
        "-c",
        "head -c 100000000 /dev/zero >&4; exec sleep 600",
    ];
    // The worker is killed before it counts as online, so `start` reports a failure.
    let _ = app.start(
        &["-i", "1", "--ipc-max-line", "64K", "--min-uptime", "100ms"],
        &program,
    );
    let master = app.master_pid().expect("the master's pid");
    let replaced = app.wait_listed("the worker replaced", |a| {
        workers(a)[0]["restarts"].as_u64().is_some_and(|n| n >= 1)
    });
    let rss = rss_bytes(master);
    eprintln!("master RSS: {rss} bytes");
    assert!(
        rss < 64 << 20,
        "the master grew to {rss} bytes reading an endless line"
    );
    assert!(
        app.log_text().contains("longer than 65536 bytes"),
        "the log does not say why the worker was replaced: {replaced}\n{}",
        app.log_text()
    );
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Lets a stopped worker go on when the test ends, whatever happened.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        if alive(self.0) {
            signal(self.0, libc::SIGCONT);
        }
    }
}

#[test]
fn a_busy_paused_worker_in_a_broadcast_storm_keeps_its_pings_and_replies() {
    let app = App::new("storm");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ipc_worker.py");
    let script = script.to_str().expect("a UTF-8 path");
    // Worker 0 publishes a storm, worker 1 cannot keep up with it (see ipc_worker.py).
    let flags = [
        "-i",
        "2",
        "--ipc-queue-size",
        "1M",
        "--ipc-max-line",
        "64K",
        "--health-interval",
        "300ms",
        "--health-timeout",
        "3s",
        "--health-misses",
        "3",
        // Unstamped lines: the assertions read them as the program wrote them.
        "--log-date-format",
        "none",
    ];
    app.start_ok(&flags, &["/usr/bin/python3", script]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let busy = workers(&listed)[1]["pid"].as_u64().expect("a pid") as u32;
    support::wait_until("the storm to overflow the busy worker's queue", || {
        app.log_text()
            .contains("cannot keep up with the broadcasts")
    });
    let _resume = Resume(busy);
    signal(busy, libc::SIGSTOP);
    // The pause is the scenario (a worker stopped for 2 s), not a synchronisation.
    std::thread::sleep(std::time::Duration::from_secs(2));
    signal(busy, libc::SIGCONT);
    let answered = |log: &str| log.matches("w1 | answered").count();
    let before = answered(&app.log_text());
    support::wait_until("the busy worker's replies after the pause", || {
        answered(&app.log_text()) >= before + 3
    });
    let log = app.log_text();
    assert!(
        !log.contains("LOST reply"),
        "a store reply was lost:\n{log}"
    );
    assert!(
        !log.contains("health probes"),
        "the busy worker was killed:\n{log}"
    );
    let listed = app.listed().expect("the app is listed");
    assert_eq!(
        workers(&listed)[1]["pid"].as_u64(),
        Some(u64::from(busy)),
        "{listed}"
    );
    assert_eq!(workers(&listed)[1]["restarts"], 0, "{listed}");
    // What the master holds for the busy worker is bounded by --ipc-queue-size.
    let master = app.master_pid().expect("the master's pid");
    let rss = rss_bytes(master);
    eprintln!("master RSS: {rss} bytes");
    assert!(
        rss < 64 << 20,
        "the master grew to {rss} bytes in the storm"
    );
}

#[test]
fn worker_output_that_is_not_utf8_or_endless_is_cut_and_logged_on() {
    let app = App::new("output");
    // Bytes that are not UTF-8, then a line of 100 000 bytes, then an ordinary line.
    let script = "printf 'bad \\377\\376 bytes\\n'; head -c 100000 /dev/zero | tr '\\0' x; \
                  printf '\\nafter the long line\\n'; exec sleep 600";
    // Unstamped lines: the assertions read them as the program wrote them.
    let flags = [
        "-i",
        "1",
        "--log-max-line",
        "1K",
        "--log-date-format",
        "none",
    ];
    app.start_ok(&flags, &["sh", "-c", script]);
    support::wait_until("the line after the long one in the log", || {
        app.log_text().contains("w0 | after the long line")
    });
    let log = app.log_text();
    assert!(log.contains("w0 | bad \u{fffd}\u{fffd} bytes"), "{log}");
    let cut = log
        .lines()
        .find(|line| line.starts_with("w0 | xxx"))
        .expect("the long line, cut");
    assert!(
        cut.len() < 1200,
        "the long line was kept whole: {} bytes",
        cut.len()
    );
    assert!(
        cut.ends_with("[line cut at 1024 bytes, see --log-max-line]"),
        "{cut}"
    );
}

#[test]
fn a_worker_full_of_connections_keeps_descriptors_for_its_health_probe() {
    use nix::sys::resource::{setrlimit, Resource};
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let app = App::new("emfile");
    let listen = app.listen();
    let mut start = app.command(&[
        "start",
        "--name",
        &app.name,
        "--listen",
        &listen,
        "-i",
        "1",
        "--health-misses",
        "1000",
    ]);
    // SAFETY: setrlimit is async-signal-safe; the master and its worker inherit the limit.
    unsafe {
        start.pre_exec(|| {
            setrlimit(Resource::RLIMIT_NOFILE, 128, 128)?;
            Ok(())
        });
    }
    let output = start.output().expect("run chatctl start");
    assert!(output.status.success(), "start failed: {output:?}");
    let listed = app.wait_listed("one online worker", |a| all_online(a, 1));
    let worker = workers(&listed)[0]["pid"].as_u64().expect("a pid") as u32;
    let tag = workers(&listed)[0]["sid_tag"].as_str().expect("a sid tag");
    let id = sticky::route_tag::decode(tag).expect("a valid tag").slot;
    let environ = std::fs::read(format!("/proc/{worker}/environ")).expect("the worker's environ");
    let token = String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|entry| entry.strip_prefix("CHATCTL_PEERS=").map(str::to_owned))
        .expect("the private sockets' token");
    let private = supervisor::handoff::private_address(&token, id).expect("the private address");

    // More keep-alive connections than the worker's 128 descriptors could hold: it answers
    // as many as its cap leaves room for (128 less the 64 it keeps for itself), no more.
    const CAP: usize = 64;
    let mut flood = Vec::new();
    for _ in 0..150 {
        if let Ok(mut client) = std::net::TcpStream::connect(("127.0.0.1", app.port)) {
            let _ = client.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            client.set_nonblocking(true).expect("a non-blocking client");
            flood.push(client);
        }
    }
    let answered = |flood: &[std::net::TcpStream]| {
        flood
            .iter()
            .filter(|client| matches!(client.peek(&mut [0u8; 1]), Ok(1)))
            .count()
    };
    support::wait_until("the worker at its connection cap", || {
        answered(&flood) >= CAP
    });
    // Full, it still has a descriptor for its health probe.
    let mut probe = std::os::unix::net::UnixStream::connect_addr(&private).expect("connect");
    probe
        .set_read_timeout(Some(support::DEADLINE))
        .expect("a read timeout");
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
        .expect("send a probe");
    let mut head = [0u8; 12];
    probe
        .read_exact(&mut head)
        .expect("an answer on the private socket while the worker is full");
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(answered(&flood), CAP, "the worker went past its cap");
    drop(flood);
}
