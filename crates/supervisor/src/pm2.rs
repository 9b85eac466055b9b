//! `chatctl import-pm2`: a PM2 ecosystem file (its `apps`, as JSON) turned into our config file
//! (`[[app]]` tables, see [`crate::ConfigFile`]). Each field PM2 has and we take is mapped; each
//! field we do not take is named in a note, never dropped silently.

use serde_json::Value;

/// The TOML text of the apps, and one note per field that was not carried over.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

/// Why an ecosystem cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no `apps` array in the ecosystem file (PM2's module.exports = {{ apps: [...] }})")]
    NoApps,
    #[error("app {0} of the ecosystem file has no `script`")]
    NoScript(usize),
}

/// Converts an ecosystem (`{"apps": [...]}`, or the array alone) into our config file.
pub fn import(ecosystem: &Value) -> Result<Imported, ImportError> {
    let apps = ecosystem
        .get("apps")
        .or(Some(ecosystem))
        .and_then(Value::as_array)
        .ok_or(ImportError::NoApps)?;
    let mut notes = Vec::new();
    let mut tables = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        tables.push(import_app(index, app, &mut notes)?);
    }
    let mut document = toml::Table::new();
    document.insert(
        "app".into(),
        toml::Value::Array(tables.into_iter().map(toml::Value::Table).collect()),
    );
    Ok(Imported {
        toml: toml::to_string(&document).unwrap_or_default(),
        notes,
    })
}

