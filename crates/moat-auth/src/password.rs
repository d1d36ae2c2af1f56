//! The password file: `username:hash` lines, verified in constant time.
//!
//! Accepted hash formats, one per line:
//! - argon2id PHC strings, `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>` (what
//!   `moat user add` writes, and what mosquitto 2.1's `mosquitto_passwd -H argon2id` writes);
//!   argon2i and argon2d PHC strings are read too;
//! - mosquitto's `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 with a
//!   64-byte output, the default of `mosquitto_passwd` since 2.0 (`-H sha512-pbkdf2`);
//! - mosquitto's `$6$<base64 salt>$<base64 hash>`: one SHA-512 over password then salt, the
//!   default of mosquitto 1.6 and earlier (`-H sha512`). Weak: re-hash with `moat user passwd`.
//!
//! Comments (`#`) and blank lines are allowed and kept when the file is edited.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHasher, Version};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{read, LoadError};

/// argon2id memory cost of new hashes, in KiB (OWASP's first recommendation: 19 MiB).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// argon2id iterations of new hashes.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id parallelism of new hashes.
pub const ARGON2_P_COST: u32 = 1;
/// argon2id output length of new hashes, in bytes.
pub const ARGON2_OUTPUT_LEN: usize = 32;
/// Salt length of new hashes, in bytes (random, from the OS).
pub const SALT_LEN: usize = 16;

/// A password in memory: zeroed when dropped, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Zeroizing<Vec<u8>>);

impl Password {
    /// Wraps these bytes (MQTT passwords are binary data).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Is the password empty?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Self::new(s.into_bytes())
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Working memory for password checks (argon2's blocks: 19 MiB with the default cost), kept
/// from one check to the next.
///
/// [`PasswordFile::verify`] allocates and frees it on every check. A server running up to N
/// checks at once keeps N of these and lends one to each check instead: its memory for checks
/// is then N times the largest cost in the password file, for good. Allocating per check is
/// not bounded that way: after the first 19 MiB block is freed, glibc serves the next ones
/// from its heaps and does not give them back, so a few checks at a time, one after the other
/// for long enough, keep hundreds of MiB.
///
/// It grows to the largest argon2 memory cost it has been used for and never shrinks. What it
/// holds between checks is argon2's intermediate state, which argon2 does not clear either.
#[derive(Default)]
pub struct CheckMemory {
    blocks: Vec<Block>,
}

impl CheckMemory {
    /// Empty: it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes it holds.
    pub fn len_bytes(&self) -> usize {
        self.blocks.len() * Block::SIZE
    }

    /// At least `n` blocks, as a slice of exactly `n`.
    fn blocks(&mut self, n: usize) -> &mut [Block] {
        if self.blocks.len() < n {
            // Freed first: never both the old and the new at once.
            self.blocks = Vec::new();
            self.blocks.resize(n, Block::new());
        }
        &mut self.blocks[..n]
    }
}

impl fmt::Debug for CheckMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckMemory")
            .field("bytes", &self.len_bytes())
            .finish()
    }
}

/// The answer of [`PasswordFile::verify`]. Both failures must get the same answer on the wire
/// (v5 0x86, v3 4) and they take the same time; they differ only for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Ok,
    /// The user is in the file and the password is wrong.
    WrongPassword,
    /// The user is not in the file (a dummy hash of the same cost was computed).
    UnknownUser,
}

impl Verdict {
    /// Is this [`Verdict::Ok`]?
    pub fn is_ok(self) -> bool {
        self == Self::Ok
    }
}

/// The hash scheme of one entry, as shown by `moat user list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashScheme {
    /// argon2id (or argon2i / argon2d) in a PHC string.
    Argon2,
    /// mosquitto `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512,
    /// mosquitto `$6$`: one round of salted SHA-512 (weak).
    Sha512,
}

impl HashScheme {
    /// A short name: `argon2`, `sha512-pbkdf2` or `sha512`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Argon2 => "argon2",
            Self::Pbkdf2Sha512 => "sha512-pbkdf2",
            Self::Sha512 => "sha512",
        }
    }
}

