//! The stable codes of lint findings and certificate diagnoses.
//!
//! Each code has a fixed string (users script against it), a severity under the strict
//! profile, whether the broker's start-up profile lowers it to a warning, what it means, and
//! the usual fix. The table in this crate's README.md is generated from [`LintCode::ALL`]
//! ([`LintCode::markdown_table`]); a test keeps the two equal.

use std::fmt;

use crate::lint::Severity;

/// Declares [`LintCode`] from one table: variant = "code", strict severity, soft|hard
/// (soft: a warning in the broker profile), meaning, fix.
macro_rules! lint_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $severity:ident, $soft:ident, $meaning:literal, $fix:literal; )*) => {
        /// A finding's stable code. A code never changes meaning; new codes may be added.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum LintCode {
            $( $(#[$doc])* $variant, )*
        }

        impl LintCode {
            /// Every code, in the documented order.
            pub const ALL: &'static [Self] = &[$( Self::$variant, )*];

            /// The stable string, e.g. `"cert-v1"`.
            pub const fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $code, )* }
            }

            /// The severity under [`LintProfile::Strict`](crate::lint::LintProfile::Strict)
            /// (a few findings are milder for trust anchors; see the README's notes).
            pub const fn severity(self) -> Severity {
                match self { $( Self::$variant => Severity::$severity, )* }
            }

            /// Whether the broker's start-up profile lowers the error to a warning, because
            /// OpenSSL-based peers accept what it is about.
            pub const fn softened_for_broker(self) -> bool {
                match self { $( Self::$variant => lint_codes!(@soft $soft), )* }
            }

            /// What the code means, in a few words.
            pub const fn meaning(self) -> &'static str {
                match self { $( Self::$variant => $meaning, )* }
            }

            /// The usual fix, as documented; each finding carries a fix for its own files.
            pub const fn fix(self) -> &'static str {
                match self { $( Self::$variant => $fix, )* }
            }
        }
    };
    (@soft soft) => { true };
    (@soft hard) => { false };
}

