//! `chatctl upgrade`: both sides of handing the app to a master started from a new executable
//! (the protocol is in [`crate::upgrade`]). The listening socket stays open throughout: the
//! old master accepts until the new one has every worker online and takes the app over, the
//! new one from then on; connections that arrive in between wait in the socket's queue.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::state::{Phase, State};
use super::{Files, Inner};
use crate::ipc::{message_lines, read_message, write_message};
use crate::outbox::Outbox;
use crate::upgrade::{
    check_binary, commit_files, spawn_successor, FromSuccessor, Peers, Successor, ToSuccessor,
    MAX_LINE,
};

/// How long the new master has to take the old one's state once it is asked to.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Generations the old master may still start (restarts) while the new master starts: the
/// new one's begin after them, so no two workers of the app share a worker id (and a session
/// id's route) while both masters run.
const GENERATION_MARGIN: u64 = 64;

/// The new master once it said it is ready.
struct ReadySuccessor {
    pid: u32,
    version: String,
    peers: Peers,
}

impl Inner {
    /// The old master's side: starts the new master, waits for its workers, hands it the app.
    /// On any failure the new master is killed and this one goes on serving. On success, the
    /// caller stops this master (its workers drain) once the answer is sent.
    pub(super) async fn upgrade(
        self: &Arc<Self>,
        binary: Option<PathBuf>,
        timeout: Option<Duration>,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let own = std::process::id();
        let keeps = |reason: String| {
            format!(
                "upgrade failed: {reason}; the app keeps running on master {own} ({})",
                self.version
            )
        };
        let binary = binary.or_else(|| self.binary.clone()).ok_or_else(|| {
            keeps(
                "this master cannot tell which file it was started from: pass --binary PATH".into(),
            )
        })?;
        check_binary(&binary).map_err(|error| keeps(error.to_string()))?;
        if self.lock().phase != Phase::Running {
            return Err(keeps("the app is stopping".into()));
        }
        self.wait_for_predecessor(progress).await.map_err(keeps)?;
        if self.upgrading.swap(true, Ordering::AcqRel) {
            return Err(keeps("another upgrade is under way".into()));
        }
        let result = self.hand_to_successor(&binary, timeout, progress).await;
        if result.is_err() {
            self.upgrading.store(false, Ordering::Release);
        }
        result.map_err(keeps)
    }

    /// Right after an upgrade, the previous master may still drain its workers over the
    /// bridge to this one: the next upgrade waits for it to exit (one bridge at a time).
    async fn wait_for_predecessor(&self, progress: &(dyn Fn(String) + Sync)) -> Result<(), String> {
        let mut draining = self.predecessor_draining.subscribe();
        if !*draining.borrow() {
            return Ok(());
        }
        let wait = {
            let config = &self.lock().config;
            config.drain_timeout
                + config.peek_timeout
                + config.handoff_timeout
                + Duration::from_secs(10)
        };
        progress("the previous master still drains its workers: waiting for it to exit".into());
        let exited = tokio::time::timeout(wait, draining.wait_for(|draining| !draining))
            .await
            .is_ok();
        if exited {
            return Ok(());
        }
        Err(format!(
            "the previous master still drains its workers after {wait:?}: try again once it exited"
        ))
    }

