//! Upgrading a running master to the executable now on disk without closing its port
//! (`chatctl upgrade NAME`, DESIGN §10): the old master starts the new one as if it were
//! systemd activating a socket, and the two talk over a private socketpair until the new one
//! has every worker online and the old one hands it the app.
//!
//! What the new master inherits:
//!
//! | what | descriptor | variable |
//! | --- | --- | --- |
//! | the public listening socket (none with `--no-listen`) | 3 | `LISTEN_FDS=1`, `LISTEN_PID` |
//! | the upgrade channel to the old master | 4 | `CHATCTL_UPGRADE_FD` |
//! | the admin address's listening socket (`--admin`) | 5 | `CHATCTL_ADMIN_FD` |
//! | where the old master's worker generations ended (so session ids stay distinct) | – | `CHATCTL_UPGRADE_GENERATION` |
//! | that the channel's first line is the workers' environment (`reload --update-env`) | – | `CHATCTL_UPGRADE_ENV=1` |
//!
//! The conversation on the channel, one JSON line each (see [`FromSuccessor`], [`ToSuccessor`]):
//!
//! 0. old → new, at once and only with `CHATCTL_UPGRADE_ENV`: the environment the workers
//!    start from ([`WorkersEnvironment`]), read before the new master starts any;
//! 1. new → old: `ready` once every worker is online (its pid, version and what a live
//!    hand-off of sessions to its workers needs), or `failed` with the reason;
//! 2. old → new: `take_over`, once the old master no longer accepts, with what its service
//!    keeps (the embedded store's sessions);
//! 3. new → old: `took_over`; the old master points `control.sock` and `master.pid` at the
//!    new master, drains its own workers and exits.
//!
//! From `take_over` until the old master exits, the channel is the bridge between the old
//! workers and the new master's service, so that old and new workers are one app (one
//! numbering of events, one store): the old master forwards what its workers ask of the
//! service ([`FromOldWorkers`]: events to number, broadcasts, store requests, a worker gone),
//! and the new master sends back what is for them ([`ToOldWorkers`]: numbered events and
//! broadcasts, replies). A question to every worker (`gather`) is asked on both sides.
//!
//! Secrets (the peers token) travel only on the channel, never in argv or the environment.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::inherited::LISTEN_FD;
pub const CHANNEL_FD: RawFd = 4;
pub const ADMIN_FD: RawFd = 5;
pub const CHANNEL_FD_ENV: &str = "CHATCTL_UPGRADE_FD";
pub const ADMIN_FD_ENV: &str = "CHATCTL_ADMIN_FD";
pub const GENERATION_ENV: &str = "CHATCTL_UPGRADE_GENERATION";
pub const WORKERS_ENV_ENV: &str = "CHATCTL_UPGRADE_ENV";

/// The longest environment line: far more than any environment a shell passes.
const MAX_ENV_LINE: usize = 4 << 20;

/// How long a new master waits for the environment line the old master writes at once.
const ENV_LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The environment the old master's workers start from since a `reload --update-env` (the
/// caller's environment then, never written to disk): the new master's workers start from it
/// too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersEnvironment {
    pub env: Vec<(String, String)>,
}

/// The longest line on the channel: the embedded store's sessions ride on it (100 000 at
/// most, about 100 bytes each).
pub const MAX_LINE: usize = 64 << 20;

/// What a new master tells the old one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromSuccessor {
    /// Every worker is online.
    Ready {
        pid: u32,
        version: String,
        peers: Peers,
    },
    /// The new master cannot run (its reason, as it would print it).
    Failed { message: String },
    /// It has the app: the old master may let go.
    TookOver,
}

/// What the old master tells the new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToSuccessor {
    /// The old master no longer accepts connections; `service` is what its
    /// [`crate::MasterService::hand_over`] gave.
    TakeOver {
        #[serde(default)]
        service: Option<serde_json::Value>,
        /// The old master's workers (their process ids for the service): what they owned
        /// in the service is forgotten when they are gone, or when the bridge closes.
        #[serde(default)]
        workers: Vec<u64>,
        /// Where the old master's workers can be reached (its pid made their private
        /// sockets), for the new workers to pass them requests of their sessions.
        #[serde(default)]
        old_master: Option<(u32, Peers)>,
    },
}

