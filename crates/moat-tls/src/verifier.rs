//! Client certificate verification: rustls-webpki for X.509 v3 certificates, and (only when a
//! listener asks for it) a narrow path for the X.509 v1 leafs that `openssl x509 -req` makes:
//! signed directly by a client CA, within validity, not revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::{FromDer, X509Version};

use crate::material::Revoked;

/// The error a v1 client certificate gets when the listener does not accept them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "X.509 v1 client certificate (made by `openssl x509 -req` without extensions): rustls \
     accepts only v3; reissue it with `moat cert client --ca DIR --cn NAME`, or set \
     accept_v1_client_certs = true on the listener"
)]
pub struct V1ClientCertificate;

/// How many verified client certificate chains a listener remembers (about 100 bytes each).
/// When full, it starts over: a fleet larger than this pays the full verification more often,
/// nothing else changes.
const REMEMBERED_CHAINS: usize = 16_384;

#[derive(Debug)]
pub(crate) struct Verifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// Client certificate chains (leaf and the intermediates the client sent, by SHA-256 of
    /// their exact bytes) that `inner` accepted, with the time window in which every one of
    /// those certificates is valid. A device that reconnects presents the same bytes; its chain
    /// signatures (one ECDSA P-256 verification, about 60 µs, per handshake) are then not
    /// checked again. What else decides the result is fixed for this verifier's life: the
    /// trusted CAs and the CRLs (new material builds a new verifier, with an empty memory), and
    /// revocation status, whose CRL next-update times webpki does not enforce here. The
    /// handshake signature (CertificateVerify: the client holds the key) is checked every time.
    verified: Mutex<HashMap<[u8; 32], Validity>>,
    /// Client CA certificates (DER), for the v1 path.
    cas: Vec<Vec<u8>>,
    revoked: Vec<Revoked>,
    accept_v1: bool,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl Verifier {
    pub(crate) fn new(
        inner: Arc<dyn ClientCertVerifier>,
        cas: Vec<Vec<u8>>,
        revoked: Vec<Revoked>,
        accept_v1: bool,
        mandatory: bool,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            inner,
            verified: Mutex::default(),
            cas,
            revoked,
            accept_v1,
            mandatory,
            algs,
        }
    }

    fn verify_v1(&self, leaf: &X509Certificate<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let issuer = leaf.issuer().as_raw();
        let mut found_issuer = false;
        for ca_der in &self.cas {
            let Ok((_, ca)) = X509Certificate::from_der(ca_der) else {
                continue;
            };
            if ca.subject().as_raw() != issuer {
                continue;
            }
            found_issuer = true;
            if leaf.verify_signature(Some(ca.public_key())).is_err() {
                continue;
            }
            let t = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            if leaf.validity().not_before.timestamp() > t {
                return Err(CertificateError::NotValidYet.into());
            }
            if leaf.validity().not_after.timestamp() < t {
                return Err(CertificateError::Expired.into());
            }
            let serial = leaf.raw_serial();
            if self
                .revoked
                .iter()
                .any(|r| r.issuer == issuer && r.serials.contains(serial))
            {
                return Err(CertificateError::Revoked.into());
            }
            return Ok(());
        }
        Err(if found_issuer {
            CertificateError::BadSignature.into()
        } else {
            CertificateError::UnknownIssuer.into()
        })
    }
}

impl Verifier {
    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Validity>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remembered(&self, key: &[u8; 32]) -> Option<Validity> {
        self.memory().get(key).copied()
    }

    fn remember(&self, key: [u8; 32], window: Validity) {
        let mut memory = self.memory();
        if memory.len() >= REMEMBERED_CHAINS {
            memory.clear();
        }
        memory.insert(key, window);
    }
}

