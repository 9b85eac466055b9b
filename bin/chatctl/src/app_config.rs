//! What `start`, `run` and `reload` are asked to run: the app configurations the flags or a
//! config file describe, and an app's default name.

use anyhow::Context;
use supervisor::client;
use supervisor::program::Program;
use supervisor::{AppConfig, ConfigFile};

use crate::flags::AppArgs;

/// The app configurations the flags (or the config file) describe. With a config file, every
/// app flag given on the command line applies to every app of the file (a `--user` is never
/// dropped).
pub fn configs(args: &AppArgs) -> anyhow::Result<Vec<AppConfig>> {
    let flags = config_from_flags(args);
    let mut apps = if let Some(name) = &args.app {
        let saved = client::saved(name).with_context(|| {
            format!("no app '{name}' is defined: start one with flags (chatctl start --name {name} ...), or see `chatctl list`")
        })?;
        vec![saved]
    } else if let Some(path) = &args.config_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        ConfigFile::parse(&text)?.app
    } else {
        // Flags that cannot work together are a usage error, like a flag clap refuses.
        flags.validate().map_err(|e| UsageError(e.to_string()))?;
        return Ok(vec![flags]);
    };
    for app in &mut apps {
        for flag in &args.given {
            apply_flag(app, &flags, flag)?;
        }
        app.validate()?;
    }
    Ok(apps)
}

/// Copies the setting of the command-line flag `flag` (a clap id) from `flags` onto `app`.
fn apply_flag(app: &mut AppConfig, flags: &AppConfig, flag: &str) -> Result<(), UsageError> {
    match flag {
        "config_file" | "app" | "reload_if_running" | "update_env" => {}
        "listen" => app.listen = flags.listen,
        "no_listen" => app.no_listen = flags.no_listen,
        "instances" => app.instances = flags.instances,
        "user" => app.user.clone_from(&flags.user),
        "max_memory" => app.max_memory = flags.max_memory,
        "log_max_size" => app.log_max_size = flags.log_max_size,
        "log_keep" => app.log_keep = flags.log_keep,
        "log_max_line" => app.log_max_line = flags.log_max_line,
        "log_date_format" => app.log_date_format.clone_from(&flags.log_date_format),
        "log_json" => app.log_json = flags.log_json,
        "log_split" => app.log_split = flags.log_split,
        "first_restart_at_once" => {
            app.restart.first_restart_at_once = flags.restart.first_restart_at_once
        }
        "restart_delay" => app.restart.initial_delay = flags.restart.initial_delay,
        "restart_max_delay" => app.restart.max_delay = flags.restart.max_delay,
        "restart_reset" => app.restart.reset_after = flags.restart.reset_after,
        "min_uptime" => app.restart.min_uptime = flags.restart.min_uptime,
        "crash_loop_exits" => app.restart.max_fast_exits = flags.restart.max_fast_exits,
        "stop_exit_codes" => app
            .restart
            .stop_exit_codes
            .clone_from(&flags.restart.stop_exit_codes),
        "health_interval" => app.health.interval = flags.health.interval,
        "health_timeout" => app.health.timeout = flags.health.timeout,
        "health_misses" => app.health.max_misses = flags.health.max_misses,
        "health_url" => app.health.url.clone_from(&flags.health.url),
        "health_tcp" => app.health.tcp = flags.health.tcp,
        "worker_port_base" => app.worker_port_base = flags.worker_port_base,
        "ready_timeout" => app.ready_timeout = flags.ready_timeout,
        "wait_ready" => app.wait_ready = flags.wait_ready,
        "drain_timeout" => app.drain_timeout = flags.drain_timeout,
        "stop_timeout" => app.stop_timeout = flags.stop_timeout,
        "kill_signal" => app.kill_signal = flags.kill_signal,
        "scheduling" => app.scheduling = flags.scheduling,
        "node_id" => app.node_id = flags.node_id,
        "spare" => app.spare = flags.spare,
        "watch" => app.watch.paths.clone_from(&flags.watch.paths),
        "watch_ignore" => app.watch.ignore.clone_from(&flags.watch.ignore),
        "watch_delay" => app.watch.delay = flags.watch.delay,
        "cron_restart" => app.cron_restart.clone_from(&flags.cron_restart),
        "on_event" => app.hooks.on_event.clone_from(&flags.hooks.on_event),
        "on_event_timeout" => app.hooks.timeout = flags.hooks.timeout,
        "on_event_rate" => app.hooks.max_per_minute = flags.hooks.max_per_minute,
        "admin" => app.admin.listen = flags.admin.listen,
        "admin_token_file" => app.admin.token_file.clone_from(&flags.admin.token_file),
        "peek_timeout" => app.peek_timeout = flags.peek_timeout,
        "handoff_timeout" => app.handoff_timeout = flags.handoff_timeout,
        "ipc_max_line" => app.ipc_max_line = flags.ipc_max_line,
        "ipc_queue_size" => app.ipc_queue_size = flags.ipc_queue_size,
        // `--env` and `--redis` both become environment entries; later entries win.
        "env" | "redis" => {
            for entry in &flags.env {
                if !app.env.contains(entry) {
                    app.env.push(entry.clone());
                }
            }
        }
        other => {
            return Err(UsageError(format!(
                "--{} cannot be combined with -c FILE: set it in the file's [[app]] tables",
                other.replace('_', "-")
            )))
        }
    }
    Ok(())
}

