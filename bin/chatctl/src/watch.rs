//! `chatctl list --watch`: the `list` table, refreshed in place every interval until Ctrl-C
//! (or SIGTERM). On a terminal each refresh overwrites the last; into a pipe or a file each is
//! printed after the other, under its time, so a script can read them as they come.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use supervisor::client;

use crate::apps::list_text;

/// Refreshes the table every `interval` until Ctrl-C or SIGTERM.
pub async fn list(interval: Duration) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let terminal = std::io::stdout().is_terminal();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        let text = list_text(&client::entries().await);
        let header = format!(
            "chatctl list, every {} (Ctrl-C to stop)  {}",
            human_interval(interval),
            supervisor::timestamp::format_utc(
                std::time::SystemTime::now(),
                "%Y-%m-%d %H:%M:%S UTC"
            )
        );
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home, each line cleared to its end, then everything below: no flicker.
            write!(out, "\x1b[H")?;
            for line in std::iter::once(header.as_str()).chain(text.lines()) {
                write!(out, "{line}\x1b[K\r\n")?;
            }
            write!(out, "\x1b[J")?;
        } else {
            writeln!(out, "{header}\n{text}")?;
        }
        // A reader that went away (`| head`) ends the watch.
        if out.flush().is_err() {
            break;
        }
    }
    Ok(())
}

fn human_interval(interval: Duration) -> String {
    if interval.subsec_millis() == 0 {
        format!("{}s", interval.as_secs())
    } else {
        format!("{}ms", interval.as_millis())
    }
}
