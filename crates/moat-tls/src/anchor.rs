//! Which trusted client CA a verified client certificate chains to: what lets an operator
//! rotate a client CA (trust old and new, see who still uses the old one, remove it).

use std::path::PathBuf;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

/// A CA certificate a listener verifies client certificates against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCa {
    /// Its subject, RFC 4514 style.
    pub subject: String,
    /// SHA-256 of the certificate, hex with colons (as [`crate::PeerIdentity`] has).
    pub fingerprint: String,
    /// Its notAfter, in Unix seconds.
    pub not_after: i64,
    /// The file it came from.
    pub path: PathBuf,
    /// The subject DN's DER, to match issuers.
    subject_raw: Vec<u8>,
    /// Its subject key identifier, if it has one.
    key_id: Option<Vec<u8>>,
    /// The certificate, to check a signature when names and key ids do not decide.
    der: Vec<u8>,
}

impl ClientCa {
    /// Reads a CA certificate. `None` if it does not parse (the material's build refuses such
    /// a file before this is asked).
    pub(crate) fn from_der(der: &[u8], path: PathBuf) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            });
        Some(Self {
            subject: cert.subject().to_string(),
            fingerprint: fingerprint(der),
            not_after: cert.validity().not_after.timestamp(),
            path,
            subject_raw: cert.subject().as_raw().to_vec(),
            key_id,
            der: der.to_vec(),
        })
    }
}

/// SHA-256 of `der`, upper-case hex bytes joined by colons.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    // One allocation (it runs for every client certificate handshake).
    let mut out = String::with_capacity(digest.as_ref().len() * 3);
    for (i, b) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// The index in `cas` of the CA that the presented chain (leaf first, then the intermediates
/// the client sent) ends at. The chain was verified already; this only tells which anchor it
/// reached. Walks up by issuer name; among CAs with the same name (a CA renewed or re-keyed
/// under the same subject, the usual rotation) the key identifier decides, and only when that
/// is missing or ambiguous a signature check. `None` if no trusted CA issued the chain's top.
pub(crate) fn anchor_of(cas: &[ClientCa], presented: &[&[u8]]) -> Option<usize> {
    let certs: Vec<X509Certificate<'_>> = presented
        .iter()
        .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
        .collect();
    let mut current = certs.first()?;
    // Each step goes one certificate up; the chain is no longer than what was presented.
    for _ in 0..certs.len() {
        let issuer = current.issuer().as_raw();
        let named: Vec<usize> = cas
            .iter()
            .enumerate()
            .filter(|(_, ca)| ca.subject_raw == issuer)
            .map(|(i, _)| i)
            .collect();
        if !named.is_empty() {
            return Some(pick(cas, &named, current));
        }
        let subject = current.subject().as_raw();
        current = certs
            .iter()
            .skip(1)
            .find(|c| c.subject().as_raw() == issuer && c.subject().as_raw() != subject)?;
    }
    None
}

/// Which of the CAs `named` (same subject as `cert`'s issuer) issued `cert`.
fn pick(cas: &[ClientCa], named: &[usize], cert: &X509Certificate<'_>) -> usize {
    if let [only] = named {
        return *only;
    }
    if let Some(aki) = authority_key_id(cert) {
        let by_key: Vec<usize> = named
            .iter()
            .copied()
            .filter(|&i| cas[i].key_id.as_deref() == Some(aki.as_slice()))
            .collect();
        if let [only] = by_key.as_slice() {
            return *only;
        }
    }
    named
        .iter()
        .copied()
        .find(|&i| {
            X509Certificate::from_der(&cas[i].der)
                .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
        })
        .unwrap_or(named[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(p, key);
        Ca { cert, issuer }
    }

    fn issue(by: &Ca, name: &str, is_ca: bool) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        if is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &by.issuer).unwrap();
        let issuer = rcgen::Issuer::new(p, key);
        Ca { cert, issuer }
    }

    fn trusted(cas: &[&Ca]) -> Vec<ClientCa> {
        cas.iter()
            .map(|c| ClientCa::from_der(c.cert.der(), PathBuf::from("ca.pem")).unwrap())
            .collect()
    }

    #[test]
    fn a_leaf_is_placed_under_the_ca_that_issued_it() {
        let (old, new) = (ca("Old CA"), ca("New CA"));
        let cas = trusted(&[&old, &new]);
        let a = issue(&old, "dev-a", false);
        let b = issue(&new, "dev-b", false);
        assert_eq!(anchor_of(&cas, &[a.cert.der()]), Some(0));
        assert_eq!(anchor_of(&cas, &[b.cert.der()]), Some(1));
        assert_eq!(cas[1].subject, "CN=New CA");
    }

    #[test]
    fn two_cas_with_one_name_are_told_apart_by_key() {
        // A CA re-keyed under the same subject: the usual rotation.
        let (old, new) = (ca("Fleet CA"), ca("Fleet CA"));
        let cas = trusted(&[&old, &new]);
        let a = issue(&old, "dev-a", false);
        let b = issue(&new, "dev-b", false);
        assert_eq!(anchor_of(&cas, &[a.cert.der()]), Some(0));
        assert_eq!(anchor_of(&cas, &[b.cert.der()]), Some(1));
    }

    #[test]
    fn intermediates_sent_by_the_client_are_walked_up() {
        let (root, other) = (ca("Root"), ca("Other"));
        let inter = issue(&root, "Issuing", true);
        let leaf = issue(&inter, "dev", false);
        let cas = trusted(&[&other, &root]);
        assert_eq!(
            anchor_of(&cas, &[leaf.cert.der(), inter.cert.der()]),
            Some(1)
        );
        // Without the intermediate nothing trusted issued it.
        assert_eq!(anchor_of(&cas, &[leaf.cert.der()]), None);
        // A trusted intermediate is the anchor itself.
        let cas = trusted(&[&root, &inter]);
        assert_eq!(
            anchor_of(&cas, &[leaf.cert.der(), inter.cert.der()]),
            Some(1)
        );
    }

    #[test]
    fn fingerprints_are_upper_case_hex_pairs() {
        let f = fingerprint(b"abc");
        assert_eq!(
            f,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn garbage_has_no_anchor() {
        let cas = trusted(&[&ca("A")]);
        assert_eq!(anchor_of(&cas, &[b"not a certificate".as_slice()]), None);
        assert_eq!(anchor_of(&cas, &[]), None);
    }
}
