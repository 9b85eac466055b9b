//! What the chat's cross-process tests share: a real `ChatServer` in the background for a client
//! program to talk to. Running that program is the test kit's [`run_bounded`].

#![allow(dead_code, unused_imports)] // Each test file uses part of it.

use std::sync::Arc;
use std::time::Duration;

pub use testkit::clients::{run_bounded, ChildRun};
pub use testkit::BackgroundServer;

/// A real `ChatServer` with `config` and the store of one process, on a loopback port.
pub fn chat_server(config: chat::ChatConfig) -> BackgroundServer {
    let server = chat::ChatServer::new(config, Arc::new(chat::MemoryStore::default()));
    BackgroundServer::start(|listener, stopped| async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
                // The client has exited: nothing is left to drain.
                Duration::from_secs(1)
            })
            .await
    })
}
