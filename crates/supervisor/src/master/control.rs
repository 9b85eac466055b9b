//! The control socket's requests, the master's own signals, and readiness for systemd.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::state::{Proc, State};
use super::{update, Inner};
use crate::config::Scheduling;
use crate::control::{AppStatus, Request, Response, SpareStatus, WorkerStatus};
use crate::ipc::{message_lines, read_message, write_message};
use crate::procstat::rss_bytes;
use sticky::route_tag::{self, Owner};

impl Inner {
    pub(super) fn status(&self) -> AppStatus {
        let state = self.lock();
        let workers = state
            .slots
            .iter()
            .filter(|slot| !slot.retired)
            .map(|slot| {
                let proc = slot.current.as_ref();
                WorkerStatus {
                    id: slot.id,
                    pid: proc.map(|p| p.pid),
                    status: slot.status,
                    uptime_ms: proc.map_or(0, |p| p.started.elapsed().as_millis() as u64),
                    restarts: slot.restarts,
                    cpu_percent: proc.map_or(0.0, |p| p.cpu.percent),
                    memory_bytes: proc.map_or(0, |p| {
                        if p.memory > 0 {
                            p.memory
                        } else {
                            rss_bytes(p.pid).unwrap_or(0)
                        }
                    }),
                    connections: proc.map_or(0, |p| p.connections),
                    sid_tag: proc.map(|p| {
                        route_tag::encode(Owner {
                            node: state.config.node_id,
                            slot: p.worker_id,
                        })
                    }),
                    last_error: slot.last_error.clone(),
                    dropped: proc.map(dropped_by).unwrap_or_default(),
                    recovery: proc.map(|p| p.stats.recovery.clone()).unwrap_or_default(),
                }
            })
            .collect();
        AppStatus {
            name: state.config.name.clone(),
            master_pid: std::process::id(),
            version: self.version.clone(),
            listen: match &self.listener {
                Some(listener) => listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                None => "none".into(),
            },
            scheduling: if state.config.capabilities().takes_handoff {
                state.config.scheduling.to_string()
            } else {
                Scheduling::Shared.to_string()
            },
            uptime_ms: self.started.elapsed().as_millis() as u64,
            workers,
            spares: state
                .spares
                .iter()
                .filter(|p| p.epoch == state.epoch)
                .map(|p| SpareStatus {
                    pid: p.pid,
                    ready: p.ready,
                    uptime_ms: p.started.elapsed().as_millis() as u64,
                })
                .collect(),
            recovery: self.service.get().and_then(|service| service.status()),
            bridge_dropped: self.bridge_drops.snapshot(),
        }
    }

    pub(super) async fn serve_control(self: Arc<Self>, stream: UnixStream) {
        let (read, write) = stream.into_split();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        // Requests are a few words; the socket is the owner's alone, but a bound costs nothing.
        // A reload carries the app's settings and maybe the caller's environment.
        let mut lines = message_lines(read, 1 << 20);
        let Ok(request) = read_message::<Request, _>(&mut lines).await else {
            return;
        };
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<String>();
        let forward = {
            let write = write.clone();
            tokio::spawn(async move {
                while let Some(line) = progress_rx.recv().await {
                    let mut write = write.lock().await;
                    let _ = write_message(&mut *write, &Response::Progress { line }).await;
                }
            })
        };
        let progress = move |line: String| {
            tracing::info!("{line}");
            let _ = progress_tx.send(line);
        };
        // Once a stop is answered, the master exits; once an upgrade is, it stops.
        let mut stops = matches!(request, Request::Stop);
        let mut upgraded = false;
        let answer = match request {
            Request::Status => Response::Status(self.status()),
            Request::Reload { config, env } => {
                let update = update::Update {
                    config: config.map(|config| *config),
                    env,
                };
                done(self.reload_with(update, &progress).await)
            }
            Request::Restart => done(self.restart(&progress).await),
            Request::Scale { instances } => done(self.scale(instances).await),
            Request::Signal { signal, worker } => done(self.send_signal(signal, worker)),
            Request::Upgrade { binary, timeout_ms } => {
                let timeout = timeout_ms.map(Duration::from_millis);
                let result = self.upgrade(binary, timeout, &progress).await;
                upgraded = result.is_ok();
                done(result)
            }
            Request::Stop => {
                self.stop().await;
                Response::Done {
                    message: "stopped".into(),
                }
            }
        };
        drop(progress);
        let _ = forward.await;
        {
            let mut write = write.lock().await;
            let _ = write_message(&mut *write, &answer).await;
            let _ = write.flush().await;
        }
        if upgraded {
            // The new master serves; this one's workers drain as on `stop`, once what it
            // accepted is theirs.
            self.finish_dispatching().await;
            self.stop().await;
            stops = true;
        }
        if stops {
            self.finish();
        }
    }

    pub(super) async fn notify_when_online(self: Arc<Self>, on_online: impl FnOnce()) {
        if self
            .wait_until(Duration::from_secs(24 * 3600), State::all_online)
            .await
        {
            on_online();
        }
    }
}

/// Every message lost to or by a worker process, by cause: what the master dropped on its
/// behalf and what it reported dropping itself.
pub(super) fn dropped_by(proc: &Proc) -> BTreeMap<String, u64> {
    let mut dropped = proc.drops.snapshot();
    crate::drops::merge(&mut dropped, &proc.reported_drops);
    dropped
}

pub(super) fn done(result: Result<String, String>) -> Response {
    match result {
        Ok(message) => Response::Done { message },
        Err(message) => Response::Error { message },
    }
}
