//! The open-files limit: every connection is a descriptor, so a process that keeps the usual
//! soft limit (1,024) refuses connections long before `--max-connections`. Masters and workers
//! raise the soft limit to the hard one at start; what the hard limit still caps is said once.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors a worker needs besides its connections: the listening and hand-off sockets, IPC,
/// the private socket, log pipes, Redis connections, files being read.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
pub fn raise_open_files() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The number of connections a process with `limit` descriptors can hold, if that is below
/// `wanted`.
pub fn connections_capped(limit: u64, wanted: u64) -> Option<u64> {
    let room = limit.saturating_sub(RESERVED_DESCRIPTORS);
    (room < wanted).then_some(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_open_files();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(limit, soft);
        assert_eq!(soft, hard);
    }

    #[test]
    fn a_limit_below_the_connections_wanted_caps_them() {
        assert_eq!(connections_capped(1024, 10_000), Some(960));
        assert_eq!(connections_capped(20_000, 10_000), None);
        assert_eq!(connections_capped(10, 10_000), Some(0));
    }
}