/// What the old master forwards from its workers to the new master's service, after
/// `take_over` (each as [`crate::ipc::ToMaster`] says, with the worker it came from).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromOldWorkers {
    Sequence {
        worker: u64,
        #[serde(deserialize_with = "crate::ipc::raw_from_any")]
        body: Box<RawValue>,
    },
    Publish {
        worker: u64,
        #[serde(deserialize_with = "crate::ipc::raw_from_any")]
        body: Box<RawValue>,
    },
    Request {
        worker: u64,
        id: u64,
        body: serde_json::Value,
    },
    Tell {
        worker: u64,
        #[serde(deserialize_with = "crate::ipc::raw_from_any")]
        body: Box<RawValue>,
    },
    /// The worker ended: what it owned in the service goes.
    WorkerGone { worker: u64 },
    /// An old worker's question for every worker ([`crate::ipc::ToMaster::Gather`]): the
    /// new master asks its own and sends their answers back under `key`.
    Gather { key: u64, body: serde_json::Value },
    /// The old workers' answers to the new master's question `key`.
    Answers {
        key: u64,
        answers: Vec<serde_json::Value>,
    },
}

/// What the new master sends the old master's workers over the bridge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToOldWorkers {
    /// For every old worker: a numbered event, a broadcast, a departure. The same line as
    /// [`crate::ipc::ToWorker::Message`], so the new master queues one copy for all.
    Message {
        #[serde(deserialize_with = "crate::ipc::raw_from_any")]
        body: Box<RawValue>,
    },
    /// The answer to one old worker's request.
    Reply {
        worker: u64,
        id: u64,
        body: serde_json::Value,
    },
    /// A new worker's question for every worker: the old master asks its own and sends
    /// their answers back under `key`.
    Gather { key: u64, body: serde_json::Value },
    /// The new workers' answers to the old master's question `key`.
    Answers {
        key: u64,
        answers: Vec<serde_json::Value>,
    },
}

impl crate::ipc::Line for FromSuccessor {}
impl crate::ipc::Line for ToSuccessor {}

impl crate::ipc::Line for FromOldWorkers {}

impl crate::ipc::Line for ToOldWorkers {
    fn fast(line: String) -> Result<Self, String> {
        crate::ipc::raw_body(line, r#"{"type":"message","body":"#)
            .map(|body| ToOldWorkers::Message { body })
    }
}

/// Where the new master's workers can be reached, for a live hand-off of sessions from the
/// old workers (issue 16): the token naming their private sockets
/// ([`crate::handoff::bind_private`]) and their worker ids. A secret: it lets a process
/// address the workers' private sockets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    pub token: String,
    pub worker_ids: Vec<u16>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("token", &"..")
            .field("worker_ids", &self.worker_ids)
            .finish()
    }
}

/// What a master process was given by whoever started it: systemd (the listening socket of
/// a `.socket` unit) or an old master handing over. Taken once, before the runtime starts
/// threads (it edits the environment, so no worker or hook inherits it).
#[derive(Debug)]
pub struct Inheritance {
    /// The public listening socket to use instead of binding `--listen`.
    pub listener: Option<std::net::TcpListener>,
    /// The admin address's socket, from an old master.
    pub admin: Option<std::net::TcpListener>,
    /// The channel to the old master, when this master is its successor.
    pub channel: Option<std::os::unix::net::UnixStream>,
    /// Where the old master's worker generations ended.
    pub first_generation: Option<u64>,
    /// The environment the workers start from (see [`WorkersEnvironment`]), or why it could
    /// not be read (the new master then refuses to start, and says so).
    pub workers_env: Result<Option<Vec<(String, String)>>, String>,
}

impl Default for Inheritance {
    fn default() -> Self {
        Inheritance {
            listener: None,
            admin: None,
            channel: None,
            first_generation: None,
            workers_env: Ok(None),
        }
    }
}

