//! Client certificate verification: rustls-webpki for X.509 v3 certificates, and (only when a
//! listener asks for it) a narrow path for the X.509 v1 leafs that `openssl x509 -req` makes:
//! signed directly by a client CA, within validity, not revoked.

use std::sync::Arc;

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

#[derive(Debug)]
pub(crate) struct Verifier {
    inner: Arc<dyn ClientCertVerifier>,
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
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
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
    use x509_parser::prelude::{FromDer, X509Version};

    use super::{declares_v2_or_v3, v1_leaf, X509Certificate};

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
