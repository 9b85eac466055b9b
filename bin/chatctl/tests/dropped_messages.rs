//! No silent loss: a worker whose Redis is gone tells the sender of a chat line that the line
//! did not reach the other workers, and `chatctl status --json` shows what it dropped, by
//! cause, as the worker reported it with its health pongs.

mod support;

use support::{all_online, wait_for_value, workers, App, ClientScript};

#[test]
fn lines_lost_on_the_way_to_redis_are_told_to_the_sender_and_shown_by_status() {
    let redis = support::RedisServer::start(testkit::port());
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
    let mut ann = ClientScript::start(&node, "lost_line.mjs", &[&app.url()]);
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
