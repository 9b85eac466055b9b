//! `chatctl`: parses the command line and prints; everything it does is a library call.

mod app_config;
mod apps;
mod flags;
mod hand_off;
mod master_process;
mod monit;
mod serve;
mod watch;

use flags::{Cli, Command};

fn main() {
    let cli = match Cli::parse_recording_flags(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => exit_on_usage_error(error),
    };
    // The master logs into the app log (set up once its files exist); every other command
    // logs to stderr.
    if !matches!(cli.command, Command::Run(_) | Command::Master { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Proxy(args) => {
            let threads = args.threads;
            run_proxy(args.into_config(), threads)
        }
        Command::Run(args) => master_process::run(args),
        Command::Master { name } => master_process::master(&name),
        Command::Logs {
            name,
            nostream,
            follow: _,
            lines,
        } => apps::logs(&name, !nostream, lines),
        Command::Flush { name } => apps::flush(&name),
        command => client_runtime().and_then(|runtime| runtime.block_on(client_command(command))),
    };
    if let Err(error) = result {
        eprintln!("chatctl: {error:#}");
        let usage = error.downcast_ref::<app_config::UsageError>().is_some();
        std::process::exit(if usage { 2 } else { 1 });
    }
}

/// `chatctl proxy`: serves until Ctrl-C or SIGTERM.
fn run_proxy(config: sticky::ProxyConfig, threads: u16) -> anyhow::Result<()> {
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = sticky::Proxy::run(config) => Ok(result?),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = terminate.recv() => Ok(()),
        }
    })
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Commands that talk to masters over their control sockets.
async fn client_command(command: Command) -> anyhow::Result<()> {
    use supervisor::Request;
    match command {
        Command::Start(args) => master_process::start(args).await,
        Command::List {
            watch: true,
            interval,
            ..
        } => watch::list(interval).await,
        Command::List { json, .. } => apps::list(json).await,
        Command::Monit { name, interval } => monit::run(name, interval).await,
        Command::Jlist => apps::list(true).await,
        Command::Status { name, json } => apps::status(name.as_deref(), json).await,
        Command::Reload(args) => apps::reload(args).await,
        Command::Restart { name } => apps::control(&name, Request::Restart).await,
        Command::Upgrade {
            name,
            binary,
            timeout,
        } => apps::upgrade(&name, binary, timeout).await,
        Command::Scale { name, instances } => {
            apps::control(&name, Request::Scale { instances }).await
        }
        Command::Signal {
            signal,
            name,
            worker,
        } => apps::control(&name, Request::Signal { signal, worker }).await,
        Command::Stop { name } => apps::stop(&name).await,
        Command::Delete { name } => apps::delete(&name).await,
        Command::Save => apps::save().await,
        Command::Resurrect => apps::resurrect().await,
        Command::Startup { install } => apps::startup(install),
        Command::ImportPm2 { file } => apps::import_pm2(&file),
        Command::Serve(_)
        | Command::Proxy(_)
        | Command::Run(_)
        | Command::Master { .. }
        | Command::Logs { .. }
        | Command::Flush { .. } => Ok(()),
    }
}

/// Help and version print as usual; a usage error prints one line and exits 2.
fn exit_on_usage_error(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    let line = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let line = line.trim_start_matches("error: ");
    eprintln!("chatctl: {line} (see chatctl --help)");
    std::process::exit(2);
}
