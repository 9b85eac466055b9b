//! The `chat-bench` command: parses the flags, runs, prints the report.

use std::net::ToSocketAddrs;
use std::time::Duration;

use chat_bench::config::parse_duration;
use chat_bench::{net, BenchConfig, Fault, Scenario, Target, TransportChoice};
use clap::Parser;

/// Load generator for Socket.IO v5 chat servers.
///
/// Every client logs in (`POST /login`), opens one Engine.IO session, connects `/chat_infra`
/// and `/chat_com` and joins a room; then the scenario runs. The report ends with `OK` or
/// `FAILED`; the exit status is 1 when messages were lost or duplicated, clients failed to
/// connect or errors occurred.
#[derive(Parser, Debug)]
#[command(name = "chat-bench", version)]
struct Cli {
    /// The server, as http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// What the clients do once connected.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Simulated users.
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// Engine.IO transport; `mix` alternates websocket and polling.
    #[arg(long, value_enum, default_value = "websocket")]
    transport: TransportChoice,
    /// Local addresses to connect from, round-robin: `127.0.0.1-127.0.0.16,10.0.0.5`. One
    /// address holds at most ~28,000 connections to one server address.
    #[arg(long, value_parser = parse_sources)]
    sources: Option<SourceAddresses>,
    /// New clients per second; 0 starts them all at once.
    #[arg(long, default_value_t = 1000)]
    ramp: u32,
    /// Longest a client may take to log in, connect and join.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    connect_timeout: Duration,
    /// Clients per room (chat, idle, churn).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    room_size: u32,
    /// Messages per second per client (chat).
    #[arg(long, default_value_t = 1.0, value_parser = parse_rate)]
    rate: f64,
    /// The measured phase (chat, idle, churn).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Sending before the measured phase, not counted (chat, fanout).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Length of each message's text.
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
    /// How long to wait for late deliveries after the last send; later ones count as lost.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    drain: Duration,
    /// Fanout: send rates of the steps, in messages per second.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate,
          default_value = "10,20,50,100,200,500,1000,2000,5000,10000")]
    rates: Vec<f64>,
    /// Fanout: length of each step.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    step_duration: Duration,
    /// Fanout: stop after the first step whose p99 latency is above this.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    p99_limit: Duration,
    /// Idle: after the hold, the first member of every room sends one message; every other
    /// member must receive it (the report counts it as sent, delivered and lost).
    #[arg(long)]
    probe: bool,
    /// Chat: run --fault-command this long into the measured phase (before --duration ends).
    #[arg(long, value_parser = parse_duration, requires = "fault_command")]
    fault_after: Option<Duration>,
    /// Chat: a command run once with `sh -c` at --fault-after (`kill -9 PID`, a reload); its
    /// output goes to stderr, and the report shows how the clients came back.
    #[arg(long, requires = "fault_after")]
    fault_command: Option<String>,
    /// A server process to sample CPU and memory of (repeat for several).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

/// The addresses of `--sources`, as one value (clap would take a `Vec` for a repeated flag).
#[derive(Debug, Clone)]
struct SourceAddresses(Vec<std::net::IpAddr>);

fn parse_sources(text: &str) -> Result<SourceAddresses, String> {
    net::parse_sources(text).map(SourceAddresses)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate (messages per second, >= 0)"
        )),
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => exit_on_usage_error(error),
    };
    let (json, quiet) = (cli.json, cli.quiet);
    let config = match into_config(cli) {
        Ok(config) => config,
        Err(message) => usage_error(&message),
    };
    let fd_limit = net::raise_fd_limit();
    // Each connection is a descriptor; keep some for the runtime, stdio and the login sockets
    // in flight.
    let needed = (f64::from(config.clients) * config.transport.fds_per_client()).ceil() as u64 + 64;
    if needed > fd_limit {
        usage_error(&format!(
            "--clients {} needs about {needed} file descriptors but RLIMIT_NOFILE is {fd_limit} \
             (the hard limit of this process); run several chat-bench processes or raise the hard limit",
            config.clients
        ));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat-bench: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    let report = runtime.block_on(chat_bench::run(config));
    if json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => eprintln!("chat-bench: cannot write the report: {error}"),
        }
        if !quiet || !report.passed() {
            eprintln!("{}", report.verdict());
        }
    } else {
        print!("{}", report.table());
    }
    // Clients still closing (a server that does not answer) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(if report.passed() { 0 } else { 1 });
}

fn into_config(cli: Cli) -> Result<BenchConfig, String> {
    if cli.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if cli.rates.is_empty() {
        return Err("--rates needs at least one rate".into());
    }
    let fault = match (cli.fault_after, cli.fault_command) {
        (Some(after), Some(command)) => {
            if cli.scenario != Scenario::Chat {
                return Err("--fault-command works with --scenario chat only".into());
            }
            if command.trim().is_empty() {
                return Err("--fault-command is empty".into());
            }
            if after >= cli.duration {
                return Err(format!(
                    "--fault-after {after:?} is not within --duration {:?}",
                    cli.duration
                ));
            }
            Some(Fault { after, command })
        }
        _ => None,
    };
    let target = resolve(&cli.url)?;
    let mut config = BenchConfig::new(target, cli.scenario);
    config.clients = cli.clients;
    config.transport = cli.transport;
    config.sources = cli.sources.map(|s| s.0).unwrap_or_default();
    config.ramp = cli.ramp;
    config.connect_timeout = cli.connect_timeout;
    config.room_size = cli.room_size;
    config.rate = cli.rate;
    config.duration = cli.duration;
    config.warmup = cli.warmup;
    config.message_bytes = cli.message_bytes;
    config.drain = cli.drain;
    config.rates = cli.rates;
    config.step_duration = cli.step_duration;
    config.p99_limit = cli.p99_limit;
    config.pids = cli.pids;
    config.progress = !cli.quiet;
    config.probe = cli.probe;
    config.fault = fault;
    Ok(config)
}

/// `http://HOST:PORT` to the address the clients connect to and the `Host` they send.
fn resolve(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("--url `{url}` is not a URL like http://127.0.0.1:3000"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url `{url}`: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url `{url}` has no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {}: {error}", authority.host()))?
        .next()
        .ok_or_else(|| format!("{} has no address", authority.host()))?;
    Ok(Target {
        addr,
        authority: authority.as_str().to_owned(),
    })
}

fn usage_error(message: &str) -> ! {
    eprintln!("chat-bench: {message}");
    std::process::exit(2);
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
    let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
    let mut line = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    // "the following required arguments were not provided:" names them on the lines below.
    if line.ends_with(':') {
        let named: Vec<&str> = lines
            .take_while(|l| l.starts_with(' '))
            .map(str::trim)
            .collect();
        line = format!("{line} {}", named.join(", "));
    }
    usage_error(&format!("{line} (see chat-bench --help)"));
}
