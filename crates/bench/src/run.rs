//! A run: starting the clients at the ramp's pace, telling them when to send, waiting for the
//! deliveries, and adding everything up into a [`Report`].
//!
//! - [`shared`]: what the run and its clients share (control, rooms, counts);
//! - [`conductor`]: the run's own loop, one method per scenario;
//! - [`fault`]: the command `--fault-command` runs mid-scenario;
//! - [`tally`]: the counts added up into the report.

mod conductor;
mod fault;
pub(crate) mod shared;
mod tally;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::client::ChatUser;
use crate::config::{BenchConfig, Scenario};
use crate::report::Report;
use conductor::{Conductor, Measured};
use tally::{build_report, fanout_step};

pub use shared::Control;
pub(crate) use shared::Shared;

/// Runs the configured scenario to the end.
pub async fn run(config: BenchConfig) -> Report {
    let shared = Arc::new(Shared::new(config));
    let interrupts = tokio::spawn(on_interrupt(shared.clone()));
    let mut conductor = Conductor::new(shared.clone());
    let clients = TaskTracker::new();
    let first_attempt_us = shared.now_us();
    let spawner = tokio::spawn(start_clients(shared.clone(), clients.clone()));

    let config = &shared.config;
    let measured = match config.scenario {
        Scenario::Churn => conductor.churn().await,
        scenario => {
            let anyone = conductor.connect_everyone().await;
            let measured = match scenario {
                Scenario::Chat if anyone => conductor.chat().await,
                Scenario::Fanout if anyone => conductor.fanout().await,
                Scenario::Idle | Scenario::Churn => conductor.idle().await,
                Scenario::Chat | Scenario::Fanout => Measured::default(),
            };
            conductor.control(Control::Stop);
            measured
        }
    };
    interrupts.abort();
    let _ = spawner.await;
    clients.close();
    // Clients leave at once when told; churn cycles in flight end within the connect timeout.
    let _ = tokio::time::timeout(
        config.connect_timeout + Duration::from_secs(5),
        clients.wait(),
    )
    .await;
    conductor.progress();

    // Fanout steps are read again: deliveries that came after a step's drain still count.
    let steps = measured
        .steps
        .iter()
        .map(|&(phase, rate, sending)| fanout_step(&shared, phase, rate, sending))
        .collect();
    build_report(
        &shared,
        &conductor.watch,
        measured.duration,
        measured.phases,
        steps,
        first_attempt_us,
    )
}

/// Ctrl-C or SIGTERM (a `timeout` around the run) ends the run early with a report.
async fn on_interrupt(shared: Arc<Shared>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    if shared.config.progress {
        eprintln!("chat-bench: interrupted; reporting what was measured");
    }
    shared.interrupted.store(true, Ordering::Relaxed);
    shared.control.send_replace(Control::Stop);
}

/// Starts client after client, `ramp` a second.
async fn start_clients(shared: Arc<Shared>, clients: TaskTracker) {
    let started = Instant::now();
    let ramp = shared.config.ramp;
    for index in 0..shared.config.clients {
        if ramp > 0 {
            let at = started + Duration::from_secs_f64(f64::from(index) / f64::from(ramp));
            tokio::time::sleep_until(at).await;
        }
        if *shared.control.borrow() == Control::Stop {
            break;
        }
        let user = ChatUser::new(shared.clone(), index);
        if shared.config.scenario == Scenario::Churn {
            clients.spawn(user.run_churn());
        } else {
            clients.spawn(user.run_member());
        }
    }
}
