//! `redis-server` processes of a test: standalone (optionally with a password) or as the nodes
//! of a Redis Cluster, on loopback ports of [`crate::port`], killed by pid when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait::poll_until;

/// How long a server or a cluster may take to get ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A `redis-server` of this test, killed (by pid) when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// `requirepass`, if the server has one.
    password: Option<String>,
    /// A cluster node's own directory (its `nodes.conf`), removed when dropped.
    dir: Option<PathBuf>,
}

impl RedisServer {
    /// A server on a port of the test kit.
    pub fn start() -> Self {
        Self::start_on(crate::port())
    }

    /// Starts on `port` and returns once the server says it accepts connections.
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, None, None)
    }

    /// A server on `port` that wants `password` (`requirepass`).
    pub fn start_with_password(port: u16, password: &str) -> Self {
        Self::spawn(port, Some(password.to_owned()), None)
    }

    /// Starts a node for a Redis Cluster (`--cluster-enabled yes`) on a free port, in a
    /// directory of its own for its cluster state file.
    pub fn start_cluster_node() -> Self {
        let port = crate::port();
        let dir = std::env::temp_dir().join(format!(
            "testkit-redis-cluster-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster node");
        Self::spawn(port, None, Some(dir))
    }

    fn spawn(port: u16, password: Option<String>, dir: Option<PathBuf>) -> Self {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(password) = &password {
            command.args(["--requirepass", password]);
        }
        if let Some(dir) = &dir {
            let conf = dir.join(format!("nodes-{port}.conf"));
            command
                .current_dir(dir)
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(conf)
                .args(["--cluster-node-timeout", "5000"])
                // The bus port defaults to port + 10000, which may lie in the kernel's
                // ephemeral range: reserve one of its own.
                .args(["--cluster-port", &crate::port().to_string()]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run redis-server ({error}): run ops/test-deps.sh (Debian package redis-server)")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The server's own word that it accepts connections, rather than probing its port: the
        // log also says why it did not start.
        std::thread::spawn(move || {
            let mut log = String::new();
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            let mut told = false;
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                log.push_str(&line);
                if !told && line.contains("Ready to accept connections") {
                    let _ = ready_tx.send(Ok(()));
                    told = true;
                }
                line.clear();
            }
            if !told {
                let _ = ready_tx.send(Err(log));
            }
        });
        match ready_rx.recv_timeout(READY_DEADLINE) {
            Ok(Ok(())) => RedisServer {
                child,
                port,
                password,
                dir,
            },
            Ok(Err(log)) => panic!("redis-server on port {port} exited:\n{log}"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {port} did not get ready");
            }
        }
    }

    /// The URL clients connect with, the password included.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `host:port`, as `redis-cli --cluster create` takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills this server and starts an empty one on the same port, with the same password.
    pub fn restart(&mut self) {
        self.kill();
        *self = Self::spawn(self.port, self.password.clone(), None);
    }

    /// `redis-cli ARGS` against this server; its output, or why it failed.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run redis-cli ({error}): run ops/test-deps.sh"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "redis-cli {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Three masters without replicas, every slot assigned, `cluster_state:ok` on each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
        let mut create = Command::new("redis-cli");
        create
            .args(["--cluster", "create"])
            .args(nodes.iter().map(RedisServer::address))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = create
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run redis-cli ({error}): run ops/test-deps.sh"));
        let pid = child.id();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait_with_output());
        });
        match done_rx.recv_timeout(READY_DEADLINE) {
            Ok(Ok(output)) if output.status.success() => {}
            Ok(Ok(output)) => panic!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            Ok(Err(error)) => panic!("redis-cli --cluster create: {error}"),
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("redis-cli --cluster create did not finish");
            }
        }
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            wait_until_ok(node);
        }
        cluster
    }

    /// The seed URLs for a cluster client: two of the three, so the third is found.
    pub fn url(&self) -> String {
        format!("{},{}", self.nodes[0].url(), self.nodes[1].url())
    }

    /// The port of the node that owns `key`'s slot: the only one that runs a command on it
    /// instead of answering MOVED.
    pub fn owner(&self, key: &str) -> u16 {
        let owners: Vec<u16> = self
            .nodes
            .iter()
            .filter(|node| {
                // redis-cli prints an integer reply as the bare number when its output is not a
                // terminal, and a MOVED error as text.
                node.cli(&["EXISTS", key])
                    .is_ok_and(|reply| reply.trim().parse::<i64>().is_ok())
            })
            .map(|node| node.port)
            .collect();
        assert_eq!(owners.len(), 1, "{key} is owned by {owners:?}");
        owners[0]
    }
}

/// Polls `CLUSTER INFO` on `node` until it reports `cluster_state:ok`.
fn wait_until_ok(node: &RedisServer) {
    let mut last = String::new();
    let ok = poll_until(READY_DEADLINE, Duration::from_millis(50), || {
        last = node.cli(&["CLUSTER", "INFO"]).unwrap_or_else(|error| error);
        last.lines()
            .any(|line| line.trim() == "cluster_state:ok")
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "node {} never reached cluster_state:ok:\n{last}",
        node.port
    );
}
