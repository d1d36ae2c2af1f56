//! Chain verification with rustls-webpki, the verifier the broker's rustls uses: does this
//! chain verify against this CA, now, for this host or IP, for this purpose.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::inspect::CertInfo;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// A TLS server (extendedKeyUsage serverAuth).
    #[default]
    Server,
    /// A TLS client (extendedKeyUsage clientAuth).
    Client,
}

impl std::str::FromStr for Purpose {
    type Err = UnknownPurpose;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Self::Server),
            "client" => Ok(Self::Client),
            other => Err(UnknownPurpose(other.to_owned())),
        }
    }
}

/// A purpose that is neither `server` nor `client`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown purpose {0:?} (server or client)")]
pub struct UnknownPurpose(pub String);

/// A failed verification: webpki's error and what it means.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{explanation}")]
pub struct VerifyError {
    /// webpki's error, as its Debug text (stable enough to match on in tests).
    pub webpki: String,
    /// One line for a person.
    pub explanation: String,
}

/// Verifies `leaf` with `intermediates` against any of `anchors`, at `now`, for `purpose`,
/// and, when given, for `host` (a DNS name or an IP address).
///
/// Returns the subjects of the verified path, leaf first, anchor last.
///
/// # Errors
/// [`VerifyError`] naming the first problem webpki found.
pub fn verify(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchors: &[Vec<u8>],
    host: Option<&str>,
    purpose: Purpose,
    now: SystemTime,
) -> Result<Vec<String>, VerifyError> {
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| explain(&e))?;
    let anchor_ders: Vec<CertificateDer<'_>> = anchors
        .iter()
        .map(|a| CertificateDer::from(a.as_slice()))
        .collect();
    let mut trust = Vec::new();
    for a in &anchor_ders {
        trust.push(webpki::anchor_from_trusted_cert(a).map_err(|e| explain(&e))?);
    }
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let usage = match purpose {
        Purpose::Server => webpki::KeyUsage::server_auth(),
        Purpose::Client => webpki::KeyUsage::client_auth(),
    };
    let time = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let path = ee
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &trust,
            &inter,
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| explain(&e))?;
    let mut subjects = vec![CertInfo::from_der(leaf)
        .map(|c| c.subject)
        .unwrap_or_default()];
    for c in path.intermediate_certificates() {
        subjects.push(
            CertInfo::from_der(c.der().as_ref())
                .map(|c| c.subject)
                .unwrap_or_default(),
        );
    }
    // The anchor is identified by its subject DER; show the matching anchor's subject.
    let anchor = path.anchor();
    let anchor_subject = anchors
        .iter()
        .filter_map(|a| CertInfo::from_der(a).ok())
        .find(|c| {
            c.subject_raw.ends_with(anchor.subject.as_ref())
                || anchor.subject.as_ref().ends_with(&c.subject_raw)
        })
        .map(|c| c.subject)
        .unwrap_or_else(|| "(trust anchor)".into());
    subjects.push(anchor_subject);
    if let Some(host) = host {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| VerifyError {
                webpki: "InvalidServerName".into(),
                explanation: format!("{host:?} is neither a DNS name nor an IP address"),
            })?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(|e| explain(&e))?;
    }
    Ok(subjects)
}

/// Turns a webpki error into a sentence.
pub fn explain(e: &webpki::Error) -> VerifyError {
    use webpki::Error as E;
    let explanation = match e {
        E::CertExpired { .. } => "a certificate in the chain has expired".to_owned(),
        E::CertNotValidYet { .. } => "a certificate in the chain is not valid yet".to_owned(),
        E::UnknownIssuer => {
            "the chain does not lead to the given CA (an intermediate is missing, or the certificate comes from another CA)"
                .to_owned()
        }
        E::UnsupportedCertVersion => {
            "a certificate is not X.509 v3; rustls-based clients and brokers refuse it".to_owned()
        }
        E::CertNotValidForName(ctx) => format!(
            "the certificate is not valid for {:?} (its names: {})",
            ctx.expected,
            ctx.presented.join(", ")
        ),
        #[allow(deprecated)]
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            "the certificate's extended key usage does not allow this purpose".to_owned()
        }
        E::CaUsedAsEndEntity => "a CA certificate is used as the end-entity certificate".to_owned(),
        E::EndEntityUsedAsCa => {
            "a certificate that is not a CA (no basicConstraints CA:TRUE) is used to sign".to_owned()
        }
        E::InvalidSignatureForPublicKey => {
            "a signature does not verify with its issuer's key".to_owned()
        }
        #[allow(deprecated)]
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "a signature algorithm is not accepted (SHA-1, MD5, or an RSA key under 2048 bits)".to_owned()
        }
        E::BadDer | E::BadDerTime | E::TrailingData(_) => "a certificate is not valid DER".to_owned(),
        E::MaximumPathDepthExceeded | E::MaximumPathBuildCallsExceeded => {
            "the chain is too long".to_owned()
        }
        other => format!("verification failed: {other:?}"),
    };
    VerifyError {
        webpki: format!("{e:?}"),
        explanation,
    }
}
