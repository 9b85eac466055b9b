//! A real Prometheus server (Debian's `prometheus`) scraping targets of a test, on a loopback
//! port of [`crate::port`], with its own configuration and storage in a directory of its own;
//! killed by pid and its directory removed when dropped. Queried through its HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::wait::poll_until;

/// How long the server may take to get ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A `prometheus` of this test.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// One series of a query's answer: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

impl Prometheus {
    /// Starts a server scraping `targets` (HOST:PORT, path `/metrics`) every `interval`, and
    /// returns once it is ready. Panics, naming the fix, when Prometheus is not installed.
    pub fn start(targets: &[String], interval: Duration) -> Prometheus {
        let binary = PathBuf::from(
            std::env::var_os("CHATCTL_PROMETHEUS").unwrap_or("/usr/bin/prometheus".into()),
        );
        if !binary.exists() {
            panic!("{binary:?} is missing: run ops/test-deps.sh (Debian package prometheus)");
        }
        let port = crate::port();
        let dir =
            std::env::temp_dir().join(format!("testkit-prometheus-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for prometheus");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let millis = interval.as_millis();
        let config = format!(
            "global:\n  scrape_interval: {millis}ms\n  scrape_timeout: {millis}ms\n\
             scrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("writing the prometheus config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = Prometheus { child, port, dir };
        let ready = poll_until(READY_DEADLINE, Duration::from_millis(100), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", server.log());
            }
            matches!(server.get("/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(ready.is_some(), "prometheus not ready:\n{}", server.log());
        server
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The series of an instant query (`/api/v1/query`); empty until the first scrapes, or
    /// when Prometheus cannot answer.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        self.try_query(promql).unwrap_or_default()
    }

    /// Like [`Prometheus::query`], with the reason when Prometheus refuses the query (a
    /// PromQL error) or cannot be asked.
    pub fn try_query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = self.get(&path).map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .filter_map(|s| {
                        Some(Sample {
                            labels: s["metric"].as_object()?.clone(),
                            value: s["value"][1].as_str()?.parse().ok()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The scrape targets' health as Prometheus sees it (`up`, `down`, `unknown`), with the
    /// last scrape error.
    pub fn targets(&self) -> Vec<(String, String)> {
        let Ok((200, body)) = self.get("/api/v1/targets") else {
            return Vec::new();
        };
        let answer: Value = serde_json::from_str(&body).unwrap_or_default();
        answer["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        let health = t["health"].as_str().unwrap_or("").to_owned();
                        let error = t["lastError"].as_str().unwrap_or("").to_owned();
                        (health, error)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        crate::http::get(self.port, path)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `text` with everything but unreserved characters percent-encoded, for a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