impl Inheritance {
    /// Takes what this process inherited and removes the variables that named it.
    pub fn take() -> Result<Inheritance, sticky::Error> {
        let listener = sticky::listen::inherited()?;
        for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            std::env::remove_var(name);
        }
        let fd = |name: &str| {
            let fd = std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<RawFd>().ok());
            std::env::remove_var(name);
            fd.filter(|fd| *fd > 2)
        };
        // SAFETY (each): an old master passed these descriptors to this process alone, under
        // these variables, which are removed here: each is taken once.
        let channel =
            fd(CHANNEL_FD_ENV).map(|fd| unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) });
        let admin = fd(ADMIN_FD_ENV).map(|fd| unsafe { std::net::TcpListener::from_raw_fd(fd) });
        let first_generation = std::env::var(GENERATION_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        std::env::remove_var(GENERATION_ENV);
        let env_first = std::env::var_os(WORKERS_ENV_ENV).is_some();
        std::env::remove_var(WORKERS_ENV_ENV);
        let workers_env = match (&channel, env_first) {
            (Some(channel), true) => read_workers_env(channel).map(Some),
            _ => Ok(None),
        };
        Ok(Inheritance {
            listener,
            admin,
            channel,
            first_generation,
            workers_env,
        })
    }
}

/// Reads the channel's first line, the workers' environment, byte by byte: nothing after it
/// is taken from the channel (the old master writes nothing more until it hears `ready`).
fn read_workers_env(
    channel: &std::os::unix::net::UnixStream,
) -> Result<Vec<(String, String)>, String> {
    use std::io::Read;
    let failed =
        |why: String| format!("cannot read the workers' environment from the old master: {why}");
    channel
        .set_read_timeout(Some(ENV_LINE_TIMEOUT))
        .map_err(|e| failed(e.to_string()))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&*channel).read(&mut byte) {
            Ok(0) => return Err(failed("the channel closed".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_ENV_LINE => {
                return Err(failed(format!("longer than {MAX_ENV_LINE} bytes")))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    let _ = channel.set_read_timeout(None);
    serde_json::from_slice::<WorkersEnvironment>(&line)
        .map(|given| given.env)
        .map_err(|e| failed(e.to_string()))
}

/// Why an upgrade did not happen; the old master keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot run {path}: {reason} — install the new chatctl there (mode 0755), or give its path with --binary")]
    Binary { path: String, reason: String },
    #[error("cannot start the new master: {0}")]
    Spawn(std::io::Error),
}

/// Checks that `path` is a file this process may execute, so a missing or broken binary is
/// refused with its reason before anything starts.
pub fn check_binary(path: &Path) -> Result<(), UpgradeError> {
    let refuse = |reason: String| UpgradeError::Binary {
        path: path.display().to_string(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    if !metadata.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| refuse(format!("not executable ({e})")))?;
    let mut magic = [0u8; 4];
    let read = std::io::Read::read_exact(
        &mut std::fs::File::open(path).map_err(|e| refuse(e.to_string()))?,
        &mut magic,
    );
    if read.is_err() || (&magic != b"\x7fELF" && !magic.starts_with(b"#!")) {
        return Err(refuse("not an executable (no ELF header)".into()));
    }
    Ok(())
}

/// What the new master is started with.
pub struct Successor<'a> {
    pub binary: &'a Path,
    pub app: &'a str,
    pub listener: Option<&'a std::net::TcpListener>,
    pub admin: Option<&'a std::net::TcpListener>,
    pub first_generation: u64,
    /// Where its stderr goes (the app's `master.stderr`), appended to.
    pub stderr: &'a Path,
    /// The environment the workers start from, if a `reload --update-env` set one.
    pub workers_env: Option<&'a [(String, String)]>,
}

/// Starts `binary master --name APP` as a daemon of its own (its own session and process
/// group, as `chatctl start` starts masters), with the descriptors of the table above.
/// Returns the child and the old master's end of the channel.
pub fn spawn_successor(
    successor: &Successor<'_>,
) -> Result<(tokio::process::Child, std::os::unix::net::UnixStream), UpgradeError> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(UpgradeError::Spawn)?;
    // Copies above the target numbers, so the dup2s in the child cannot overwrite each other.
    let copy = |fd: &dyn AsFd| {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))
            // SAFETY: a fresh descriptor, ours alone.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .map_err(|e| UpgradeError::Spawn(e.into()))
    };
    let mut inherited: Vec<(OwnedFd, RawFd)> = vec![(copy(&theirs)?, CHANNEL_FD)];
    drop(theirs);
    if let Some(listener) = successor.listener {
        inherited.push((copy(listener)?, LISTEN_FD));
    }
    if let Some(admin) = successor.admin {
        inherited.push((copy(admin)?, ADMIN_FD));
    }
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(successor.stderr)
        .map_err(UpgradeError::Spawn)?;
    // Under a systemd watchdog, the new master is the one to feed it once it is the main
    // process: its pid, which `sh` names in LISTEN_PID, goes in WATCHDOG_PID too.
    let script = if std::env::var_os("WATCHDOG_USEC").is_some() {
        "WATCHDOG_PID=$$; export WATCHDOG_PID; LISTEN_PID=$$; export LISTEN_PID; exec \"$@\""
    } else {
        crate::inherited::EXEC_WITH_LISTEN_PID
    };
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(script)
        .arg("chatctl-master")
        .arg(successor.binary)
        .arg("master")
        .arg("--name")
        .arg(successor.app)
        .env(CHANNEL_FD_ENV, CHANNEL_FD.to_string())
        .env(GENERATION_ENV, successor.first_generation.to_string())
        .env_remove("LISTEN_FDNAMES")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(false);
    if successor.listener.is_some() {
        command.env("LISTEN_FDS", "1");
    } else {
        command.env_remove("LISTEN_FDS");
    }
    if successor.admin.is_some() {
        command.env(ADMIN_FD_ENV, ADMIN_FD.to_string());
    } else {
        command.env_remove(ADMIN_FD_ENV);
    }
    if let Some(env) = successor.workers_env {
        // On the channel, not in the new master's environment: it may hold secrets. Written
        // before the new master runs, into the socketpair's buffer: without blocking, so an
        // environment larger than the buffer fails the upgrade instead of hanging it.
        let given = WorkersEnvironment { env: env.to_vec() };
        let mut line = serde_json::to_vec(&given).map_err(|e| UpgradeError::Spawn(e.into()))?;
        line.push(b'\n');
        ours.set_nonblocking(true).map_err(UpgradeError::Spawn)?;
        std::io::Write::write_all(&mut &ours, &line).map_err(|e| {
            UpgradeError::Spawn(std::io::Error::other(format!(
                "cannot hand it the workers' environment ({} bytes): {e}",
                line.len()
            )))
        })?;
        command.env(WORKERS_ENV_ENV, "1");
    } else {
        command.env_remove(WORKERS_ENV_ENV);
    }
    let highest = inherited
        .iter()
        .map(|(_, target)| *target)
        .max()
        .unwrap_or(2);
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (setsid, dup2, close_range) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            for (source, target) in &inherited {
                // Kept open across exec: forgotten, not closed.
                std::mem::forget(nix::unistd::dup2_raw(source, *target)?);
            }
            // Nothing else of the old master's (its workers' sockets, its control socket).
            libc::syscall(libc::SYS_close_range, (highest + 1) as u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = command.spawn().map_err(UpgradeError::Spawn)?;
    Ok((child, ours))
}

