//! What reloads an app by itself: files that change (`--watch`) and a schedule
//! (`--cron-restart`). This module only says when; the master reloads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::notify::{RecursiveMode, Watcher as _};
use croner::Cron;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// `--watch`: which files reload the app when they change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Files and directories watched (directories recursively); none: no watching.
    pub paths: Vec<PathBuf>,
    /// Changed paths matching one of these globs never cause a reload.
    pub ignore: Vec<String>,
    /// Changes are gathered this long after the first one, so a deploy that writes many files
    /// causes one reload.
    #[serde(with = "crate::millis")]
    pub delay: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            paths: Vec::new(),
            ignore: ["**/.git/**", "**/node_modules/**", "**/*.log"]
                .map(str::to_owned)
                .to_vec(),
            delay: Duration::from_millis(500),
        }
    }
}

/// Checks the watch and cron settings of an app (for `AppConfig::validate`); relative watched
/// paths need the app's `cwd`.
pub fn check(
    watch: &WatchConfig,
    cron_restart: Option<&str>,
    cwd: Option<&Path>,
) -> Result<(), String> {
    if let Some(expression) = cron_restart {
        schedule(expression)?;
    }
    ignore_set(&watch.ignore)?;
    if !watch.paths.is_empty() && watch.delay.is_zero() {
        return Err("--watch-delay must be above zero".into());
    }
    let relative = watch.paths.iter().find(|path| path.is_relative());
    if let (Some(path), None) = (relative, cwd) {
        return Err(format!(
            "watched path {} is relative and the app has no `cwd` to resolve it against: give an absolute path or set cwd",
            path.display()
        ));
    }
    Ok(())
}

/// Parses a cron expression: 5 fields (minute first), or 6 with seconds first.
pub fn schedule(expression: &str) -> Result<Cron, String> {
    expression.parse::<Cron>().map_err(|error| {
        format!(
            "--cron-restart {expression:?} is not a cron expression ({error}): 5 fields \
             (minute hour day month weekday, e.g. '0 3 * * *') or 6 with seconds first"
        )
    })
}

/// How long from now until the next time `cron` names (in UTC), or None if it names none.
pub fn until_next(cron: &Cron) -> Option<Duration> {
    let now = chrono::Utc::now();
    let next = cron.find_next_occurrence(&now, false).ok()?;
    (next - now).to_std().ok()
}

fn ignore_set(globs: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let glob = Glob::new(glob)
            .map_err(|error| format!("--watch-ignore {glob:?} is not a glob: {error}"))?;
        set.add(glob);
    }
    set.build()
        .map_err(|error| format!("--watch-ignore: {error}"))
}

/// Changes noticed but not yet gathered; beyond this many the watcher only needs to know that
/// something changed, not what.
const PENDING: usize = 256;

/// Watches an app's files; see [`Watcher::changed`].
pub struct Watcher {
    /// Dropping it stops the watching (its thread and descriptors).
    _watcher: ::notify::RecommendedWatcher,
    changes: mpsc::Receiver<PathBuf>,
    delay: Duration,
}

impl Watcher {
    /// Watches `config.paths`, the relative ones in `cwd`. Nothing under `own` changes
    /// anything: chatctl's own state (logs, sockets, pid files) may lie in a watched tree
    /// (`CHATCTL_HOME` in the app's directory).
    pub fn new(
        config: &WatchConfig,
        cwd: Option<&std::path::Path>,
        own: PathBuf,
    ) -> Result<Watcher, String> {
        let ignore = ignore_set(&config.ignore)?;
        let (tx, changes) = mpsc::channel(PENDING);
        let mut watcher =
            ::notify::recommended_watcher(move |event: ::notify::Result<::notify::Event>| {
                let Ok(event) = event else { return };
                // Reading a file is no change.
                if event.kind.is_access() || event.kind.is_other() {
                    return;
                }
                for path in event.paths {
                    if !ignore.is_match(&path) && !path.starts_with(&own) {
                        // Full: a reload is due anyway.
                        let _ = tx.try_send(path);
                    }
                }
            })
            .map_err(|error| format!("cannot watch files: {error}"))?;
        for path in &config.paths {
            let path = match cwd {
                Some(cwd) => cwd.join(path),
                None => path.clone(),
            };
            watcher
                .watch(&path, RecursiveMode::Recursive)
                .map_err(|error| format!("cannot watch {}: {error}", path.display()))?;
        }
        Ok(Watcher {
            _watcher: watcher,
            changes,
            delay: config.delay,
        })
    }

    /// Waits for a change, then gathers the changes of the next `delay` (a deploy writes many
    /// files: one reload), and returns the changed paths (the first few).
    pub async fn changed(&mut self) -> Vec<PathBuf> {
        let Some(first) = self.changes.recv().await else {
            // The watcher's thread is gone: nothing will change any more.
            return std::future::pending().await;
        };
        tokio::time::sleep(self.delay).await;
        let mut changed = vec![first];
        while let Ok(path) = self.changes.try_recv() {
            if changed.len() < 5 && !changed.contains(&path) {
                changed.push(path);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_takes_five_or_six_fields_and_names_the_fix() {
        assert!(schedule("0 3 * * *").is_ok());
        assert!(schedule("*/2 * * * * *").is_ok());
        let error = schedule("every night").unwrap_err();
        assert!(
            error.contains("--cron-restart") && error.contains("5 fields"),
            "{error}"
        );
    }

    #[test]
    fn a_cron_every_second_is_due_within_a_second() {
        let cron = schedule("* * * * * *").unwrap();
        let wait = until_next(&cron).unwrap();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
    }

    #[test]
    fn ignore_globs_must_parse() {
        let mut watch = WatchConfig {
            ignore: vec!["[".into()],
            ..WatchConfig::default()
        };
        assert!(check(&watch, None, None)
            .unwrap_err()
            .contains("--watch-ignore"));
        watch.ignore = WatchConfig::default().ignore;
        watch.paths = vec!["relative".into()];
        assert!(check(&watch, None, None).unwrap_err().contains("absolute"));
        let cwd = Path::new("/srv/app");
        assert_eq!(check(&watch, None, Some(cwd)), Ok(()));
    }

    #[tokio::test]
    async fn a_change_is_reported_once_after_the_delay_and_ignored_files_are_not() {
        let dir = std::env::temp_dir().join(format!("chatctl-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = WatchConfig {
            paths: vec![dir.clone()],
            // Generous: every event of the writes below arrives within it, even on a loaded
            // machine, so they make one change.
            delay: Duration::from_secs(1),
            ..WatchConfig::default()
        };
        let own = dir.join("state");
        std::fs::create_dir_all(&own).unwrap();
        let mut watcher = Watcher::new(&config, None, own.clone()).unwrap();
        std::fs::write(dir.join("ignored.log"), "x").unwrap();
        std::fs::write(own.join("master.pid"), "1").unwrap();
        std::fs::write(dir.join("app.js"), "1").unwrap();
        std::fs::write(dir.join("app.js"), "2").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(30), watcher.changed())
            .await
            .expect("no change reported");
        assert_eq!(changed, vec![dir.join("app.js")]);
        let again = tokio::time::timeout(Duration::from_millis(300), watcher.changed()).await;
        assert!(again.is_err(), "one change reported twice: {again:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
