//! What the system says about a process: whether it runs and its command line (from /proc),
//! its CPU and memory (from sysinfo, which refreshes only the process asked for).

use std::time::{Duration, Instant};

use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System};

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

/// sysinfo's view of process `pid` alone, with what `kind` asks refreshed; `None` when the
/// process is gone.
fn refresh_one(system: &mut System, pid: u32, kind: ProcessRefreshKind) -> Option<&Process> {
    let pid = Pid::from_u32(pid);
    system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    system.process(pid)
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let mut system = System::new();
    refresh_one(
        &mut system,
        pid,
        ProcessRefreshKind::nothing().with_memory(),
    )
    .map(Process::memory)
}

/// CPU usage between two samples, as a percentage of one core.
#[derive(Debug)]
pub struct CpuSampler {
    /// Kept between samples: sysinfo learns the machine's CPUs on its first refresh with CPU
    /// times, and keeps the process's `stat` file open for the next.
    system: System,
    /// When the last sample was taken, and the CPU time (user + system) the process had used.
    last: Option<(Instant, Duration)>,
    pub percent: f64,
}

impl Default for CpuSampler {
    fn default() -> Self {
        CpuSampler {
            system: System::new(),
            last: None,
            percent: 0.0,
        }
    }
}

impl Clone for CpuSampler {
    fn clone(&self) -> Self {
        CpuSampler {
            system: System::new(),
            last: self.last,
            percent: self.percent,
        }
    }
}

impl CpuSampler {
    /// The CPU time (user + system) the process had used at the last sample.
    pub fn used(&self) -> Duration {
        self.last.map_or(Duration::ZERO, |(_, used)| used)
    }

    /// Samples the process's CPU time and returns its resident memory in bytes, both from one
    /// refresh; `None` when the process is gone.
    pub fn sample(&mut self, pid: u32) -> Option<u64> {
        let (used, memory) = refresh_one(
            &mut self.system,
            pid,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        )
        .map(|process| {
            (
                Duration::from_millis(process.accumulated_cpu_time()),
                process.memory(),
            )
        })?;
        let now = Instant::now();
        if let Some((then, before)) = self.last {
            let wall = now.duration_since(then).as_secs_f64();
            if wall > 0.0 {
                self.percent = used.saturating_sub(before).as_secs_f64() / wall * 100.0;
            }
        }
        self.last = Some((now, used));
        Some(memory)
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
        let ours = nix::unistd::getpgrp().as_raw() as u32;
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
        assert!(cpu.sample(pid).is_some_and(|memory| memory > 1024 * 1024));
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
