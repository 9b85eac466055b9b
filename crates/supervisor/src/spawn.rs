//! The one place that starts worker processes: the app's program (or this binary's `serve`),
//! with the descriptors and variables of the contract in [`crate::inherited`] (the listening
//! socket or the hand-off socket, the IPC channel, its private socket, the secrets pipe),
//! PR_SET_PDEATHSIG so a dead master leaves no orphans, in the master's process group, as the
//! configured user. Never `fork()` of a running tokio process without an immediate exec.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::Stdio;

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{dup2_raw, getpgrp, getpid, getppid, Pid, User};
use tokio::process::{Child, Command};

use crate::config::AppConfig;
use crate::inherited::{
    EXE_FD, HANDOFF_FD, HANDOFF_FD_ENV, IPC_FD, IPC_FD_ENV, IPC_MAX_LINE_ENV, LISTEN_FD,
    NODE_ID_ENV, PEERS_ENV, PRIVATE_FD, PRIVATE_SOCKET_ENV, SECRETS_FD, SECRETS_FD_ENV,
    WORKER_ID_ENV,
};
use crate::program::Program;

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start '{program}': {source}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot set up the worker's sockets: {0}")]
    Sockets(std::io::Error),
    #[error("unknown user '{0}' (see --user)")]
    UnknownUser(String),
}

/// A user to run workers as.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Looks up a user by name.
pub fn lookup_user(name: &str) -> Result<RunAs, SpawnError> {
    match User::from_name(name) {
        Ok(Some(user)) => Ok(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }),
        _ => Err(SpawnError::UnknownUser(name.to_owned())),
    }
}

/// A started worker and the master's end of its IPC channel.
pub struct Spawned {
    pub child: Child,
    pub ipc: std::os::unix::net::UnixStream,
}

/// What a worker is started with.
pub struct WorkerSpec<'a> {
    pub config: &'a AppConfig,
    /// The id the worker writes into its session ids and names its private socket with.
    pub worker_id: u16,
    /// How connections reach it: the shared listening socket, or (sticky) the worker's end
    /// of its hand-off socket.
    pub connections: Connections,
    /// Its private socket, bound by the master ([`crate::handoff::bind_private`]).
    pub private_socket: RawFd,
    /// The master's token in private socket names.
    pub peers_token: &'a str,
    /// The chat's cookie key, passed to chat workers through their secrets pipe
    /// ([`crate::secrets`]).
    pub secret: Option<&'a str>,
    pub run_as: Option<RunAs>,
    /// A program's port of its own (`AppConfig::worker_port`).
    pub port: Option<u16>,
    /// Where a program reports ready (`--wait-ready`, [`crate::notify`]).
    pub notify_socket: Option<&'a str>,
    /// The environment workers start from instead of the master's own (`reload
    /// --update-env` gave the caller's); `config.env` still goes on top.
    pub base_env: Option<&'a [(String, String)]>,
}

/// Where a worker's connections come from.
#[derive(Debug, Clone, Copy)]
pub enum Connections {
    Shared {
        listener: RawFd,
    },
    HandedOff {
        socket: RawFd,
    },
    /// A program that serves no port (`--no-listen`, a queue worker).
    Nothing,
}

/// The program and arguments of a worker: the configured command (with `{port}` filled in),
/// or this binary's `serve` (run through [`EXE_FD`]) with the arguments left once the
/// secrets are taken out of them.
fn worker_argv(program: Program<'_>, serve_args: &[String], port: Option<u16>) -> Vec<String> {
    match program {
        Program::External { argv } => match port {
            Some(port) => argv
                .iter()
                .map(|arg| arg.replace("{port}", &port.to_string()))
                .collect(),
            None => argv.to_vec(),
        },
        Program::BuiltIn { .. } => {
            let mut argv = vec![format!("/proc/self/fd/{EXE_FD}"), "serve".into()];
            argv.extend(serve_args.iter().cloned());
            argv
        }
    }
}

