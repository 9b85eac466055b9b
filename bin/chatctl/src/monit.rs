//! `chatctl monit`: every running app's workers live in the terminal (ratatui), from the same
//! control-socket status `chatctl list` shows, sampled every interval (a master that takes
//! five intervals, 1 to 10 s, to answer is marked as not answering): a table with a CPU
//! trend per worker, the selected worker's CPU, memory and connections over the last minutes,
//! and the app's recent warnings from its log. `q`, Esc or Ctrl-C quits; when a master it
//! watches goes away, it restores the terminal and says so in one line.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::{DefaultTerminal, Frame};
use supervisor::client;
use supervisor::paths::{home, AppPaths};
use supervisor::{AppStatus, Status, WorkerStatus};
use tokio::sync::mpsc;

use crate::apps::{human_bytes, human_duration};

/// Samples kept per worker: two minutes at the default interval.
const HISTORY: usize = 120;
/// How much of the end of each app log is searched for recent warnings.
const LOG_WINDOW: u64 = 64 << 10;
/// Recent warnings shown.
const EVENTS: usize = 30;

/// `chatctl monit [NAME]`.
pub async fn run(name: Option<String>, interval: Duration) -> anyhow::Result<()> {
    let name_given = name.clone();
    let names = match name {
        Some(name) => {
            client::status(&name).await?;
            vec![name]
        }
        None => {
            let mut answering = Vec::new();
            for name in client::running_apps() {
                if client::status(&name).await.is_ok() {
                    answering.push(name);
                }
            }
            answering
        }
    };
    if names.is_empty() {
        bail!("no app running (start one with `chatctl start`)");
    }
    if !std::io::stdout().is_terminal() {
        bail!("monit draws on a terminal: in a script or a pipe use `chatctl list --watch` or `chatctl status --json`");
    }
    let (tx, snapshots) = mpsc::channel(1);
    let watched = Watched {
        names: names.into_iter().collect(),
        every_app: name_given.is_none(),
    };
    let poller = tokio::spawn(poll(watched, interval, tx));
    let mut terminal = ratatui::try_init()?;
    let ended = show(&mut terminal, snapshots, interval).await;
    ratatui::restore();
    poller.abort();
    match ended? {
        Ended::Quit => Ok(()),
        Ended::Gone(name) => {
            println!("chatctl monit: the master of '{name}' went away (stopped, or died: see `chatctl list`)");
            Ok(())
        }
    }
}

/// What the poller saw.
enum Snapshot {
    Apps {
        apps: Vec<AppStatus>,
        /// Masters that did not answer in time (busy or hung); their last status stays shown.
        slow: Vec<String>,
        warnings: Vec<String>,
    },
    /// This app's master no longer answers on its socket.
    Gone(String),
}

enum Ended {
    Quit,
    Gone(String),
}

/// The apps on the screen.
struct Watched {
    /// Those whose master answered once: one that stops answering has gone away.
    names: std::collections::BTreeSet<String>,
    /// No app was named: apps started while monit runs join the view.
    every_app: bool,
}

