//! CPU time and resident memory of other processes (the server's), from `/proc`.

use std::time::Instant;

/// CPU time (user + system) of `pid` in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 3.. of proc(5): utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What is known of one watched process over a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcessUsage {
    pub pid: u32,
    /// CPU over the measured phase, in % of one core.
    pub cpu_percent: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    #[serde(skip)]
    cpu_at_start: Option<(Instant, f64)>,
}

/// Samples the watched processes at the moments of a run that the report names.
pub struct ProcessWatch {
    pub processes: Vec<ProcessUsage>,
}

impl ProcessWatch {
    pub fn new(pids: &[u32]) -> Self {
        let mut watch = ProcessWatch {
            processes: pids
                .iter()
                .map(|&pid| ProcessUsage {
                    pid,
                    ..ProcessUsage::default()
                })
                .collect(),
        };
        for process in &mut watch.processes {
            process.rss_before_kib = rss_kib(process.pid);
        }
        watch.sample_peak();
        watch
    }

    /// Called often (with the progress line): keeps the highest RSS seen.
    pub fn sample_peak(&mut self) {
        for process in &mut self.processes {
            if let Some(rss) = rss_kib(process.pid) {
                process.rss_peak_kib = Some(process.rss_peak_kib.map_or(rss, |p| p.max(rss)));
            }
        }
    }

    /// Everyone is connected.
    pub fn connected(&mut self) {
        for process in &mut self.processes {
            process.rss_connected_kib = rss_kib(process.pid);
        }
        self.sample_peak();
    }

    /// The measured phase starts.
    pub fn start_cpu(&mut self) {
        for process in &mut self.processes {
            process.cpu_at_start = cpu_seconds(process.pid).map(|cpu| (Instant::now(), cpu));
        }
    }

    /// The measured phase ends.
    pub fn stop_cpu(&mut self) {
        self.sample_peak();
        for process in &mut self.processes {
            if let (Some((started, before)), Some(now)) =
                (process.cpu_at_start, cpu_seconds(process.pid))
            {
                let elapsed = started.elapsed().as_secs_f64();
                if elapsed > 0.0 {
                    process.cpu_percent = Some((now - before) / elapsed * 100.0);
                }
            }
        }
    }
}

/// Adds up one figure over the processes; `None` when no process has it.
pub fn sum<T: std::iter::Sum + Copy>(
    processes: &[ProcessUsage],
    figure: impl Fn(&ProcessUsage) -> Option<T>,
) -> Option<T> {
    let values: Vec<T> = processes.iter().filter_map(figure).collect();
    (!values.is_empty()).then(|| values.into_iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