fn import_app(
    index: usize,
    app: &Value,
    notes: &mut Vec<String>,
) -> Result<toml::Table, ImportError> {
    let Some(fields) = app.as_object() else {
        return Err(ImportError::NoScript(index));
    };
    let script = fields
        .get("script")
        .and_then(Value::as_str)
        .ok_or(ImportError::NoScript(index))?;
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("app{index}"));
    let mut table = toml::Table::new();
    let mut restart = toml::Table::new();
    let mut watch = toml::Table::new();
    let mut note = |field: &str, why: &str| notes.push(format!("{name}: `{field}` {why}"));

    // The command: interpreter (PM2 runs .js with node), its args, the script, the args.
    let mut command = Vec::new();
    match fields.get("interpreter").and_then(Value::as_str) {
        Some("none") => {}
        Some(interpreter) => command.push(interpreter.to_owned()),
        None if script.ends_with(".js") || script.ends_with(".cjs") || script.ends_with(".mjs") => {
            command.push("node".to_owned())
        }
        None => {}
    }
    for key in ["interpreter_args", "node_args"] {
        command.extend(words(fields.get(key)));
    }
    command.push(script.to_owned());
    command.extend(words(fields.get("args")));
    table.insert("name".into(), name.clone().into());
    table.insert(
        "command".into(),
        toml::Value::Array(command.into_iter().map(toml::Value::from).collect()),
    );

    let mut env: Vec<(String, String)> = Vec::new();
    let mut port = None;
    for (key, value) in fields.iter() {
        let millis = || duration_millis(value);
        match key.as_str() {
            "name" | "script" | "args" | "interpreter" | "interpreter_args" | "node_args" => {}
            "exec_mode" => {
                if value.as_str() == Some("fork") || value.as_str() == Some("fork_mode") {
                    note(key, "fork: each worker gets the shared socket all the same (LISTEN_FDS)");
                }
            }
            "instances" => match value {
                Value::Number(n) if n.as_i64().is_some_and(|n| n >= 1) => {
                    table.insert("instances".into(), n.as_i64().unwrap_or(1).into());
                }
                // "max", 0 and -1 mean one per CPU (less one for -1): we take one per CPU.
                _ => {
                    table.insert(
                        "instances".into(),
                        (crate::config::default_instances() as i64).into(),
                    );
                }
            },
            "cwd" => {
                if let Some(cwd) = value.as_str() {
                    table.insert("cwd".into(), cwd.into());
                }
            }
            "env" => {
                for (key, value) in value.as_object().into_iter().flatten() {
                    let text = match value {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    if key == "PORT" {
                        port = text.parse::<u16>().ok();
                    }
                    env.push((key.clone(), text));
                }
            }
            "uid" | "user" => {
                if let Some(user) = value.as_str() {
                    table.insert("user".into(), user.into());
                }
            }
            "max_memory_restart" => match value
                .as_str()
                .map(crate::config::parse_size)
                .or_else(|| value.as_u64().map(Ok))
            {
                Some(Ok(bytes)) => {
                    table.insert("max_memory".into(), (bytes as i64).into());
                }
                _ => note(key, "is not a size like 300M: left out"),
            },
            "kill_timeout" => insert_millis(&mut table, "stop_timeout", millis(), &mut note, key),
            "listen_timeout" => insert_millis(&mut table, "ready_timeout", millis(), &mut note, key),
            "min_uptime" => insert_millis(&mut restart, "min_uptime", millis(), &mut note, key),
            "restart_delay" | "exp_backoff_restart_delay" => {
                insert_millis(&mut restart, "initial_delay", millis(), &mut note, key)
            }
            "max_restarts" => {
                if let Some(n) = value.as_u64().filter(|n| *n >= 1) {
                    restart.insert("max_fast_exits".into(), (n as i64).into());
                }
            }
            "stop_exit_codes" => {
                let codes: Vec<toml::Value> = match value {
                    Value::Array(codes) => codes.iter().filter_map(Value::as_i64).map(Into::into).collect(),
                    Value::Number(code) => code.as_i64().map(Into::into).into_iter().collect(),
                    _ => Vec::new(),
                };
                restart.insert("stop_exit_codes".into(), toml::Value::Array(codes));
            }
            "watch" => {
                let paths: Vec<toml::Value> = match value {
                    Value::Bool(true) => vec![".".into()],
                    Value::String(path) => vec![path.as_str().into()],
                    Value::Array(paths) => paths.iter().filter_map(Value::as_str).map(Into::into).collect(),
                    _ => Vec::new(),
                };
                if !paths.is_empty() {
                    if !fields.contains_key("cwd") {
                        note(key, "is relative to the app's `cwd`, which the file does not set: add cwd");
                    }
                    watch.insert("paths".into(), toml::Value::Array(paths));
                }
            }
            "ignore_watch" => {
                let mut ignore: Vec<toml::Value> = crate::config::WatchConfig::default()
                    .ignore
                    .into_iter()
                    .map(Into::into)
                    .collect();
                // PM2 takes names and regular expressions; a name is any path with it.
                let names = match value {
                    Value::String(name) => vec![name.as_str()],
                    Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                for name in names {
                    let name = name.trim_matches('/');
                    ignore.push(format!("**/{name}").into());
                    ignore.push(format!("**/{name}/**").into());
                }
                watch.insert("ignore".into(), toml::Value::Array(ignore));
            }
            "watch_delay" => insert_millis(&mut watch, "delay", millis(), &mut note, key),
            "cron_restart" => match value.as_str() {
                Some(expression) if crate::triggers::schedule(expression).is_ok() => {
                    table.insert("cron_restart".into(), expression.into());
                }
                _ => note(key, "is not a cron expression chatctl reads: left out"),
            },
            "autorestart" if value.as_bool() == Some(false) => {
                note(key, "false is not supported: chatctl always restarts a crashed worker")
            }
            key if key.starts_with("env_") => note(
                key,
                "is not imported: chatctl has no environments to switch between; merge it into `env`",
            ),
            _ => note(key, "is not supported by chatctl: left out"),
        }
    }
    if !env.is_empty() {
        let pairs = env
            .into_iter()
            .map(|(key, value)| toml::Value::Array(vec![key.into(), value.into()]))
            .collect();
        table.insert("env".into(), toml::Value::Array(pairs));
    }
    // PM2 apps read their port from PORT; chatctl binds it for them.
    let listen = format!("0.0.0.0:{}", port.unwrap_or(3000));
    if port.is_none() {
        note(
            "PORT",
            "not set in env: the app listens on 0.0.0.0:3000; change `listen`",
        );
    }
    table.insert("listen".into(), listen.into());
    if !restart.is_empty() {
        table.insert("restart".into(), toml::Value::Table(restart));
    }
    if !watch.is_empty() {
        table.insert("watch".into(), toml::Value::Table(watch));
    }
    Ok(table)
}

/// PM2 durations: a number of milliseconds, or text with a unit (`"5s"`, `"1m"`, `"300ms"`).
fn duration_millis(value: &Value) -> Option<u64> {
    if let Some(millis) = value.as_u64() {
        return Some(millis);
    }
    let text = value.as_str()?.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

fn insert_millis(
    table: &mut toml::Table,
    field: &str,
    millis: Option<u64>,
    note: &mut impl FnMut(&str, &str),
    pm2_field: &str,
) {
    match millis {
        Some(millis) => {
            table.insert(field.into(), (millis.min(i64::MAX as u64) as i64).into());
        }
        None => note(pm2_field, "is not a duration: left out"),
    }
}

/// PM2's `args` and `node_args`: an array, or one string split at spaces.
fn words(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), str::to_owned)
            })
            .collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigFile;
    use std::path::PathBuf;

    #[test]
    fn an_ecosystem_becomes_a_config_file_with_a_note_per_field_left_out() {
        let ecosystem = serde_json::json!({
            "apps": [{
                "name": "api",
                "script": "./server.js",
                "args": "--verbose --port-from-env",
                "instances": 4,
                "exec_mode": "cluster",
                "max_memory_restart": "300M",
                "kill_timeout": 3000,
                "min_uptime": "5s",
                "env": { "NODE_ENV": "production", "PORT": 8080 },
                "env_staging": { "NODE_ENV": "staging" },
                "watch": ["src", "config"],
                "ignore_watch": ["uploads"],
                "watch_delay": 1000,
                "cron_restart": "0 3 * * *",
                "cwd": "/srv/api"
            }, {
                "name": "jobs",
                "script": "worker.py",
                "interpreter": "python3",
                "instances": "max",
                "autorestart": false
            }]
        });
        let imported = import(&ecosystem).unwrap();
        let file =
            ConfigFile::parse(&imported.toml).unwrap_or_else(|e| panic!("{e}\n{}", imported.toml));
        let api = &file.app[0];
        assert_eq!(api.name, "api");
        assert_eq!(
            api.command,
            ["node", "./server.js", "--verbose", "--port-from-env"]
        );
        assert_eq!(api.instances, 4);
        assert_eq!(api.max_memory, Some(300 << 20));
        assert_eq!(api.stop_timeout.as_millis(), 3000);
        assert_eq!(api.restart.min_uptime.as_millis(), 5000);
        assert_eq!(api.listen.port(), 8080);
        assert!(api.env.contains(&("NODE_ENV".into(), "production".into())));
        assert_eq!(
            api.watch.paths,
            [PathBuf::from("src"), PathBuf::from("config")]
        );
        assert!(api.watch.ignore.contains(&"**/uploads/**".to_owned()));
        assert_eq!(api.watch.delay.as_millis(), 1000);
        assert_eq!(api.cron_restart.as_deref(), Some("0 3 * * *"));
        let jobs = &file.app[1];
        assert_eq!(jobs.command, ["python3", "worker.py"]);
        assert_eq!(jobs.instances, crate::config::default_instances());
        for field in ["env_staging", "autorestart", "PORT"] {
            assert!(
                imported
                    .notes
                    .iter()
                    .any(|note| note.contains(&format!("`{field}`"))),
                "no note for {field}: {:?}",
                imported.notes
            );
        }
    }

    #[test]
    fn an_ecosystem_without_apps_or_script_is_refused() {
        assert!(matches!(
            import(&serde_json::json!({})),
            Err(ImportError::NoApps)
        ));
        assert!(matches!(
            import(&serde_json::json!({"apps": [{"name": "x"}]})),
            Err(ImportError::NoScript(0))
        ));
    }
}
