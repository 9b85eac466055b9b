//! Health: every interval each worker is pinged over IPC and probed over HTTP (the chat on its
//! private socket, a program on its own port), its CPU and memory sampled; a worker that misses
//! `max_misses` probes in a row is killed, one above `--max-memory` replaced.

use std::sync::Arc;

use super::state::{Event, Phase};
use super::{Inner, ProbeTarget};
use crate::handoff;
use crate::ipc::ToWorker;

impl Inner {
    /// Probes every worker each interval: IPC ping, HTTP `/healthz` on its private socket, and
    /// its CPU and memory. A worker that misses `max_misses` probes in a row is killed.
    pub(super) async fn health_loop(self: Arc<Self>) {
        loop {
            let (health, max_memory, health_endpoint) = {
                let state = self.lock();
                (
                    state.config.health.clone(),
                    state.config.max_memory,
                    state.config.capabilities().health_endpoint,
                )
            };
            tokio::time::sleep(health.interval).await;
            let probes_programs = health.url.is_some() || health.tcp;
            let mut probes = Vec::new();
            let mut over_memory = Vec::new();
            {
                let mut state = self.lock();
                if state.phase != Phase::Running {
                    return;
                }
                let seq = state.next_ping;
                state.next_ping += 1;
                for slot in state.slots.iter_mut() {
                    let slot_id = slot.id;
                    for proc in slot.procs_mut() {
                        proc.memory = proc.cpu.sample(proc.pid).unwrap_or(0);
                    }
                    let Some(proc) = slot.current.as_mut() else {
                        continue;
                    };
                    if max_memory.is_some_and(|max| proc.memory > max) {
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
                tokio::spawn(self.clone().probe(target, health.clone(), health_endpoint));
            }
            for (slot, memory) in over_memory {
                self.apply(Event::MemoryExceeded { slot, memory });
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
        let timeout = health.timeout;
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
        self.apply(Event::Probed {
            generation,
            healthy: http_ok && pong_ok,
        });
    }
}

/// `GET /healthz` over a worker's private socket.
pub(super) async fn http_health(token: &str, worker_id: u16) -> std::io::Result<bool> {
    let mut stream = handoff::connect_private(token, worker_id, std::process::id()).await?;
    sticky::probe::get_succeeds(&mut stream, "worker", "/healthz").await
}
