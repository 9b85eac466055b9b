//! The chat's secrets reach its workers through an inherited pipe: the cookie key and a Redis
//! URL with a password are in no worker's environment (`/proc/PID/environ`, readable by every
//! process of the workers' account) and no command line (`/proc/PID/cmdline`, readable by
//! everyone), whether they were given as `start` flags or as `serve` flags after `--`, and the
//! workers still use them. Real processes and a real password-protected redis-server.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use support::{all_online, worker_pids, App, RedisServer};

const PASSWORD: &str = "redis-password-in-no-environment";
const KEY: &str = "cookie-key-in-no-environment-0123456789";

#[test]
fn secrets_given_as_start_flags_are_in_no_worker_environment_or_command_line() {
    let port = testkit::port();
    let redis = RedisServer::start_with_password(port, PASSWORD);
    let app = App::new("secrets-flags");
    let key = format!("CHAT_SECRET={KEY}");
    app.start_ok(&["-i", "1", "--redis", &redis.url(), "--env", &key], &[]);
    let pid = online_worker(&app);
    assert_hidden(pid, &[KEY, PASSWORD]);
    // The worker got both: its login cookie is signed with the key, and it uses the Redis
    // that only the password opens.
    let cookie = login_cookie(app.port);
    assert!(
        chat::cookie::CookieSigner::new(KEY.as_bytes())
            .verify(&cookie)
            .is_ok(),
        "the login cookie {cookie:?} is not signed with the given key"
    );
    support::wait_until("the worker's keys in the password-protected Redis", || {
        redis_has_keys(port)
    });
}

#[test]
fn secrets_given_as_serve_flags_are_in_no_worker_command_line() {
    let port = testkit::port();
    let redis = RedisServer::start_with_password(port, PASSWORD);
    let app = App::new("secrets-serve");
    let url = redis.url();
    let secret = format!("--secret={KEY}");
    app.start_ok(&["-i", "1"], &["serve", "--redis", &url, &secret]);
    let pid = online_worker(&app);
    assert_hidden(pid, &[KEY, PASSWORD]);
    let cookie = login_cookie(app.port);
    assert!(
        chat::cookie::CookieSigner::new(KEY.as_bytes())
            .verify(&cookie)
            .is_ok(),
        "the login cookie {cookie:?} is not signed with the given key"
    );
    support::wait_until("the worker's keys in the password-protected Redis", || {
        redis_has_keys(port)
    });
}

fn online_worker(app: &App) -> u32 {
    let listed = app.wait_listed("one online worker", |a| all_online(a, 1));
    worker_pids(&listed)[0]
}

/// Neither the environment nor the command line of `pid` holds any of `secrets`.
fn assert_hidden(pid: u32, secrets: &[&str]) {
    for file in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{file}"))
            .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/{file}: {e}"));
        let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "/proc/{pid}/{file} shows a secret: {text}"
            );
        }
    }
}

/// Logs in as a new user; the value of the session cookie the worker sets.
fn login_cookie(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = "nickname=alice";
    write!(
        stream,
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send the login");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            if !name.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let value = value.trim().strip_prefix("chat_session=")?;
            Some(value.split(';').next()?.to_owned())
        })
        .unwrap_or_else(|| panic!("no session cookie in the login answer:\n{response}"))
}

fn redis_has_keys(port: u16) -> bool {
    let port = port.to_string();
    let output = Command::new("redis-cli")
        .args(["-p", &port, "-a", PASSWORD, "--no-auth-warning", "DBSIZE"])
        .output();
    output.is_ok_and(|output| {
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u64>()
            .is_ok_and(|keys| keys > 0)
    })
}
