//! chat-bench's clients through a `kill -9` of a worker (issue 15): 40 users in rooms of 10 on
//! `chatctl start -i 2`, each saying 2 messages a second; chat-bench's fault command (a real
//! `sh -c`) kills the busier worker mid-run. The clients reconnect the way socket.io-client does
//! with connection-state recovery: every socket comes back recovered and no message is lost.
//!
//! chat-bench runs as the library its binary is a thin shell over (the two are separate
//! packages, so this test cannot reach the other's executable).

mod support;

use std::time::Duration;

use chat_bench::{BenchConfig, Fault, Scenario, Target};
use support::{all_online, chatctl_exe, worker_pids, App};

#[test]
fn chat_bench_users_lose_no_message_when_a_worker_is_killed() {
    let app = App::new("bench-fault");
    app.start_ok(&["-i", "2"], &[]);
    let before = app.wait_listed("two online workers", |a| all_online(a, 2));
    // The worker holding most connections when the fault strikes: found by the command itself.
    let command = format!(
        "kill -9 $(CHATCTL_HOME='{}' '{}' list --json | jq -r '.[] | select(.name == \"{}\") \
         | .workers | max_by(.connections) | .pid')",
        app.home.display(),
        chatctl_exe(),
        app.name
    );
    let addr = format!("127.0.0.1:{}", app.port);
    let mut config = BenchConfig::new(
        Target {
            addr: addr.parse().expect("a socket address"),
            authority: addr,
        },
        Scenario::Chat,
    );
    config.clients = 40;
    config.room_size = 10;
    config.rate = 2.0;
    config.warmup = Duration::from_millis(500);
    config.duration = Duration::from_secs(4);
    // Generous for a loaded machine: a client comes back in about 100 ms when it is not.
    config.connect_timeout = Duration::from_secs(30);
    config.drain = Duration::from_secs(20);
    config.progress = false;
    config.fault = Some(Fault {
        after: Duration::from_millis(1500),
        command,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(chat_bench::run(config));
    let table = report.table();
    eprintln!("{table}");
    let log = || app.log_text();

    assert_eq!(
        report.fault.as_ref().map(|f| f.exit.as_str()),
        Some("exit 0"),
        "{table}"
    );
    assert_eq!(report.connected, 40, "{table}");
    assert_eq!(report.errors, 0, "{table}\n{}", log());
    assert!(report.sent > 0, "{table}");
    assert_eq!(report.lost, 0, "messages lost:\n{table}\n{}", log());
    assert_eq!(report.duplicates, 0, "{table}");
    // The kill reached users, and every socket of theirs came back recovered.
    assert!(
        report.reconnects > 0,
        "the kill disconnected nobody:\n{table}"
    );
    assert_eq!(report.reconnects_failed, 0, "{table}");
    assert_eq!(report.sockets_not_recovered, 0, "{table}\n{}", log());
    assert_eq!(
        report.sockets_recovered,
        2 * report.reconnects,
        "both sockets of every reconnected client: {table}"
    );
    assert!(report.back_after_ms.max > 0.0, "{table}");
    assert!(report.passed(), "{table}");

    // The master replaced the worker it lost.
    let after = app.wait_listed("two online workers again", |a| all_online(a, 2));
    let (old, new) = (worker_pids(&before), worker_pids(&after));
    assert!(
        old.iter().any(|pid| !new.contains(pid)),
        "no worker was replaced: {old:?} -> {new:?}"
    );
}
