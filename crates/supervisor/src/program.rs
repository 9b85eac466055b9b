//! What an app's workers run, and what the master may rely on because of it. The master asks
//! for capabilities (does it speak IPC, take handed-off connections, answer `/healthz` on its
//! private socket), never "is this the chat".

/// The program of an app's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program<'a> {
    /// This executable's own app server (`chatctl serve`): the default, or `-- serve ARGS`,
    /// with `args` after `serve`.
    BuiltIn { args: &'a [String] },
    /// Any other command, as given.
    External { argv: &'a [String] },
}

/// What a program is known to do; an external program may still speak IPC, which the master
/// finds out when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Reports ready, answers pings and drains over the IPC channel: it needs neither
    /// `--wait-ready` nor `min_uptime` to count as ready.
    pub speaks_ipc: bool,
    /// Takes the connections the master hands it (sticky scheduling); any other program
    /// shares the listening socket.
    pub takes_handoff: bool,
    /// Answers `GET /healthz` on its private socket; any other program is probed on a port
    /// of its own, if at all (`--health-url`, `--health-tcp`).
    pub health_endpoint: bool,
    /// Serves HTTP, so it needs the listening socket (`--no-listen` makes no sense for it).
    pub serves_http: bool,
    /// Gets its secrets (cookie key, Redis URL) through a pipe rather than its environment.
    pub reads_secrets_pipe: bool,
    /// Hands its live sessions to the worker that replaces it, on the master's word (see
    /// [`crate::adoption`]), rather than only drain them.
    pub moves_sessions: bool,
}

impl<'a> Program<'a> {
    /// The program a command line names: none, or `serve ...`, is the built-in one.
    pub fn of(command: &'a [String]) -> Program<'a> {
        match command.split_first() {
            None => Program::BuiltIn { args: &[] },
            Some((first, args)) if first == "serve" => Program::BuiltIn { args },
            Some(_) => Program::External { argv: command },
        }
    }

    pub fn is_built_in(self) -> bool {
        matches!(self, Program::BuiltIn { .. })
    }

    pub fn capabilities(self) -> Capabilities {
        let built_in = self.is_built_in();
        Capabilities {
            speaks_ipc: built_in,
            takes_handoff: built_in,
            health_endpoint: built_in,
            serves_http: built_in,
            reads_secrets_pipe: built_in,
            moves_sessions: built_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn no_command_or_serve_with_flags_is_the_built_in_program() {
        assert_eq!(Program::of(&[]), Program::BuiltIn { args: &[] });
        let serve = command(&["serve", "--messages-per-second", "100"]);
        assert_eq!(Program::of(&serve), Program::BuiltIn { args: &serve[1..] });
        assert!(Program::of(&serve).capabilities().takes_handoff);
    }

    #[test]
    fn another_command_is_external_and_promises_nothing() {
        let api = command(&["./api", "--port={port}"]);
        assert_eq!(Program::of(&api), Program::External { argv: &api });
        let capabilities = Program::of(&api).capabilities();
        assert!(!capabilities.speaks_ipc && !capabilities.takes_handoff);
        assert!(!capabilities.health_endpoint && !capabilities.reads_secrets_pipe);
    }
}