/// Starts one worker process.
pub fn spawn_worker(spec: &WorkerSpec<'_>) -> Result<Spawned, SpawnError> {
    let (master_end, worker_end) =
        std::os::unix::net::UnixStream::pair().map_err(SpawnError::Sockets)?;
    // SAFETY: the descriptors of the spec are the master's, open while it starts the worker.
    let borrow = |fd: RawFd| unsafe { BorrowedFd::borrow_raw(fd) };
    // Copies above the target numbers, so the dup2s in the child cannot overwrite each other.
    let connections = match spec.connections {
        Connections::Shared { listener } => Some((listener, LISTEN_FD)),
        Connections::HandedOff { socket } => Some((socket, HANDOFF_FD)),
        Connections::Nothing => None,
    };
    let connections = connections
        .map(|(source, target)| Ok::<_, std::io::Error>((dup_above(borrow(source))?, target)))
        .transpose()
        .map_err(SpawnError::Sockets)?;
    let ipc = dup_above(&worker_end).map_err(SpawnError::Sockets)?;
    drop(worker_end);
    let private = dup_above(borrow(spec.private_socket)).map_err(SpawnError::Sockets)?;
    let program = spec.config.program();
    let exe = if program.is_built_in() {
        // The master's own binary, even if a new version replaced the file on disk since:
        // workers always speak the master's protocol. (`chatctl upgrade` starts a new master
        // from the new file, whose workers are then the new version.)
        let file = std::fs::File::open("/proc/self/exe").map_err(|source| SpawnError::Exec {
            program: "/proc/self/exe".into(),
            source,
        })?;
        Some(dup_above(&file).map_err(SpawnError::Sockets)?)
    } else {
        None
    };

    // The chat's secrets go through a pipe; other programs get their environment as given.
    let (serve_args, env, secrets) = if let Program::BuiltIn { args } = program {
        let mut separated = crate::secrets::separate(args, &spec.config.env, spec.secret);
        // A Redis URL exported to the master reaches the worker the same way, not by
        // inheritance (removed from its environment below).
        if let Ok(url) = std::env::var(crate::secrets::REDIS_URL) {
            separated
                .secrets
                .entry(crate::secrets::REDIS_URL.to_owned())
                .or_insert(url);
        }
        let pipe = crate::secrets::pipe_with(&separated.secrets)
            .and_then(|read| dup_above(&read))
            .map_err(SpawnError::Sockets)?;
        (separated.args, separated.env, Some(pipe))
    } else {
        (Vec::new(), spec.config.env.clone(), None)
    };
    let argv = worker_argv(program, &serve_args, spec.port);
    let mut command = Command::new("/bin/sh");
    if let Some(base) = spec.base_env {
        command
            .env_clear()
            .envs(base.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    command
        .arg("-c")
        .arg(crate::inherited::EXEC_WITH_LISTEN_PID)
        .arg("chatctl-worker")
        .args(&argv)
        .env(IPC_FD_ENV, IPC_FD.to_string())
        .env(WORKER_ID_ENV, spec.worker_id.to_string())
        .env(NODE_ID_ENV, spec.config.node_id.to_string())
        .env(IPC_MAX_LINE_ENV, spec.config.ipc_max_line.to_string())
        .env(PRIVATE_SOCKET_ENV, PRIVATE_FD.to_string())
        .env(PEERS_ENV, spec.peers_token)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // Readiness is the master's to report: a worker must not talk to systemd.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    match spec.connections {
        Connections::Shared { .. } => command
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            .env_remove(HANDOFF_FD_ENV),
        Connections::HandedOff { .. } => command
            .env(HANDOFF_FD_ENV, HANDOFF_FD.to_string())
            .env_remove("LISTEN_FDS"),
        // Not even an inherited LISTEN_FDS of the master's own (systemd socket activation):
        // the program must not take a socket that is not its.
        Connections::Nothing => command
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove(HANDOFF_FD_ENV),
    };
    if let Some(port) = spec.port {
        command.env("PORT", port.to_string());
    }
    if let Some(address) = spec.notify_socket {
        command.env("NOTIFY_SOCKET", address);
    }
    if secrets.is_some() {
        command
            .env(SECRETS_FD_ENV, SECRETS_FD.to_string())
            .env_remove(crate::secrets::CHAT_SECRET)
            .env_remove(crate::secrets::REDIS_URL);
    }
    match &spec.config.cwd {
        Some(cwd) if !program.is_built_in() => command.current_dir(cwd),
        // The chat needs no working directory; `/` is one every user may enter.
        _ => command.current_dir("/"),
    };
    if let Some(user) = spec.run_as {
        command.uid(user.uid).gid(user.gid);
    }
    command.process_group(getpgrp().as_raw());
    let master = getpid();
    // Each copy and the number the worker finds it under, in the order they are dup2'd.
    let inherited: Vec<(OwnedFd, RawFd)> = [
        connections,
        Some((ipc, IPC_FD)),
        Some((private, PRIVATE_FD)),
        exe.map(|fd| (fd, EXE_FD)),
        secrets.map(|fd| (fd, SECRETS_FD)),
    ]
    .into_iter()
    .flatten()
    .collect();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, dup2, _exit), and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            set_pdeathsig(Signal::SIGKILL)?;
            // The master died before prctl took effect: do not live on as an orphan.
            if getppid() != master {
                libc::_exit(1);
            }
            for (source, target) in &inherited {
                // SAFETY: `target` is a number the worker's contract reserves, owned by nothing
                // in the child (whatever it inherited there is replaced); the copy must stay
                // open across exec, so it is forgotten, not closed.
                std::mem::forget(dup2_raw(source, *target)?);
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| SpawnError::Exec {
        program: argv.first().cloned().unwrap_or_default(),
        source,
    })?;
    Ok(Spawned {
        child,
        ipc: master_end,
    })
}

/// Descriptors below this number are the worker's contract (fds 3 to 8); copies are made
/// above it.
const COPIES_FROM: RawFd = 64;

/// `F_DUPFD_CLOEXEC`: a copy of `fd` numbered at least [`COPIES_FROM`], closed on exec.
fn dup_above(fd: impl AsFd) -> std::io::Result<OwnedFd> {
    let copy = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(COPIES_FROM))?;
    // SAFETY: `copy` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Sends `signal` (a `libc` number or a [`Signal`]) to process `pid`. A process that is gone
/// or a number that is no signal is not an error: there is nothing left to stop.
pub fn signal(pid: u32, signal: impl TryInto<Signal>) {
    let (Ok(pid), Ok(signal)) = (i32::try_from(pid), signal.try_into()) else {
        return;
    };
    let _ = kill(Pid::from_raw(pid), signal);
}
