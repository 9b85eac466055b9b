//! The master process of an app: started in the background (`start`) or the foreground
//! (`run`), with its runtime, its logging, the chat's cookie key and the systemd watchdog.

use std::time::Duration;

use anyhow::{bail, Context};
use supervisor::client;
use supervisor::paths::{home, AppPaths};
use supervisor::{AppConfig, Master, Request, Status};

use crate::app_config::configs;
use crate::apps::{control, print_table, shell_env};
use crate::flags::AppArgs;

pub async fn start(args: AppArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the chatctl executable")?;
    let mut failed = false;
    for config in configs(&args)? {
        if args.reload_if_running && client::status(&config.name).await.is_ok() {
            let request = Request::Reload {
                config: Some(Box::new(config.clone())),
                env: args.update_env.then(shell_env),
            };
            control(&config.name, request).await?;
            continue;
        }
        if supervisor::running_as_root() && config.user.is_none() {
            println!(
                "{}: chatctl runs as root, so the workers run as '{}' (choose the account with --user NAME)",
                config.name,
                supervisor::default_user()
            );
        }
        let started = client::start(&config, &exe).await?;
        print_table(std::slice::from_ref(&started.status));
        if started.all_online {
            println!(
                "{}: {} workers online on {}",
                config.name,
                started.status.workers.len(),
                started.status.listen
            );
            if let Some(admin) = config.admin.listen {
                let token = config.admin.token_file.clone().unwrap_or_else(|| {
                    AppPaths::new(&home(), &config.name).dir.join("admin-token")
                });
                println!(
                    "{}: metrics on http://{admin}/metrics, dashboard on http://{admin}/ (its token is in {})",
                    config.name,
                    token.display()
                );
            }
        } else {
            failed = true;
            for worker in &started.status.workers {
                if let Some(error) = worker
                    .last_error
                    .as_deref()
                    .filter(|_| worker.status != Status::Online)
                {
                    eprintln!("worker {} {}: {error}", worker.id, worker.status);
                }
            }
            eprintln!("last log lines (chatctl logs {}):", config.name);
            for line in &started.log_tail {
                eprintln!("  {line}");
            }
            eprintln!("{}: not every worker came online; the master keeps retrying (chatctl stop {} to give up)", config.name, config.name);
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// The master of `start`, detached: reads the config `start` wrote.
pub fn master(name: &str) -> anyhow::Result<()> {
    let paths = AppPaths::new(&home(), name);
    let text = std::fs::read_to_string(&paths.config)
        .with_context(|| format!("cannot read {}", paths.config.display()))?;
    let config: AppConfig = serde_json::from_str(&text).context("invalid app config")?;
    run_master(config, paths, false)
}

/// `run`: one app's master in the foreground, logging to stderr too.
pub fn run(args: AppArgs) -> anyhow::Result<()> {
    let mut configs = configs(&args)?;
    if configs.len() != 1 {
        bail!(
            "`run` runs one app; the config file has {} (use `start -c` for several)",
            configs.len()
        );
    }
    let config = configs.remove(0);
    let paths = AppPaths::new(&home(), &config.name);
    run_master(config, paths, true)
}

fn run_master(config: AppConfig, paths: AppPaths, foreground: bool) -> anyhow::Result<()> {
    // systemd's listening socket (`.socket` unit), or everything an old master hands over
    // (`chatctl upgrade`): taken before any thread starts, as it edits the environment.
    let inherited = supervisor::upgrade::Inheritance::take()
        .context("cannot use the sockets this master was given")?;
    // The master holds each connection until it is handed to a worker, and its workers inherit
    // the limit it leaves them.
    supervisor::limits::raise_open_files();
    // One thread: the master's work (hand-offs, relays, probes) is many small steps, which
    // threads would only add wake-ups to. Its log has a thread of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let name = config.name.clone();
        let built_in = config.program().is_built_in();
        let secret = if built_in {
            chat_secret(&config, &paths).await?
        } else {
            None
        };
        let master = Master::prepare_with(config, paths, inherited).await?;
        if built_in {
            // No Redis: the master keeps the chat's shared state and relays broadcasts.
            master.set_service(std::sync::Arc::new(coord::StoreService::default()));
        }
        if let Some(secret) = secret {
            master.set_secret(secret);
        }
        init_master_logging(master.log(), foreground);
        if let Some(interval) = client::watchdog_interval() {
            tokio::spawn(feed_watchdog(name, interval));
        }
        master.run(client::sd_notify_ready).await;
        Ok(())
    })
}

/// Under systemd with `WatchdogSec=`: pings the watchdog twice per interval while the master
/// answers its own control socket (a hung master is restarted by systemd), with a `STATUS=`
/// line (`2/2 workers online`) for `systemctl status`.
async fn feed_watchdog(name: String, interval: Duration) {
    let mut ticks = tokio::time::interval(interval / 2);
    loop {
        ticks.tick().await;
        if let Ok(status) = client::status(&name).await {
            let online = status
                .workers
                .iter()
                .filter(|w| w.status == Status::Online)
                .count();
            client::sd_notify(&format!(
                "WATCHDOG=1\nSTATUS={online}/{} workers online",
                status.workers.len()
            ));
        }
    }
}

/// The cookie key the chat workers share, unless the app's environment brings its own
/// (`--env CHAT_SECRET=...`): with Redis, the one stored there for every host on it (the first
/// master stores a new one); else this app's key file, created once.
async fn chat_secret(config: &AppConfig, paths: &AppPaths) -> anyhow::Result<Option<String>> {
    let env = |key: &str| {
        config
            .env
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    };
    let given = env("CHAT_SECRET");
    let shared = env("REDIS_URL").map(|url| {
        let redis = coord::RedisConfig {
            prefix: env("CHATCTL_REDIS_PREFIX").unwrap_or("chatctl").to_owned(),
            cluster: env("CHATCTL_REDIS_CLUSTER") == Some("true"),
            ..coord::RedisConfig::new(url)
        };
        async move {
            shared_secret(redis)
                .await
                .map_err(|error| format!("{error:#}"))
        }
    });
    paths.create()?;
    let key = chat::cookie_key(given, shared, &paths.secret).await?;
    // A key of the app's own environment reaches the workers with it (through the secrets
    // pipe): the master has none to hand out.
    if given.is_some() {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8(key).context("the cookie key is not text")?,
    ))
}

/// The cookie key stored in Redis for every host that shares it (see
/// [`coord::RedisLink::shared_secret`]).
async fn shared_secret(redis: coord::RedisConfig) -> anyhow::Result<Vec<u8>> {
    shared_secret_of(&*coord::RedisLink::new(redis)?).await
}

/// Like [`shared_secret`], through a link the caller already has.
pub async fn shared_secret_of(link: &coord::RedisLink) -> anyhow::Result<Vec<u8>> {
    let prefix = &link.config().prefix;
    let key = link.shared_secret(&chat::new_secret()).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot read the cookie key that hosts on one Redis share ({prefix}:cookie-key): {error} — start Redis first, or give every host the same key with --env CHAT_SECRET=..."
        )
    })?;
    Ok(key)
}

fn init_master_logging(sink: supervisor::logs::LogSink, foreground: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let file = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(sink);
    let stderr = foreground.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(file)
        .with(stderr)
        .try_init();
}
