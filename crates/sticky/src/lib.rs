//! A sticky reverse proxy for several chat hosts (DESIGN §5). Every Engine.IO sid starts with
//! the tag of the node that opened it (`supervisor::route_tag`), so each request of a session
//! goes back to its node with no shared table; handshakes and pages go to a healthy node by
//! policy. Websockets are tunnelled end to end once the backend switches protocols. Under a
//! supervisor the proxy serves on the socket it inherits (`LISTEN_FDS`).

mod activity;
mod backends;
mod body_deadline;
mod config;
mod error;
mod forward;
mod health;
mod listener;
mod proxy;

pub use backends::HealthSnapshot;
pub use config::{BackendSpec, Policy, ProxyConfig};
pub use error::Error;
pub use proxy::Proxy;
