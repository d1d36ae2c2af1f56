//! Revocation: a CA directory's list of revoked certificates and the CRL signed from it.
//!
//! `revoked.toml` in the CA directory is the record (one entry per serial: hex, time, reason,
//! and the CRL number last used); `ca.crl` is the CRL signed by the CA key from it, PEM,
//! replaced atomically so a broker watching the file never reads half of one. Each signing
//! takes a new CRL number and sets thisUpdate = now, nextUpdate = now + the days given: a
//! broker treats a CRL past its nextUpdate as stale (see the broker's `crl_stale` setting), so
//! a CA that revokes nothing new still re-signs (`moat cert crl`) before that time.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{ContentError, Error, InvalidParameter};
use crate::generate::Ca;
use crate::store;

/// `revoked.toml`: the record of revocations in a CA directory.
pub const REVOKED: &str = "revoked.toml";
/// `revoked.lock`: locked (exclusively, by the operating system) while `revoked.toml` is read,
/// changed and written, so two revocations at once never lose one another's entry.
pub const REVOKED_LOCK: &str = "revoked.lock";
/// `ca.crl`: the CRL signed from it.
pub const CRL: &str = "ca.crl";
/// How long a CRL is valid when no `--days` is given.
pub const DEFAULT_CRL_DAYS: u32 = 7;

/// Why a certificate was revoked (RFC 5280 CRLReason; the flag spells them as there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationReason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The certificate's key was compromised.
    KeyCompromise,
    /// The CA's key was compromised.
    CaCompromise,
    /// The subject's affiliation changed.
    AffiliationChanged,
    /// The certificate was replaced.
    Superseded,
    /// The certificate is no longer needed.
    CessationOfOperation,
    /// Held (suspended).
    CertificateHold,
    /// A privilege was withdrawn.
    PrivilegeWithdrawn,
    /// An attribute authority was compromised.
    AaCompromise,
}

impl RevocationReason {
    /// All of them, in flag order.
    pub const ALL: [Self; 9] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::CertificateHold,
        Self::PrivilegeWithdrawn,
        Self::AaCompromise,
    ];

    /// The name, as RFC 5280 spells it ("keyCompromise").
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::CertificateHold => "certificateHold",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
            Self::AaCompromise => "aACompromise",
        }
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => R::Unspecified,
            Self::KeyCompromise => R::KeyCompromise,
            Self::CaCompromise => R::CaCompromise,
            Self::AffiliationChanged => R::AffiliationChanged,
            Self::Superseded => R::Superseded,
            Self::CessationOfOperation => R::CessationOfOperation,
            Self::CertificateHold => R::CertificateHold,
            Self::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            Self::AaCompromise => R::AaCompromise,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = InvalidParameter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| InvalidParameter::RevocationReason(s.to_owned()))
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The serial number, big-endian, without leading zero bytes.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: SystemTime,
    /// Why.
    pub reason: RevocationReason,
}

/// The revocations of one CA directory (`revoked.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    /// The number of the last CRL signed (0: none yet).
    pub crl_number: u64,
    /// The revoked certificates, in the order they were revoked.
    pub entries: Vec<RevokedEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ListFile {
    crl_number: u64,
    #[serde(default)]
    revoked: Vec<EntryFile>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EntryFile {
    serial: String,
    /// Unix seconds.
    revoked_at: u64,
    reason: String,
}

/// What a signing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlWritten {
    /// The CRL file (`DIR/ca.crl`).
    pub path: PathBuf,
    /// Its CRL number.
    pub crl_number: u64,
    /// Its nextUpdate.
    pub next_update: SystemTime,
    /// How many certificates it revokes.
    pub revoked: usize,
    /// Whether the serial was newly revoked (`false`: it was already in the list).
    pub newly_revoked: bool,
}

