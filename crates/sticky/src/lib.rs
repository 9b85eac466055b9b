//! Sticky routing (DESIGN §3, §5): every rule that decides which process a request belongs
//! to, and the sticky reverse proxy built on them. Every Engine.IO sid starts with the tag of
//! the node and worker that opened it ([`route_tag`]), so each request of a session goes back
//! to its owner with no shared table: the master peeks at a connection's request line
//! ([`dispatch`]) and hands it to that worker; a worker passes a request for another worker's
//! session on; the proxy sends it to that node. Handshakes and pages go to any healthy worker
//! or node. The crate knows nothing of the supervisor, which uses it.
//!
//! The proxy ([`Proxy`]) tunnels websockets end to end once the backend switches protocols.
//! Under a supervisor it serves on the socket it inherits (`LISTEN_FDS`).

pub mod dispatch;
pub mod listen;
pub mod page_headers;
pub mod probe;
pub mod route_tag;
pub mod sid;

mod activity;
mod backends;
mod body_deadline;
mod config;
mod error;
mod forward;
mod health;
mod proxy;

pub use backends::HealthSnapshot;
pub use config::{BackendSpec, Policy, ProxyConfig};
pub use error::Error;
pub use proxy::Proxy;
