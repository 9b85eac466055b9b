//! What /proc says about a process: whether it runs, its command line, its CPU and memory.

use std::time::Instant;

/// Whether a process with this pid runs. A zombie does not: it has exited and only waits for
/// its parent (init, for a daemonized master) to collect it.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, fields)| fields.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// Whether any process of process group `pgid` still runs (zombies do not count).
pub fn group_running(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name: state, ppid, pgrp.
            let mut fields = stat
                .rsplit_once(')')
                .map_or("", |(_, f)| f)
                .split_whitespace();
            let state = fields.next();
            let group = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
            group == Some(pgid) && !matches!(state, None | Some("Z" | "X"))
        })
}

/// A process's arguments (argv), if it runs and may be inspected.
pub fn command_line(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU usage between two samples, as a percentage of one core.
#[derive(Debug, Clone)]
pub struct CpuSampler {
    last: Option<(Instant, u64)>,
    pub percent: f64,
}

impl Default for CpuSampler {
    fn default() -> Self {
        CpuSampler {
            last: None,
            percent: 0.0,
        }
    }
}

impl CpuSampler {
    pub fn sample(&mut self, pid: u32) {
        let Some(ticks) = cpu_ticks(pid) else { return };
        let now = Instant::now();
        if let Some((then, before)) = self.last {
            let wall = now.duration_since(then).as_secs_f64();
            if wall > 0.0 {
                self.percent =
                    (ticks.saturating_sub(before) as f64 / ticks_per_second()) / wall * 100.0;
            }
        }
        self.last = Some((now, ticks));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_running_processes_from_gone_ones() {
        let pid = std::process::id();
        assert!(is_running(pid));
        assert!(command_line(pid).is_some_and(|args| !args.is_empty()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = child.id();
        // Exited but not yet collected: a zombie.
        while std::fs::read_to_string(format!("/proc/{child_pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z"))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!is_running(child_pid));
        child.wait().unwrap();
        assert!(!is_running(child_pid));
    }

    #[test]
    fn sees_the_members_of_a_process_group() {
        // SAFETY: getpgrp has no preconditions.
        let ours = unsafe { libc::getpgrp() } as u32;
        assert!(group_running(ours));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!group_running(pid));
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 1024 * 1024);
        let mut cpu = CpuSampler::default();
        cpu.sample(pid);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 100 {
            x = x.wrapping_add(1);
        }
        std::hint::black_box(x);
        cpu.sample(pid);
        assert!(cpu.percent > 10.0, "{}", cpu.percent);
    }
}
