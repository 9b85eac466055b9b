//! The app log: workers' stdout/stderr and the master's own lines, each prefixed with where it
//! came from, in one file per app, rotated by size and reopened on SIGUSR1 (for logrotate).
//! Writing happens on a thread of its own so the master never blocks on the disk.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::lines::{BoundedLines, Line};

/// Lines waiting for the writer; past this, lines are dropped and counted rather than block.
const QUEUE: usize = 16 * 1024;

enum LogCommand {
    Line(Vec<u8>),
    Reopen,
}

/// A handle for writing to the app log; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    tx: SyncSender<LogCommand>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// Starts the writer thread for `path`.
    pub fn open(path: PathBuf, max_size: u64, keep: usize) -> std::io::Result<LogSink> {
        let file = open_append(&path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            path,
            file,
            max_size,
            keep,
            dropped: dropped.clone(),
        };
        std::thread::Builder::new()
            .name("chatctl-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(LogSink { tx, dropped })
    }

    /// Writes one line, prefixed.
    pub fn line(&self, prefix: &str, text: &str) {
        let mut line = Vec::with_capacity(prefix.len() + text.len() + 4);
        line.extend_from_slice(prefix.as_bytes());
        line.extend_from_slice(b" | ");
        line.extend_from_slice(text.trim_end_matches(['\n', '\r']).as_bytes());
        line.push(b'\n');
        self.send(LogCommand::Line(line));
    }

    /// Copies the lines of a worker's output into the log until the worker closes it. Bytes
    /// that are not UTF-8 are replaced, and a line longer than `max_line` bytes is cut there
    /// (and says so): whatever a program prints, its output is drained, so it never blocks on
    /// a full pipe, and costs the master at most `max_line` bytes.
    pub async fn pump(
        &self,
        output: impl tokio::io::AsyncRead + Unpin,
        prefix: &str,
        max_line: usize,
    ) {
        let mut lines = BoundedLines::new(tokio::io::BufReader::new(output), max_line);
        while let Ok(Some(line)) = lines.next_line().await {
            match line {
                Line::Complete(line) => self.line(prefix, &String::from_utf8_lossy(&line)),
                Line::Overlong(start) => {
                    let note = format!(
                        "{} [line cut at {max_line} bytes, see --log-max-line]",
                        String::from_utf8_lossy(&start)
                    );
                    self.line(prefix, &note);
                }
            }
        }
    }

    fn send(&self, command: LogCommand) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(command) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reopens the file (after an external rotation).
    pub fn reopen(&self) {
        self.send(LogCommand::Reopen);
    }
}

/// Lets `tracing` write the master's own events into the app log.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogLineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogLineWriter {
            sink: self.clone(),
            buffer: Vec::new(),
        }
    }
}

/// Collects one formatted event and hands it over as `master` lines.
pub struct LogLineWriter {
    sink: LogSink,
    buffer: Vec<u8>,
}

impl Write for LogLineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLineWriter {
    fn drop(&mut self) {
        for line in String::from_utf8_lossy(&self.buffer).lines() {
            self.sink.line("master", line);
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    max_size: u64,
    keep: usize,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<LogCommand>) {
        while let Ok(command) = rx.recv() {
            match command {
                LogCommand::Line(line) => {
                    let dropped = self.dropped.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let note = format!("master | {dropped} log lines dropped: the log writer could not keep up\n");
                        let _ = self.file.write_all(note.as_bytes());
                    }
                    let _ = self.file.write_all(&line);
                    if self.file.metadata().map(|m| m.len()).unwrap_or(0) >= self.max_size {
                        self.rotate();
                    }
                }
                LogCommand::Reopen => {
                    if let Ok(file) = open_append(&self.path) {
                        self.file = file;
                    }
                }
            }
        }
    }

    /// app.log -> app.log.1 -> ... -> app.log.<keep>, the oldest dropped.
    fn rotate(&mut self) {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.keep > 0 {
            let _ = std::fs::rename(&self.path, numbered(1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Ok(file) = open_append(&self.path) {
            self.file = file;
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let file = File::open(path)?;
    let mut lines = std::collections::VecDeque::with_capacity(n + 1);
    for line in std::io::BufReader::new(file).lines() {
        let line = line.unwrap_or_default();
        lines.push_back(line);
        if lines.len() > n {
            lines.pop_front();
        }
    }
    Ok(lines.into())
}

/// Prints lines appended to `path` as they come, following rotations, until `keep_going`
/// returns false.
pub fn follow(
    path: &Path,
    mut out: impl Write,
    keep_going: impl Fn() -> bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut file = File::open(path)?;
    let mut position = file.seek(std::io::SeekFrom::End(0))?;
    let mut inode = file.metadata()?.ino();
    let mut pending = Vec::new();
    while keep_going() {
        let mut chunk = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut chunk)?;
        position += chunk.len() as u64;
        pending.extend_from_slice(&chunk);
        if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
            out.write_all(&pending[..=end])?;
            out.flush()?;
            pending.drain(..=end);
        }
        if chunk.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            // Rotated or truncated: start over on the new file.
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.ino() != inode || meta.len() < position {
                    file = File::open(path)?;
                    inode = meta.ino();
                    position = 0;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(
                std::time::Instant::now() < deadline,
                "condition not met in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn prefixes_rotates_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("chatctl-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.log");
        let sink = LogSink::open(path.clone(), 1024, 2).unwrap();
        for i in 0..100 {
            sink.line("w0", &format!("line {i:03} {}", "x".repeat(40)));
        }
        let last = path.clone();
        wait_for(|| {
            tail(&last, 1)
                .map(|l| l.first().is_some_and(|l| l.contains("line 099")))
                .unwrap_or(false)
        });
        assert!(dir.join("app.log.1").exists());
        assert!(dir.join("app.log.2").exists());
        assert!(!dir.join("app.log.3").exists());
        assert!(std::fs::metadata(&path).unwrap().len() < 1024 + 100);
        assert!(tail(&path, 1).unwrap()[0].starts_with("w0 | line 099"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
