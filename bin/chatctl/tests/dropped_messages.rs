//! No silent loss: a worker whose Redis is gone tells the sender of a chat line that the line
//! did not reach the other workers, and `chatctl status --json` shows what was dropped, by
//! cause: what a worker reported with its health pongs, and what the master dropped for a
//! worker that did not read the broadcasts it relays.

mod support;

use support::{all_online, signal, wait_for_value, workers, App, ClientScript};

#[test]
fn lines_lost_on_the_way_to_redis_are_told_to_the_sender_and_shown_by_status() {
    let redis = support::RedisServer::start();
    let app = App::new("drops");
    let url = redis.url();
    app.start_ok(
        &[
            "-i",
            "1",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "2s",
            "--redis",
            &url,
        ],
        &[],
    );
    app.wait_listed("one online worker", |a| all_online(a, 1));
    let node = support::node_program();
    let mut ann = ClientScript::start(&node, "sender.mjs", &[&app.url(), "until-told"]);
    let ready = ann.next_report();
    assert_eq!(ready["event"], "ready", "{ready}\nlog:\n{}", app.log_text());

    drop(redis);
    ann.tell("redis is gone");
    let told = ann.next_report();
    assert_eq!(told["event"], "told", "{told}\nlog:\n{}", app.log_text());
    ann.wait_success();

    let counted = |status: &serde_json::Value, cause: &str| {
        workers(status)
            .first()
            .and_then(|worker| worker["dropped"][cause].as_u64())
            .unwrap_or(0)
    };
    let status = wait_for_value("the worker's drops in status", || {
        let status = app.status()?;
        (counted(&status, "redis_publish_failed") > 0
            && counted(&status, "history_write_failed") > 0)
            .then_some(status)
    });
    assert!(
        status.is_some(),
        "status never showed the lost broadcasts and history entries: {:?}\nlog:\n{}",
        app.status(),
        app.log_text()
    );
    assert!(
        app.log_text()
            .contains("broadcasts not published for the other workers"),
        "the loss was not logged:\n{}",
        app.log_text()
    );
}

/// Lines the chat's rate limit lets through in the storm (the default is 20 a second).
const STORM: &str = "20000";

#[test]
fn broadcasts_a_stopped_worker_cannot_take_are_counted_for_it_in_status() {
    let app = App::new("drops-relay");
    app.start_ok(
        &[
            "-i",
            "2",
            "--health-interval",
            "200ms",
            "--health-misses",
            "1000",
            // A small relay queue, so that the storm fills it for the stopped worker; big
            // enough for a chunk of the storm (1,000 lines, each numbered for recovery) on its
            // way to the running one.
            "--ipc-queue-size",
            "1M",
            "--ipc-max-line",
            "64K",
        ],
        &["serve", "--messages-per-second", STORM],
    );
    app.wait_listed("two online workers", |a| all_online(a, 2));
    let node = support::node_program();
    let mut ann = ClientScript::start(&node, "sender.mjs", &[&app.url(), "flood", STORM]);
    let ready = ann.next_report();
    assert_eq!(ready["event"], "ready", "{ready}\nlog:\n{}", app.log_text());

    // The worker ann is not on stops reading: the master's queue to it fills up.
    let status = wait_for_value("ann counted by her worker", || {
        let status = app.status()?;
        let total: u64 = workers(&status)
            .iter()
            .map(|w| w["connections"].as_u64().unwrap_or(0))
            .sum();
        (total == 1).then_some(status)
    })
    .expect("ann's session not counted");
    let stopped = workers(&status)
        .iter()
        .position(|w| w["connections"] == 0)
        .expect("a worker without ann");
    let stopped_pid = workers(&status)[stopped]["pid"].as_u64().expect("a pid") as u32;
    signal(stopped_pid, libc::SIGSTOP);
    ann.tell("the other worker is stopped");
    let sent = ann.next_report();
    let counted = wait_for_value("the relay drops in status", || {
        let status = app.status()?;
        let dropped = workers(&status)[stopped]["dropped"]["relay_queue_full"].as_u64()?;
        (dropped > 0).then_some(dropped)
    });
    signal(stopped_pid, libc::SIGCONT);
    assert_eq!(sent["event"], "sent", "{sent}");
    assert!(
        counted.is_some(),
        "status never showed the broadcasts dropped for the stopped worker: {:?}\nlog:\n{}",
        app.status(),
        app.log_text()
    );
    // Back, the worker reads on; the first line from ann's worker that reaches it once its
    // queue has room again tells it, by the master's count of that worker's lines, that it
    // missed some: its clients may have lost them. Ann says a line every 200 ms meanwhile.
    ann.tell("the other worker is back");
    let gaps = wait_for_value("the missed lines counted as recovery gaps", || {
        let status = app.status()?;
        let gaps = workers(&status)[stopped]["recovery"]["gaps"].as_u64()?;
        (gaps > 0).then_some(gaps)
    });
    ann.tell("enough");
    let said = ann.next_report();
    assert_eq!(said["event"], "said", "{said}");
    assert!(
        gaps.is_some(),
        "the stopped worker never counted the lines it missed: {:?}",
        app.status()
    );
    ann.wait_success();
}
