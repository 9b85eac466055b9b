//! The app log: workers' stdout/stderr and the master's own lines, each prefixed with where it
//! came from and stamped with the time, in one file per app (or, split, the workers' stdout and
//! stderr in files of their own, as PM2's out_file/error_file), rotated by size and reopened
//! on SIGUSR1 (for logrotate). Writing happens on a thread per file so the master never blocks
//! on the disk.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::lines::{BoundedLines, Line};

/// Lines waiting for the writer; past this, lines are dropped and counted rather than block.
const QUEUE: usize = 16 * 1024;

enum LogCommand {
    Line(Vec<u8>),
    Reopen,
    /// Answered once every command before it is written: what is logged before an exit is kept.
    Flush(SyncSender<()>),
}

/// Which output of a worker a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// How worker lines are written (`--log-date-format`, `--log-json`).
#[derive(Debug, Clone, Default)]
pub struct LineFormat {
    /// The app's name, in JSON lines.
    pub app: String,
    /// strftime-like, UTC (`crate::timestamp`); None: lines are not stamped.
    pub date_format: Option<String>,
    /// One JSON object per line instead of `w0 | TIME text`.
    pub json: bool,
}

/// A handle for writing to the app log; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    app_log: LogFile,
    /// The workers' stdout and stderr files, when they are apart from the app log.
    split: Option<(LogFile, LogFile)>,
    format: Arc<LineFormat>,
}

/// One log file's writer thread.
#[derive(Clone)]
struct LogFile {
    tx: SyncSender<LogCommand>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// The app's log files as its settings ask: `app.log`, and `out.log` / `err.log` beside it
    /// with `log_split`.
    pub fn open_app(
        paths: &crate::AppPaths,
        config: &crate::AppConfig,
    ) -> std::io::Result<LogSink> {
        let (max_size, keep) = (config.log_max_size, config.log_keep);
        let app_log = LogFile::open(paths.log_file.clone(), max_size, keep)?;
        let split = if config.log_split {
            Some((
                LogFile::open(paths.out_log.clone(), max_size, keep)?,
                LogFile::open(paths.err_log.clone(), max_size, keep)?,
            ))
        } else {
            None
        };
        let format = LineFormat {
            app: config.name.clone(),
            date_format: config.worker_date_format().map(str::to_owned),
            json: config.log_json,
        };
        Ok(LogSink {
            app_log,
            split,
            format: Arc::new(format),
        })
    }

    /// One file at `path`, lines as given.
    pub fn open(path: PathBuf, max_size: u64, keep: usize) -> std::io::Result<LogSink> {
        Ok(LogSink {
            app_log: LogFile::open(path, max_size, keep)?,
            split: None,
            format: Arc::default(),
        })
    }

    /// Writes one line, prefixed.
    pub fn line(&self, prefix: &str, text: &str) {
        self.app_log.send(LogCommand::Line(prefixed(prefix, text)));
    }

    /// Writes one line of the master's own (already stamped by `tracing`).
    fn master_line(&self, text: &str) {
        if self.format.json {
            let line = self.json_line(None, "master", text);
            self.app_log.send(LogCommand::Line(line));
        } else {
            self.line("master", text);
        }
    }

    /// Writes one line of worker `worker`'s output, stamped, to the file of its stream.
    pub fn worker_line(&self, worker: usize, stream: Stream, text: &str) {
        let stream_name = match stream {
            Stream::Out => "out",
            Stream::Err => "err",
        };
        let line = if self.format.json {
            self.json_line(Some(worker), stream_name, text)
        } else {
            let prefix = match stream {
                Stream::Out => format!("w{worker}"),
                Stream::Err => format!("w{worker} err"),
            };
            match &self.format.date_format {
                Some(date_format) => {
                    let time = crate::timestamp::format_utc(SystemTime::now(), date_format);
                    prefixed(&prefix, &format!("{time} {text}"))
                }
                None => prefixed(&prefix, text),
            }
        };
        let file = match (&self.split, stream) {
            (Some((out, _)), Stream::Out) => out,
            (Some((_, err)), Stream::Err) => err,
            (None, _) => &self.app_log,
        };
        file.send(LogCommand::Line(line));
    }

    fn json_line(&self, worker: Option<usize>, stream: &str, text: &str) -> Vec<u8> {
        let date_format = self
            .format
            .date_format
            .as_deref()
            .unwrap_or(crate::timestamp::DEFAULT_DATE_FORMAT);
        let object = serde_json::json!({
            "time": crate::timestamp::format_utc(SystemTime::now(), date_format),
            "app": self.format.app,
            "worker": worker,
            "stream": stream,
            "message": text.trim_end_matches(['\n', '\r']),
        });
        let mut line = object.to_string().into_bytes();
        line.push(b'\n');
        line
    }

    /// Copies the lines of a worker's output into the log until the worker closes it. Bytes
    /// that are not UTF-8 are replaced, and a line longer than `max_line` bytes is cut there
    /// (and says so): whatever a program prints, its output is drained, so it never blocks on
    /// a full pipe, and costs the master at most `max_line` bytes.
    pub async fn pump(
        &self,
        output: impl tokio::io::AsyncRead + Unpin,
        worker: usize,
        stream: Stream,
        max_line: usize,
    ) {
        let mut lines = BoundedLines::new(tokio::io::BufReader::new(output), max_line);
        while let Ok(Some(line)) = lines.next_line().await {
            match line {
                Line::Complete(line) => {
                    self.worker_line(worker, stream, &String::from_utf8_lossy(&line))
                }
                Line::Overlong(start) => {
                    let note = format!(
                        "{} [line cut at {max_line} bytes, see --log-max-line]",
                        String::from_utf8_lossy(&start)
                    );
                    self.worker_line(worker, stream, &note);
                }
            }
        }
    }

