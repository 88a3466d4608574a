use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// A writer collecting everything into a shared buffer.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs `f` with a thread-local subscriber in `format` and returns what it
/// logged.
pub(crate) fn capture(format: LogFormat, filter: &str, f: impl FnOnce()) -> String {
    let out = Captured::default();
    let sub = subscriber(format, EnvFilter::new(filter), out.clone());
    tracing::subscriber::with_default(sub, f);
    out.text()
}

#[test]
fn journald_lines_carry_priority_and_no_time_or_colour() {
    let text = capture(LogFormat::Journald, "debug", || {
        tracing::error!(peer = "gw-b", "broken");
        tracing::warn!(count = 3, "odd");
        tracing::info!("fine");
        tracing::debug!("detail");
    });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (line, prio) in lines.iter().zip(["<3>", "<4>", "<6>", "<7>"]) {
        assert!(line.starts_with(prio), "{line}");
        // No timestamp: the level follows the priority prefix directly.
        let rest = &line[3..];
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG"]
                .iter()
                .any(|l| rest.starts_with(l)),
            "{line}"
        );
    }
    assert!(!text.contains('\x1b'), "no ANSI escapes: {text:?}");
    assert!(
        lines[0].contains("peer=\"gw-b\"") || lines[0].contains("peer=gw-b"),
        "{text}"
    );
    assert!(lines[1].contains("count=3"), "{text}");
}

#[test]
fn plain_format_has_timestamps_and_no_priority() {
    let text = capture(LogFormat::Plain, "info", || tracing::info!("hello"));
    let line = text.lines().next().unwrap();
    assert!(!line.starts_with('<'), "{line}");
    // RFC 3339 time first, e.g. 2026-…T…Z.
    assert!(line.as_bytes()[4] == b'-' && line.contains('T'), "{line}");
    assert!(!text.contains('\x1b'));
}

#[test]
fn filter_drops_lower_levels() {
    let text = capture(LogFormat::Journald, "warn", || {
        tracing::info!("quiet");
        tracing::warn!("loud");
    });
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("loud"));
}

#[test]
fn journal_stream_must_name_our_stderr() {
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let st = nix::sys::stat::fstat(&file).unwrap();
    assert!(is_same_file(
        &format!("{}:{}", st.st_dev, st.st_ino),
        file.as_fd()
    ));
    assert!(!is_same_file(
        &format!("{}:{}", st.st_dev, st.st_ino + 1),
        file.as_fd()
    ));
    assert!(!is_same_file("garbage", file.as_fd()));
    assert!(!is_same_file("1:", file.as_fd()));
}
