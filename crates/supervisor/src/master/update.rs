//! `reload` with new settings (`chatctl reload NAME --flag ...`, `start --reload-if-running`)
//! or the caller's environment (`--update-env`): the replacements start with them.

use std::sync::Arc;

use super::{workers_account, Inner};
use crate::config::AppConfig;

/// What a reload changes besides the processes.
#[derive(Debug, Default)]
pub struct Update {
    pub config: Option<AppConfig>,
    /// The environment workers start from from now on (never written to disk).
    pub env: Option<Vec<(String, String)>>,
}

/// Why `new` cannot replace `old` in a running master: settings the master itself holds (its
/// socket, its log files, its routing), which take `chatctl stop` and `start`.
pub fn fixed_settings_changed(old: &AppConfig, new: &AppConfig) -> Option<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            changed.push(name.to_owned());
        }
    };
    check("--name", old.name == new.name);
    check("--listen", old.listen == new.listen);
    check("--no-listen", old.no_listen == new.no_listen);
    check("--scheduling", old.scheduling == new.scheduling);
    check("--node-id", old.node_id == new.node_id);
    check("--log-max-size", old.log_max_size == new.log_max_size);
    check("--log-keep", old.log_keep == new.log_keep);
    check(
        "--log-date-format",
        old.log_date_format == new.log_date_format,
    );
    check("--log-json", old.log_json == new.log_json);
    check("--log-split", old.log_split == new.log_split);
    check("--watch", old.watch == new.watch);
    check("--cron-restart", old.cron_restart == new.cron_restart);
    check("--spare", old.spare == new.spare);
    check("--admin", old.admin == new.admin);
    // A program cannot turn into the chat or back: their sockets and channels differ.
    check(
        "the program (chat or not)",
        old.capabilities() == new.capabilities(),
    );
    (!changed.is_empty()).then(|| {
        format!(
            "{} cannot change while the app runs (the master holds them): `chatctl stop {name}` then `chatctl start {name}` with them",
            changed.join(", "),
            name = old.name
        )
    })
}

impl Inner {
    /// Applies `update`, reloads every worker with it, then scales to the new number of
    /// workers. A reload that fails puts the old settings back (the old workers keep serving).
    pub(super) async fn reload_with(
        self: &Arc<Self>,
        update: Update,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let instances = update.config.as_ref().map(|c| c.instances);
        let previous = {
            let mut state = self.lock();
            let previous = (state.config.clone(), state.run_as, state.base_env.clone());
            if let Some(mut config) = update.config {
                if let Some(why) = fixed_settings_changed(&state.config, &config) {
                    return Err(why);
                }
                config.validate().map_err(|e| e.to_string())?;
                state.run_as =
                    workers_account(config.user.as_deref()).map_err(|e| e.to_string())?;
                // `scale` below changes the number of workers, once they run the new settings.
                config.instances = state.config.instances;
                state.config = config;
            }
            if let Some(env) = update.env {
                state.base_env = Some(env);
            }
            previous
        };
        match self.reload(progress).await {
            Ok(message) => {
                let config = self.lock().config.clone();
                self.save_definition(&config);
                match instances.filter(|n| *n != config.instances) {
                    Some(n) => Ok(format!("{message}; {}", self.scale(n).await?)),
                    None => Ok(message),
                }
            }
            Err(error) => {
                let mut state = self.lock();
                (state.config, state.run_as, state.base_env) = previous;
                Err(format!("{error}; the settings before this reload stay"))
            }
        }
    }

    /// Writes the app's definition where `chatctl start NAME` and `list` read it.
    pub(super) fn save_definition(&self, config: &AppConfig) {
        let json = serde_json::to_vec_pretty(config).unwrap_or_default();
        if let Err(error) = std::fs::write(&self.paths.config, json) {
            tracing::warn!(%error, path = %self.paths.config.display(), "cannot save the app's settings");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_settings_may_change_and_the_masters_own_may_not() {
        let old = AppConfig::default();
        let mut new = old.clone();
        new.max_memory = Some(1 << 30);
        new.env.push(("A".into(), "1".into()));
        new.instances = 7;
        assert_eq!(fixed_settings_changed(&old, &new), None);
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.log_json = true;
        let why = fixed_settings_changed(&old, &new).unwrap();
        assert!(
            why.starts_with("--listen, --log-json cannot change"),
            "{why}"
        );
        assert!(why.contains("chatctl stop chat"), "{why}");
    }
}