/// Why an edit of the password file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// `add` of a user that is already there.
    #[error("user {0:?} already exists")]
    Exists(String),
    /// `set_password` or `remove` of a user that is not there.
    #[error("no user {0:?}")]
    NotFound(String),
    /// The name cannot be written in the file.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidUsername {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The password is empty.
    #[error("the password is empty")]
    EmptyPassword,
    /// Hashing failed (the OS random source failed).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A password file, parsed. Cheap to share behind an `Arc`; edits keep comments and the order of
/// the other lines.
#[derive(Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
    index: HashMap<String, usize>,
    dummy: Option<Hash>,
}

#[derive(Clone)]
enum Line {
    Other(String),
    Entry {
        username: String,
        hash: Hash,
        text: String,
    },
}

impl PasswordFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`LoadError::Io`] if the file cannot be read, [`LoadError::Invalid`] with the line and
    /// reason for the first invalid line.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::parse(&read(path)?, path)
    }

    /// Parses the text of a password file; `origin` names it in errors.
    ///
    /// # Errors
    /// [`LoadError::Invalid`] for a line that is not `username:hash` with a known hash format,
    /// or a user listed twice.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, LoadError> {
        let mut file = Self::new();
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                file.lines.push(Line::Other(raw.to_owned()));
                continue;
            }
            let Some((username, hash)) = raw.split_once(':') else {
                return Err(LoadError::invalid(
                    origin,
                    line_no,
                    "expected `username:hash` (make entries with `moat user add`)",
                ));
            };
            if username.is_empty() {
                return Err(LoadError::invalid(origin, line_no, "empty user name"));
            }
            let hash = Hash::parse(hash.trim_end())
                .map_err(|reason| LoadError::invalid(origin, line_no, reason))?;
            if file.index.contains_key(username) {
                return Err(LoadError::invalid(
                    origin,
                    line_no,
                    format!("user {username:?} is listed twice"),
                ));
            }
            file.index.insert(username.to_owned(), file.lines.len());
            file.lines.push(Line::Entry {
                username: username.to_owned(),
                hash,
                text: raw.to_owned(),
            });
        }
        file.refresh_dummy();
        Ok(file)
    }

    /// Checks a password. The work is the same whether or not the user exists: an unknown user
    /// is checked against a dummy hash of the same scheme and cost as the file's first entry.
    /// This is slow on purpose (tens of milliseconds for argon2id): call it from a blocking
    /// thread pool, never on an async reactor. It allocates argon2's memory for this check
    /// alone; [`PasswordFile::verify_in`] reuses memory.
    pub fn verify(&self, username: &str, password: &[u8]) -> Verdict {
        self.verify_in(username, password, &mut CheckMemory::new())
    }

    /// [`PasswordFile::verify`] with argon2's working memory taken from (and left in)
    /// `memory`.
    pub fn verify_in(&self, username: &str, password: &[u8], memory: &mut CheckMemory) -> Verdict {
        match self.index.get(username).map(|&i| &self.lines[i]) {
            Some(Line::Entry { hash, .. }) => {
                if hash.verify(password, memory) {
                    Verdict::Ok
                } else {
                    Verdict::WrongPassword
                }
            }
            _ => {
                let dummy = match &self.dummy {
                    Some(d) => d.verify(password, memory),
                    None => Hash::dummy_argon2(&default_params()).verify(password, memory),
                };
                let _ = std::hint::black_box(dummy);
                Verdict::UnknownUser
            }
        }
    }

    /// Is this user in the file?
    pub fn contains(&self, username: &str) -> bool {
        self.index.contains_key(username)
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Are there no users?
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The users in file order, with the scheme of their hash (never the hash).
    pub fn users(&self) -> impl Iterator<Item = (&str, HashScheme)> + '_ {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { username, hash, .. } => Some((username.as_str(), hash.scheme())),
            Line::Other(_) => None,
        })
    }

    /// Adds a user with a new argon2id hash of `password`, at the end of the file.
    ///
    /// # Errors
    /// [`EditError::Exists`], [`EditError::InvalidUsername`], [`EditError::EmptyPassword`], or
    /// [`EditError::Hash`] if the OS random source fails.
    pub fn add(&mut self, username: &str, password: &Password) -> Result<(), EditError> {
        validate_username(username)?;
        if self.contains(username) {
            return Err(EditError::Exists(username.to_owned()));
        }
        let (hash, text) = new_hash(password)?;
        self.index.insert(username.to_owned(), self.lines.len());
        self.lines.push(Line::Entry {
            username: username.to_owned(),
            hash,
            text: format!("{username}:{text}"),
        });
        self.refresh_dummy();
        Ok(())
    }

    /// Replaces a user's hash with a new argon2id hash of `password`, in place.
    ///
    /// # Errors
    /// [`EditError::NotFound`], [`EditError::EmptyPassword`] or [`EditError::Hash`].
    pub fn set_password(&mut self, username: &str, password: &Password) -> Result<(), EditError> {
        let Some(&i) = self.index.get(username) else {
            return Err(EditError::NotFound(username.to_owned()));
        };
        let (hash, text) = new_hash(password)?;
        self.lines[i] = Line::Entry {
            username: username.to_owned(),
            hash,
            text: format!("{username}:{text}"),
        };
        self.refresh_dummy();
        Ok(())
    }

    /// Removes a user's line.
    ///
    /// # Errors
    /// [`EditError::NotFound`].
    pub fn remove(&mut self, username: &str) -> Result<(), EditError> {
        let Some(i) = self.index.remove(username) else {
            return Err(EditError::NotFound(username.to_owned()));
        };
        self.lines.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        self.refresh_dummy();
        Ok(())
    }

    /// The file's text: untouched lines as they were, one `\n` after each line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Other(t) | Line::Entry { text: t, .. } => out.push_str(t),
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file with mode 0600 in the same directory,
    /// flushed to disk, then renamed over `path`.
    ///
    /// # Errors
    /// Any I/O error; `path` is then unchanged.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                opts.mode(0o600);
                let f = opts.open(&tmp)?;
                // The mode above is masked by the umask and ignored for an existing file.
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                write_all_sync(f, self.to_text().as_bytes())?;
            }
            #[cfg(not(unix))]
            write_all_sync(opts.open(&tmp)?, self.to_text().as_bytes())?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn refresh_dummy(&mut self) {
        let first = self.lines.iter().find_map(|l| match l {
            Line::Entry { hash, .. } => Some(hash),
            Line::Other(_) => None,
        });
        self.dummy = Some(match first {
            Some(h) => h.dummy_like(),
            None => Hash::dummy_argon2(&default_params()),
        });
    }
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.len())
            .finish_non_exhaustive()
    }
}

