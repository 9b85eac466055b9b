//! The chatctl master (DESIGN §3, §8): one worker per CPU on a shared listening socket, crash
//! restarts with backoff, health checks, rolling reloads, memory limits, logs, and the control
//! socket the CLI talks to. Works for our chat workers and for any program that takes its
//! socket from `LISTEN_FDS`.

pub mod adoption;
pub mod backoff;
pub mod client;
pub mod config;
pub mod control;
pub mod drops;
pub mod handoff;
pub mod hooks;
pub mod inherited;
pub mod ipc;
pub mod limits;
pub mod lines;
pub mod logs;
pub mod master;
mod millis;
pub mod notify;
pub mod outbox;
pub mod paths;
pub mod pm2;
pub mod procstat;
pub mod program;
pub mod secrets;
pub mod signals;
pub mod spawn;
pub mod startup;
pub mod timestamp;
pub mod triggers;
pub mod upgrade;
pub mod version;
pub mod worker_stats;

pub use config::{
    AdminConfig, AppConfig, ConfigError, ConfigFile, HealthConfig, RestartPolicy, Scheduling,
    WatchConfig,
};
pub use control::{AppStatus, Request, Response, Status, WorkerStatus};
pub use master::{default_user, running_as_root, Master, MasterError, MasterService};
pub use paths::AppPaths;
pub use signals::SignalName;