/// Points `control.sock` and `master.pid` at the new master: its control socket, bound next
/// to the old one, is renamed over it (clients connect to one or the other, never to
/// nothing), and the pid file is replaced whole.
pub fn commit_files(paths: &crate::AppPaths, pid: u32) -> std::io::Result<()> {
    std::fs::rename(&paths.control_next, &paths.control)?;
    let partial = paths.pid.with_extension("pid.partial");
    std::fs::write(&partial, pid.to_string())?;
    std::fs::rename(&partial, &paths.pid)
}

/// The binary a master was started from, for an upgrade without `--binary`: the path it was
/// run as (not `/proc/self/exe`, which names the old file once a new one replaced it).
pub fn started_from() -> Option<PathBuf> {
    let arg0 = PathBuf::from(std::env::args_os().next()?);
    if arg0.is_absolute() {
        return Some(arg0);
    }
    // A relative name was resolved by `PATH` or the working directory at start; the
    // executable's path then is the best answer.
    std::env::current_exe()
        .ok()
        .map(|exe| {
            let text = exe.display().to_string();
            PathBuf::from(text.trim_end_matches(" (deleted)"))
        })
        .or(Some(arg0))
}

/// Tells the old master why this successor cannot run (best effort: it also sees the exit).
pub fn report_failure(channel: &mut std::os::unix::net::UnixStream, message: &str) {
    let failed = FromSuccessor::Failed {
        message: message.to_owned(),
    };
    if let Ok(mut line) = serde_json::to_vec(&failed) {
        line.push(b'\n');
        let _ = std::io::Write::write_all(channel, &line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_that_cannot_run_is_refused_with_its_reason() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("chatctl-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reason = |path: &Path| check_binary(path).unwrap_err().to_string();
        assert!(reason(&dir.join("missing")).contains("No such file"));
        assert!(reason(&dir).contains("not a regular file"));
        let text = dir.join("text");
        std::fs::write(&text, "not a program").unwrap();
        std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Even for root: no execute bit at all.
        assert!(reason(&text).contains("not executable"));
        std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(reason(&text).contains("no ELF header"));
        check_binary(Path::new("/proc/self/exe")).expect("this test's own executable runs");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_peers_token_is_never_in_a_log_line() {
        let ready = FromSuccessor::Ready {
            pid: 7,
            version: "0.1.0+abc".into(),
            peers: Peers {
                token: "s3cret-token".into(),
                worker_ids: vec![65, 66],
            },
        };
        assert!(!format!("{ready:?}").contains("s3cret"));
        let FromSuccessor::Ready { peers, .. } = ready.clone() else {
            unreachable!()
        };
        let introduction = crate::ipc::ToWorker::OtherMaster {
            master_pid: 7,
            peers,
        };
        assert!(!format!("{introduction:?}").contains("s3cret"));
        let line = serde_json::to_string(&ready).unwrap();
        let back: FromSuccessor = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ready);
    }

    #[tokio::test]
    async fn the_bridge_carries_worker_messages_and_takes_a_relay_line_as_it_is() {
        use crate::ipc::{message_lines, read_message};
        let body = RawValue::from_string(r#"{"ns":"/","frames":["t2[\"a\"]"]}"#.into()).unwrap();
        let mut text = Vec::new();
        text.extend_from_slice(&crate::outbox::relay_line(&body));
        let forwarded = FromOldWorkers::Sequence {
            worker: 9,
            body: body.clone(),
        };
        text.extend_from_slice(&serde_json::to_vec(&forwarded).unwrap());
        text.extend_from_slice(b"\n{\"type\":\"nonsense\"}\n");
        let mut lines = message_lines(&text[..], 1 << 20);
        match read_message::<ToOldWorkers, _>(&mut lines).await {
            Ok(ToOldWorkers::Message { body: relayed }) => assert_eq!(relayed.get(), body.get()),
            other => panic!("{other:?}"),
        }
        match read_message::<FromOldWorkers, _>(&mut lines).await {
            Ok(FromOldWorkers::Sequence { worker, body: got }) => {
                let value = |raw: &RawValue| serde_json::from_str::<serde_json::Value>(raw.get());
                assert_eq!((worker, value(&got).unwrap()), (9, value(&body).unwrap()))
            }
            other => panic!("{other:?}"),
        }
        // A line neither side sends is skipped, without a panic.
        assert!(read_message::<FromOldWorkers, _>(&mut lines).await.is_err());
    }

    #[test]
    fn the_workers_environment_is_read_alone_and_a_bad_one_is_refused() {
        use std::io::Write;
        let (mut old, new) = std::os::unix::net::UnixStream::pair().unwrap();
        let given = WorkersEnvironment {
            env: vec![("A".into(), "1".into())],
        };
        let mut line = serde_json::to_vec(&given).unwrap();
        line.extend_from_slice(b"\n{\"type\":\"take_over\"}\n");
        old.write_all(&line).unwrap();
        assert_eq!(read_workers_env(&new).unwrap(), given.env);
        // What follows stays on the channel for the conversation.
        let mut rest = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&new), &mut rest).unwrap();
        assert_eq!(rest, "{\"type\":\"take_over\"}\n");

        old.write_all(b"[1, 2]\n").unwrap();
        let refused = read_workers_env(&new).unwrap_err();
        assert!(
            refused.contains("cannot read the workers' environment"),
            "{refused}"
        );
        drop(old);
        assert!(read_workers_env(&new).unwrap_err().contains("closed"));
    }
}
