//! What the agent benches read from outside the agents: CPU time and memory
//! from `/proc/PID/{stat,status}`, the kernel's SA and policy counts from
//! `ip xfrm … count`, and the agents' "rekey done" log lines, followed
//! from a byte offset so a long log is never re-read. Nothing here starts
//! or changes anything.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qkd_ipsec::testbed::{AgentPair, Side};

/// CPU time of a process (all its threads), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // The command name is in parentheses and may hold spaces: count the
    // fields after its closing one. utime and stime are fields 14 and 15
    // (proc(5)), i.e. the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// Resident memory now and at its peak, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
}

pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
    }
}

/// CPU use of a process over a stretch of wall time.
pub struct CpuWindow {
    pid: u32,
    cpu: Duration,
    wall: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            cpu: cpu_time(pid),
            wall: Instant::now(),
        }
    }

    /// (CPU time used, wall time elapsed) since the start.
    pub fn read(&self) -> (Duration, Duration) {
        (
            cpu_time(self.pid).saturating_sub(self.cpu),
            self.wall.elapsed(),
        )
    }

    /// CPU seconds per minute of wall time since the start.
    pub fn per_minute(&self) -> f64 {
        let (cpu, wall) = self.read();
        cpu.as_secs_f64() * 60.0 / wall.as_secs_f64()
    }
}

/// `ip -n NS xfrm state count` and `… policy count`: (SAs, policies).
pub fn xfrm_counts(netns: &str) -> (u64, u64) {
    let count = |what: &str| -> u64 {
        let out = Command::new("ip")
            .args(["-n", netns, "xfrm", what, "count"])
            .output()
            .unwrap_or_else(|e| panic!("running ip xfrm {what} count: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ip -n {netns} xfrm {what} count failed"
        );
        // "SAD count N" or "SPD IN N OUT N FWD N": add every number.
        text.split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok())
            .sum()
    };
    (count("state"), count("policy"))
}

/// One "rekey done" line of an agent log.
#[derive(Debug, Clone)]
pub struct RekeyDone {
    pub tunnel: String,
    pub exchange: String,
    pub cause: String,
    pub latency_ms: f64,
    /// This side's XFRM request time within the latency window.
    pub xfrm_ms: Option<f64>,
}

impl RekeyDone {
    /// Parses a line written by the agent's tunnel task (tracing's plain
    /// format: message, then `key=value` fields).
    pub fn parse(line: &str) -> Option<Self> {
        if !line.contains("rekey done:") {
            return None;
        }
        let field = |name: &str| {
            let key = format!(" {name}=");
            let at = line.find(&key)? + key.len();
            line[at..].split_whitespace().next().map(str::to_string)
        };
        Some(Self {
            tunnel: field("tunnel")?,
            exchange: field("exchange")?,
            cause: field("cause")?,
            latency_ms: field("latency_ms")?.parse().ok()?,
            xfrm_ms: field("xfrm_ms").and_then(|v| v.parse().ok()),
        })
    }
}

/// Reads the lines appended to a log since the last call.
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogFollower {
    /// Follows `path` from its current end.
    pub fn from_end(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Self {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
        }
    }

    /// The complete lines written since the last call.
    pub fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = File::open(&self.path) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete.lines().map(str::to_string).collect()
    }

    /// The "rekey done" lines written since the last call.
    pub fn new_rekeys(&mut self) -> Vec<RekeyDone> {
        self.new_lines()
            .iter()
            .filter_map(|l| RekeyDone::parse(l))
            .collect()
    }
}

/// Median (mean of the middle two for an even count), nearest-rank
/// percentile and maximum of a sample.
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        assert!(!values.is_empty(), "no values to summarise");
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank: the smallest value with at least 90 % at or below.
        let p90 = v[(0.9 * n as f64).ceil() as usize - 1];
        Self {
            n,
            median,
            p90,
            max: v[n - 1],
        }
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints each agent's WARN and ERROR lines grouped by message (with a
/// count), so a figure measured over silent trouble (lost XFRM events,
/// abandoned rekeys) does not pass unnoticed.
pub fn report_warnings(pair: &AgentPair) {
    for side in Side::BOTH {
        let log = pair.log(side);
        // Plain format: "<time>  LEVEL target: message fields…"; the
        // message's first 70 characters name it well enough.
        let mut groups: Vec<(String, usize)> = Vec::new();
        for line in log.lines() {
            let mut words = line.split_whitespace();
            let level = words.nth(1);
            if !matches!(level, Some("WARN" | "ERROR")) {
                continue;
            }
            let rest: String = words.collect::<Vec<_>>().join(" ");
            let key = format!(
                "{} {}",
                level.unwrap_or(""),
                rest.chars().take(110).collect::<String>()
            );
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => groups.push((key, 1)),
            }
        }
        if groups.is_empty() {
            println!("   {side} log: no warnings or errors");
        }
        for (key, n) in groups {
            println!("   {side} log: {n} × {key}…");
        }
    }
}