/// SHA-256 over the chain's certificates, each with its length in front (so that no two
/// different chains give the same input).
fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for der in std::iter::once(end_entity).chain(intermediates) {
        ctx.update(&u64::try_from(der.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(der.as_ref());
    }
    let mut key = [0; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// The seconds (Unix time) in which every certificate of a chain is within its validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

impl Validity {
    /// The intersection of the validity periods of the leaf and the intermediates the client
    /// sent (webpki checks those it uses; all of them is stricter). `None` if one does not parse.
    fn of_chain(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Self> {
        let mut window = Self {
            not_before: i64::MIN,
            not_after: i64::MAX,
        };
        for der in std::iter::once(end_entity).chain(intermediates) {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
            let validity = cert.validity();
            window.not_before = window.not_before.max(validity.not_before.timestamp());
            window.not_after = window.not_after.min(validity.not_after.timestamp());
        }
        Some(window)
    }

    fn contains(&self, now: UnixTime) -> bool {
        let t = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        self.not_before <= t && t <= self.not_after
    }
}

/// Parses a certificate and tells whether it is X.509 v1. Asked twice per client certificate
/// handshake: a certificate that declares version 2 or 3 in its first bytes (every certificate
/// rustls-webpki accepts) is answered without a full parse.
fn v1_leaf(der: &[u8]) -> Option<X509Certificate<'_>> {
    if declares_v2_or_v3(der) {
        return None;
    }
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    (cert.version() == X509Version::V1).then_some(cert)
}

/// Whether a DER certificate's TBSCertificate starts with an explicit version field of value 1
/// or 2 (X.509 v2 or v3; RFC 5280 section 4.1: `version [0] EXPLICIT Version DEFAULT v1`, so a
/// v1 certificate has none). `false` for anything else, including what does not parse here:
/// the full parse then decides.
fn declares_v2_or_v3(der: &[u8]) -> bool {
    let version = der_header(der, 0x30)
        .and_then(|(cert, _)| der_header(cert, 0x30))
        .and_then(|(tbs, _)| der_header(tbs, 0xA0))
        .and_then(|(explicit, _)| der_header(explicit, 0x02));
    matches!(version, Some(([1 | 2], _)))
}

/// Splits a DER element with tag `tag` off the front of `b`: its content and what follows.
fn der_header(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = b.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7F => (usize::from(first), rest),
        0x81..=0x83 => {
            let n = usize::from(first & 0x7F);
            let (bytes, rest) = rest.split_at_checked(n)?;
            (
                bytes.iter().fold(0, |acc, &x| (acc << 8) | usize::from(x)),
                rest,
            )
        }
        _ => return None,
    };
    rest.split_at_checked(len)
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(leaf) = v1_leaf(end_entity) {
            if !self.accept_v1 {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(V1ClientCertificate)),
                )));
            }
            let verified = self.verify_v1(&leaf, now);
            if matches!(
                verified,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            ) {
                crate::revocation::note(&self.revoked, &[end_entity.as_ref()]);
            }
            verified?;
            return Ok(ClientCertVerified::assertion());
        }
        let key = chain_key(end_entity, intermediates);
        if self.remembered(&key).is_some_and(|v| v.contains(now)) {
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if verified.is_ok() {
            if let Some(window) = Validity::of_chain(end_entity, intermediates) {
                self.remember(key, window);
            }
        }
        if matches!(
            verified,
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ) {
            let certs: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
                .chain(intermediates.iter().map(AsRef::as_ref))
                .collect();
            crate::revocation::note(&self.revoked, &certs);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match v1_leaf(cert) {
            Some(leaf) if self.accept_v1 => verify_raw(message, &leaf, dss, &self.algs),
            _ => self.inner.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match v1_leaf(cert) {
            Some(leaf) if self.accept_v1 => verify_raw(message, &leaf, dss, &self.algs),
            _ => self.inner.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a handshake signature with the public key of a (v1) certificate that webpki will
/// not parse.
fn verify_raw(
    message: &[u8],
    leaf: &X509Certificate<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let spki = SubjectPublicKeyInfoDer::from(leaf.public_key().raw);
    let entity = webpki::RawPublicKeyEntity::try_from(&spki)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let candidates = algs
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, a)| *a)
        .ok_or(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ))?;
    for alg in candidates {
        if entity
            .verify_signature(*alg, message, dss.signature())
            .is_ok()
        {
            return Ok(HandshakeSignatureValid::assertion());
        }
    }
    Err(rustls::Error::InvalidCertificate(
        CertificateError::BadSignature,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
    use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
    use x509_parser::prelude::{FromDer, X509Version};

    use super::{declares_v2_or_v3, v1_leaf, Verifier, X509Certificate};

    /// Accepts every chain and counts how often it was asked.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }
        fn verify_client_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(ClientCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("not asked".into()))
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("not asked".into()))
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            Vec::new()
        }
    }

    /// Valid from the first day (year, month) to the second, both at 00:00 UTC.
    fn cert(name: &str, from: (i32, u8), to: (i32, u8)) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(from.0, from.1, 1);
        p.not_after = rcgen::date_time_ymd(to.0, to.1, 1);
        p.self_signed(&key).unwrap().der().clone()
    }

    const JAN_2020: u64 = 1_577_836_800;
    const JUN_2020: u64 = 1_590_969_600;
    const JAN_2021: u64 = 1_609_459_200;
    const DAY: u64 = 86_400;

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
    }

    #[test]
    fn a_verified_chain_is_remembered_within_its_validity() {
        let inner = Arc::new(Counting::default());
        let v = Verifier::new(
            Arc::clone(&inner) as Arc<dyn ClientCertVerifier>,
            Vec::new(),
            Vec::new(),
            false,
            true,
            rustls::crypto::ring::default_provider().signature_verification_algorithms,
        );
        let (a, b) = (
            cert("a", (2020, 1), (2021, 1)),
            cert("b", (2020, 1), (2021, 1)),
        );
        let inter = cert("i", (2020, 6), (2022, 1));
        let asked = || inner.0.load(Ordering::Relaxed);
        v.verify_client_cert(&a, &[], at(JAN_2020 + DAY)).unwrap();
        assert_eq!(asked(), 1);
        v.verify_client_cert(&a, &[], at(JAN_2020 + 2 * DAY))
            .unwrap();
        assert_eq!(asked(), 1, "the same chain again: remembered");
        v.verify_client_cert(&b, &[], at(JAN_2020 + 2 * DAY))
            .unwrap();
        assert_eq!(asked(), 2, "another leaf");
        v.verify_client_cert(&a, std::slice::from_ref(&inter), at(JUN_2020 + DAY))
            .unwrap();
        assert_eq!(
            asked(),
            3,
            "the same leaf with an intermediate is another chain"
        );
        v.verify_client_cert(&a, std::slice::from_ref(&inter), at(JUN_2020 + 2 * DAY))
            .unwrap();
        assert_eq!(asked(), 3);
        // Before the intermediate's notBefore: asked again.
        v.verify_client_cert(&a, &[inter], at(JUN_2020 - DAY))
            .unwrap();
        assert_eq!(asked(), 4);
        // After the leaf's notAfter: asked again.
        v.verify_client_cert(&a, &[], at(JAN_2021 + 1)).unwrap();
        assert_eq!(asked(), 5);
    }

    #[test]
    fn the_version_is_read_from_the_first_bytes() {
        let key = rcgen::KeyPair::generate().unwrap();
        let v3 = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = v3.der().as_ref();
        assert!(declares_v2_or_v3(der));
        assert!(v1_leaf(der).is_none());
        let (_, parsed) = X509Certificate::from_der(der).unwrap();
        assert_eq!(parsed.version(), X509Version::V3);
        // Not a certificate, or cut short: the full parse decides (and finds nothing).
        assert!(!declares_v2_or_v3(b"garbage"));
        assert!(!declares_v2_or_v3(&der[..12]));
        assert!(v1_leaf(b"garbage").is_none());
    }
}