/// A serial number as hex bytes separated by colons ("3a:0f:..."), the way `moat cert
/// inspect` and the broker's log print it.
pub fn serial_hex(serial: &[u8]) -> String {
    let trimmed = trim_serial(serial);
    trimmed
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a serial given as hex, with or without colons, spaces or a `0x` prefix.
///
/// # Errors
/// [`InvalidParameter::Serial`] when it is not hex or is empty.
pub fn parse_serial(s: &str) -> Result<Vec<u8>, InvalidParameter> {
    let bad = || InvalidParameter::Serial(s.to_owned());
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let digits: String = t.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let digits = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes: Vec<u8> = (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let trimmed = trim_serial(&bytes).to_vec();
    if trimmed.is_empty() {
        return Err(bad());
    }
    Ok(trimmed)
}

/// A serial without the leading zero bytes DER adds to keep it positive.
fn trim_serial(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    &serial[start..]
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `dir/revoked.toml`; an absent file is an empty list.
///
/// # Errors
/// [`Error::Io`], or [`Error::Content`] ([`ContentError::Revocations`]) when it is malformed.
pub fn read_list(dir: &Path) -> Result<RevocationList, Error> {
    let path = dir.join(REVOKED);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RevocationList::default()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |what: String| Error::content(&path, ContentError::Revocations(what));
    let file: ListFile = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
    let mut entries = Vec::with_capacity(file.revoked.len());
    for e in file.revoked {
        entries.push(RevokedEntry {
            serial: parse_serial(&e.serial).map_err(|err| bad(err.to_string()))?,
            revoked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(e.revoked_at),
            reason: e
                .reason
                .parse()
                .map_err(|err: InvalidParameter| bad(err.to_string()))?,
        });
    }
    Ok(RevocationList {
        crl_number: file.crl_number,
        entries,
    })
}

fn write_list(dir: &Path, list: &RevocationList) -> Result<(), Error> {
    let path = dir.join(REVOKED);
    let file = ListFile {
        crl_number: list.crl_number,
        revoked: list
            .entries
            .iter()
            .map(|e| EntryFile {
                serial: serial_hex(&e.serial),
                revoked_at: unix(e.revoked_at),
                reason: e.reason.as_str().to_owned(),
            })
            .collect(),
    };
    let text =
        toml::to_string(&file).map_err(|e| Error::generate("writing the revocation list", e))?;
    let text = format!(
        "# Certificates revoked by this CA. Written by `moat cert revoke`; ca.crl is signed from it.\n{text}"
    );
    store::replace_file(&path, text.as_bytes(), false)
}

/// The serial of `cert_der` when `ca` issued it (the issuer name is the CA's subject and the
/// CA's key verifies its signature).
///
/// # Errors
/// [`Error::NotIssuedBy`] naming both, or [`Error::Content`] when it is not a certificate.
pub fn serial_issued_by(ca: &Ca, cert_der: &[u8], cert_name: &str) -> Result<Vec<u8>, Error> {
    let parse_err = |e: x509_parser::nom::Err<x509_parser::error::X509Error>| {
        Error::content(cert_name, ContentError::NotCertificate(e.to_string()))
    };
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(parse_err)?;
    let (_, ca_cert) = X509Certificate::from_der(&ca.cert_der).map_err(parse_err)?;
    let issued = cert.issuer().as_raw() == ca_cert.subject().as_raw()
        && cert.verify_signature(Some(ca_cert.public_key())).is_ok();
    if !issued {
        return Err(Error::NotIssuedBy {
            cert: format!("{cert_name} ({})", cert.subject()),
            issuer: cert.issuer().to_string(),
            ca: ca_cert.subject().to_string(),
        });
    }
    Ok(trim_serial(cert.raw_serial()).to_vec())
}

/// Records `serial` as revoked in `dir/revoked.toml` (unless it already is) and writes a new
/// `dir/ca.crl` signed by `ca`, valid from `now` for `days` days.
///
/// # Errors
/// [`Error::Io`], [`Error::Content`] for a malformed `revoked.toml`, [`Error::Generate`] if
/// signing fails. The files are left as they were on error.
pub fn revoke(
    dir: &Path,
    ca: &Ca,
    serial: &[u8],
    reason: RevocationReason,
    now: SystemTime,
    days: u32,
) -> Result<CrlWritten, Error> {
    let serial = trim_serial(serial).to_vec();
    let _lock = lock_list(dir)?;
    let mut list = read_list(dir)?;
    let newly = !list.entries.iter().any(|e| e.serial == serial);
    if newly {
        list.entries.push(RevokedEntry {
            serial,
            revoked_at: now,
            reason,
        });
    }
    let mut written = sign_and_write(dir, ca, list, now, days)?;
    written.newly_revoked = newly;
    Ok(written)
}

/// Signs `dir/ca.crl` again from `dir/revoked.toml` (which may be absent: an empty CRL), with
/// the next CRL number, valid from `now` for `days` days.
///
/// # Errors
/// As [`revoke`].
pub fn refresh(dir: &Path, ca: &Ca, now: SystemTime, days: u32) -> Result<CrlWritten, Error> {
    let _lock = lock_list(dir)?;
    let list = read_list(dir)?;
    sign_and_write(dir, ca, list, now, days)
}

/// Takes the exclusive lock on `dir/revoked.lock` (made if absent), waiting for another
/// process or thread that holds it; released when the file is dropped. Without it, two
/// `moat cert revoke` at once could each read the list, add their serial and write it, and
/// the second write would silently undo the first revocation.
fn lock_list(dir: &Path) -> Result<std::fs::File, Error> {
    let path = dir.join(REVOKED_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.lock().map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

fn sign_and_write(
    dir: &Path,
    ca: &Ca,
    mut list: RevocationList,
    now: SystemTime,
    days: u32,
) -> Result<CrlWritten, Error> {
    list.crl_number += 1;
    let next_update = now + Duration::from_secs(u64::from(days.max(1)) * 86_400);
    let pem = sign_crl(ca, &list.entries, list.crl_number, now, next_update)?;
    // The record first: a CRL number is never used twice, even if writing the CRL fails.
    write_list(dir, &list)?;
    let path = dir.join(CRL);
    store::replace_file(&path, pem.as_bytes(), false)?;
    Ok(CrlWritten {
        path,
        crl_number: list.crl_number,
        next_update,
        revoked: list.entries.len(),
        newly_revoked: false,
    })
}

/// Signs a CRL (PEM) revoking `entries`, with the given number and update times. The times
/// are the caller's: a test makes a stale CRL with a `next_update` in the past.
///
/// # Errors
/// [`Error::Ca`] if the CA cannot sign, [`Error::Generate`] if signing fails.
pub fn sign_crl(
    ca: &Ca,
    entries: &[RevokedEntry],
    crl_number: u64,
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<String, Error> {
    ca.check()
        .map_err(|source| Error::Ca { dir: None, source })?;
    if next_update <= this_update {
        return Err(InvalidParameter::Validity.into());
    }
    let key = ca.key.to_rcgen().map_err(|source| Error::Key {
        path: "CA key".into(),
        source,
    })?;
    let issuer =
        rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(ca.cert_der.as_slice()), key)?;
    let params = rcgen::CertificateRevocationListParams {
        this_update: this_update.into(),
        next_update: next_update.into(),
        crl_number: rcgen::SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|e| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&e.serial),
                revocation_time: e.revoked_at.into(),
                reason_code: Some(e.reason.to_rcgen()),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    Ok(crl.pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{self, CaOptions};
    use x509_parser::prelude::FromDer;

    fn ca() -> Ca {
        let made = generate::root_ca(&CaOptions {
            common_name: "Test CA".into(),
            key_type: generate::KeyType::P256,
            validity: generate::Validity::days_from(SystemTime::now(), 30),
        })
        .expect("ca");
        Ca {
            cert_der: made.cert_der,
            key: made.key,
            chain: Vec::new(),
            root: None,
        }
    }

    fn client_options(cn: &str) -> generate::ClientOptions {
        generate::ClientOptions {
            common_name: cn.into(),
            key_type: generate::KeyType::P256,
            validity: generate::Validity::days_from(SystemTime::now(), 30),
        }
    }

    #[test]
    fn revocations_at_once_keep_every_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca();
        let now = SystemTime::now();
        std::thread::scope(|scope| {
            for i in 1..=16u8 {
                let (dir, ca) = (dir.path(), &ca);
                scope.spawn(move || {
                    revoke(dir, ca, &[i], RevocationReason::KeyCompromise, now, 7).expect("revoke");
                });
            }
        });
        let list = read_list(dir.path()).expect("list");
        let mut serials: Vec<_> = list.entries.iter().map(|e| e.serial.clone()).collect();
        serials.sort();
        assert_eq!(serials, (1..=16u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(list.crl_number, 16, "every CRL number used once");
    }

    #[test]
    fn serials_parse_with_or_without_colons() {
        assert_eq!(parse_serial("0a:FF").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(parse_serial("0x00abc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(serial_hex(&[0, 0x8f, 1]), "8f:01");
        assert!(parse_serial("zz").is_err());
        assert!(parse_serial("00").is_err());
    }

    #[test]
    fn reasons_round_trip() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), r);
        }
        assert!("stolen".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn revoke_records_and_signs_with_increasing_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let now = SystemTime::now();
        let first = revoke(
            dir.path(),
            &ca,
            &[0, 0x91, 2],
            RevocationReason::KeyCompromise,
            now,
            3,
        )
        .unwrap();
        assert!(first.newly_revoked);
        assert_eq!((first.crl_number, first.revoked), (1, 1));
        let again = revoke(
            dir.path(),
            &ca,
            &[0x91, 2],
            RevocationReason::Superseded,
            now,
            3,
        )
        .unwrap();
        assert!(!again.newly_revoked);
        assert_eq!((again.crl_number, again.revoked), (2, 1));
        let list = read_list(dir.path()).unwrap();
        assert_eq!(list.entries[0].reason, RevocationReason::KeyCompromise);

        let pem = std::fs::read(dir.path().join(CRL)).unwrap();
        let der = ::pem::parse(&pem).unwrap().into_contents();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<_> = crl
            .iter_revoked_certificates()
            .map(|r| trim_serial(r.raw_serial()).to_vec())
            .collect();
        assert_eq!(serials, vec![vec![0x91, 2]]);
        let (_, ca_cert) = X509Certificate::from_der(&ca.cert_der).unwrap();
        assert!(crl.verify_signature(ca_cert.public_key()).is_ok());
        let next = crl.next_update().unwrap().timestamp();
        let want = i64::try_from(unix(now)).unwrap() + 3 * 86_400;
        assert!((next - want).abs() <= 1, "{next} vs {want}");

        let refreshed = refresh(dir.path(), &ca, now, 7).unwrap();
        assert_eq!((refreshed.crl_number, refreshed.revoked), (3, 1));
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused() {
        let ours = ca();
        let other = ca();
        let leaf = generate::client(&client_options("dev-1"), &other).unwrap();
        let err = serial_issued_by(&ours, &leaf.cert_der, "dev-1.pem").unwrap_err();
        assert!(matches!(err, Error::NotIssuedBy { .. }), "{err}");
        let mine = generate::client(&client_options("dev-2"), &ours).unwrap();
        assert!(serial_issued_by(&ours, &mine.cert_der, "dev-2.pem").is_ok());
    }
}
