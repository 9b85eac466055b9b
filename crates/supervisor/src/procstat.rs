//! CPU and memory of a process, read from /proc.

use std::time::Instant;

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
