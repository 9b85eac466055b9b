//! The chat workers' secrets, the cookie key and the Redis URL (which may hold a password),
//! travel through a pipe the worker inherits and reads once at start, never through its
//! environment or its command line: `/proc/PID/cmdline` is readable by every user, and
//! `/proc/PID/environ` by every process of the workers' account (`nobody` by default, which
//! other services share). Programs other than the chat app get their environment as given.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;

/// The cookie key (`--env CHAT_SECRET=...`, `serve --secret`).
pub const CHAT_SECRET: &str = "CHAT_SECRET";
/// The Redis URL (`--redis`, `--env REDIS_URL=...`, `serve --redis`).
pub const REDIS_URL: &str = "REDIS_URL";

/// `serve` flags whose value is a secret, and the name it travels under.
const SECRET_FLAGS: [(&str, &str); 2] = [("--secret", CHAT_SECRET), ("--redis", REDIS_URL)];

/// What a chat worker is started with once its secrets are taken out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Separated {
    /// The `serve` arguments without secret flags.
    pub args: Vec<String>,
    /// The environment without secret variables.
    pub env: Vec<(String, String)>,
    /// Name to value; for the pipe.
    pub secrets: BTreeMap<String, String>,
}

/// Takes the secrets out of a chat worker's `serve` arguments and environment. `master_key`
/// (the app's shared cookie key) applies unless the app brings its own. A flag wins over the
/// environment, as it does for `chatctl serve` itself.
pub fn separate(args: &[String], env: &[(String, String)], master_key: Option<&str>) -> Separated {
    let mut separated = Separated::default();
    for (name, value) in env {
        if name == CHAT_SECRET || name == REDIS_URL {
            separated.secrets.insert(name.clone(), value.clone());
        } else {
            separated.env.push((name.clone(), value.clone()));
        }
    }
    if let Some(key) = master_key {
        separated
            .secrets
            .entry(CHAT_SECRET.to_owned())
            .or_insert_with(|| key.to_owned());
    }
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let secret = SECRET_FLAGS.iter().find_map(|(flag, name)| {
            if arg.as_str() == *flag {
                Some((name, args.next().cloned()))
            } else {
                let value = arg.strip_prefix(flag)?.strip_prefix('=')?;
                Some((name, Some(value.to_owned())))
            }
        });
        match secret {
            Some((name, Some(value))) => {
                separated.secrets.insert((*name).to_owned(), value);
            }
            // A flag without its value: left for `serve` to refuse with its own message.
            Some((_, None)) => separated.args.push(arg.clone()),
            None => separated.args.push(arg.clone()),
        }
    }
    separated
}

/// A pipe holding `secrets`, closed for writing: the read end, for the worker (close-on-exec;
/// the spawn dups it to [`SECRETS_FD`]).
pub fn pipe_with(secrets: &BTreeMap<String, String>) -> std::io::Result<OwnedFd> {
    let blob = serde_json::to_vec(secrets).map_err(std::io::Error::other)?;
    // Written before the worker starts, so it must fit the pipe's buffer (64 KiB on Linux).
    if blob.len() > 60 * 1024 {
        return Err(std::io::Error::other(
            "the secrets (cookie key, Redis URL) exceed 60 KiB",
        ));
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    std::fs::File::from(write).write_all(&blob)?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn secrets_leave_the_arguments_and_the_environment() {
        let env = vec![
            ("CHAT_SECRET".to_owned(), "from-env-0123456789".to_owned()),
            ("REDIS_URL".to_owned(), "redis://:pw@h:1".to_owned()),
            ("OTHER".to_owned(), "1".to_owned()),
        ];
        let args = strings(&[
            "--redis",
            "redis://:flag@h:2",
            "--threads",
            "2",
            "--secret=flag-key-0123456789",
        ]);
        let separated = separate(&args, &env, Some("master-key-0123456789"));
        assert_eq!(separated.args, strings(&["--threads", "2"]));
        assert_eq!(separated.env, [("OTHER".to_owned(), "1".to_owned())]);
        assert_eq!(separated.secrets[REDIS_URL], "redis://:flag@h:2");
        assert_eq!(separated.secrets[CHAT_SECRET], "flag-key-0123456789");
        let from_master = separate(&[], &[], Some("master-key-0123456789"));
        assert_eq!(from_master.secrets[CHAT_SECRET], "master-key-0123456789");
        assert!(!from_master.secrets.contains_key(REDIS_URL));
    }

    #[test]
    fn the_pipe_carries_the_secrets() {
        let secrets = separate(&[], &[], Some("master-key-0123456789")).secrets;
        let read = pipe_with(&secrets).unwrap();
        let mut blob = String::new();
        std::fs::File::from(read).read_to_string(&mut blob).unwrap();
        assert_eq!(blob, r#"{"CHAT_SECRET":"master-key-0123456789"}"#);
    }
}
