//! The process's log: `tracing` events to stderr, written so that logging
//! can never take the server down.
//!
//! - Lines go through a bounded queue to one writer thread. A log call never
//!   blocks and never fails: when the queue is full (stderr is a pipe whose
//!   reader stalls) the line is dropped and counted; when stderr is a broken
//!   pipe (`agentline run 2>&1 | head`, a log shipper that exited) the writer
//!   stops writing and every later line is dropped and counted
//!   (`agentline_log_lines_dropped_total`). tracing's own "unable to write"
//!   report (an `eprintln!`, which panics on a broken stderr) is off. Rust
//!   ignores SIGPIPE, so a write to a closed pipe is an `EPIPE` error, not a
//!   signal.
//! - Style: ANSI colour only when stderr is a terminal and `NO_COLOR` is not
//!   set; under systemd (`JOURNAL_STREAM` names the stderr stream) plain
//!   lines without the timestamp (the journal adds its own) and with a
//!   `<N>` priority prefix the journal reads as the line's level.
//! - Fields print as plain values (`user=1000`, `source=127.0.0.1:5060`);
//!   a value with a space, a quote or an `=` is quoted (`error="no route"`),
//!   so lines stay one `key=value` list.

use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Lines waiting for the writer thread; past this, lines are dropped.
const QUEUE_LINES: usize = 4096;

/// The counter of log lines that were not written.
pub const DROPPED_METRIC: &str = "agentline_log_lines_dropped_total";

/// How the text format looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A terminal: ANSI colour, timestamps.
    Color,
    /// A file or a pipe: no escape codes, timestamps.
    Plain,
    /// The systemd journal's stream: no escape codes, no timestamp, a
    /// `<N>` syslog priority prefix.
    Journal,
}

impl Style {
    /// The style for stderr as it is now, from the environment.
    pub fn detect() -> Style {
        let stderr = io::stderr();
        Style::choose(
            stderr.is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
            std::env::var_os("JOURNAL_STREAM").as_deref(),
            stream_id(&stderr),
        )
    }

    /// `JOURNAL_STREAM` (systemd's `DEVICE:INODE` of the stream it connected
    /// to stderr) wins when it names the stream stderr still is; otherwise
    /// colour on a terminal unless `NO_COLOR` is set to anything non-empty
    /// (no-color.org).
    pub fn choose(
        is_terminal: bool,
        no_color: Option<&OsStr>,
        journal_stream: Option<&OsStr>,
        stderr_id: Option<(u64, u64)>,
    ) -> Style {
        if let (Some(js), Some((dev, ino))) = (journal_stream, stderr_id) {
            if js.to_str() == Some(format!("{dev}:{ino}").as_str()) {
                return Style::Journal;
            }
        }
        let no_color = no_color.is_some_and(|v| !v.is_empty());
        if is_terminal && !no_color {
            Style::Color
        } else {
            Style::Plain
        }
    }
}

/// The device and inode of the file or socket behind `stderr`.
fn stream_id(stderr: &io::Stderr) -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = stderr.as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it was written (or dropped).
    Flush(SyncSender<()>),
}

/// A [`MakeWriter`] that queues each event's line for the writer thread.
#[derive(Clone)]
pub struct QueuedStderr {
    tx: SyncSender<Msg>,
}

/// One event's line; queued when the formatter drops it.
pub struct LineWriter<'a> {
    sink: &'a QueuedStderr,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if self.sink.tx.try_send(Msg::Line(line)).is_err() {
            metrics::counter!(DROPPED_METRIC).increment(1);
        }
    }
}

impl<'a> MakeWriter<'a> for QueuedStderr {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            sink: self,
            buf: Vec::new(),
        }
    }
}

/// Waits (a bounded time) for the queued lines to be written when dropped:
/// keep it alive until the process's last log line.
pub struct LogGuard {
    tx: SyncSender<Msg>,
}

impl LogGuard {
    /// Waits up to `within` for every line queued so far to be written.
    /// False when the writer is stuck (a stalled pipe).
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.flush(Duration::from_secs(2));
    }
}

/// A queue to a new writer thread that writes to `out`.
pub fn queued<W: Write + Send + 'static>(out: W) -> (QueuedStderr, LogGuard) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    // If the thread cannot start, the queue fills and lines are dropped.
    let _ = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || pump(rx, out));
    (QueuedStderr { tx: tx.clone() }, LogGuard { tx })
}

