//! Health: every interval each worker is pinged over IPC and probed over HTTP (the chat on its
//! private socket, a program on its own port), its CPU and memory sampled; a worker that misses
//! `max_misses` probes in a row is killed, one above `--max-memory` replaced.

use super::*;

impl Inner {
    /// Probes every worker each interval: IPC ping, HTTP `/healthz` on its private socket, and
    /// its CPU and memory. A worker that misses `max_misses` probes in a row is killed.
    pub(super) async fn health_loop(self: Arc<Self>) {
        loop {
            let (health, max_memory, runs_chat) = {
                let state = self.lock();
                (
                    state.config.health.clone(),
                    state.config.max_memory,
                    state.config.runs_chat(),
                )
            };
            tokio::time::sleep(health.interval).await;
            let probes_programs = health.url.is_some() || health.tcp;
            let mut probes = Vec::new();
            let mut over_memory = Vec::new();
            {
                let mut state = self.lock();
                if state.stopping {
                    return;
                }
                let seq = state.next_ping;
                state.next_ping += 1;
                for slot in state.slots.iter_mut() {
                    let slot_id = slot.id;
                    let replacing = slot.replacing;
                    for proc in slot.procs_mut() {
                        proc.cpu.sample(proc.pid);
                        proc.memory = rss_bytes(proc.pid).unwrap_or(0);
                    }
                    let Some(proc) = slot.current.as_mut() else {
                        continue;
                    };
                    if max_memory.is_some_and(|max| proc.memory > max) && !replacing {
                        over_memory.push((slot_id, proc.memory));
                    }
                    if proc.ready && proc.speaks_ipc {
                        let _ = proc.ipc.control(&ToWorker::Ping { seq });
                        probes.push(ProbeTarget {
                            slot_id,
                            generation: proc.generation,
                            seq,
                            worker_id: proc.worker_id,
                            program_port: None,
                        });
                    } else if let Some(port) = proc.port.filter(|_| proc.ready && probes_programs) {
                        probes.push(ProbeTarget {
                            slot_id,
                            generation: proc.generation,
                            seq,
                            worker_id: proc.worker_id,
                            program_port: Some(port),
                        });
                    }
                }
            }
            for target in probes {
                tokio::spawn(self.clone().probe(target, health.clone(), runs_chat));
            }
            for (slot_id, memory) in over_memory {
                tracing::warn!(
                    worker = slot_id,
                    memory,
                    "worker above --max-memory: replacing it"
                );
                let inner = self.clone();
                tokio::spawn(async move {
                    if let Err(error) = inner.replace(slot_id, &|_| {}).await {
                        tracing::error!(worker = slot_id, %error, "memory replacement failed");
                    }
                });
            }
        }
    }

    pub(super) async fn probe(
        self: Arc<Self>,
        target: ProbeTarget,
        health: crate::HealthConfig,
        http: bool,
    ) {
        let ProbeTarget {
            slot_id,
            generation,
            seq,
            worker_id,
            program_port,
        } = target;
        let (timeout, max_misses) = (health.timeout, health.max_misses);
        let program_ok = async {
            let Some(port) = program_port else {
                return true;
            };
            let address = format!("127.0.0.1:{port}");
            let probe = sticky::probe::check(&address, health.url.as_deref());
            matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)))
        };
        let http_ok = async {
            if !http || program_port.is_some() {
                return true;
            }
            matches!(
                tokio::time::timeout(timeout, http_health(&self.peers_token, worker_id)).await,
                Ok(Ok(true))
            )
        };
        let pong_ok = async {
            // A program probed on its port may not speak IPC at all.
            program_port.is_some()
                || self
                    .wait_until(timeout, |state| {
                        state.slots[slot_id]
                            .find(generation)
                            .is_none_or(|p| p.last_pong >= seq)
                    })
                    .await
        };
        let (http_ok, pong_ok, program_ok) = tokio::join!(http_ok, pong_ok, program_ok);
        let http_ok = http_ok && program_ok;
        let kill = {
            let mut state = self.lock();
            let Some(proc) = state.slots[slot_id].find_mut(generation) else {
                return;
            };
            if http_ok && pong_ok {
                proc.misses = 0;
                None
            } else {
                proc.misses += 1;
                (proc.misses >= max_misses).then_some(proc.misses)
            }
        };
        if let Some(misses) = kill {
            if let Some(pid) = self.kill_tracked(generation) {
                tracing::error!(
                    worker = slot_id,
                    pid,
                    misses,
                    "worker missed {misses} health probes (hung?): killed it, a new one replaces it"
                );
            }
        }
    }
}

/// `GET /healthz` over a worker's private socket.
pub(super) async fn http_health(token: &str, worker_id: u16) -> std::io::Result<bool> {
    let mut stream = handoff::connect_private(token, worker_id, std::process::id()).await?;
    sticky::probe::get_succeeds(&mut stream, "worker", "/healthz").await
}
