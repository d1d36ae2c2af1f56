//! The error every `load` and `parse` function returns.

use std::io;
use std::path::{Path, PathBuf};

/// A password or ACL file could not be read or is invalid.
///
/// `Display` gives `path:line: reason` (or `path: reason` for I/O errors), ready for a log line
/// or a CLI message. A server that reloads on SIGHUP logs this and keeps the old value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The file was read but a line of it is invalid.
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong, lower case, with the fix where there is one.
        reason: String,
    },
}

impl LoadError {
    pub(crate) fn invalid(path: &Path, line: usize, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &Path, error: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    /// The 1-based line of the problem, if it is about a line.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Io { .. } => None,
            Self::Invalid { line, .. } => Some(*line),
        }
    }

    /// Is this "the file does not exist"?
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }
}

/// Reads a file for `load`.
pub(crate) fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))
}