/// The writer thread: writes each line whole; after a broken pipe, only
/// counts what it drops. Other write errors (a full disk) drop that line.
fn pump<W: Write>(rx: Receiver<Msg>, mut out: W) {
    let mut broken = false;
    for msg in rx {
        match msg {
            Msg::Line(line) => {
                if broken {
                    metrics::counter!(DROPPED_METRIC).increment(1);
                    continue;
                }
                if let Err(e) = out.write_all(&line) {
                    metrics::counter!(DROPPED_METRIC).increment(1);
                    broken = e.kind() == io::ErrorKind::BrokenPipe;
                }
            }
            Msg::Flush(ack) => {
                let _ = out.flush();
                let _ = ack.try_send(());
            }
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` (default
/// `info,rsipstack=warn`), `format`, and the style of stderr.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rsipstack=warn"));
    let (writer, guard) = queued(io::stderr());
    let style = Style::detect();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false)
        .with_ansi(style == Style::Color);
    let result = match (format, style) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, Style::Journal) => builder
            .fmt_fields(PlainFields)
            .event_format(JournalPriority(format::Format::default().without_time()))
            .try_init(),
        (LogFormat::Text, _) => builder.fmt_fields(PlainFields).try_init(),
    };
    // Already set (a second call): the first subscriber stays.
    let _ = result;
    guard
}

/// Prefixes each line with its syslog priority (`<3>` error, `<4>` warn,
/// `<6>` info, `<7>` debug and trace), which journald strips and keeps as
/// the entry's level.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Fields as `key=value` with plain values; see [`plain_value`].
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut v = PlainVisitor {
            italic: writer.has_ansi_escapes(),
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    italic: bool,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    fn field(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name();
        // `r#type` and the like: the raw-identifier prefix is not part of the name.
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = if name == "message" {
            write!(self.writer, "{sep}{value}")
        } else if self.italic {
            write!(
                self.writer,
                "{sep}\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m{}",
                plain_value(value)
            )
        } else {
            write!(self.writer, "{sep}{name}={}", plain_value(value))
        };
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.field(field, &s);
    }
}

/// `value` as is when it reads as one token; quoted (with `"` and `\`
/// escaped) when it is empty or holds whitespace, a quote, an `=` or a
/// control character.
pub fn plain_value(value: &str) -> std::borrow::Cow<'_, str> {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
    if !needs_quotes {
        return value.into();
    }
    let mut q = String::with_capacity(value.len() + 2);
    q.push('"');
    for c in value.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q.into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let s = |tty, nc: Option<&str>| Style::choose(tty, nc.map(OsStr::new), None, Some((1, 2)));
        assert_eq!(s(true, None), Style::Color);
        assert_eq!(s(true, Some("")), Style::Color, "empty NO_COLOR is unset");
        assert_eq!(s(true, Some("1")), Style::Plain);
        assert_eq!(s(false, None), Style::Plain);
    }

    #[test]
    fn the_journal_only_when_journal_stream_names_stderr() {
        let js = |v: &str, id| Style::choose(true, None, Some(OsStr::new(v)), id);
        assert_eq!(js("8:123", Some((8, 123))), Style::Journal);
        // stderr redirected elsewhere under systemd: not the journal.
        assert_eq!(js("8:123", Some((8, 124))), Style::Color);
        assert_eq!(js("8:123", None), Style::Color);
    }

    #[test]
    fn values_are_plain_unless_they_need_quotes() {
        assert_eq!(plain_value("1000"), "1000");
        assert_eq!(plain_value("127.0.0.1:5060"), "127.0.0.1:5060");
        assert_eq!(plain_value("no route"), "\"no route\"");
        assert_eq!(plain_value(""), "\"\"");
        assert_eq!(plain_value("a=b"), "\"a=b\"");
        assert_eq!(plain_value("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(plain_value("\x1b[2m"), "\"\\u{1b}[2m\"");
    }

    /// A writer whose every write fails as a closed pipe does.
    struct Broken(Arc<Mutex<usize>>);
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            *self.0.lock().unwrap() += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_broken_pipe_is_tried_once_then_lines_are_dropped() {
        let tries = Arc::new(Mutex::new(0));
        let (sink, guard) = queued(Broken(tries.clone()));
        for _ in 0..100 {
            let mut w = sink.make_writer();
            w.write_all(b"line\n").unwrap();
        }
        assert!(guard.flush(Duration::from_secs(5)));
        assert_eq!(*tries.lock().unwrap(), 1);
    }

    #[test]
    fn a_closed_pipe_reader_does_not_fail_or_block_log_calls() {
        let (reader, writer) = io::pipe().unwrap();
        drop(reader);
        let (sink, guard) = queued(writer);
        for _ in 0..10_000 {
            let mut w = sink.make_writer();
            w.write_all(b"a log line that goes nowhere\n").unwrap();
        }
        assert!(guard.flush(Duration::from_secs(5)));
    }

    #[test]
    fn a_stalled_pipe_reader_does_not_block_log_calls() {
        // The reader stays open but never reads: the pipe fills (64 KiB),
        // the writer thread blocks, the queue fills, log calls go on.
        let (_reader, writer) = io::pipe().unwrap();
        let (sink, guard) = queued(writer);
        let started = Instant::now();
        for _ in 0..(QUEUE_LINES * 10) {
            let mut w = sink.make_writer();
            w.write_all(&[b'x'; 100]).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            !guard.flush(Duration::from_millis(100)),
            "the writer is stuck"
        );
        std::mem::forget(guard);
    }

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let (mut reader, writer) = io::pipe().unwrap();
        let (sink, guard) = queued(writer);
        for i in 0..100 {
            let mut w = sink.make_writer();
            write!(w, "line ").unwrap();
            writeln!(w, "{i}").unwrap();
        }
        assert!(guard.flush(Duration::from_secs(5)));
        drop(sink);
        drop(guard);
        let mut text = String::new();
        io::Read::read_to_string(&mut reader, &mut text).unwrap();
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
    }
}