/// The name of an app started without `--name`: `chat` for the chat app, else the file name of
/// the program, or of the script an interpreter runs (`node api.js` is `api`, as in PM2; not
/// code given inline, as in `sh -c '...'`).
fn default_name(command: &[String]) -> String {
    const INTERPRETERS: [&str; 10] = [
        "node", "nodejs", "python", "python3", "ruby", "perl", "php", "bash", "sh", "bun",
    ];
    let file_stem = |path: &str| {
        std::path::Path::new(path)
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
    };
    let Program::External { argv } = Program::of(command) else {
        return "chat".to_owned();
    };
    let Some((program, arguments)) = argv.split_first() else {
        return "chat".to_owned();
    };
    let program_name = file_stem(program).unwrap_or_default();
    let script_at = arguments.iter().position(|arg| !arg.starts_with('-'));
    let inline_code = |at: usize| arguments[..at].iter().any(|arg| arg == "-c" || arg == "-e");
    let script = script_at
        .filter(|at| INTERPRETERS.contains(&program_name.as_str()) && !inline_code(*at))
        .and_then(|at| file_stem(&arguments[at]));
    let name: String = script
        .unwrap_or(program_name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if supervisor::config::valid_name(&name) {
        name
    } else {
        "app".to_owned()
    }
}

/// A command line that cannot work as given: `main` prints it in one line and exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--watch` alone: the working directory; `--watch=A,B`: those, made absolute.
fn watched_paths(args: &AppArgs, cwd: Option<&std::path::Path>) -> Vec<std::path::PathBuf> {
    let Some(given) = &args.watch else {
        return Vec::new();
    };
    let given: Vec<&String> = given.iter().filter(|path| !path.is_empty()).collect();
    let Some(cwd) = cwd else {
        return given.into_iter().map(Into::into).collect();
    };
    if given.is_empty() {
        return vec![cwd.to_owned()];
    }
    given.into_iter().map(|path| cwd.join(path)).collect()
}

fn config_from_flags(args: &AppArgs) -> AppConfig {
    let defaults = AppConfig::default();
    let cwd = std::env::current_dir().ok();
    let chat = Program::of(&args.command).is_built_in();
    AppConfig {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| default_name(&args.command)),
        listen: args.listen,
        no_listen: args.no_listen,
        // One worker per CPU for the chat; one for another program (PM2's default), which may
        // not be written to share a port.
        instances: args
            .instances
            .unwrap_or(if chat { defaults.instances } else { 1 }),
        scheduling: args.scheduling,
        node_id: args.node_id,
        peek_timeout: args.peek_timeout,
        handoff_timeout: args.handoff_timeout,
        ipc_max_line: usize::try_from(args.ipc_max_line).unwrap_or(usize::MAX),
        ipc_queue_size: usize::try_from(args.ipc_queue_size).unwrap_or(usize::MAX),
        command: args.command.clone(),
        env: args
            .env
            .iter()
            .cloned()
            .chain(
                args.redis
                    .iter()
                    .map(|url| ("REDIS_URL".to_owned(), url.clone())),
            )
            .collect(),
        user: args.user.clone(),
        restart: supervisor::RestartPolicy {
            first_restart_at_once: args.first_restart_at_once,
            initial_delay: args.restart_delay,
            max_delay: args.restart_max_delay,
            reset_after: args.restart_reset,
            min_uptime: args.min_uptime,
            max_fast_exits: args.crash_loop_exits,
            stop_exit_codes: args.stop_exit_codes.clone(),
            ..defaults.restart
        },
        health: supervisor::HealthConfig {
            interval: args.health_interval,
            timeout: args.health_timeout,
            max_misses: args.health_misses,
            url: args.health_url.clone(),
            tcp: args.health_tcp,
        },
        worker_port_base: args.worker_port_base,
        drain_timeout: args.drain_timeout,
        stop_timeout: args.stop_timeout,
        kill_signal: args.kill_signal,
        ready_timeout: args.ready_timeout,
        wait_ready: args.wait_ready,
        max_memory: args.max_memory,
        log_max_size: args.log_max_size,
        log_keep: args.log_keep,
        log_date_format: args.log_date_format.clone(),
        log_json: args.log_json,
        log_split: args.log_split,
        log_max_line: usize::try_from(args.log_max_line).unwrap_or(usize::MAX),
        spare: usize::from(args.spare),
        watch: supervisor::WatchConfig {
            paths: watched_paths(args, cwd.as_deref()),
            ignore: defaults
                .watch
                .ignore
                .iter()
                .chain(&args.watch_ignore)
                .cloned()
                .collect(),
            delay: args.watch_delay,
        },
        cron_restart: args.cron_restart.clone(),
        hooks: supervisor::hooks::HookConfig {
            on_event: args.on_event.clone(),
            timeout: args.on_event_timeout,
            max_per_minute: args.on_event_rate,
            ..defaults.hooks.clone()
        },
        admin: supervisor::AdminConfig {
            listen: args.admin,
            token_file: args.admin_token_file.clone(),
        },
        cwd,
        ..defaults
    }
}

#[cfg(test)]
mod tests {
    use super::default_name;

    fn name_of(command: &[&str]) -> String {
        default_name(&command.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn an_app_is_named_after_its_program_or_script() {
        assert_eq!(name_of(&[]), "chat");
        assert_eq!(name_of(&["serve", "--port", "1"]), "chat");
        assert_eq!(name_of(&["node", "api.js"]), "api");
        assert_eq!(
            name_of(&["/usr/bin/python3", "-u", "jobs/worker.py"]),
            "worker"
        );
        assert_eq!(name_of(&["/bin/sh", "-c", "exec sleep 1"]), "sh");
        assert_eq!(name_of(&["node", "-e", "1"]), "node");
        assert_eq!(name_of(&["/opt/bin/my server"]), "my-server");
    }
}
