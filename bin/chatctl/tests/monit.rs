//! The live views of a running app: `chatctl monit` driven in a real terminal (a tmux pane of
//! a tmux server of the test's own: keys sent, the screen captured) and `chatctl list --watch`
//! read as it writes. Both follow a real master: a worker killed with SIGKILL shows up
//! replaced, and the views end cleanly on `q`, Ctrl-C, or when the master goes away.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::{
    all_online, chatctl_exe, pid_of, signal, stderr_lines, wait_for_value, wait_until, App,
};

/// A tmux server of the test's own (its own socket, no user configuration), killed with
/// everything in it when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A server with one 160x50 pane running `command` through sh; when it ends, the pane
    /// says `view exited STATUS` and stays, so the test can read what it left.
    fn run(command: &str) -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tmux = Tmux {
            socket: format!(
                "chatctl-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let script = format!("{command}; echo \"view exited $?\"; sleep 600");
        tmux.tmux(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "50",
            "-s",
            "view",
            &script,
        ]);
        tmux
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): install it (Debian: apt-get install tmux; ops/test-deps.sh does)")
            });
        assert!(
            output.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "view"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "view"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Waits until the screen satisfies `condition`; returns that screen.
    fn wait_screen(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = wait_for_value(what, || {
            last = self.screen();
            condition(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("timed out waiting for {what}; the screen:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The `chatctl ...` command line of `app`, for a shell.
fn chatctl_line(app: &App, args: &str) -> String {
    format!(
        "env CHATCTL_HOME='{}' '{}' {args}",
        app.home.display(),
        chatctl_exe()
    )
}

/// The worker rows of a screen or table: (worker id, pid, status) of `app`'s workers.
fn rows(screen: &str, app: &str) -> Vec<(usize, u32, String)> {
    screen
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || c == '│')
                .filter(|w| !w.is_empty())
                .collect();
            match words.as_slice() {
                [name, id, pid, status, ..] if *name == app => {
                    Some((id.parse().ok()?, pid.parse().ok()?, status.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

fn shows_worker(screen: &str, app: &str, id: usize, pid: u32) -> bool {
    rows(screen, app).contains(&(id, pid, "online".into()))
}

#[test]
fn monit_shows_every_worker_follows_a_restart_and_quits_on_q() {
    let app = App::new("monit");
    app.start_ok(&["-i", "2"], &[]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let (first, other) = (pid_of(&listed, 0), pid_of(&listed, 1));

    let tmux = Tmux::run(&chatctl_line(&app, "monit --interval 300ms"));
    tmux.wait_screen("both workers' rows", |screen| {
        shows_worker(screen, &app.name, 0, first) && shows_worker(screen, &app.name, 1, other)
    });

    signal(first, libc::SIGKILL);
    let listed = app.wait_listed("worker 0 replaced", |a| {
        all_online(a, 2) && pid_of(a, 0) != first
    });
    let replacement = pid_of(&listed, 0);
    let screen = tmux.wait_screen("worker 0's new pid and the crash", |screen| {
        shows_worker(screen, &app.name, 0, replacement)
            && shows_worker(screen, &app.name, 1, other)
            && screen.contains("killed by signal 9")
    });
    assert!(
        rows(&screen, &app.name)
            .iter()
            .all(|(_, pid, _)| *pid != first),
        "the killed worker is still shown:\n{screen}"
    );

    // An app started while monit runs joins the view.
    let second = format!("{}-2", app.name);
    let listen = format!("127.0.0.1:{}", testkit::port());
    support::succeeded(&app.run(&["start", "--name", &second, "--listen", &listen, "-i", "1"]));
    tmux.wait_screen("the second app's worker", |screen| {
        rows(screen, &second)
            .iter()
            .any(|(id, _, status)| *id == 0 && status == "online")
            && shows_worker(screen, &app.name, 1, other)
    });

    // Selecting worker 1 puts its charts on screen.
    tmux.keys(&["Down"]);
    tmux.wait_screen("worker 1's charts", |screen| {
        screen.contains(&format!("{} w1 CPU", app.name))
    });

    tmux.keys(&["q"]);
    let screen = tmux.wait_screen("monit to quit", |screen| screen.contains("view exited"));
    assert!(screen.contains("view exited 0"), "{screen}");
    // The terminal is back to the shell's screen: no table is left on it.
    assert!(rows(&screen, &app.name).is_empty(), "{screen}");
}

#[test]
fn monit_quits_on_ctrl_c_and_says_when_the_master_went_away() {
    let app = App::new("monitgone");
    app.start_ok(&["-i", "1"], &[]);
    let listed = app.wait_listed("one online worker", |a| all_online(a, 1));

    let tmux = Tmux::run(&chatctl_line(&app, "monit --interval 300ms"));
    tmux.wait_screen("the worker's row", |screen| {
        shows_worker(screen, &app.name, 0, pid_of(&listed, 0))
    });
    tmux.keys(&["C-c"]);
    tmux.wait_screen("monit to quit on Ctrl-C", |screen| {
        screen.contains("view exited 0")
    });

    let tmux = Tmux::run(&chatctl_line(&app, &format!("monit {}", app.name)));
    tmux.wait_screen("the worker's row", |screen| {
        shows_worker(screen, &app.name, 0, pid_of(&listed, 0))
    });
    support::succeeded(&app.run(&["stop", &app.name]));
    let screen = tmux.wait_screen("monit to end with the master", |screen| {
        screen.contains("view exited")
    });
    let said: Vec<&str> = screen
        .lines()
        .filter(|line| line.contains("went away"))
        .collect();
    assert_eq!(said.len(), 1, "{screen}");
    assert!(said[0].contains(&format!("'{}'", app.name)), "{screen}");
    assert!(screen.contains("view exited 0"), "{screen}");

    // Nothing to watch: one line, not a blank screen.
    let output = app.run(&["monit", &app.name]);
    assert!(!output.status.success());
    assert_eq!(stderr_lines(&output).len(), 1, "{output:?}");
}

#[test]
fn list_watch_prints_a_table_each_interval_until_interrupted() {
    let app = App::new("watch");
    app.start_ok(&["-i", "2"], &[]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let first = pid_of(&listed, 0);

    let mut watch = app
        .command(&["list", "--watch", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run chatctl list --watch");
    let output = Arc::new(Mutex::new(String::new()));
    let reader = {
        let output = output.clone();
        let stdout = watch.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut output = output.lock().unwrap();
                output.push_str(&line);
                output.push('\n');
            }
        })
    };
    let seen = |condition: &dyn Fn(&str) -> bool| condition(&output.lock().unwrap());
    wait_until("a table with worker 0", || {
        seen(&|text| shows_worker(text, &app.name, 0, first))
    });

    signal(first, libc::SIGKILL);
    let listed = app.wait_listed("worker 0 replaced", |a| {
        all_online(a, 2) && pid_of(a, 0) != first
    });
    let replacement = pid_of(&listed, 0);
    wait_until("a later table with worker 0's new pid", || {
        seen(&|text| shows_worker(text, &app.name, 0, replacement))
    });
    let tables = output
        .lock()
        .unwrap()
        .matches("chatctl list, every 200ms")
        .count();
    assert!(tables >= 2, "{}", output.lock().unwrap());

    signal(watch.id(), libc::SIGINT);
    let status = watch.wait().expect("cannot wait for list --watch");
    assert!(status.success(), "list --watch ended with {status}");
    reader.join().expect("the reader thread");
}

#[test]
fn bad_intervals_and_combinations_print_one_line_and_exit_2() {
    let app = App::new("watchflags");
    for args in [
        &["list", "--watch", "--interval", "0"][..],
        &["list", "--watch", "--interval", "soon"],
        &["list", "--interval", "2s"],
        &["list", "--watch", "--json"],
        &["monit", "--interval", "2h"],
    ] {
        let output = app.run(args);
        let lines = stderr_lines(&output);
        assert_eq!(output.status.code(), Some(2), "chatctl {args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "chatctl {args:?} printed {lines:?}");
        assert!(
            output.stdout.is_empty(),
            "chatctl {args:?} printed to stdout"
        );
    }
}

/// Lets a stopped master go on if the test ends early, so that the app can be stopped.
struct Continued(u32);

impl Drop for Continued {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn monit_marks_a_master_that_does_not_answer_and_still_quits_at_once() {
    let app = App::new("monithung");
    let status = app.start_ok(&["-i", "1"], &[]);
    let listed = app.wait_listed("one online worker", |a| all_online(a, 1));
    let master = status["master_pid"].as_u64().expect("master pid") as u32;
    let worker = pid_of(&listed, 0);

    let tmux = Tmux::run(&chatctl_line(&app, "monit --interval 300ms"));
    tmux.wait_screen("the worker's row", |screen| {
        shows_worker(screen, &app.name, 0, worker)
    });
    let _continued = Continued(master);
    signal(master, libc::SIGSTOP);
    let screen = tmux.wait_screen("the master marked as not answering", |screen| {
        screen.contains("master not answering")
    });
    // Its last status stays on the screen.
    assert!(shows_worker(&screen, &app.name, 0, worker), "{screen}");
    signal(master, libc::SIGCONT);
    tmux.wait_screen("the mark gone once it answers", |screen| {
        !screen.contains("master not answering") && shows_worker(screen, &app.name, 0, worker)
    });

    // Keys are read apart from the status requests: q quits while the master is stopped.
    signal(master, libc::SIGSTOP);
    tmux.wait_screen("the master marked again", |screen| {
        screen.contains("master not answering")
    });
    tmux.keys(&["q"]);
    tmux.wait_screen("monit to quit", |screen| screen.contains("view exited 0"));
}

#[test]
fn list_watch_on_a_terminal_redraws_one_table_in_place() {
    let app = App::new("watchtty");
    app.start_ok(&["-i", "2"], &[]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let first = pid_of(&listed, 0);

    let tmux = Tmux::run(&chatctl_line(&app, "list --watch --interval 200ms"));
    tmux.wait_screen("the table", |screen| {
        shows_worker(screen, &app.name, 0, first)
    });
    signal(first, libc::SIGKILL);
    let listed = app.wait_listed("worker 0 replaced", |a| {
        all_online(a, 2) && pid_of(a, 0) != first
    });
    let screen = tmux.wait_screen("the new pid in place of the old", |screen| {
        shows_worker(screen, &app.name, 0, pid_of(&listed, 0))
    });
    assert_eq!(
        screen.matches("chatctl list, every 200ms").count(),
        1,
        "{screen}"
    );
    assert_eq!(rows(&screen, &app.name).len(), 2, "{screen}");
    tmux.keys(&["C-c"]);
    tmux.wait_screen("list --watch to end on Ctrl-C", |screen| {
        screen.contains("view exited 0")
    });
}
