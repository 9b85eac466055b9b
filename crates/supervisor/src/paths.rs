//! Where an app's state lives: `$CHATCTL_HOME/apps/<name>/{control.sock, master.pid,
//! config.json, secret, logs/}`. The app directory is private to its owner (0700). Workers'
//! private sockets are abstract (`crate::handoff`): nothing of theirs is on disk.

use std::path::{Path, PathBuf};

/// chatctl's state directory: `$CHATCTL_HOME`, else `~/.chatctl`.
pub fn home() -> PathBuf {
    if let Some(home) = std::env::var_os("CHATCTL_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".chatctl")
}

/// The files of one app.
#[derive(Debug, Clone)]
pub struct AppPaths {
    pub name: String,
    pub dir: PathBuf,
    pub control: PathBuf,
    /// Where a new master binds its control socket during an upgrade, renamed over
    /// `control` once it takes over (see `crate::upgrade`).
    pub control_next: PathBuf,
    pub pid: PathBuf,
    pub config: PathBuf,
    pub secret: PathBuf,
    pub logs: PathBuf,
    pub log_file: PathBuf,
    /// The workers' stdout and stderr with `log_split`.
    pub out_log: PathBuf,
    pub err_log: PathBuf,
    /// Where a daemonized master's own stderr goes (panics, errors before logging starts).
    pub master_stderr: PathBuf,
}

impl AppPaths {
    pub fn new(home: &Path, name: &str) -> Self {
        let dir = home.join("apps").join(name);
        let logs = dir.join("logs");
        AppPaths {
            name: name.to_owned(),
            control: dir.join("control.sock"),
            control_next: dir.join("control.sock.next"),
            pid: dir.join("master.pid"),
            config: dir.join("config.json"),
            secret: dir.join("secret"),
            log_file: logs.join("app.log"),
            out_log: logs.join("out.log"),
            err_log: logs.join("err.log"),
            master_stderr: logs.join("master.stderr"),
            logs,
            dir,
        }
    }

    /// Creates the app's directories, private to the owner. Workers need nothing in them: the
    /// master passes them their sockets as file descriptors.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for (dir, mode) in [(&self.dir, 0o700), (&self.logs, 0o700)] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// Removes what a running master leaves behind: not the app's definition (`config.json`,
    /// which `chatctl start NAME` starts again), nor the logs.
    pub fn remove_runtime_files(&self) {
        for file in [&self.control, &self.control_next, &self.pid] {
            let _ = std::fs::remove_file(file);
        }
        // Where older versions kept the workers' sockets.
        let _ = std::fs::remove_dir_all(self.dir.join("workers"));
    }
}

/// The names of the apps whose master runs (or ran and died) under `home`: those with a
/// control socket.
pub fn app_names(home: &Path) -> Vec<String> {
    names_with(home, "control.sock")
}

/// The names of every app defined under `home`, running or stopped: those with a definition.
pub fn defined_apps(home: &Path) -> Vec<String> {
    names_with(home, "config.json")
}

fn names_with(home: &Path, file: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(home.join("apps")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(file).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
