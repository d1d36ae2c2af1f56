//! Files: the CA directory layout, and writing certificates and keys safely.
//!
//! A CA directory holds `ca.pem` (the CA's certificate) and `ca.key` (its key, mode 0600,
//! maybe encrypted). An intermediate CA's directory also holds `root.pem` (the root that
//! clients and servers trust) and, when there are intermediates above it, `chain.pem`.
//!
//! Keys are written with mode 0600, certificates with 0644, and no file is replaced unless
//! `force` is given.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::decode;
use crate::error::{ContentError, Error, KeyError};
use crate::generate::Ca;
use crate::key;

/// `ca.pem`.
pub const CA_CERT: &str = "ca.pem";
/// `ca.key`.
pub const CA_KEY: &str = "ca.key";
/// `chain.pem`.
pub const CHAIN: &str = "chain.pem";
/// `root.pem`.
pub const ROOT: &str = "root.pem";

/// Writes a new file. `secret` files get mode 0600. An existing file is an error unless
/// `force`, in which case it is removed first (so it never keeps looser permissions).
///
/// # Errors
/// [`Error::Exists`] or [`Error::Io`].
pub fn write_file(path: &Path, contents: &[u8], secret: bool, force: bool) -> Result<(), Error> {
    if path.symlink_metadata().is_ok() {
        if !force {
            return Err(Error::Exists(path.to_owned()));
        }
        fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = opts.open(path).map_err(|e| Error::io(path, e))?;
    file.write_all(contents).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Replaces a file atomically: the contents go to a temporary file in the same folder (0600 for
/// `secret` files, else 0644), which is synced and renamed over `path`; the folder is synced.
/// A reader sees the old file or the new one, never a part.
///
/// # Errors
/// [`Error::Io`]; the old file is then left as it was.
pub fn replace_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = write_file(&tmp, contents, secret, false)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checks that none of `paths` exists (unless `force`), so a command writes all or nothing.
///
/// # Errors
/// [`Error::Exists`] for the first one that exists.
pub fn check_absent(paths: &[PathBuf], force: bool) -> Result<(), Error> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(p) => Err(Error::Exists(p.clone())),
        None => Ok(()),
    }
}

/// Creates a directory (and its parents) if needed.
///
/// # Errors
/// [`Error::Io`].
pub fn ensure_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Reads a file.
///
/// # Errors
/// [`Error::Io`].
pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

fn certs_in(path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let data = read(path)?;
    let decoded = decode::decode(&data).map_err(|e| Error::content(path, e.into()))?;
    let certs = decoded.certificates();
    if certs.is_empty() {
        return Err(Error::content(path, ContentError::NoCertificate));
    }
    Ok(certs)
}

/// Loads a CA directory (`ca.pem`, `ca.key`, and `chain.pem`/`root.pem` when present).
/// `passphrase` decrypts an encrypted `ca.key`.
///
/// # Errors
/// [`Error::Io`] for a missing file, [`Error::Key`] (e.g. [`KeyError::Encrypted`]) for the key,
/// [`Error::Ca`] when the key does not match or the certificate is not a CA.
pub fn load_ca(dir: &Path, passphrase: Option<&[u8]>) -> Result<Ca, Error> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let mut certs = certs_in(&cert_path)?;
    let cert_der = certs.remove(0);
    let key_data = read(&key_path)?;
    let key = key::load(&key_data, passphrase).map_err(|source| Error::Key {
        path: key_path.display().to_string(),
        source,
    })?;
    let mut chain = certs;
    let chain_path = dir.join(CHAIN);
    if chain_path.exists() {
        chain.extend(certs_in(&chain_path)?);
    }
    let root_path = dir.join(ROOT);
    let root = if root_path.exists() {
        certs_in(&root_path)?.into_iter().next()
    } else {
        None
    };
    let ca = Ca {
        cert_der,
        key,
        chain,
        root,
    };
    ca.check().map_err(|source| Error::Ca {
        dir: Some(dir.to_owned()),
        source,
    })?;
    Ok(ca)
}

/// Whether the CA key in `dir` is encrypted (so a passphrase is needed).
pub fn ca_key_is_encrypted(dir: &Path) -> bool {
    let Ok(data) = read(&dir.join(CA_KEY)) else {
        return false;
    };
    matches!(key::load(&data, None), Err(KeyError::Encrypted(_)))
}

/// Writes a CA directory. The key is encrypted when `passphrase` is given.
///
/// # Errors
/// [`Error::Exists`] when a file exists and not `force`, [`Error::Io`].
pub fn write_ca(
    dir: &Path,
    ca: &Ca,
    passphrase: Option<&[u8]>,
    force: bool,
) -> Result<Vec<PathBuf>, Error> {
    ensure_dir(dir)?;
    let mut files = vec![(dir.join(CA_CERT), decode::cert_pem(&ca.cert_der))];
    if !ca.chain.is_empty() {
        files.push((
            dir.join(CHAIN),
            ca.chain.iter().map(|c| decode::cert_pem(c)).collect(),
        ));
    }
    if let Some(root) = &ca.root {
        files.push((dir.join(ROOT), decode::cert_pem(root)));
    }
    let key_path = dir.join(CA_KEY);
    let mut all: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    all.push(key_path.clone());
    check_absent(&all, force)?;
    write_key(&key_path, &ca.key, passphrase, force)?;
    for (path, text) in &files {
        write_file(path, text.as_bytes(), false, force)?;
    }
    Ok(all)
}

/// Writes a private key with mode 0600, encrypted when `passphrase` is given.
///
/// # Errors
/// [`Error::Exists`], [`Error::Io`], or [`Error::Key`] if encryption fails.
pub fn write_key(
    path: &Path,
    key: &key::PrivateKey,
    passphrase: Option<&[u8]>,
    force: bool,
) -> Result<(), Error> {
    match passphrase {
        Some(p) => {
            let text = key.to_encrypted_pkcs8_pem(p).map_err(|source| Error::Key {
                path: path.display().to_string(),
                source,
            })?;
            write_file(path, text.as_bytes(), true, force)
        }
        None => write_file(path, key.to_pkcs8_pem().as_bytes(), true, force),
    }
}

/// Reads a passphrase file: its first line, without the line ending.
///
/// # Errors
/// [`Error::Io`], or [`Error::Content`] when it is empty.
pub fn read_passphrase_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
    let data = zeroize::Zeroizing::new(read(path)?);
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(Error::content(path, ContentError::EmptyPassphrase));
    }
    Ok(zeroize::Zeroizing::new(line.to_vec()))
}