fn write_all_sync(mut f: std::fs::File, bytes: &[u8]) -> io::Result<()> {
    f.write_all(bytes)?;
    f.sync_all()
}

/// Checks that a name can be a line of the file (`moat user add` refuses the others).
///
/// # Errors
/// [`EditError::InvalidUsername`] for an empty name, a name with `:` or a control character,
/// or one that starts with `#` or white space (it would read as a comment or be ambiguous).
pub fn validate_username(name: &str) -> Result<(), EditError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.contains(':') {
        Some("it contains `:`")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.starts_with('#') {
        Some("it starts with `#`")
    } else if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        Some("it starts or ends with white space")
    } else if name.len() > 65_535 {
        Some("it is longer than 65535 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EditError::InvalidUsername {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn default_params() -> Params {
    Params::new(
        ARGON2_M_COST_KIB,
        ARGON2_T_COST,
        ARGON2_P_COST,
        Some(ARGON2_OUTPUT_LEN),
    )
    .unwrap_or_default()
}

fn random_salt() -> [u8; SALT_LEN] {
    argon2::password_hash::try_generate_salt().unwrap_or([0x5a; SALT_LEN])
}

/// Hashes a new password: argon2id with the documented parameters and a random salt, written
/// as a PHC string.
fn new_hash(password: &Password) -> Result<(Hash, String), EditError> {
    if password.is_empty() {
        return Err(EditError::EmptyPassword);
    }
    let salt =
        argon2::password_hash::try_generate_salt().map_err(|e| EditError::Hash(e.to_string()))?;
    let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, default_params())
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| EditError::Hash(e.to_string()))?
        .to_string();
    let hash = Hash::parse(&phc).map_err(EditError::Hash)?;
    Ok((hash, phc))
}

