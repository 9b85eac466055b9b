//! Signals by name, as users write them (`SIGINT`, `INT`, `int`, `2`): the one a worker gets
//! first on stop and drain (`--kill-signal`), and those `chatctl signal` sends.

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// A signal chosen by the user; serialized by its name (`"SIGINT"`) in config files and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SignalName(Signal);

impl SignalName {
    pub const TERM: SignalName = SignalName(Signal::SIGTERM);
}

impl From<SignalName> for Signal {
    fn from(name: SignalName) -> Signal {
        name.0
    }
}

impl std::str::FromStr for SignalName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let signal = match text.parse::<i32>() {
            Ok(number) => Signal::try_from(number).ok(),
            Err(_) => {
                let upper = text.to_ascii_uppercase();
                let full = if upper.starts_with("SIG") {
                    upper
                } else {
                    format!("SIG{upper}")
                };
                full.parse::<Signal>().ok()
            }
        };
        signal.map(SignalName).ok_or_else(|| {
            format!("unknown signal {text:?}: use a name like SIGTERM, SIGINT, SIGUSR2 or HUP, or a number (see `kill -l`)")
        })
    }
}

impl std::fmt::Display for SignalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl TryFrom<String> for SignalName {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<SignalName> for String {
    fn from(signal: SignalName) -> String {
        signal.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ways_users_write_signals() {
        for text in ["SIGINT", "INT", "int", "sigint", "2"] {
            assert_eq!(
                Signal::from(text.parse::<SignalName>().unwrap()),
                Signal::SIGINT,
                "{text}"
            );
        }
        assert_eq!("USR2".parse::<SignalName>().unwrap().to_string(), "SIGUSR2");
        for bad in ["", "SIGNOPE", "0", "999", "-1"] {
            assert!(bad.parse::<SignalName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn round_trips_as_its_name() {
        let json = serde_json::to_string(&SignalName(Signal::SIGQUIT)).unwrap();
        assert_eq!(json, "\"SIGQUIT\"");
        assert!(serde_json::from_str::<SignalName>("\"SIGBOGUS\"").is_err());
    }
}