lint_codes! {
    /// The file is empty, broken PEM, or neither PEM nor DER (garbage).
    FileNotPem = "file-not-pem", Error, hard,
        "the file is empty, broken PEM, or neither PEM nor DER (garbage)",
        "give the PEM file that holds the certificate; `moat cert inspect FILE` shows what a file holds";
    /// DER given where PEM was expected.
    FileDer = "file-der", Error, soft,
        "DER given where PEM was expected",
        "`moat cert split FILE --out DIR` (certificate) or `moat cert decrypt-key FILE --out KEY` (key) write PEM";
    /// A PEM block of the wrong type (a key in the certificate file, a CSR, ...).
    PemWrongType = "pem-wrong-type", Error, hard,
        "a PEM block of the wrong type (a key in the certificate file, a CSR, ...)",
        "give the right file; keep the key in its own file";
    /// A CERTIFICATE block that is not an X.509 certificate.
    CertUnparseable = "cert-unparseable", Error, hard,
        "a CERTIFICATE block that is not an X.509 certificate",
        "re-export the certificate";
    /// More than one certificate in the certificate file.
    CertMultiple = "cert-multiple", Error, soft,
        "more than one certificate in the certificate file",
        "`moat cert split FILE --out DIR`";
    /// Not an X.509 v3 certificate (openssl x509 -req without -extfile makes v1).
    CertV1 = "cert-v1", Error, soft,
        "not an X.509 v3 certificate (openssl x509 -req without -extfile makes v1)",
        "`moat cert server --ca DIR --host H ...` (or openssl `-extfile` with subjectAltName/extendedKeyUsage)";
    /// The certificate has expired.
    CertExpired = "cert-expired", Error, hard,
        "the certificate has expired",
        "reissue: `moat cert server/client/ca ...`";
    /// The certificate is not valid yet.
    CertNotYetValid = "cert-not-yet-valid", Error, hard,
        "the certificate is not valid yet",
        "check both clocks; reissue";
    /// No certificate was presented in a handshake (not a lint finding).
    CertMissing = "cert-missing", Error, hard,
        "no certificate was presented in a TLS handshake: a listener that requires a client certificate got none, or a server sent none (`moat check`, the broker's log)",
        "give the client a certificate: `moat cert client --ca DIR --cn ID`, then `--cert`/`--key`";
    /// A certificate revocation list lists the certificate (not a lint finding).
    CertRevoked = "cert-revoked", Error, hard,
        "a CRL the peer loads lists the certificate (`moat check`, the broker's log)",
        "issue a new certificate: `moat cert server/client ...`";
    /// The certificate expires within the warning window (30 days).
    CertExpiresSoon = "cert-expires-soon", Warning, hard,
        "the certificate expires within the warning window (30 days)",
        "reissue before the date";
    /// The end-entity certificate is a CA certificate (CA:TRUE).
    LeafIsCa = "leaf-is-ca", Error, soft,
        "the end-entity certificate is a CA certificate (CA:TRUE)",
        "`moat cert server --ca DIR --host H`";
    /// An RSA key under 2048 bits.
    KeyRsaWeak = "key-rsa-weak", Error, hard,
        "an RSA key under 2048 bits",
        "reissue with `--key-type rsa2048` or `p256`";
    /// A key type TLS peers do not support (DSA, P-521, secp256k1, Ed448, ...).
    KeyUnsupported = "key-unsupported", Error, hard,
        "a key type TLS peers do not support (DSA, P-521, secp256k1, Ed448, ...)",
        "reissue with `--key-type p256`";
    /// The key algorithm differs from the issuing CA's.
    KeyAlgUnlikeCa = "key-alg-unlike-ca", Warning, hard,
        "the key algorithm differs from the issuing CA's",
        "reissue with the CA's `--key-type`";
    /// Signed with SHA-1.
    SigSha1 = "sig-sha1", Error, hard,
        "signed with SHA-1",
        "reissue (moat signs with SHA-256/384 or Ed25519)";
    /// Signed with MD5.
    SigMd5 = "sig-md5", Error, hard,
        "signed with MD5",
        "reissue";
    /// A server certificate with a CN and no subjectAltName (modern clients ignore the CN).
    NameCnOnly = "name-cn-only", Error, soft,
        "a server certificate with a CN and no subjectAltName (modern clients ignore the CN)",
        "`moat cert server --ca DIR --host CN`";
    /// The server certificate's names do not cover the host clients dial.
    NameMismatch = "name-mismatch", Error, hard,
        "the server certificate's names do not cover the host clients dial",
        "`moat cert server --ca DIR --host H [--host ...]`";
    /// A server certificate without extendedKeyUsage serverAuth.
    EkuNoServerAuth = "eku-no-server-auth", Error, hard,
        "a server certificate without extendedKeyUsage serverAuth",
        "`moat cert server --ca DIR --host H`";
    /// A client certificate without extendedKeyUsage clientAuth.
    EkuNoClientAuth = "eku-no-client-auth", Error, hard,
        "a client certificate without extendedKeyUsage clientAuth",
        "`moat cert client --ca DIR --cn ID`";
    /// A CA certificate without basicConstraints CA:TRUE.
    CaNotCa = "ca-not-ca", Error, hard,
        "a CA certificate without basicConstraints CA:TRUE",
        "`moat cert ca --out DIR`";
    /// A CA certificate whose keyUsage lacks keyCertSign.
    CaNoKeycertsign = "ca-no-keycertsign", Error, hard,
        "a CA certificate whose keyUsage lacks keyCertSign",
        "`moat cert ca --out DIR`";
    /// The leaf certificate is repeated in the chain file.
    ChainLeafRepeated = "chain-leaf-repeated", Error, soft,
        "the leaf certificate is repeated in the chain file",
        "remove the leaf from the chain file";
    /// The chain is out of order (each certificate must be followed by its issuer).
    ChainOrder = "chain-order", Error, soft,
        "the chain is out of order (each certificate must be followed by its issuer)",
        "`cat CERT CHAIN > bundle.pem && moat cert split bundle.pem --out DIR`";
    /// An issuer is missing: the chain does not reach the CA.
    ChainIncomplete = "chain-incomplete", Error, hard,
        "an issuer is missing: the chain does not reach the CA",
        "add the named intermediate to the chain file";
    /// The chain is not anchored in the given CA.
    ChainNotAnchored = "chain-not-anchored", Error, hard,
        "the chain is not anchored in the given CA",
        "give the CA that issued it, or reissue with `moat cert ... --ca DIR`";
    /// A certificate in the chain file is not on the leaf's path.
    ChainUnrelated = "chain-unrelated", Warning, hard,
        "a certificate in the chain file is not on the leaf's path",
        "remove it from the chain file";
    /// The chain file includes the self-signed root (harmless, not needed).
    ChainHasRoot = "chain-has-root", Info, hard,
        "the chain file includes the self-signed root (harmless, not needed)",
        "none needed";
    /// Rustls-webpki rejects the chain for another reason.
    ChainVerifyFailed = "chain-verify-failed", Error, hard,
        "rustls-webpki rejects the chain for another reason",
        "see the message (webpki's reason)";
    /// The private key is encrypted and no passphrase was given.
    KeyEncrypted = "key-encrypted", Error, hard,
        "the private key is encrypted and no passphrase was given",
        "`--key-passphrase-file F`, or `moat cert decrypt-key KEY --out PLAIN`";
    /// The passphrase does not decrypt the private key.
    KeyWrongPassphrase = "key-wrong-passphrase", Error, hard,
        "the passphrase does not decrypt the private key",
        "check the passphrase file (its first line is used)";
    /// The private key cannot be read.
    KeyUnparseable = "key-unparseable", Error, hard,
        "the private key cannot be read",
        "re-export the key as PKCS#8";
    /// The private key does not belong to the certificate.
    KeyMismatch = "key-mismatch", Error, hard,
        "the private key does not belong to the certificate",
        "use the key made with the certificate, or make both again";
}

impl LintCode {
    /// The code whose string is `s`.
    pub fn from_code(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// The documented table (README.md), one row per code, in Markdown.
    pub fn markdown_table() -> String {
        let mut t = String::from("| code | severity | meaning | fix |\n|---|---|---|---|\n");
        for c in Self::ALL {
            let soft = if c.softened_for_broker() {
                " (warning in broker profile)"
            } else {
                ""
            };
            t.push_str(&format!(
                "| `{}` | {}{soft} | {} | {} |\n",
                c.as_str(),
                c.severity(),
                c.meaning(),
                c.fix()
            ));
        }
        t
    }
}

impl fmt::Display for LintCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for LintCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<str> for LintCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for LintCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for c in LintCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(LintCode::from_code(c.as_str()), Some(*c));
        }
    }

    /// The README's table is exactly the one the enum renders: the doc cannot drift.
    #[test]
    fn readme_table_is_generated_from_the_enum() {
        let readme = include_str!("../README.md");
        let expected = LintCode::markdown_table();
        let start = readme
            .find("| code | severity | meaning | fix |")
            .expect("README.md has the code table");
        let table: String = readme[start..]
            .lines()
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            table, expected,
            "crates/moat-pki/README.md's table differs from LintCode; paste this one:\n{expected}"
        );
    }
}
