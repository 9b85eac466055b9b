//! What every test of the workspace shares. A dev-dependency only: nothing here ships.
//!
//! - [`port`]: a loopback port that no other test, script or outgoing connection can take
//!   while this test process runs.

mod ports;

pub use ports::port;
