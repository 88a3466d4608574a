//! `qkd-ipsec pool-audit CONFIG [--peer NAME] [--json]`: reads a gateway's
//! key pools from its state directory, without changing them, and reports
//! what their files record — blocks, and every take since the last snapshot
//! with its positions and use (never key bytes) — and whether any take used
//! a byte consumed before it ([`crate::keys::audit`]). Exit status 1 when a
//! pool shows such a reuse.
//!
//! Safe beside the running agent (reads only). With `--json`, the two ends
//! of a link can be compared take by take: the same positions for the same
//! use on both gateways.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::Args;

use crate::config::Config;
use crate::keys::audit::{AuditRecord, JournalState, PoolAudit, audit_pool};
use crate::keys::{KeyUse, PoolKey};

#[derive(Args, Debug)]
pub struct PoolAuditArgs {
    /// The gateway's configuration file.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Only the pool shared with this peer (default: every peer's).
    #[arg(long, value_name = "NAME")]
    pub peer: Option<String>,
    /// Print every pool's audit as JSON, one array (stable field names).
    #[arg(long)]
    pub json: bool,
    /// Directory holding the `pool-key` credential when the config names
    /// no file. Default: $CREDENTIALS_DIRECTORY.
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
}

impl PoolAuditArgs {
    pub fn exec(self) -> anyhow::Result<()> {
        let audits = self.audit()?;
        let mut out = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut out, &audits)?;
            writeln!(out)?;
        } else {
            for a in &audits {
                write_text(&mut out, a)?;
            }
        }
        let bad: usize = audits.iter().map(|a| a.findings.len()).sum();
        if bad > 0 {
            bail!("{bad} take(s) used key bytes consumed before, or bytes the pool does not hold");
        }
        Ok(())
    }

    /// The audits of the selected pools.
    pub fn audit(&self) -> anyhow::Result<Vec<PoolAudit>> {
        let config = Config::load(&self.config)?;
        let gw = &config.gateway;
        let creds = self
            .credentials_dir
            .clone()
            .or_else(|| std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from));
        let key_path = gw
            .pool_key
            .resolve(creds.as_deref())
            .map_err(|e| anyhow!("gateway.pool_key: {e}"))?;
        let key = PoolKey::load(&key_path)?;
        let peers: Vec<_> = config
            .peers
            .iter()
            .filter(|p| self.peer.as_ref().is_none_or(|n| &p.name == n))
            .collect();
        if peers.is_empty() {
            let names: Vec<_> = config.peers.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "{} has no peer {:?} (its peers: {})",
                self.config.display(),
                self.peer.as_deref().unwrap_or_default(),
                names.join(", ")
            );
        }
        peers
            .iter()
            .map(|p| {
                audit_pool(&gw.state_dir, &p.name, p.role, &key)
                    .with_context(|| pool_context(&gw.state_dir, &p.name))
            })
            .collect()
    }
}

fn pool_context(dir: &Path, peer: &str) -> String {
    format!("auditing the pool with {peer} in {}", dir.display())
}

fn write_text(out: &mut dyn Write, a: &PoolAudit) -> std::io::Result<()> {
    let available: u64 = a
        .blocks
        .iter()
        .map(|b| {
            u64::from(b.len)
                - b.consumed
                    .iter()
                    .map(|&(s, e)| u64::from(e - s))
                    .sum::<u64>()
        })
        .sum();
    writeln!(
        out,
        "pool with {}: snapshot generation {}, {} blocks ({available} bytes unconsumed when written)",
        a.peer,
        a.generation,
        a.blocks.len()
    )?;
    let journal = match a.journal {
        JournalState::Absent => "none (nothing changed since the snapshot)".to_string(),
        JournalState::Stale => "already folded into the snapshot".to_string(),
        JournalState::Current => format!(
            "{} records{}",
            a.records.len(),
            if a.torn_tail {
                ", then an incomplete record (a crash or a write in progress)"
            } else {
                ""
            }
        ),
    };
    writeln!(out, "  journal: {journal}")?;
    let appends = a
        .records
        .iter()
        .filter(|r| matches!(r, AuditRecord::Append { .. }))
        .count();
    if appends > 0 {
        writeln!(out, "  blocks appended: {appends}")?;
    }
    for u in KeyUse::ALL {
        let (mut here, mut peer, mut bytes) = (0u64, 0u64, 0u64);
        for (initiated_here, segments) in a.takes(u) {
            *if initiated_here { &mut here } else { &mut peer } += 1;
            bytes += segments.iter().map(|s| u64::from(s.len)).sum::<u64>();
        }
        if here + peer > 0 {
            writeln!(
                out,
                "  takes for {}: {} ({here} initiated here, {peer} at the peer's positions), {bytes} bytes",
                u.name(),
                here + peer
            )?;
        }
    }
    if a.findings.is_empty() {
        writeln!(out, "  no byte used twice")?;
    }
    for f in &a.findings {
        writeln!(
            out,
            "  FINDING record {}: block {} bytes {}..{} {}",
            f.record,
            f.segment.block,
            f.segment.offset,
            u64::from(f.segment.offset) + u64::from(f.segment.len),
            f.what
        )?;
    }
    Ok(())
}
