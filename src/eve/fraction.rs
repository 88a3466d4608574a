//! The attacked fraction while Eve runs: a shared dial every connection
//! reads before each fibre frame, and the poller that sets it from a file.
//!
//! A file rather than a signal: a test or a lab script changes the attack
//! with `echo 0.5 > FILE`, the value is visible (`cat FILE`), and nothing
//! depends on signal delivery order. The file is re-read once per poll
//! interval; a missing, unreadable or invalid file keeps the current value
//! (and is logged once per distinct problem).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::EveError;

/// Bytes of the fraction file read at most ("0.125\n" needs six).
const MAX_FRACTION_FILE: u64 = 64;

/// The fraction of pulses Eve attacks, shared by all connections.
/// Cheap to clone; changes apply from the next fibre frame on.
#[derive(Clone, Debug)]
pub struct FractionDial(Arc<AtomicU64>);

impl FractionDial {
    pub fn new(fraction: f64) -> Result<Self, EveError> {
        check(fraction)?;
        Ok(Self(Arc::new(AtomicU64::new(fraction.to_bits()))))
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, fraction: f64) -> Result<(), EveError> {
        check(fraction)?;
        self.0.store(fraction.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    /// Re-reads `path` every `interval` until `cancel`; the first read is
    /// immediate, so a file present at start-up overrides `--fraction`.
    pub async fn follow_file(self, path: PathBuf, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_problem: Option<String> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match read_fraction_file(&path).await {
                Ok(f) => {
                    last_problem = None;
                    if f != self.get() {
                        tracing::info!(fraction = f, file = %path.display(), "attacked fraction changed");
                        self.0.store(f.to_bits(), Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    if last_problem.as_deref() != Some(why.as_str()) {
                        tracing::warn!(
                            fraction = self.get(),
                            "{why}; keeping the current fraction"
                        );
                        last_problem = Some(why);
                    }
                }
            }
        }
    }
}

fn check(fraction: f64) -> Result<(), EveError> {
    if (0.0..=1.0).contains(&fraction) {
        Ok(())
    } else {
        Err(EveError::Fraction(fraction))
    }
}

/// Parses a fraction: a number in [0, 1] (`0.25`) or a percentage (`25%`).
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(p) => (p.trim_end(), 100.0),
        None => (t, 1.0),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("{t:?} is not a number (write e.g. 0.25 or 25%)"))?;
    let f = v / scale;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{t:?} is outside [0, 1] (0 % .. 100 %)"))
    }
}

async fn read_fraction_file(path: &Path) -> Result<f64, EveError> {
    let bad = |why: String| EveError::FractionFile {
        path: path.to_owned(),
        why,
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_FRACTION_FILE)
        .read_to_string(&mut text)
        .await
        .map_err(|e| bad(e.to_string()))?;
    parse_fraction(&text).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::file::TestDir;

    #[test]
    fn fractions_and_percentages_parse_and_bounds_hold() {
        assert_eq!(parse_fraction("0.25\n"), Ok(0.25));
        assert_eq!(parse_fraction(" 50 % "), Ok(0.5));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert!(parse_fraction("half").is_err());
        assert!(FractionDial::new(1.01).is_err());
        let d = FractionDial::new(0.0).unwrap();
        assert!(d.set(f64::NAN).is_err());
        d.set(0.75).unwrap();
        assert_eq!(d.clone().get(), 0.75);
    }

    #[tokio::test]
    async fn the_dial_follows_the_file_and_ignores_bad_contents() {
        let dir = TestDir::new("eve-fraction");
        let path = dir.path().join("fraction");
        let dial = FractionDial::new(0.1).unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(dial.clone().follow_file(
            path.clone(),
            Duration::from_millis(10),
            cancel.clone(),
        ));
        // Missing file: the start value stays.
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(dial.get(), 0.1);
        std::fs::write(&path, "0.6\n").unwrap();
        wait_for(&dial, 0.6).await;
        std::fs::write(&path, "2.0").unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(dial.get(), 0.6, "an invalid value is ignored");
        std::fs::write(&path, "100%").unwrap();
        wait_for(&dial, 1.0).await;
        cancel.cancel();
        task.await.unwrap();
    }

    async fn wait_for(dial: &FractionDial, want: f64) {
        for _ in 0..300 {
            if dial.get() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fraction stayed {} instead of {want}", dial.get());
    }
}
