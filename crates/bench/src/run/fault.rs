//! `--fault-command`: a command run once, `--fault-after` into the measured phase of the chat
//! scenario (a worker killed, a reload), so that the report shows how the clients came through.

use std::sync::Arc;

use tokio::time::Instant;

use super::shared::{Control, Shared};
use crate::config::Fault;
use crate::report::FaultOutcome;
use crate::BenchError;

/// Waits until `fault.after` past `began` (unless the run stops first), runs the command with
/// `sh -c`, its output on stderr, and records its exit. A command that fails is an error of the
/// run: the fault asked for did not happen as asked.
pub(super) async fn strike(shared: Arc<Shared>, fault: Fault, began: Instant) {
    let mut control = shared.control.subscribe();
    let stopped = async {
        while *control.borrow_and_update() != Control::Stop {
            if control.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = tokio::time::sleep_until(began + fault.after) => {}
        () = stopped => return,
    }
    let at_s = began.elapsed().as_secs_f64();
    if shared.config.progress {
        // A progress line (`[...]`), not a problem: ops/bench reads `chat-bench:` lines as errors.
        eprintln!(
            "[fault {at_s:.2}s into the measured phase] sh -c {:?}",
            fault.command
        );
    }
    let exit = match run(&fault.command).await {
        Ok(status) if status.success() => "exit 0".to_owned(),
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            let exit = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => status.to_string(),
            };
            shared.error(
                "the fault command failed",
                &BenchError::Setup(format!("`{}`: {exit}", fault.command)),
            );
            exit
        }
        Err(error) => {
            let exit = format!("cannot run sh: {error}");
            shared.error("the fault command", &BenchError::Setup(exit.clone()));
            exit
        }
    };
    if shared.config.progress {
        eprintln!("[fault] the command ended: {exit}");
    }
    if let Ok(mut outcome) = shared.fault.lock() {
        *outcome = Some(FaultOutcome {
            command: fault.command,
            at_s,
            exit,
        });
    }
}

/// Runs `command` with `sh -c`; stdout goes to stderr, so that `--json` output stays one
/// object. Killed if the run gives up waiting for it.
async fn run(command: &str) -> std::io::Result<std::process::ExitStatus> {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(stderr))
        .kill_on_drop(true)
        .status()
        .await
}
