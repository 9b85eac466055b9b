//! What every test of the workspace shares. A dev-dependency only: nothing here ships.
//!
//! - [`port`]: a loopback port that no other test, script or outgoing connection can take
//!   while this test process runs.
//! - [`wait`]: waiting for conditions with deadlines, never for fixed times.
//! - [`redis`]: `redis-server` standalone and as a cluster.
//! - [`clients`]: finding `node` and the Python venv, and running a client program under a
//!   deadline.
//! - [`engineio`]: a raw Engine.IO client over a websocket.
//! - [`BackgroundServer`]: a server under test in a runtime of its own, for a client program.

pub mod clients;
pub mod engineio;
mod ports;
pub mod redis;
mod server;
pub mod wait;

pub use ports::port;
pub use server::BackgroundServer;
pub use wait::{poll_until, wait_until, within};