/// Asks every watched master for its status each interval, on a task of its own, so that a
/// slow master never delays a key press.
async fn poll(mut watched: Watched, interval: Duration, tx: mpsc::Sender<Snapshot>) {
    // Longest a master may take to answer before it is shown as not answering: a few
    // intervals, within reason.
    let answer_timeout = (interval * 5).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut apps = Vec::new();
        let mut slow = Vec::new();
        let mut names = watched.names.clone();
        if watched.every_app {
            names.extend(client::running_apps());
        }
        for name in names {
            match tokio::time::timeout(answer_timeout, client::status(&name)).await {
                Ok(Ok(status)) => {
                    watched.names.insert(name);
                    apps.push(status);
                }
                Ok(Err(_)) if watched.names.contains(&name) => {
                    let _ = tx.send(Snapshot::Gone(name)).await;
                    return;
                }
                // A socket left by a master that died before monit started: not an app to show.
                Ok(Err(_)) => {}
                Err(_) => slow.push(name),
            }
        }
        let warnings = recent_warnings(&watched.names);
        if tx
            .send(Snapshot::Apps {
                apps,
                slow,
                warnings,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Draws every snapshot until a key, a signal or a gone master ends the view.
async fn show(
    terminal: &mut DefaultTerminal,
    mut snapshots: mpsc::Receiver<Snapshot>,
    interval: Duration,
) -> anyhow::Result<Ended> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut keys = EventStream::new();
    let mut view = View::new(interval);
    loop {
        terminal.draw(|frame| view.render(frame))?;
        tokio::select! {
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && key.code == KeyCode::Char('c');
                    match key.code {
                        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => {
                            return Ok(Ended::Quit)
                        }
                        _ if ctrl_c => return Ok(Ended::Quit),
                        KeyCode::Up | KeyCode::Char('k') => view.select(-1),
                        KeyCode::Down | KeyCode::Char('j') => view.select(1),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(Ended::Quit),
            },
            snapshot = snapshots.recv() => match snapshot {
                Some(Snapshot::Apps { apps, slow, warnings }) => view.update(apps, slow, warnings),
                Some(Snapshot::Gone(name)) => return Ok(Ended::Gone(name)),
                None => return Ok(Ended::Quit),
            },
            _ = terminate.recv() => return Ok(Ended::Quit),
            _ = hangup.recv() => return Ok(Ended::Quit),
            _ = interrupt.recv() => return Ok(Ended::Quit),
        }
    }
}

/// One worker's recent samples, oldest first.
#[derive(Default)]
struct History {
    /// Tenths of a percent.
    cpu: VecDeque<u64>,
    memory: VecDeque<u64>,
    connections: VecDeque<u64>,
}

impl History {
    fn push(&mut self, worker: &WorkerStatus) {
        let cpu = (worker.cpu_percent * 10.0).round().max(0.0) as u64;
        for (series, value) in [
            (&mut self.cpu, cpu),
            (&mut self.memory, worker.memory_bytes),
            (&mut self.connections, worker.connections),
        ] {
            if series.len() == HISTORY {
                series.pop_front();
            }
            series.push_back(value);
        }
    }
}

/// What is on the screen.
struct View {
    apps: Vec<AppStatus>,
    slow: Vec<String>,
    warnings: Vec<String>,
    /// Samples by app and worker id: a worker's history goes on across its restarts.
    history: HashMap<(String, usize), History>,
    /// Index into [`View::workers`].
    selected: usize,
    interval: Duration,
}

impl View {
    fn new(interval: Duration) -> View {
        View {
            apps: Vec::new(),
            slow: Vec::new(),
            warnings: Vec::new(),
            history: HashMap::new(),
            selected: 0,
            interval,
        }
    }

    fn update(&mut self, apps: Vec<AppStatus>, slow: Vec<String>, warnings: Vec<String>) {
        // A master that did not answer keeps its last status on the screen.
        let kept: Vec<AppStatus> = self
            .apps
            .drain(..)
            .filter(|app| slow.contains(&app.name))
            .collect();
        for app in &apps {
            for worker in &app.workers {
                self.history
                    .entry((app.name.clone(), worker.id))
                    .or_default()
                    .push(worker);
            }
        }
        self.apps = apps;
        self.apps.extend(kept);
        self.apps.sort_by(|a, b| a.name.cmp(&b.name));
        self.slow = slow;
        self.warnings = warnings;
        let count = self.workers().len();
        self.selected = self.selected.min(count.saturating_sub(1));
    }

    /// Every worker shown, as (app, worker), in table order.
    fn workers(&self) -> Vec<(&AppStatus, &WorkerStatus)> {
        self.apps
            .iter()
            .flat_map(|app| app.workers.iter().map(move |worker| (app, worker)))
            .collect()
    }

    fn select(&mut self, step: isize) {
        let count = self.workers().len();
        if count > 0 {
            self.selected = self.selected.saturating_add_signed(step).min(count - 1);
        }
    }

    fn render(&self, frame: &mut Frame) {
        let rows = self.workers().len() + self.apps.iter().map(|a| a.spares.len()).sum::<usize>();
        let [top, table, charts, warnings] = Layout::vertical([
            Constraint::Length(1 + self.apps.len() as u16),
            Constraint::Length(rows as u16 + 3),
            Constraint::Length(7),
            Constraint::Min(3),
        ])
        .areas(frame.area());
        self.render_header(frame, top);
        self.render_table(frame, table);
        self.render_charts(frame, charts);
        let lines: Vec<Line> = self
            .warnings
            .iter()
            .map(|line| Line::raw(line.as_str()))
            .collect();
        let height = usize::from(warnings.height.saturating_sub(2));
        let shown = lines[lines.len().saturating_sub(height)..].to_vec();
        frame.render_widget(
            Paragraph::new(shown)
                .block(Block::bordered().title(" recent warnings (chatctl logs APP for all) ")),
            warnings,
        );
    }

    fn render_header(&self, frame: &mut Frame, area: Rect) {
        let mut lines = vec![Line::from(vec![
            "chatctl monit".bold(),
            format!(
                "  every {}  {}   q: quit  ↑/↓: select a worker",
                human_duration(self.interval.as_millis() as u64),
                supervisor::timestamp::format_utc(std::time::SystemTime::now(), "%H:%M:%S UTC"),
            )
            .into(),
        ])];
        if self.apps.is_empty() {
            lines.push(Line::raw("waiting for the first status..."));
        }
        for app in &self.apps {
            let mut line = Line::raw(format!(
                "{}: master pid {} on {} ({}), up {}",
                app.name,
                app.master_pid,
                app.listen,
                app.scheduling,
                human_duration(app.uptime_ms)
            ));
            if self.slow.contains(&app.name) {
                line.push_span("  master not answering: last status shown".yellow());
            }
            lines.push(line);
        }
        frame.render_widget(Paragraph::new(lines), area);
    }

    fn render_table(&self, frame: &mut Frame, area: Rect) {
        let header = Row::new([
            "APP",
            "WORKER",
            "PID",
            "STATUS",
            "UPTIME",
            "RESTARTS",
            "CPU",
            "MEM",
            "CONNS",
            "CPU TREND",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let mut rows = Vec::new();
        let mut selected_row = None;
        let mut index = 0;
        for app in &self.apps {
            for worker in &app.workers {
                if index == self.selected {
                    selected_row = Some(rows.len());
                }
                index += 1;
                let trend = self
                    .history
                    .get(&(app.name.clone(), worker.id))
                    .map(|h| trend(&h.cpu, 12, 1000))
                    .unwrap_or_default();
                rows.push(Row::new([
                    Cell::from(app.name.clone()),
                    Cell::from(worker.id.to_string()),
                    Cell::from(worker.pid.map_or("-".to_owned(), |p| p.to_string())),
                    Cell::from(worker.status.as_str()).style(status_style(worker.status)),
                    Cell::from(human_duration(worker.uptime_ms)),
                    Cell::from(worker.restarts.to_string()),
                    Cell::from(format!("{:.1}%", worker.cpu_percent)),
                    Cell::from(human_bytes(worker.memory_bytes)),
                    Cell::from(worker.connections.to_string()),
                    Cell::from(trend),
                ]));
            }
            for spare in &app.spares {
                let status = if spare.ready {
                    "spare"
                } else {
                    "spare-starting"
                };
                rows.push(
                    Row::new([
                        app.name.clone(),
                        "spare".into(),
                        spare.pid.to_string(),
                        status.into(),
                        human_duration(spare.uptime_ms),
                    ])
                    .style(Style::new().fg(Color::DarkGray)),
                );
            }
        }
        let widths = [
            Constraint::Length(14),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(15),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(12),
        ];
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" workers "))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(selected_row);
        frame.render_stateful_widget(table, area, &mut state);
    }

    fn render_charts(&self, frame: &mut Frame, area: Rect) {
        let workers = self.workers();
        let Some((app, worker)) = workers.get(self.selected) else {
            return;
        };
        let empty = History::default();
        let history = self
            .history
            .get(&(app.name.clone(), worker.id))
            .unwrap_or(&empty);
        let [cpu, memory, connections] =
            Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(area);
        let who = format!("{} w{}", app.name, worker.id);
        let chart = |title: String, data: &VecDeque<u64>, floor: u64, color: Color| {
            let data: Vec<u64> = data.iter().copied().collect();
            let max = data.iter().copied().max().unwrap_or(0).max(floor);
            Sparkline::default()
                .block(Block::bordered().title(title))
                .data(&data)
                .max(max)
                .style(Style::new().fg(color))
        };
        frame.render_widget(
            chart(
                format!(" {who} CPU {:.1}% ", worker.cpu_percent),
                &history.cpu,
                1000,
                Color::Cyan,
            ),
            cpu,
        );
        frame.render_widget(
            chart(
                format!(" {who} memory {} ", human_bytes(worker.memory_bytes)),
                &history.memory,
                1,
                Color::Magenta,
            ),
            memory,
        );
        frame.render_widget(
            chart(
                format!(" {who} connections {} ", worker.connections),
                &history.connections,
                1,
                Color::Green,
            ),
            connections,
        );
    }
}

fn status_style(status: Status) -> Style {
    let color = match status {
        Status::Online => Color::Green,
        Status::Errored => Color::Red,
        Status::Launching | Status::WaitingRestart => Color::Yellow,
        Status::Stopping | Status::Stopped => Color::DarkGray,
    };
    Style::new().fg(color)
}

/// The last `width` values as a line of block characters, `max` (or the largest value, if
/// above) as a full block.
fn trend(values: &VecDeque<u64>, width: usize, max: u64) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let recent: Vec<u64> = values.iter().rev().take(width).rev().copied().collect();
    let top = recent.iter().copied().max().unwrap_or(0).max(max).max(1);
    recent
        .iter()
        .map(|value| BARS[((value * 7 + top / 2) / top).min(7) as usize])
        .collect()
}

/// The masters' recent warnings and errors from the ends of the watched apps' logs, oldest
/// first, shortened to their time, level and message.
fn recent_warnings(names: &std::collections::BTreeSet<String>) -> Vec<String> {
    let home = home();
    let mut warnings = Vec::new();
    for name in names {
        let path = AppPaths::new(&home, name).log_file;
        let Ok(lines) = supervisor::logs::tail_within(&path, LOG_WINDOW) else {
            continue;
        };
        warnings.extend(lines.iter().filter_map(|line| {
            let text = master_text(line)?;
            let short = shorten(&text)?;
            Some(if names.len() > 1 {
                format!("{name}: {short}")
            } else {
                short
            })
        }));
    }
    let skip = warnings.len().saturating_sub(EVENTS);
    warnings.split_off(skip)
}

/// The text of one of the master's own log lines (plain or `--log-json`).
fn master_text(line: &str) -> Option<String> {
    if let Some(text) = line.strip_prefix("master | ") {
        return Some(text.to_owned());
    }
    let object: serde_json::Value = serde_json::from_str(line).ok()?;
    (object["stream"] == "master").then(|| object["message"].as_str().map(str::to_owned))?
}

/// `TIME  LEVEL target: message fields` as `HH:MM:SS LEVEL message fields`, for warnings and
/// errors only.
fn shorten(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let time = words.next()?;
    let level = words.next()?;
    if level != "WARN" && level != "ERROR" {
        return None;
    }
    let clock = time.get(11..19).unwrap_or(time);
    let rest: Vec<&str> = words.collect();
    let message = match rest.split_first() {
        Some((target, message)) if target.ends_with(':') && target.contains("::") => {
            message.join(" ")
        }
        _ => rest.join(" "),
    };
    Some(format!("{clock} {level:<5} {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trend_scales_to_its_max_or_its_largest_value() {
        let values: VecDeque<u64> = [0, 500, 1000].into_iter().collect();
        assert_eq!(trend(&values, 12, 1000), "▁▅█");
        let values: VecDeque<u64> = (0..20).collect();
        assert_eq!(trend(&values, 4, 1).chars().count(), 4);
        assert_eq!(trend(&VecDeque::new(), 4, 1), "");
    }

    #[test]
    fn only_the_masters_warnings_are_kept_and_shortened() {
        let warn = "master | 2026-12-03T14:09:16.462540Z  WARN supervisor::master::lifecycle: worker was killed by signal 9 after 0.1s worker=0 pid=16287";
        let text = master_text(warn).unwrap();
        assert_eq!(
            shorten(&text).as_deref(),
            Some("14:09:16 WARN  worker was killed by signal 9 after 0.1s worker=0 pid=16287")
        );
        let info = "master | 2026-12-03T14:09:16.466210Z  INFO supervisor::master::lifecycle: worker started";
        assert_eq!(shorten(&master_text(info).unwrap()), None);
        assert_eq!(master_text("w0 | 2026-12-03 WARN not the master's"), None);
        let json = r#"{"time":"x","app":"a","worker":null,"stream":"master","message":"2026-12-03T14:09:16.1Z ERROR supervisor::hooks: hook failed"}"#;
        assert_eq!(
            shorten(&master_text(json).unwrap()).as_deref(),
            Some("14:09:16 ERROR hook failed")
        );
    }
}
