//! The audit log: one JSON object per line for every change and every login (who, from where,
//! what, when, result), appended to a file in the data dir and kept (the last
//! [`KEEP`] entries) for `GET /api/v1/audit`. Never a secret: the path and the outcome only.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// Entries kept in memory for the API.
const KEEP: usize = 1000;

/// One entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The role that asked ("anonymous" for a failed login).
    pub who: &'static str,
    /// The caller's address.
    pub address: String,
    /// "METHOD /path".
    pub action: String,
    /// "ok" or the error code.
    pub result: String,
}

/// The log.
#[derive(Debug)]
pub(crate) struct Audit {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    recent: Mutex<VecDeque<AuditEntry>>,
}

impl Audit {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(Some(file)),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    pub(crate) fn record(&self, entry: AuditEntry) {
        if let Ok(mut line) = serde_json::to_vec(&entry) {
            line.push(b'\n');
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = file.as_mut() {
                if let Err(e) = f.write_all(&line) {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
                }
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The last `limit` entries, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<AuditEntry> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().take(limit).cloned().collect()
    }
}

/// Now, RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    moat_pki::inspect::rfc3339(secs)
}
