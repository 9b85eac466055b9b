//! CPU time and resident memory of other processes (the server's), from sysinfo, which
//! refreshes only the process asked for.

use std::time::Instant;

use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System};

/// What `read` takes from process `pid`, refreshed as `kind` says; `None` when it is gone.
fn read_process<T>(
    pid: u32,
    kind: ProcessRefreshKind,
    read: impl FnOnce(&Process) -> T,
) -> Option<T> {
    let pid = Pid::from_u32(pid);
    let mut system = System::new();
    system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    system.process(pid).map(read)
}

/// CPU time (user + system) of `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    read_process(pid, ProcessRefreshKind::nothing().with_cpu(), |process| {
        process.accumulated_cpu_time() as f64 / 1000.0
    })
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    read_process(
        pid,
        ProcessRefreshKind::nothing().with_memory(),
        |process| process.memory() / 1024,
    )
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