    async fn hand_to_successor(
        self: &Arc<Self>,
        binary: &std::path::Path,
        timeout: Option<Duration>,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let (config, first_generation, workers_env) = {
            let state = self.lock();
            (
                state.config.clone(),
                state.next_generation + GENERATION_MARGIN,
                state.base_env.clone(),
            )
        };
        // The new master reads the app's settings from its definition: the ones running now
        // (a reload with flags may have changed them since start).
        let json = serde_json::to_vec_pretty(&config).unwrap_or_default();
        std::fs::write(&self.paths.config, json)
            .map_err(|e| format!("cannot write {}: {e}", self.paths.config.display()))?;
        let timeout = timeout.unwrap_or(config.ready_timeout + Duration::from_secs(10));
        let stderr_before = std::fs::metadata(&self.paths.master_stderr)
            .map(|m| m.len())
            .unwrap_or(0);
        let admin = self.admin_listener.get();
        let (mut child, channel) = spawn_successor(&Successor {
            binary,
            app: &config.name,
            listener: self.listener.as_ref(),
            admin,
            first_generation,
            stderr: &self.paths.master_stderr,
            workers_env: workers_env.as_deref(),
        })
        .map_err(|e| e.to_string())?;
        let pid = child.id().unwrap_or(0);
        progress(format!(
            "new master {pid} started from {}; waiting up to {timeout:?} for its {} workers",
            binary.display(),
            config.instances
        ));
        let channel = channel
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(channel))
            .map_err(|e| format!("cannot talk to the new master: {e}"));
        let handed = match channel {
            Ok(channel) => {
                let (read, write) = channel.into_split();
                let mut lines = message_lines(read, MAX_LINE);
                let ready = tokio::time::timeout(timeout, async {
                    let heard = tokio::select! {
                        heard = read_message::<FromSuccessor, _>(&mut lines) => heard.ok(),
                        _ = child.wait() => None,
                    };
                    match heard {
                        Some(FromSuccessor::Ready { pid, version, peers }) => {
                            Ok(ReadySuccessor { pid, version, peers })
                        }
                        Some(FromSuccessor::Failed { message }) => {
                            Err(format!("the new master refused to start: {message}"))
                        }
                        Some(other) => Err(format!("the new master said {other:?} out of turn")),
                        None => Err(self.successor_exit(&mut child, stderr_before).await),
                    }
                })
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "the new master's workers were not all online within {timeout:?} (see `chatctl logs {}`; give more with --timeout)",
                        config.name
                    ))
                });
                match ready {
                    Ok(ready) => self.take_over_by(ready, lines, write, progress).await,
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        if handed.is_err() {
            // The new master and every worker it started are in its process group.
            if let Ok(group) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(group),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            let _ = std::fs::remove_file(&self.paths.control_next);
        }
        handed
    }

    /// Once the new master is ready: stop accepting, hand it the service's state (and from
    /// then on what the workers send the service: see [`super::bridge`]), point the app's
    /// files at it. Undone (accepting again) if it does not take over.
    async fn take_over_by(
        self: &Arc<Self>,
        ready: ReadySuccessor,
        mut lines: crate::lines::BoundedLines<
            tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        >,
        mut write: tokio::net::unix::OwnedWriteHalf,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let ReadySuccessor {
            pid,
            version,
            peers,
        } = ready;
        progress(format!(
            "new master {pid} ({version}) has {} workers online; handing over",
            peers.worker_ids.len()
        ));
        self.accepting.send_replace(false);
        let (service, workers, bridge) = self.open_bridge();
        let took_over = tokio::time::timeout(TAKE_OVER_TIMEOUT, async {
            let take_over = ToSuccessor::TakeOver {
                service,
                workers,
                old_master: Some((std::process::id(), self.peers())),
            };
            write_message(&mut write, &take_over)
                .await
                .map_err(|e| format!("cannot reach the new master: {e}"))?;
            match read_message::<FromSuccessor, _>(&mut lines).await {
                Ok(FromSuccessor::TookOver) => Ok(()),
                Ok(FromSuccessor::Failed { message }) => {
                    Err(format!("the new master refused the hand-over: {message}"))
                }
                Ok(other) => Err(format!("the new master said {other:?} out of turn")),
                Err(_) => Err("the new master went away while taking over".to_owned()),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the new master did not take over within {TAKE_OVER_TIMEOUT:?}"
            ))
        })
        .and_then(|()| {
            commit_files(&self.paths, pid).map_err(|e| {
                format!(
                    "cannot point {} at the new master: {e}",
                    self.paths.control.display()
                )
            })
        });
        if let Err(error) = took_over {
            self.close_bridge(&bridge);
            self.accepting.send_replace(true);
            tokio::spawn(self.clone().dispatch_loop());
            return Err(error);
        }
        self.set_files(Files::HandedOver);
        self.clone().run_bridge_to_successor(lines, write, bridge);
        self.introduce_other_master(pid, peers.clone());

        // Under systemd, the new master is the service's main process from now on.
        crate::client::sd_notify(&format!("MAINPID={pid}"));
        let adopters = self.hand_sessions_to(pid, &peers);
        let draining = self.lock().slots.iter().filter(|s| !s.retired).count();
        self.observer.record(
            "upgrade",
            None,
            None,
            format!("master {pid} ({version}) took over"),
        );
        Ok(format!(
            "upgraded: master {pid} ({version}) serves the app; this master ({}) hands the live sessions of its {draining} workers to the new master's {adopters} workers and exits",
            std::process::id()
        ))
    }

    /// Once handed over, before its workers drain: waits until the connections this master
    /// accepted are routed (a slow client's request line may still be on its way), so they go
    /// to its workers, not to a 503. Bounded by the peek and hand-off timeouts.
    pub(super) async fn finish_dispatching(&self) {
        let (peek, handoff) = {
            let config = &self.lock().config;
            (config.peek_timeout, config.handoff_timeout)
        };
        self.dispatching.close();
        if tokio::time::timeout(peek + handoff, self.dispatching.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections accepted before the upgrade were not routed in time");
        }
    }

    /// Live hand-off across an upgrade: the new master (`successor`, pid) named its workers in
    /// `peers` (the private-socket token, never in argv or the environment, and their worker
    /// ids). As this master stops, each of its workers hands its websocket sessions (their
    /// descriptors, unparsed bytes and state) to one of them in turn, instead of draining;
    /// long-polling sessions drain, since the new master does not route this one's session
    /// ids. Returns how many workers will adopt.
    fn hand_sessions_to(&self, successor: u32, peers: &Peers) -> usize {
        let adopters: Vec<_> = peers
            .worker_ids
            .iter()
            .filter_map(|id| {
                crate::adoption::Adopter::worker(&peers.token, *id, successor, false)
                    .map_err(|error| tracing::warn!(%error, worker = id, "cannot address a new worker: its share drains"))
                    .ok()
            })
            .collect();
        let count = adopters.len();
        if let Ok(mut successor_workers) = self.successor_workers.lock() {
            *successor_workers = adopters;
        }
        count
    }

    /// Why the new master ended before it was ready: its exit, and its last words on stderr.
    async fn successor_exit(
        &self,
        child: &mut tokio::process::Child,
        stderr_before: u64,
    ) -> String {
        let exit = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) => super::lifecycle::describe_exit(status),
            _ => "closed its channel".to_owned(),
        };
        let said = std::fs::read(&self.paths.master_stderr)
            .ok()
            .and_then(|bytes| {
                let start = usize::try_from(stderr_before).ok()?.min(bytes.len());
                let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
                text.lines()
                    .map(str::trim)
                    .rfind(|line| !line.is_empty())
                    .map(str::to_owned)
            });
        match said {
            Some(line) => format!("the new master {exit} before its workers were online: {line}"),
            None => format!("the new master {exit} before its workers were online"),
        }
    }

    /// The new master's side: once every worker is online, tells the old master so (with what
    /// a hand-off to its workers needs), takes what its service kept, and owns the app. If the
    /// old master gives the upgrade up (or dies) first, this master stops.
    pub(super) async fn succeed(self: Arc<Self>, channel: std::os::unix::net::UnixStream) {
        let channel = match channel
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(channel))
        {
            Ok(channel) => channel,
            Err(error) => {
                tracing::error!(%error, "cannot talk to the old master: stopping");
                self.stop().await;
                self.finish();
                return;
            }
        };
        let (read, mut write) = channel.into_split();
        let mut lines = message_lines(read, MAX_LINE);
        // The old master's deadline bounds this wait: it kills this master when it passes.
        self.wait_until(Duration::from_secs(24 * 3600), State::all_online)
            .await;
        let ready = FromSuccessor::Ready {
            pid: std::process::id(),
            version: self.version.clone(),
            peers: self.peers(),
        };
        let took_over = async {
            write_message(&mut write, &ready).await.ok()?;
            let ToSuccessor::TakeOver {
                service,
                workers,
                old_master,
            } = read_message::<ToSuccessor, _>(&mut lines).await.ok()?;
            let old_workers = Outbox::new(self.lock().config.ipc_queue_size);
            let taken = {
                // Under the state lock, as events are numbered: from the first number of the
                // old log on, every numbered event goes to the old master's workers too,
                // queued behind `took_over`.
                let _numbering = self.lock();
                let taken = match (service, self.service.get()) {
                    (Some(kept), Some(service)) => service.take_over(kept),
                    _ => Ok(String::new()),
                };
                if taken.is_ok() {
                    let _ = self.old_workers.set(old_workers.clone());
                }
                taken
            };
            match taken {
                Ok(taken) => tracing::info!("took over the old master's service: {taken}"),
                Err(message) => {
                    tracing::error!("cannot take the old master's state: {message}");
                    let _ = write_message(&mut write, &FromSuccessor::Failed { message }).await;
                    return None;
                }
            }
            self.set_files(Files::Owned);
            self.upgrading.store(false, Ordering::Release);
            // The old master accepts no more: the connections queued are this one's.
            self.accepting.send_replace(true);
            write_message(&mut write, &FromSuccessor::TookOver)
                .await
                .ok()?;
            Some((old_workers, workers, old_master))
        };
        if let Some((old_workers, workers, old_master)) = took_over.await {
            if let Some((pid, peers)) = old_master {
                self.introduce_other_master(pid, peers);
            }
            tracing::info!(version = %self.version, "took over from the old master");
            self.serve_old_workers(lines, write, old_workers, workers)
                .await;
            return;
        }
        tracing::error!("the old master gave the upgrade up: stopping");
        self.stop().await;
        self.finish();
    }
}
