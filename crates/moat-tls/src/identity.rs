//! What a verified client certificate says about its holder.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::IdentitySource;

/// The names of a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's first common name.
    pub cn: Option<String>,
    /// DNS, email and URI subject alternative names, in order.
    pub sans: Vec<String>,
    /// The subject DN, RFC 4514 style.
    pub dn: String,
    /// SHA-256 of the certificate, hex with colons.
    pub fingerprint: String,
    /// The serial number's bytes (for CRL checks of live connections).
    pub serial: Vec<u8>,
    /// The issuer DN's DER (for CRL checks of live connections).
    pub issuer: Vec<u8>,
    /// When the certificate expires (Unix seconds).
    pub not_after: i64,
    /// The subject of the trusted client CA it chains to ([`crate::LiveTls::identify`]).
    pub ca_subject: Option<String>,
    /// That CA's SHA-256 fingerprint.
    pub ca_fingerprint: Option<String>,
}

impl PeerIdentity {
    /// Reads the names of a DER certificate. `None` if it does not parse (it was verified, so
    /// that does not happen in practice).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        sans.push((*s).to_owned());
                    }
                    _ => {}
                }
            }
        }
        let fingerprint = crate::anchor::fingerprint(der);
        Some(Self {
            cn,
            sans,
            dn: cert.subject().to_string(),
            fingerprint,
            serial: cert.raw_serial().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            not_after: cert.validity().not_after.timestamp(),
            ca_subject: None,
            ca_fingerprint: None,
        })
    }

    /// The name that becomes the username under `source`.
    pub fn name(&self, source: IdentitySource) -> Option<&str> {
        match source {
            IdentitySource::None => None,
            IdentitySource::Cn => self.cn.as_deref(),
            IdentitySource::San => self.sans.first().map(String::as_str),
            IdentitySource::Dn => Some(self.dn.as_str()),
        }
    }
}
