//! Tracing setup: one subscriber for the process, its format chosen by where
//! stderr goes, its filter from `QKD_IPSEC_LOG` (EnvFilter syntax, default
//! `info`).
//!
//! Under systemd, stderr is a stream to journald and `$JOURNAL_STREAM` names
//! its device and inode (systemd.exec(5)); then lines carry no colours and no
//! timestamps (journald stamps them), and each starts with an sd-daemon(3)
//! priority prefix (`<3>` error … `<7>` debug), which journald strips and
//! stores as the entry's priority, so `journalctl -p warning` and the
//! colouring work. Fields stay `key=value` in the message text.
//!
//! Why not `tracing-journald`: it writes to the journal's native socket,
//! which would index the fields, but it is a second transport that fails
//! silently in containers and network-namespace tests without journald, and
//! it adds a dependency; the stream with priority prefixes needs neither and
//! is what systemd recommends for services. On a terminal the usual
//! coloured format is used; piped elsewhere, plain text with timestamps.
//! Owns nothing else: what is logged is decided where it happens.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use thiserror::Error;
use tracing::{Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable holding the filter.
pub const LOG_ENV: &str = "QKD_IPSEC_LOG";
const DEFAULT_FILTER: &str = "info";

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// stderr is journald's stream: priority prefix, no colour, no time.
    Journald,
    /// An interactive terminal: colours and timestamps.
    Terminal,
    /// A file or pipe: timestamps, no colours.
    Plain,
}

impl LogFormat {
    /// Picks the format for this process's stderr.
    pub fn detect() -> Self {
        let stderr = std::io::stderr();
        let stream = std::env::var("JOURNAL_STREAM").ok();
        if stream.is_some_and(|s| is_same_file(&s, stderr.as_fd())) {
            LogFormat::Journald
        } else if stderr.is_terminal() {
            LogFormat::Terminal
        } else {
            LogFormat::Plain
        }
    }
}

/// `$JOURNAL_STREAM` is `<device>:<inode>` of the stream; it is inherited by
/// children whose stderr may point elsewhere, hence the comparison.
fn is_same_file(journal_stream: &str, fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let Some((dev, ino)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

#[derive(Debug, Error)]
pub enum LoggingError {
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadySet(String),
}

/// Installs the process's subscriber (format detected, filter from
/// `QKD_IPSEC_LOG`). A malformed filter falls back to `info` and says so.
pub fn init_logging() -> Result<(), LoggingError> {
    let (filter, bad) = filter_from_env();
    subscriber(LogFormat::detect(), filter, std::io::stderr)
        .try_init()
        .map_err(|e| LoggingError::AlreadySet(e.to_string()))?;
    if let Some((value, error)) = bad {
        tracing::warn!(%value, %error, "ignoring malformed {LOG_ENV}; logging at {DEFAULT_FILTER}");
    }
    Ok(())
}

/// The filter, and the bad value with its parse error if one was set.
fn filter_from_env() -> (EnvFilter, Option<(String, String)>) {
    match std::env::var(LOG_ENV) {
        Err(_) => (EnvFilter::new(DEFAULT_FILTER), None),
        Ok(v) => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some((v, e.to_string()))),
        },
    }
}

/// A subscriber in `format` writing to `writer` (tests capture the output).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Journald => Box::new(
            builder
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .map_event_format(JournalPriority)
                .finish(),
        ),
        LogFormat::Terminal => Box::new(builder.with_ansi(true).finish()),
        LogFormat::Plain => Box::new(builder.with_ansi(false).finish()),
    }
}

/// Prefixes each line with its sd-daemon(3) syslog priority and level.
struct JournalPriority<F>(F);

/// syslog(3) levels: LOG_ERR 3, LOG_WARNING 4, LOG_INFO 6, LOG_DEBUG 7.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

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
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The level in words too, unpadded, for `journalctl -o cat` readers.
        let level = event.metadata().level();
        write!(writer, "<{}>{level} ", priority(level))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
#[path = "logging_tests.rs"]
pub(crate) mod tests;
