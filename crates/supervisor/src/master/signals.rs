//! The master's own signals: SIGTERM and SIGINT stop the app, SIGHUP reloads it, SIGUSR1
//! reopens the log file.

use std::sync::Arc;

use super::Inner;

impl Inner {
    /// SIGTERM / SIGINT stop the app, SIGHUP reloads it, SIGUSR1 reopens the log file.
    pub(super) async fn signal_loop(self: Arc<Self>) {
        use tokio::signal::unix::{signal as unix_signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
            unix_signal(SignalKind::terminate()),
            unix_signal(SignalKind::interrupt()),
            unix_signal(SignalKind::hangup()),
            unix_signal(SignalKind::user_defined1()),
        ) else {
            tracing::error!("cannot install signal handlers; use `chatctl stop`");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = inner.reload(&|line| tracing::info!("{line}")).await {
                            tracing::error!(%error, "reload failed");
                        }
                    });
                }
                _ = usr1.recv() => {
                    self.log.reopen();
                    tracing::info!("log file reopened");
                }
            }
        }
        self.stop().await;
        self.finish();
    }
}