#[derive(Clone)]
enum Hash {
    Argon2 {
        algorithm: Algorithm,
        version: Version,
        params: Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Hash {
    fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("$argon2") {
            return Self::parse_argon2(s);
        }
        if let Some(rest) = s.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iter), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a `$7$` hash must be `$7$iterations$salt$hash`".into());
            };
            let iterations: u32 = iter
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("invalid PBKDF2 iteration count {iter:?}"))?;
            let salt = b64(salt, "salt")?;
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err(format!(
                    "a `$7$` hash must hold 64 bytes, this one holds {}",
                    hash.len()
                ));
            }
            return Ok(Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            });
        }
        if let Some(rest) = s.strip_prefix("$6$") {
            let mut parts = rest.split('$');
            let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err("a `$6$` hash must be `$6$salt$hash`".into());
            };
            let salt = b64(salt, "salt")?;
            let hash = b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err(format!(
                    "a `$6$` hash must hold 64 bytes, this one holds {}",
                    hash.len()
                ));
            }
            return Ok(Self::Sha512 { salt, hash });
        }
        if s.starts_with('$') {
            Err("unknown hash format: expected `$argon2id$`, `$7$` (sha512-pbkdf2) or `$6$` (sha512)".into())
        } else {
            Err("not a password hash (plain-text passwords are not accepted; hash them with `moat user passwd`)".into())
        }
    }

    fn parse_argon2(s: &str) -> Result<Self, String> {
        let phc = PasswordHash::new(s).map_err(|e| format!("invalid argon2 PHC string: {e}"))?;
        let algorithm = Algorithm::try_from(phc.algorithm.as_ref())
            .map_err(|e| format!("invalid argon2 variant: {e}"))?;
        let version = match phc.version {
            Some(v) => Version::try_from(v).map_err(|e| format!("invalid argon2 version: {e}"))?,
            None => Version::V0x10,
        };
        let params =
            Params::try_from(&phc).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        let salt = phc
            .salt
            .as_ref()
            .ok_or("argon2 hash without a salt")?
            .as_ref()
            .to_vec();
        let hash = phc
            .hash
            .as_ref()
            .ok_or("argon2 hash without an output")?
            .as_bytes()
            .to_vec();
        Ok(Self::Argon2 {
            algorithm,
            version,
            params,
            salt,
            hash,
        })
    }

    fn scheme(&self) -> HashScheme {
        match self {
            Self::Argon2 { .. } => HashScheme::Argon2,
            Self::Pbkdf2Sha512 { .. } => HashScheme::Pbkdf2Sha512,
            Self::Sha512 { .. } => HashScheme::Sha512,
        }
    }

    fn verify(&self, password: &[u8], memory: &mut CheckMemory) -> bool {
        match self {
            Self::Argon2 {
                algorithm,
                version,
                params,
                salt,
                hash,
            } => {
                let mut out = Zeroizing::new(vec![0u8; hash.len()]);
                let blocks = memory.blocks(params.block_count());
                let ctx = Argon2::new(*algorithm, *version, params.clone());
                ctx.hash_password_into_with_memory(password, salt, &mut out, blocks)
                    .is_ok()
                    && bool::from(out.ct_eq(hash))
            }
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = Zeroizing::new([0u8; 64]);
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out[..]);
                bool::from(out[..].ct_eq(hash))
            }
            Self::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                let out = d.finalize();
                bool::from(out[..].ct_eq(hash))
            }
        }
    }

    /// The same scheme and cost with a random salt and an all-zero hash, for unknown users.
    fn dummy_like(&self) -> Self {
        let salt = random_salt().to_vec();
        match self {
            Self::Argon2 {
                algorithm,
                version,
                params,
                salt: s,
                hash,
            } => Self::Argon2 {
                algorithm: *algorithm,
                version: *version,
                params: params.clone(),
                salt: salt[..s.len().clamp(8, SALT_LEN)].to_vec(),
                hash: vec![0; hash.len()],
            },
            Self::Pbkdf2Sha512 {
                iterations,
                salt: s,
                ..
            } => Self::Pbkdf2Sha512 {
                iterations: *iterations,
                salt: salt[..s.len().min(SALT_LEN)].to_vec(),
                hash: vec![0; 64],
            },
            Self::Sha512 { salt: s, .. } => Self::Sha512 {
                salt: salt[..s.len().min(SALT_LEN)].to_vec(),
                hash: vec![0; 64],
            },
        }
    }

    fn dummy_argon2(params: &Params) -> Self {
        Self::Argon2 {
            algorithm: Algorithm::Argon2id,
            version: Version::V0x13,
            params: params.clone(),
            salt: random_salt().to_vec(),
            hash: vec![0; params.output_len().unwrap_or(ARGON2_OUTPUT_LEN)],
        }
    }
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(s)
        .map_err(|e| format!("the {what} is not valid base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PasswordFile, LoadError> {
        PasswordFile::parse(text, Path::new("passwd"))
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("# c\n\nalice\n", 3, "expected `username:hash`"),
            (":$6$abc$def\n", 1, "empty user name"),
            ("a:secret\n", 1, "plain-text"),
            ("a:$5$x$y\n", 1, "unknown hash format"),
            ("a:$7$0$AAAA$AAAA\n", 1, "iteration count"),
            ("a:$7$10$AAAA$AAAA\n", 1, "64 bytes"),
            ("a:$6$!!$AAAA\n", 1, "base64"),
            ("a:$argon2id$v=19$m=bad\n", 1, "argon2"),
        ];
        for (text, line, needle) in cases {
            let err = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            assert_eq!(err.line(), Some(line), "{text:?}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("passwd:{line}: ")), "{msg}");
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
    }

    #[test]
    fn duplicate_user_is_an_error() {
        let mut f = PasswordFile::new();
        f.add("a", &"pw".into()).unwrap();
        let text = format!("{}{}", f.to_text(), f.to_text());
        let err = parse(&text).err().unwrap();
        assert_eq!(err.line(), Some(2));
        assert!(err.to_string().contains("listed twice"));
    }

    #[test]
    fn new_hashes_are_argon2id_with_the_documented_parameters() {
        let mut f = PasswordFile::new();
        f.add("alice", &"s3cret".into()).unwrap();
        let text = f.to_text();
        assert!(
            text.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{text}"
        );
        assert_eq!(f.verify("alice", b"s3cret"), Verdict::Ok);
        assert_eq!(f.verify("alice", b"s3cret "), Verdict::WrongPassword);
        assert_eq!(f.verify("bob", b"s3cret"), Verdict::UnknownUser);
        // Two hashes of one password differ (random salt).
        f.add("alice2", &"s3cret".into()).unwrap();
        let lines: Vec<_> = f
            .to_text()
            .lines()
            .map(|l| l[l.find(':').unwrap()..].to_owned())
            .collect();
        assert_ne!(lines[0], lines[1]);
    }

    #[test]
    fn edits_keep_comments_and_order() {
        let mut f = PasswordFile::new();
        f.add("a", &"1".into()).unwrap();
        f.add("b", &"2".into()).unwrap();
        let text = format!("# head\n{}\n# tail\n", f.to_text());
        let mut f = parse(&text).unwrap();
        let b_line = f.to_text().lines().nth(2).unwrap().to_owned();
        f.set_password("a", &"one".into()).unwrap();
        assert_eq!(f.verify("a", b"one"), Verdict::Ok);
        assert_eq!(f.verify("a", b"1"), Verdict::WrongPassword);
        f.add("c", &"3".into()).unwrap();
        f.remove("a").unwrap();
        let out = f.to_text();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines[0], "# head");
        assert_eq!(lines[1], b_line);
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "# tail");
        assert!(lines[4].starts_with("c:$argon2id$"));
        assert_eq!(lines.len(), 5);
        let names: Vec<_> = f.users().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(f.verify("c", b"3"), Verdict::Ok);
        assert_eq!(f.verify("b", b"2"), Verdict::Ok);
    }

    #[test]
    fn edit_errors() {
        let mut f = PasswordFile::new();
        f.add("a", &"1".into()).unwrap();
        assert_eq!(f.add("a", &"1".into()), Err(EditError::Exists("a".into())));
        assert_eq!(f.remove("x"), Err(EditError::NotFound("x".into())));
        assert_eq!(
            f.set_password("x", &"1".into()),
            Err(EditError::NotFound("x".into()))
        );
        assert_eq!(f.add("e", &"".into()), Err(EditError::EmptyPassword));
        for bad in ["", "a:b", "#a", " a", "a\n", "a\tb"] {
            assert!(
                matches!(
                    f.add(bad, &"1".into()),
                    Err(EditError::InvalidUsername { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let p = Password::from("hunter2");
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        let mut f = PasswordFile::new();
        f.add("alice", &p).unwrap();
        let d = format!("{f:?}");
        assert!(!d.contains("argon2") && !d.contains("alice"), "{d}");
    }
}
