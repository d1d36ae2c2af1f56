//! A client configuration that trusts exactly one server certificate: the broker's test
//! handshake after new material is activated.
//!
//! The certificate is compared byte for byte (no chain, name or date check: the point is
//! "does the listener serve this certificate"), and the server's TLS 1.3 CertificateVerify
//! signature is checked with the certificate's public key, which proves that the served key
//! belongs to it. The key is read from the certificate's SubjectPublicKeyInfo, so an X.509
//! v1 certificate (which the broker serves with a warning) is checked the same way.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::material::{provider, TlsError};

#[derive(Debug)]
struct PinnedLeaf {
    leaf: Vec<u8>,
    spki: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(self.spki.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration that accepts only a server presenting `leaf` (DER) and
/// signing the handshake with its key, offering `alpn`. It sends no client certificate: with
/// TLS 1.3 the client's side of the handshake completes even where one is required.
///
/// # Errors
/// [`TlsError::Config`] if `leaf` is not a certificate.
pub fn pinned_client_config(leaf: &[u8], alpn: Vec<Vec<u8>>) -> Result<ClientConfig, TlsError> {
    let config_error = |source: Box<dyn std::error::Error + Send + Sync>| TlsError::Config {
        part: "test handshake client",
        source,
    };
    let spki = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| config_error(e.to_string().into()))?
        .1
        .public_key()
        .raw
        .to_vec();
    let provider = provider();
    let verifier = PinnedLeaf {
        leaf: leaf.to_vec(),
        spki,
        provider: Arc::clone(&provider),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error(Box::new(e)))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(config)
}
