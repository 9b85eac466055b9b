//! `chatctl serve`: the chat app in this process, on a socket of its own or an inherited one.

use std::sync::Arc;

use anyhow::Context;
use chat::{ChatConfig, ChatServer, MemoryStore};
use engineio::CorsPolicy;

use futures_util::FutureExt;
use sticky::route_tag;
use supervisor::drops::Drops;
use supervisor::inherited::{Identity, Inherited};
use supervisor::ipc::WorkerLink;

use crate::flags::ServeArgs;

/// How long a connection to the private socket may take to send its first byte.
const PRIVATE_FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a worker stopped by a signal lets its requests finish.
const DEFAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    let open_files = supervisor::limits::raise_open_files();
    // Taken before the runtime starts its threads: it edits the environment.
    let mut inherited = Inherited::take()?;
    // Under a master, the cookie key and the Redis URL come through an inherited pipe (never
    // the environment or the command line, which other users may read); flags still win.
    if args.secret.is_none() {
        args.secret = inherited.secrets.remove(supervisor::secrets::CHAT_SECRET);
    }
    if args.redis_url.is_none() {
        args.redis_url = inherited.secrets.remove(supervisor::secrets::REDIS_URL);
    }
    let moving = Moving::default();
    let other_workers = OtherWorkers::default();
    let config = config(
        &args,
        inherited.identity.as_ref(),
        &moving,
        other_workers.clone(),
    )?;
    let redis = match &args.redis_url {
        Some(url) => Some(coord::RedisLink::new(coord::RedisConfig {
            prefix: args.redis_prefix.clone(),
            sharded: args.redis_sharded,
            cluster: args.redis_cluster,
            worker_ttl: args.redis_worker_ttl,
            drop_log_interval: args.drop_log_interval,
            ..coord::RedisConfig::new(url.clone())
        })?),
        None => None,
    };
    let handoff = inherited.handoff.take();
    let listener = match (&handoff, inherited.listener.take()) {
        (Some(_), _) => None,
        (None, Some(listener)) => Some(listener),
        (None, None) => {
            let address = format!("{}:{}", args.host, args.port);
            Some(sticky::listen::bind(&address).with_context(|| {
                format!("cannot listen on {address} — is another server using that port? choose another with --port")
            })?)
        }
    };
    let under_master = inherited.identity.is_some();
    let runtime = match args.threads.map(usize::from).or(under_master.then_some(1)) {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let incoming = match (handoff, listener) {
            (Some(fd), _) => {
                let receiver = supervisor::handoff::Receiver::new(fd)
                    .context("invalid hand-off socket from the master")?;
                Incoming::HandedOff(receiver)
            }
            (None, Some(listener)) => {
                listener.set_nonblocking(true)?;
                Incoming::Listener(tokio::net::TcpListener::from_std(listener)?)
            }
            (None, None) => unreachable!("a listener is bound unless connections are handed over"),
        };
        // With Redis, rooms, broadcasts and the store are shared with the other workers
        // through it; otherwise, under a chatctl master, through the master; alone, they live
        // in this process.
        let link = inherited
            .ipc
            .take()
            .and_then(|(channel, max_line)| WorkerLink::over(channel, max_line));
        if let Some((link, _)) = &link {
            link.on_other_master(move |master_pid, peers| {
                if let Ok(mut others) = other_workers.write() {
                    // One other master at a time (upgrades wait for each other): the latest.
                    *others = vec![(master_pid, peers)];
                }
            });
        }
        // What this process drops on purpose, for `chatctl status` (one count for the bus and
        // the store, whichever they are).
        let drops = match &redis {
            Some(redis) => redis.drops().clone(),
            None => Arc::new(Drops::new(args.drop_log_interval)),
        };
        let mut config = config;
        config.secret = cookie_key(&args, redis.as_deref()).await?;
        let mut redis_parts = None;
        // Its state goes with the worker's counts to the master (`--admin` metrics).
        let redis_link = redis.clone();
        let store: Arc<dyn chat::Store> = match (redis, &link) {
            (Some(redis), _) => {
                let redis_bus = coord::RedisBus::new(redis.clone());
                let adapter_bus = redis_bus.clone();
                config.io.adapter = Arc::new(move |ns| adapter_bus.adapter(ns));
                let store = Arc::new(
                    coord::RedisStore::new(redis).with_presence_grace(config.presence_grace()),
                );
                if let Some(recovery) = &mut config.io.recovery {
                    // The log and the kept sockets live in Redis: a client whose worker or
                    // host died comes back on any other.
                    recovery.store = Some(redis_bus.recovery_stores());
                }
                redis_parts = Some((redis_bus, store.clone()));
                store
            }
            (None, Some((link, _))) => {
                let adapter_link = link.clone();
                config.io.adapter = Arc::new(move |_| {
                    Arc::new(coord::EmbeddedAdapter::new(adapter_link.clone()))
                        as Arc<dyn socketio::Adapter>
                });
                if let Some(recovery) = &mut config.io.recovery {
                    // The log and the kept sockets live in the master: a client whose worker
                    // died comes back on another.
                    recovery.store = Some(coord::MasterSessionStore::factory(link.clone()));
                }
                let grace = config.presence_grace();
                Arc::new(coord::EmbeddedStore::new(link.clone(), drops.clone(), grace))
            }
            (None, None) => Arc::new(MemoryStore::new(config.max_stored_sessions)),
        };
        // Beyond the descriptors, an accept fails with EMFILE, and so does the health probe on
        // the private socket: the master would kill a worker that is only full.
        if let Some(room) =
            supervisor::limits::connections_capped(open_files, u64::from(args.max_connections))
        {
            tracing::warn!(
                "the open-files limit ({open_files}) caps --max-connections {} at {room}: raise the hard nofile limit (LimitNOFILE=, /etc/security/limits.conf; see docs/PRODUCTION.md)",
                args.max_connections
            );
            let room = usize::try_from(room).unwrap_or(usize::MAX);
            config.max_connections = room;
            config.io.engine.max_sessions = room;
        }
        let server = ChatServer::new(config, store);
        if let Some((bus, store)) = &redis_parts {
            bus.start(server.io().clone());
            store.start_heartbeat(server.io().clone());
        }
        if let Some(private) = inherited.private.take() {
            serve_private_socket(&server, private, &moving.privates)?;
        }
        match &incoming {
            Incoming::Listener(listener) => {
                let address = listener.local_addr()?;
                tracing::info!(%address, "chat serving on http://{address}");
                println!("listening on {address}");
            }
            Incoming::HandedOff(_) => {
                tracing::info!("chat serving the connections the master hands over");
            }
        }
        let shutdown = match link {
            Some((link, events)) => {
                tokio::spawn(coord::embedded::deliver_remote_broadcasts(
                    server.io().clone(),
                    link.clone(),
                    events.messages,
                ));
                until_drain(link, events.drain, server.clone(), drops, redis_link, moving).boxed()
            }
            None => async {
                shutdown_signal().await;
                DEFAULT_DRAIN
            }
            .boxed(),
        };
        server.serve(incoming, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The cookie key: `--secret` (or CHAT_SECRET, or the key a chatctl master passes), else
/// `--secret-file`, else, with Redis, the key every host on that Redis shares, else the key
/// file in $CHATCTL_HOME.
async fn cookie_key(args: &ServeArgs, redis: Option<&coord::RedisLink>) -> anyhow::Result<Vec<u8>> {
    let shared = redis
        .filter(|_| args.secret_file.is_none())
        .map(|redis| async move {
            crate::master_process::shared_secret_of(redis)
                .await
                .map_err(|error| format!("{error:#}"))
        });
    let file = args
        .secret_file
        .clone()
        .unwrap_or_else(|| supervisor::paths::home().join("secret"));
    Ok(chat::cookie_key(args.secret.as_deref(), shared, &file).await?)
}

fn config(
    args: &ServeArgs,
    identity: Option<&Identity>,
    moving: &Moving,
    other_workers: OtherWorkers,
) -> anyhow::Result<ChatConfig> {
    let mut config = ChatConfig {
        max_message_chars: args.max_message_chars as usize,
        messages_per_second: args.messages_per_second,
        events_per_second: args.events_per_second,
        logins_per_address: args.logins_per_address,
        login_window: args.login_window,
        max_stored_sessions: usize::try_from(args.max_stored_sessions).unwrap_or(usize::MAX),
        trusted_proxies: args.trusted_proxies.clone(),
        max_rooms_per_socket: args.max_rooms_per_socket as usize,
        history_ttl: args.history_ttl,
        max_connections: args.max_connections as usize,
        secure_cookies: args.secure_cookies,
        tcp_nodelay: args.tcp_nodelay,
        header_read_timeout: args.header_read_timeout,
        presence_grace: args.presence_grace,
        ..ChatConfig::default()
    };
    let engine = &mut config.io.engine;
    engine.ping_interval = args.ping_interval;
    engine.ping_timeout = args.ping_timeout;
    engine.ws_write_timeout = args.write_timeout;
    engine.body_read_timeout = args.body_read_timeout;
    engine.max_payload = args.max_payload as usize;
    engine.max_sessions = args.max_connections as usize;
    engine.max_pending_sessions = args.max_pending as usize;
    engine.max_pending_sessions_per_address = args.max_pending_per_address as usize;
    engine.cors = if args.allow_origins.iter().any(|o| o == "*") {
        CorsPolicy::Any
    } else if args.allow_origins.is_empty() {
        CorsPolicy::SameOrigin
    } else {
        CorsPolicy::List(args.allow_origins.clone())
    };
    config.io.connect_timeout = args.connect_timeout;
    config.io.max_attachments = args.max_attachments as usize;
    config.io.recovery = (!args.recovery_window.is_zero()).then(|| socketio::RecoveryConfig {
        window: args.recovery_window,
        max_packets: args.recovery_max_packets as usize,
        ..socketio::RecoveryConfig::default()
    });
    anyhow::ensure!(
        config.io.recovery.is_none() || args.presence_grace <= args.recovery_window,
        "--presence-grace ({:?}) must be at most --recovery-window ({:?}): a user kept in its \
         rooms longer than its sockets are kept for it would come back as a new socket",
        args.presence_grace,
        args.recovery_window
    );
    anyhow::ensure!(
        args.legacy_heartbeat_interval < args.legacy_heartbeat_timeout,
        "--legacy-heartbeat-interval ({:?}) must be below --legacy-heartbeat-timeout ({:?}): \
         0.9 clients drop a session that hears no heartbeat within the timeout",
        args.legacy_heartbeat_interval,
        args.legacy_heartbeat_timeout
    );
    config.legacy = legacy::LegacyConfig {
        enabled: args.legacy_protocol,
        heartbeat_interval: args.legacy_heartbeat_interval,
        heartbeat_timeout: args.legacy_heartbeat_timeout,
        close_timeout: args.legacy_close_timeout,
        polling_duration: args.legacy_polling_duration,
        ..legacy::LegacyConfig::default()
    };
    // Under a master, session ids name this worker, so requests can be routed to it by sid,
    // and requests for the other workers' sessions are passed to them.
    if let Some(identity) = identity {
        let (node, id) = (identity.node_id, identity.worker_id);
        engine.sid_tag = route_tag::encode(route_tag::Owner { node, slot: id });
        if let Some(token) = identity.peers.clone() {
            config.peers = Some(Arc::new(Workers {
                token,
                node,
                id,
                // The master started this process itself (its shell execs us in place).
                master_pid: std::os::unix::process::parent_id(),
                refused: Arc::new(Drops::new(args.drop_log_interval)),
                successor: moving.successor.clone(),
                privates: moving.privates.clone(),
                others: other_workers,
            }));
        }
    }
    Ok(config)
}

/// The workers of the other master during an upgrade, with the pid of that master (which
/// made their private sockets): told by this worker's master (see
/// [`supervisor::ipc::ToWorker::OtherMaster`]).
type OtherWorkers = Arc<std::sync::RwLock<Vec<(u32, supervisor::upgrade::Peers)>>>;

/// The other workers of this worker's master (and, during an upgrade, of the other master).
#[derive(Debug)]
struct Workers {
    token: String,
    node: u16,
    /// This worker's id.
    id: u16,
    /// The master, which made every worker's private socket: a socket it did not make is not
    /// one of ours, whatever its name.
    master_pid: u32,
    /// Requests not forwarded because another process holds the owner's private socket name
    /// (counted to bound the log lines a client can cause with such sids).
    refused: Arc<Drops>,
    /// The worker this one handed its sessions to, once it did.
    successor: crate::hand_off::Successor,
    /// The private sockets this process accepts on (its own, and adopted ones).
    privates: crate::hand_off::PrivateSockets,
    others: OtherWorkers,
}

impl chat::Peers for Workers {
    fn successor(&self) -> Option<chat::Connecting> {
        let adopter = self.successor.get()?.clone();
        Some(Box::pin(async move {
            use std::os::linux::net::SocketAddrExt;
            let address =
                std::os::unix::net::SocketAddr::from_abstract_name(adopter.address.as_bytes())?;
            supervisor::handoff::connect_checked(address, adopter.master_pid, "the new worker")
                .await
        }))
    }

    fn owner(&self, sid: &str) -> Option<u16> {
        let owner = route_tag::decode(sid)?;
        if owner.node != self.node || owner.slot == self.id {
            return None;
        }
        // A worker whose sessions, and private socket, this one adopted: its sessions are
        // here or nowhere.
        let address = supervisor::handoff::private_address(&self.token, owner.slot).ok()?;
        (!self.privates.serves(&address)).then_some(owner.slot)
    }

    fn connect(&self, id: u16) -> chat::Connecting {
        let of_other_master = self.others.read().ok().and_then(|others| {
            others
                .iter()
                .find(|(_, peers)| peers.worker_ids.contains(&id))
                .map(|(pid, peers)| (peers.token.clone(), *pid))
        });
        let (token, master_pid) =
            of_other_master.unwrap_or_else(|| (self.token.clone(), self.master_pid));
        let refused = self.refused.clone();
        let connected = async move {
            let connected = supervisor::handoff::connect_private(&token, id, master_pid).await;
            if let Err(error) = &connected {
                if error.kind() == std::io::ErrorKind::PermissionDenied {
                    refused.count(
                        "forward_refused",
                        1,
                        format_args!("not forwarding a request: {error}"),
                    );
                }
            }
            connected
        };
        Box::pin(connected)
    }
}

/// Where this process's connections come from.
enum Incoming {
    Listener(tokio::net::TcpListener),
    /// Sticky scheduling: the master accepts and hands each connection over.
    HandedOff(supervisor::handoff::Receiver),
}

impl chat::Accept for Incoming {
    async fn accept(&mut self) -> std::io::Result<Option<tokio::net::TcpStream>> {
        match self {
            Incoming::Listener(listener) => chat::Accept::accept(listener).await,
            Incoming::HandedOff(receiver) => match receiver.recv().await? {
                Some(stream) => {
                    stream.set_nonblocking(true)?;
                    tokio::net::TcpStream::from_std(stream).map(Some)
                }
                None => Ok(None),
            },
        }
    }

    fn queued(&mut self) -> Option<tokio::net::TcpStream> {
        let Incoming::HandedOff(receiver) = self else {
            return None;
        };
        let stream = receiver.try_recv().ok()??;
        stream.set_nonblocking(true).ok()?;
        tokio::net::TcpStream::from_std(stream).ok()
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Under a chatctl master: reports ready, answers health pings, and completes with the drain
/// timeout when the master asks this worker to drain (or on SIGTERM).
async fn until_drain(
    link: Arc<WorkerLink>,
    drain: tokio::sync::oneshot::Receiver<supervisor::ipc::DrainOrder>,
    server: ChatServer,
    drops: Arc<Drops>,
    redis: Option<Arc<coord::RedisLink>>,
    moving: Moving,
) -> std::time::Duration {
    let engine = server.io().engine().clone();
    let io = server.io().clone();
    link.report_stats(move || worker_stats(&io, redis.as_deref()));
    link.ready(move || engine.session_count() as u64, drops);
    let order = tokio::select! {
        drain = drain => match drain {
            Ok(order) => order,
            // The master is gone (PR_SET_PDEATHSIG ends us too): stop quickly.
            Err(_) => return std::time::Duration::from_secs(1),
        },
        _ = shutdown_signal() => return DEFAULT_DRAIN,
    };
    // Replaced on reload: live sessions move to the new worker first, the rest drain.
    if let Some(adopter) = order.hand_off_to {
        let _ = moving.successor.set(adopter.clone());
        let counts =
            crate::hand_off::hand_off(server.io(), &moving.privates, &adopter, order.timeout).await;
        if let Err(error) = link.report_hand_off(counts).await {
            tracing::warn!(%error, "cannot tell the master how the hand-off went");
        }
    }
    order.timeout
}

/// What a worker replaced on reload needs to hand its sessions over (see `hand_off.rs`).
#[derive(Default)]
struct Moving {
    successor: crate::hand_off::Successor,
    privates: crate::hand_off::PrivateSockets,
}

/// The worker's private socket, passed by the master (or one adopted from a worker this one
/// replaced): its HTTP health probes, the requests other workers forward, and the sessions of
/// a worker being replaced arrive here.
pub(crate) fn serve_private_socket(
    server: &ChatServer,
    listener: std::os::unix::net::UnixListener,
    privates: &crate::hand_off::PrivateSockets,
) -> anyhow::Result<()> {
    privates.add(&listener);
    let privates = privates.clone();
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .context("invalid private socket from the master")?;
    let server = server.clone();
    tokio::spawn(async move {
        loop {
            // Out of descriptors (EMFILE) must not end the health probes and forwarding.
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    sticky::listen::after_accept_error(&error).await;
                    continue;
                }
            };
            if !supervisor::handoff::trusted_peer(&stream) {
                tracing::warn!("refused a connection to the private socket from another user");
                continue;
            }
            let server = server.clone();
            let privates = privates.clone();
            tokio::spawn(async move {
                // A worker being replaced hands its live sessions over here (see
                // `hand_off.rs`); everything else is HTTP. A connection that says nothing is
                // dropped, as HTTP would drop it.
                let peeked = tokio::time::timeout(
                    PRIVATE_FIRST_BYTE_TIMEOUT,
                    supervisor::adoption::is_hand_off(&stream),
                )
                .await;
                match peeked {
                    Ok(Ok(true)) => {
                        return crate::hand_off::adopt_from(stream, server, privates).await
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(_)) | Err(_) => return,
                }
                server
                    .serve_connection(stream, chat::Origin::default(), std::future::pending())
                    .await
            });
        }
    });
    Ok(())
}

/// What this worker reports about its clients with each pong (the master's `--admin` metrics).
fn worker_stats(
    io: &socketio::SocketIo,
    redis: Option<&coord::RedisLink>,
) -> supervisor::worker_stats::WorkerStats {
    let counts = engineio::packet_counts();
    let broadcasts = socketio::broadcast_counts();
    let (redis_connected, redis_errors) = redis.map_or((None, 0), |r| r.connection_state());
    let namespaces = io.namespaces();
    let (polling, websocket) = io.engine().sessions_by_transport();
    supervisor::worker_stats::WorkerStats {
        packets_in: counts.received,
        packets_out: counts.sent,
        sessions: [
            ("polling".to_owned(), polling as u64),
            ("websocket".to_owned(), websocket as u64),
        ]
        .into(),
        sockets: namespaces
            .iter()
            .map(|ns| (ns.path().to_owned(), ns.socket_count() as u64))
            .collect(),
        rooms: namespaces
            .iter()
            .map(|ns| (ns.path().to_owned(), ns.room_count() as u64))
            .collect(),
        sessions_closed: counts
            .closed
            .iter()
            .map(|(reason, count)| ((*reason).to_owned(), *count))
            .collect(),
        handshakes_refused: [
            ("pending_limit".to_owned(), counts.refused_pending),
            ("max_sessions".to_owned(), counts.refused_full),
        ]
        .into(),
        broadcasts: broadcasts.broadcasts,
        deliveries: broadcasts.deliveries,
        redis_connected,
        redis_errors,
        redis_round_trip: redis.map(coord::RedisLink::round_trips),
        recovery: io
            .recovery_stats()
            .map(|stats| {
                [
                    ("attempts", stats.attempts),
                    ("recovered", stats.recovered),
                    ("replayed", stats.replayed),
                    ("gaps", stats.gaps),
                ]
                .into_iter()
                .map(|(name, count)| (name.to_owned(), count))
                .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::flags::{Cli, Command};

    fn serve_args(flags: &[&str]) -> super::ServeArgs {
        let cli = Cli::try_parse_from(["chatctl", "serve"].iter().chain(flags))
            .expect("valid serve flags");
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        args
    }

    #[test]
    fn header_read_timeout_reaches_the_chat_config() {
        let config = super::config(
            &serve_args(&["--header-read-timeout", "2s"]),
            None,
            &Default::default(),
            Default::default(),
        )
        .expect("a config");
        assert_eq!(
            config.header_read_timeout,
            std::time::Duration::from_secs(2)
        );
        let config = super::config(
            &serve_args(&[]),
            None,
            &super::Moving::default(),
            Default::default(),
        )
        .expect("a config");
        assert_eq!(
            config.header_read_timeout,
            std::time::Duration::from_secs(10)
        );
    }
}
