//! The operations `chatctl` asks of a running app, one file each.

mod reload;
mod replace;
mod restart;
mod scale;
mod signal;
mod stop;