    /// Waits, at most `timeout`, until every line logged so far is in the files: the writer
    /// threads end with the process, and a master's last lines (its workers' last words) would
    /// go with them.
    pub fn flush(&self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut files = vec![&self.app_log];
        if let Some((out, err)) = &self.split {
            files.extend([out, err]);
        }
        for file in files {
            let (done, written) = sync_channel(1);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if send_within(&file.tx, LogCommand::Flush(done), left) {
                let _ = written.recv_timeout(left);
            }
        }
    }

    /// Reopens the files (after an external rotation).
    pub fn reopen(&self) {
        self.app_log.send(LogCommand::Reopen);
        if let Some((out, err)) = &self.split {
            out.send(LogCommand::Reopen);
            err.send(LogCommand::Reopen);
        }
    }
}

impl LogFile {
    /// Starts the writer thread for `path`.
    fn open(path: PathBuf, max_size: u64, keep: usize) -> std::io::Result<LogFile> {
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
        Ok(LogFile { tx, dropped })
    }

    fn send(&self, command: LogCommand) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(command) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Queues `command` for a log writer, waiting at most `timeout` for room (std's `SyncSender`
/// has no `send_timeout`); false if it could not.
fn send_within(
    tx: &SyncSender<LogCommand>,
    mut command: LogCommand,
    timeout: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match tx.try_send(command) {
            Ok(()) => return true,
            Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                command = back;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
}

/// `prefix | text` and a newline.
fn prefixed(prefix: &str, text: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(prefix.len() + text.len() + 4);
    line.extend_from_slice(prefix.as_bytes());
    line.extend_from_slice(b" | ");
    line.extend_from_slice(text.trim_end_matches(['\n', '\r']).as_bytes());
    line.push(b'\n');
    line
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
            self.sink.master_line(line);
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
                LogCommand::Flush(done) => {
                    let _ = done.send(());
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

/// `chatctl flush`: empties the app's log files and removes the rotated ones. A master that
/// runs keeps writing: its files are opened for appending, so its next line lands at the
/// start of the emptied file. Returns the files emptied or removed.
pub fn flush(paths: &crate::AppPaths) -> std::io::Result<Vec<PathBuf>> {
    let mut flushed = Vec::new();
    for path in [&paths.log_file, &paths.out_log, &paths.err_log] {
        match OpenOptions::new().write(true).open(path) {
            Ok(file) => {
                file.set_len(0)?;
                flushed.push(path.clone());
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        for n in 1.. {
            let rotated = PathBuf::from(format!("{}.{n}", path.display()));
            if std::fs::remove_file(&rotated).is_err() {
                break;
            }
            flushed.push(rotated);
        }
    }
    Ok(flushed)
}

/// The last `n` lines of a log file. Reads from the end, a block at a time, so the cost is
/// that of the lines asked for, not of the file (a log may be gigabytes under logrotate).
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    use std::io::{Read, SeekFrom};
    const BLOCK: u64 = 64 * 1024;
    let mut file = File::open(path)?;
    let mut start = file.seek(SeekFrom::End(0))?;
    let mut bytes: Vec<u8> = Vec::new();
    // Enough when the block holds n + 1 line ends (the text after the one before the n-th
    // line from the end), or the start of the file.
    while start > 0 && bytes.iter().filter(|b| **b == b'\n').count() <= n {
        let read = BLOCK.min(start);
        start -= read;
        file.seek(SeekFrom::Start(start))?;
        let mut block = vec![0; read as usize];
        file.read_exact(&mut block)?;
        block.extend_from_slice(&bytes);
        bytes = block;
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line read may have begun before the block.
        lines.remove(0);
    }
    let from = lines.len().saturating_sub(n);
    Ok(lines[from..]
        .iter()
        .map(|line| (*line).to_owned())
        .collect())
}

/// The whole lines within the last `window` bytes of a log file: a bounded read however large
/// the file, for what looks at its end often (hooks, `chatctl monit`).
pub fn tail_within(path: &Path, window: u64) -> std::io::Result<Vec<String>> {
    use std::io::Read;
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(window);
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(window).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Started inside a line: its beginning is not in the window.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    Ok(lines)
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
    fn tail_reads_the_last_lines_of_a_file_of_any_size() {
        let dir = std::env::temp_dir().join(format!("chatctl-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.log");
        // Lines of every length around the block size, so that some straddle a block's start.
        let lines: Vec<String> = (0..3000)
            .map(|i| format!("{i} {}", "y".repeat(i * 37 % 70_000 % 300)))
            .collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        for n in [0, 1, 5, 700, 2999, 3000, 5000] {
            let want: Vec<String> = lines[lines.len().saturating_sub(n)..].to_vec();
            assert_eq!(tail(&path, n).unwrap(), want, "n = {n}");
        }
        let long = "z".repeat(200_000);
        std::fs::write(&path, format!("first\n{long}\nlast")).unwrap();
        assert_eq!(
            tail(&path, 2).unwrap(),
            vec![long.clone(), "last".to_owned()]
        );
        assert_eq!(
            tail(&path, 9).unwrap(),
            vec!["first".to_owned(), long, "last".into()]
        );
        std::fs::write(&path, "").unwrap();
        assert!(tail(&path, 3).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
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
