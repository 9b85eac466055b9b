//! What every test of the workspace shares. A dev-dependency only: nothing here ships.
//!
//! - [`port`]: a loopback port that no other test, script or outgoing connection can take
//!   while this test process runs.
//! - [`wait`]: waiting for conditions with deadlines, never for fixed times.
//! - [`redis`]: `redis-server` standalone and as a cluster.
//! - [`prometheus`]: a Prometheus server scraping a test's targets, queried over its API.
//! - [`clients`]: finding `node` and the Python venv, and running a client program under a
//!   deadline.
//! - [`engineio`]: a raw Engine.IO client over a websocket.
//! - [`http`]: one plain HTTP GET.
//! - [`browser`]: chromium with playwright-core, and a folder for screenshots.
//! - [`BackgroundServer`]: a server under test in a runtime of its own, for a client program.

pub mod browser;
pub mod clients;
pub mod engineio;
pub mod http;
mod ports;
pub mod prometheus;
pub mod redis;
mod server;
pub mod wait;

pub use ports::port;
pub use server::BackgroundServer;
pub use wait::{poll_until, wait_until, within};
