//! `chatctl startup`: the systemd unit that brings the saved apps back at boot. One template
//! unit, `chatctl@.service`; instance `chatctl@NAME` runs the saved app NAME's master in the
//! foreground (`chatctl run NAME`), so systemd supervises each master: it is ready once every
//! worker is online (`Type=notify`), pings a watchdog while it answers its control socket
//! (`WatchdogSec=`, a hung master is restarted), says `N/M workers online` in `systemctl
//! status`, and `reloading` during a rolling reload.

use std::path::Path;

/// Where `startup --install` writes the unit.
pub const UNIT_PATH: &str = "/etc/systemd/system/chatctl@.service";

/// The unit text for the chatctl executable `exe`, state directory `home`, run as `user`
/// (None: root, which starts workers as an unprivileged account).
pub fn unit(exe: &Path, home: &Path, user: Option<&str>) -> String {
    let exe = exe.display();
    let home = home.display();
    let user = user
        .map(|user| format!("User={user}\n"))
        .unwrap_or_default();
    format!(
        "# chatctl@.service, written by `chatctl startup`: instance chatctl@NAME runs the app NAME
# that `chatctl save` recorded, with its saved settings.
#   systemctl enable --now chatctl@NAME      start it now and at every boot
# To keep the port open across `systemctl restart`, let systemd hold it: install
# ops/systemd/chatctl@.socket next to this unit and `systemctl enable --now chatctl@NAME.socket`
# (the master then serves on that socket). `chatctl upgrade NAME` moves to a new binary
# without closing the port either way.
[Unit]
Description=chatctl app %i
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
{user}Environment=CHATCTL_HOME={home}
ExecStart={exe} run %i
ExecReload={exe} reload %i
KillMode=mixed
TimeoutStopSec=30
TimeoutStartSec=90
WatchdogSec=30s
Restart=on-failure
RestartSec=2s
LimitNOFILE=65536
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_saved_app_under_a_watchdog() {
        let text = unit(
            Path::new("/usr/local/bin/chatctl"),
            Path::new("/var/lib/chatctl"),
            Some("chat"),
        );
        assert!(text.contains("ExecStart=/usr/local/bin/chatctl run %i\n"));
        assert!(text.contains("Type=notify\n") && text.contains("WatchdogSec="));
        assert!(text.contains("User=chat\n"));
        assert!(!unit(Path::new("/c"), Path::new("/h"), None).contains("User="));
    }
}
