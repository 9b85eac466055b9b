//! The backends, their health and load, and the routing rule: a sid goes to the node its tag
//! names; anything else goes to a healthy backend by policy.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{BackendSpec, Policy};
use crate::{route_tag, sid};

/// One host and what the proxy knows about it.
#[derive(Debug)]
pub struct Backend {
    pub spec: BackendSpec,
    /// Cleared after `health_misses` failed probes in a row: the backend then gets no new
    /// handshakes, while requests of its own sessions are still tried (the mark may be stale).
    healthy: AtomicBool,
    misses: AtomicU32,
    /// Proxied requests and tunnels open now, for least-conn.
    open: AtomicUsize,
}

impl Backend {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Counts one proxied connection towards its backend's load until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Backend>);

impl OpenConnection {
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(backend)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Health of each node, in the order of the configuration: `(node, healthy)`.
pub type HealthSnapshot = Vec<(u16, bool)>;

/// All backends, shared by every connection task and the health checker.
#[derive(Debug)]
pub struct Backends {
    list: Vec<Arc<Backend>>,
    policy: Policy,
    /// Where round-robin goes next.
    next: AtomicUsize,
    /// Published on every health change, so tests and logs see transitions without polling.
    health: watch::Sender<HealthSnapshot>,
}

impl Backends {
    /// Every backend starts healthy: the first probe runs at once and corrects it.
    pub fn new(specs: Vec<BackendSpec>, policy: Policy) -> Self {
        let list: Vec<Arc<Backend>> = specs
            .into_iter()
            .map(|spec| {
                Arc::new(Backend {
                    spec,
                    healthy: AtomicBool::new(true),
                    misses: AtomicU32::new(0),
                    open: AtomicUsize::new(0),
                })
            })
            .collect();
        let (health, _) = watch::channel(list.iter().map(|b| (b.spec.node, true)).collect());
        Backends {
            list,
            policy,
            next: AtomicUsize::new(0),
            health,
        }
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.list
    }

    pub fn health(&self) -> watch::Receiver<HealthSnapshot> {
        self.health.subscribe()
    }

    /// The backend of the node named by the sid of a request (its `sid` query parameter, or
    /// the sid in a Socket.IO 0.9 transport path), healthy or not (the
    /// mark may be stale, and no other node knows the session). `None` for no sid, or one that
    /// names no node of ours: any healthy backend answers those ([`Backends::pick_healthy_except`]),
    /// with "Session ID unknown" for a sid, which makes the client open a new session.
    pub fn owner(&self, path: &str, query: Option<&str>) -> Option<Arc<Backend>> {
        let owner = route_tag::decode(sid::of_request(path, query)?)?;
        self.list
            .iter()
            .find(|b| b.spec.node == owner.node)
            .cloned()
    }

    /// A healthy backend by policy, other than the nodes in `excluded` (which refused this
    /// request already); `None` when there is none.
    pub fn pick_healthy_except(&self, excluded: &[u16]) -> Option<Arc<Backend>> {
        let healthy = self
            .list
            .iter()
            .filter(|b| b.is_healthy() && !excluded.contains(&b.spec.node));
        match self.policy {
            Policy::LeastConn => healthy.min_by_key(|b| b.open_connections()).cloned(),
            Policy::RoundRobin => {
                let healthy: Vec<_> = healthy.collect();
                if healthy.is_empty() {
                    return None;
                }
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                Some(healthy[turn % healthy.len()].clone())
            }
        }
    }

    /// Records one probe result; `misses` failed probes in a row mark the backend down, one
    /// success marks it up.
    pub fn record_probe(&self, backend: &Backend, passed: bool, misses: u32) {
        let was = backend.is_healthy();
        let now = if passed {
            backend.misses.store(0, Ordering::Release);
            true
        } else {
            let missed = backend
                .misses
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1);
            was && missed < misses
        };
        if was != now {
            backend.healthy.store(now, Ordering::Release);
            if now {
                tracing::info!(backend = %backend.spec.address, node = backend.spec.node, "backend healthy again");
            } else {
                tracing::warn!(backend = %backend.spec.address, node = backend.spec.node, "backend down: no new sessions go to it");
            }
            self.health.send_replace(
                self.list
                    .iter()
                    .map(|b| (b.spec.node, b.is_healthy()))
                    .collect(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_tag::{encode, Owner};

    /// What the forwarder does before any backend refuses.
    fn route(backends: &Backends, query: Option<&str>) -> Option<Arc<Backend>> {
        backends
            .owner("/socket.io/", query)
            .or_else(|| backends.pick_healthy_except(&[]))
    }

    fn two_nodes(policy: Policy) -> Backends {
        Backends::new(
            vec![
                "a:1=1".parse().expect("valid spec"),
                "b:2=2".parse().expect("valid spec"),
            ],
            policy,
        )
    }

    #[test]
    fn a_sid_goes_to_the_node_its_tag_names_even_when_marked_down() {
        let backends = two_nodes(Policy::RoundRobin);
        let sid = format!("{}rest", encode(Owner { node: 2, slot: 3 }));
        backends.record_probe(&backends.all()[1].clone(), false, 1);
        for _ in 0..4 {
            let query = format!("EIO=4&transport=polling&sid={sid}");
            assert_eq!(route(&backends, Some(&query)).map(|b| b.spec.node), Some(2));
            // Socket.IO 0.9 clients carry the sid in the path.
            let path = format!("/socket.io/1/xhr-polling/{sid}");
            let owner = backends.owner(&path, Some("t=1")).map(|b| b.spec.node);
            assert_eq!(owner, Some(2));
        }
    }

    #[test]
    fn handshakes_skip_down_backends_and_unknown_sids_go_anywhere_healthy() {
        let backends = two_nodes(Policy::RoundRobin);
        let first = backends.all()[0].clone();
        backends.record_probe(&first, false, 2);
        assert!(first.is_healthy(), "one miss of two keeps it up");
        backends.record_probe(&first, false, 2);
        assert!(!first.is_healthy());
        for _ in 0..4 {
            assert_eq!(
                route(&backends, Some("EIO=4")).map(|b| b.spec.node),
                Some(2)
            );
            let unknown = format!("sid={}x", encode(Owner { node: 9, slot: 0 }));
            assert_eq!(
                route(&backends, Some(&unknown)).map(|b| b.spec.node),
                Some(2)
            );
            assert_eq!(
                route(&backends, Some("sid=%%")).map(|b| b.spec.node),
                Some(2)
            );
        }
        backends.record_probe(&first, true, 2);
        assert!(first.is_healthy());
    }

    #[test]
    fn a_backend_that_refused_is_not_picked_again() {
        for policy in [Policy::LeastConn, Policy::RoundRobin] {
            let backends = two_nodes(policy);
            for _ in 0..4 {
                let picked = backends.pick_healthy_except(&[1]);
                assert_eq!(picked.map(|b| b.spec.node), Some(2));
            }
            assert!(backends.pick_healthy_except(&[1, 2]).is_none());
        }
    }

    #[test]
    fn least_conn_prefers_the_emptier_backend() {
        let backends = two_nodes(Policy::LeastConn);
        let _held = OpenConnection::new(backends.all()[0].clone());
        assert_eq!(route(&backends, None).map(|b| b.spec.node), Some(2));
    }
}
