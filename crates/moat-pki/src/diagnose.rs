//! Why a TLS peer refuses a certificate: the cause in plain words, the fix, and a
//! [`LintCode`] naming the fact.
//!
//! One diagnosis for every place that explains a refused certificate: `moat check` (a client
//! looking at the chain a broker presented, [`server_chain`], or at its own certificate that a
//! broker refused, [`client_certificate`]) and the broker's handshake log, which has only the
//! verifier's verdict ([`rejection`]). Where a fact is one a lint finding names, the code is
//! the lint's (`cert-expired`, `name-mismatch`, `chain-incomplete`, ...), so the check, the
//! log line and `moat cert lint` agree.
//!
//! The explanations come from the certificates themselves (v1, CN-only, the names, validity,
//! usage, the path up to the CA file), not from a verifier's one-word error; rustls-webpki's
//! verdict is the last resort when nothing else explains a refusal.

use std::fmt;
use std::time::SystemTime;

use crate::code::LintCode;
use crate::inspect::{self, CertInfo, San};
use crate::verify::{self, Purpose};

/// A cause, its fix and the code that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The fact, as a stable code.
    pub code: LintCode,
    /// The cause in plain words, naming the certificates involved.
    pub cause: String,
    /// What to do, with the exact command where there is one.
    pub fix: Option<String>,
}

impl Diagnosis {
    fn new(code: LintCode, cause: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            code,
            cause: cause.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Diagnosis {
    /// `[code] cause; fix: fix`, on one line (for a log).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code, self.cause)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// What a client saw of a broker: the chain it presented and the CA material it was checked
/// against.
#[derive(Debug, Clone, Copy)]
pub struct ServerChain<'a> {
    /// The certificates the server presented, DER, leaf first.
    pub presented: &'a [Vec<u8>],
    /// The trusted CA certificates (DER) of the CA file; empty for the system bundle.
    pub anchors: &'a [Vec<u8>],
    /// The CA file's name, for messages; `None` when the system bundle is used.
    pub ca_file: Option<&'a str>,
    /// The host or IP address the client dialed.
    pub host: &'a str,
    /// The time to check validity at.
    pub now: SystemTime,
}

/// Why the chain a server presented is not acceptable for the dialed host: every problem
/// found, most basic first. Empty when the certificates explain nothing (the verifier's own
/// error is then all there is: see [`rejection`]).
pub fn server_chain(input: &ServerChain<'_>) -> Vec<Diagnosis> {
    let mut found = Vec::new();
    let host = input.host;
    let now = unix(input.now);
    let Some(leaf_der) = input.presented.first() else {
        found.push(Diagnosis {
            code: LintCode::CertMissing,
            cause: "the server presented no certificate".into(),
            fix: None,
        });
        return found;
    };
    let leaf = match CertInfo::from_der(leaf_der) {
        Ok(c) => c,
        Err(e) => {
            found.push(Diagnosis::new(
                LintCode::CertUnparseable,
                format!("the server certificate cannot be parsed: {e}"),
                "reissue it: moat cert server --ca DIR --host HOST",
            ));
            return found;
        }
    };
    let reissue = format!(
        "reissue with moat cert server --ca DIR {}",
        reissue_hosts(host, &leaf)
    );
    if leaf.version < 3 {
        found.push(Diagnosis::new(
            LintCode::CertV1,
            format!(
                "the server certificate ({}) is X.509 v{}, made without extensions (as `openssl \
                 x509 -req` does without -extfile): rustls, Go and browsers refuse v1 \
                 certificates, and a v1 certificate cannot carry a SAN",
                leaf.short_name(),
                leaf.version
            ),
            format!("{reissue} (or openssl x509 -req ... -extfile with subjectAltName)"),
        ));
    }
    if !crate::lint::covers(&leaf, host) {
        found.push(name_problem(&leaf, host, &reissue));
    }
    if leaf.not_after_unix < now {
        found.push(Diagnosis::new(
            LintCode::CertExpired,
            format!(
                "the server certificate expired on {} ({} days ago)",
                inspect::rfc3339(leaf.not_after_unix),
                (now - leaf.not_after_unix) / 86_400
            ),
            format!("renew it and give the broker the new file: {reissue}"),
        ));
    } else if leaf.not_before_unix > now {
        found.push(Diagnosis::new(
            LintCode::CertNotYetValid,
            format!(
                "the server certificate is not valid yet: not before {}",
                inspect::rfc3339(leaf.not_before_unix)
            ),
            "check the clocks of the broker's machine, the CA's and this one",
        ));
    }
    if let Some(eku) = &leaf.extended_key_usage {
        if !eku.server_auth && !eku.any {
            found.push(Diagnosis::new(
                LintCode::EkuNoServerAuth,
                "the server certificate lacks the serverAuth extended key usage (it is a client \
                 certificate?)",
                reissue.clone(),
            ));
        }
    }
    if let Some(d) = chain_problem(&leaf, input, now) {
        found.push(d);
    }
    if found.is_empty() && !input.anchors.is_empty() {
        // Nothing above explains it: what rustls-webpki says.
        if let Err(e) = verify::verify(
            leaf_der,
            input.presented.get(1..).unwrap_or_default(),
            input.anchors,
            Some(host),
            Purpose::Server,
            input.now,
        ) {
            found.push(Diagnosis::new(
                LintCode::ChainVerifyFailed,
                format!(
                    "rustls-webpki rejects the server's chain: {} ({})",
                    e.explanation, e.webpki
                ),
                format!(
                    "run `moat cert lint --cert CERT --chain CHAIN --ca CA --host {host}` on the \
                     broker's files"
                ),
            ));
        }
    }
    found
}

/// The leaf's names do not cover the dialed host.
fn name_problem(leaf: &CertInfo, host: &str, reissue: &str) -> Diagnosis {
    let cn = leaf.common_names.first().cloned().unwrap_or_default();
    if !leaf.has_san && cn.eq_ignore_ascii_case(host) {
        Diagnosis::new(
            LintCode::NameCnOnly,
            format!(
                "the server certificate names {host} only in its CN and has no SAN: modern TLS \
                 clients ignore the CN"
            ),
            reissue,
        )
    } else if !leaf.has_san {
        Diagnosis::new(
            LintCode::NameMismatch,
            format!(
                "name mismatch: the server certificate names {} in its CN and has no SAN; you \
                 dialed {host}",
                if cn.is_empty() { "nothing" } else { &cn }
            ),
            reissue,
        )
    } else {
        let sans: Vec<String> = leaf.sans.iter().map(San::value).collect();
        Diagnosis::new(
            LintCode::NameMismatch,
            format!(
                "name mismatch: the server certificate is for {} (SAN); you dialed {host}",
                sans.join(", ")
            ),
            format!("dial one of those names, or {reissue}"),
        )
    }
}

/// Walks from the leaf through the presented intermediates to a certificate of the CA file.
fn chain_problem(leaf: &CertInfo, input: &ServerChain<'_>, now: i64) -> Option<Diagnosis> {
    let presented: Vec<CertInfo> = input
        .presented
        .iter()
        .skip(1)
        .filter_map(|d| CertInfo::from_der(d).ok())
        .collect();
    let trusted: Vec<CertInfo> = input
        .anchors
        .iter()
        .filter_map(|d| CertInfo::from_der(d).ok())
        .collect();
    let ca_words = match input.ca_file {
        Some(p) => format!("your CA file {p}"),
        None => "the system CA bundle (no --cafile given)".into(),
    };
    let holds = if trusted.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = trusted.iter().map(CertInfo::short_name).collect();
        format!(" (it holds {})", names.join(", "))
    };
    if leaf.self_signed {
        if trusted.iter().any(|t| t.der() == leaf.der()) {
            return None;
        }
        return Some(Diagnosis::new(
            LintCode::ChainNotAnchored,
            format!(
                "the server certificate {} is self-signed: no CA issued it, so {ca_words} cannot \
                 vouch for it",
                leaf.short_name()
            ),
            "issue the broker's certificate from a CA (moat cert ca, then moat cert server) and \
             give that CA with --cafile; or, to trust this one certificate, pass it as --cafile",
        ));
    }
    let mut current = leaf.clone();
    for _ in 0..=presented.len() {
        if trusted.iter().any(|t| current.issued_by(t)) {
            // Trusted: an intermediate in the chain may still have expired.
            return presented.iter().find(|c| c.not_after_unix < now).map(|c| {
                Diagnosis::new(
                    LintCode::CertExpired,
                    format!(
                        "the intermediate CA {} in the broker's chain expired on {}",
                        c.short_name(),
                        inspect::rfc3339(c.not_after_unix)
                    ),
                    "renew the intermediate CA and reissue the broker's chain file",
                )
            });
        }
        if let Some(same_name) = trusted.iter().find(|t| t.subject == current.issuer) {
            return Some(Diagnosis::new(
                LintCode::ChainNotAnchored,
                format!(
                    "unknown CA: {} names {} as its issuer, and {ca_words} has a CA of that name, \
                     but a different key signed it (was the CA made again?)",
                    current.short_name(),
                    same_name.short_name()
                ),
                "give the CA that really issued the broker's certificate with --cafile, or \
                 reissue the broker's certificate from this CA",
            ));
        }
        match presented
            .iter()
            .find(|p| current.issued_by(p) && p.der() != current.der())
        {
            Some(next) => current = next.clone(),
            None => break,
        }
    }
    let issuer = current.issuer_short_name();
    if current.self_signed {
        return Some(Diagnosis::new(
            LintCode::ChainNotAnchored,
            format!(
                "unknown CA: the broker's chain ends at the root CA {}, which is not in \
                 {ca_words}{holds}",
                current.short_name()
            ),
            format!(
                "give that root CA ({}) with --cafile (ask the broker's operator for it)",
                current.short_name()
            ),
        ));
    }
    if current.der() != leaf.der() {
        return Some(Diagnosis::new(
            LintCode::ChainNotAnchored,
            format!(
                "unknown CA: the broker's chain ends at {}, issued by {issuer}, which is not in \
                 {ca_words}{holds}",
                current.short_name()
            ),
            format!("give the root CA of {issuer} with --cafile (ask the broker's operator)"),
        ));
    }
    // Only the leaf was sent and its issuer is not trusted: either an intermediate is missing
    // (the broker must send it) or the CA is another one. The issuer's name decides which
    // comes first.
    let lower = issuer.to_ascii_lowercase();
    let looks_intermediate = ["intermediate", "issuing", "sub ca", "subca", "sub-ca"]
        .iter()
        .any(|w| lower.contains(w));
    if looks_intermediate && !trusted.is_empty() {
        Some(Diagnosis::new(
            LintCode::ChainIncomplete,
            format!(
                "chain incomplete: the broker sent only its certificate, issued by {issuer}, an \
                 intermediate CA it did not send; {ca_words}{holds} cannot link it to a root"
            ),
            format!(
                "make the broker send the intermediate: moat `chain = \"chain.pem\"` in \
                 [listeners.tls] (mosquitto: append it to certfile after the leaf); or add \
                 {issuer} to --cafile. If {issuer} is not under your CA, the CA is unknown: give \
                 the right one with --cafile"
            ),
        ))
    } else {
        Some(Diagnosis::new(
            LintCode::ChainNotAnchored,
            format!(
                "unknown CA: the server certificate was issued by {issuer}, which is not in \
                 {ca_words}{holds}"
            ),
            format!(
                "give the CA that signed the broker's certificate ({issuer}) with --cafile; if \
                 {issuer} is an intermediate CA, the chain is incomplete: the broker must send \
                 it (moat: chain = \"chain.pem\"; mosquitto: certfile with leaf then \
                 intermediate)"
            ),
        ))
    }
}

/// What a client sent a broker that refused it: its certificate (and chain) and the CA names
/// the broker said it accepts.
#[derive(Debug, Clone, Copy)]
pub struct ClientCert<'a> {
    /// The client's certificate, DER, then any intermediates it sent.
    pub presented: &'a [Vec<u8>],
    /// The distinguished names (DER) of the CAs the broker accepts client certificates from,
    /// as its CertificateRequest listed them; empty when it listed none.
    pub accepted_issuers: &'a [Vec<u8>],
    /// The time to check validity at.
    pub now: SystemTime,
}

/// Why a broker may have refused this client certificate, from the certificate itself: every
/// problem found. Empty when the certificate explains nothing (see [`rejection`] for what the
/// broker's alert says).
pub fn client_certificate(input: &ClientCert<'_>) -> Vec<Diagnosis> {
    let mut found = Vec::new();
    let Some(leaf_der) = input.presented.first() else {
        found.push(rejection(Purpose::Client, Rejection::NoCertificate));
        return found;
    };
    let leaf = match CertInfo::from_der(leaf_der) {
        Ok(c) => c,
        Err(e) => {
            found.push(Diagnosis::new(
                LintCode::CertUnparseable,
                format!("the client certificate cannot be parsed: {e}"),
                CLIENT_REISSUE,
            ));
            return found;
        }
    };
    let name = leaf.short_name();
    let cn = leaf.common_names.first().map_or("ID", String::as_str);
    let reissue = format!("moat cert client --ca DIR --cn {cn}");
    let now = unix(input.now);
    if leaf.version < 3 {
        found.push(Diagnosis::new(
            LintCode::CertV1,
            format!(
                "the client certificate {name} is X.509 v{} (made by `openssl x509 -req` \
                 without extensions): rustls accepts only v3",
                leaf.version
            ),
            format!(
                "reissue it with `{reissue}`, or set accept_v1_client_certs = true on the \
                 broker's listener"
            ),
        ));
    }
    if leaf.not_after_unix < now {
        found.push(Diagnosis::new(
            LintCode::CertExpired,
            format!(
                "the client certificate {name} expired on {}",
                leaf.not_after
            ),
            format!("renew it: {reissue}"),
        ));
    } else if leaf.not_before_unix > now {
        found.push(Diagnosis::new(
            LintCode::CertNotYetValid,
            format!(
                "the client certificate {name} is not valid until {}",
                leaf.not_before
            ),
            "check the clocks of the broker's machine, the CA's and this one",
        ));
    }
    if let Some(eku) = &leaf.extended_key_usage {
        if !eku.client_auth && !eku.any {
            found.push(Diagnosis::new(
                LintCode::EkuNoClientAuth,
                format!(
                    "the client certificate {name} lacks the clientAuth extended key usage (it \
                     is a server certificate?)"
                ),
                reissue.clone(),
            ));
        }
    }
    if !input.accepted_issuers.is_empty() {
        let chain: Vec<CertInfo> = input
            .presented
            .iter()
            .skip(1)
            .filter_map(|d| CertInfo::from_der(d).ok())
            .collect();
        let accepted = |c: &CertInfo| {
            input
                .accepted_issuers
                .iter()
                .any(|dn| same_name(&c.issuer_raw, dn))
        };
        if !accepted(&leaf) && !chain.iter().any(accepted) {
            let names: Vec<String> = input
                .accepted_issuers
                .iter()
                .filter_map(|dn| inspect::describe_name(dn))
                .collect();
            found.push(Diagnosis::new(
                LintCode::ChainNotAnchored,
                format!(
                    "{name} was issued by {}; the broker accepts certificates from {}",
                    leaf.issuer_short_name(),
                    names.join(", ")
                ),
                format!(
                    "use a client certificate issued by the CA in the broker's client_ca \
                     (mosquitto: cafile): {reissue}"
                ),
            ));
        }
    }
    found
}

/// Two DER names are the same, with or without the outer SEQUENCE on either side.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    !a.is_empty() && !b.is_empty() && (a == b || a.ends_with(b) || b.ends_with(a))
}

/// What a verifier said about a certificate, when the certificate is not at hand to explain it
/// (the broker's side of a failed handshake; a client that got only an alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// No certificate was presented.
    NoCertificate,
    /// The issuer is not a trusted CA (rustls `UnknownIssuer`, alert `unknown_ca`).
    UnknownIssuer,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// A CRL lists the certificate.
    Revoked,
    /// An X.509 v1 certificate.
    V1,
    /// The extended key usage does not allow this purpose.
    WrongPurpose,
    /// The certificate's names do not cover the host dialed.
    NameMismatch,
}

const CLIENT_REISSUE: &str = "moat cert client --ca DIR --cn ID";
const SERVER_REISSUE: &str = "moat cert server --ca DIR --host HOST";

/// The cause and fix for a verifier's verdict on a certificate for `purpose`: the words the
/// broker logs for a refused client certificate, and that `moat check` prints when the
/// certificates themselves explain nothing.
pub fn rejection(purpose: Purpose, r: Rejection) -> Diagnosis {
    use Rejection as R;
    let (what, reissue) = match purpose {
        Purpose::Server => ("server certificate", SERVER_REISSUE),
        Purpose::Client => ("client certificate", CLIENT_REISSUE),
    };
    match (purpose, r) {
        (Purpose::Client, R::NoCertificate) => Diagnosis::new(
            LintCode::CertMissing,
            "the broker requires a client certificate and none was given",
            format!(
                "add --cert CLIENT.pem --key CLIENT.key, issued by the CA the broker trusts for \
                 clients ({CLIENT_REISSUE})"
            ),
        ),
        (Purpose::Server, R::NoCertificate) => Diagnosis {
            code: LintCode::CertMissing,
            cause: "the server presented no certificate".into(),
            fix: None,
        },
        (Purpose::Client, R::UnknownIssuer) => Diagnosis::new(
            LintCode::ChainNotAnchored,
            "the client certificate was not issued by a CA in the broker's client_ca",
            format!(
                "use a client certificate issued by the CA in the broker's client_ca: \
                 {CLIENT_REISSUE}"
            ),
        ),
        (Purpose::Server, R::UnknownIssuer) => Diagnosis::new(
            LintCode::ChainNotAnchored,
            "unknown CA: the server certificate was not issued by a CA the client trusts",
            "give the client the CA that issued the broker's certificate (--cafile), and make \
             the broker send its intermediates (moat: chain = \"chain.pem\")",
        ),
        (_, R::Expired) => Diagnosis::new(
            LintCode::CertExpired,
            format!("the {what} has expired"),
            format!("renew it: {reissue}"),
        ),
        (_, R::NotYetValid) => Diagnosis::new(
            LintCode::CertNotYetValid,
            format!("the {what} is not valid yet"),
            "check the clocks of the broker's machine, the CA's and the client's",
        ),
        (_, R::Revoked) => Diagnosis::new(
            LintCode::CertRevoked,
            format!(
                "the {what} is revoked (a CRL lists it; the broker's log line names the serial \
                 and the CRL file)"
            ),
            format!("issue a new one: {reissue}"),
        ),
        (Purpose::Client, R::V1) => Diagnosis::new(
            LintCode::CertV1,
            "the client certificate is X.509 v1 (made by `openssl x509 -req` without \
             extensions): rustls accepts only v3",
            format!(
                "reissue it with `{CLIENT_REISSUE}`, or set accept_v1_client_certs = true on \
                 the broker's listener"
            ),
        ),
        (Purpose::Server, R::V1) => Diagnosis::new(
            LintCode::CertV1,
            "the server certificate is X.509 v1 (made by `openssl x509 -req` without \
             extensions): rustls, Go and browsers refuse it",
            format!("reissue it: {SERVER_REISSUE}"),
        ),
        (Purpose::Client, R::WrongPurpose) => Diagnosis::new(
            LintCode::EkuNoClientAuth,
            "the client certificate's extended key usage lacks clientAuth",
            format!("reissue it: {CLIENT_REISSUE}"),
        ),
        (Purpose::Server, R::WrongPurpose) => Diagnosis::new(
            LintCode::EkuNoServerAuth,
            "the server certificate's extended key usage lacks serverAuth",
            format!("reissue it: {SERVER_REISSUE}"),
        ),
        (_, R::NameMismatch) => Diagnosis::new(
            LintCode::NameMismatch,
            format!("the {what} does not name the host that was dialed"),
            format!("dial a name in its subjectAltName, or reissue it: {reissue}"),
        ),
    }
}

/// The hosts a certificate should be reissued for: the one dialed first, then those it
/// already names.
fn reissue_hosts(dialed: &str, c: &CertInfo) -> String {
    let mut hosts = vec![dialed.to_owned()];
    for h in c
        .sans
        .iter()
        .filter(|s| matches!(s, San::Dns(_) | San::Ip(_)))
        .map(San::value)
        .chain(c.common_names.iter().cloned())
    {
        if !hosts.iter().any(|x| x.eq_ignore_ascii_case(&h)) {
            hosts.push(h);
        }
    }
    hosts
        .iter()
        .map(|h| format!("--host {h}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::generate::{self, Ca, CaOptions, ClientOptions, ServerOptions};
    use crate::{KeyType, Validity};

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn valid() -> Validity {
        Validity::days_from(now(), 30)
    }

    fn ca(name: &str) -> Ca {
        let root = generate::root_ca(&CaOptions {
            common_name: name.into(),
            key_type: KeyType::P256,
            validity: valid(),
        })
        .unwrap();
        Ca {
            cert_der: root.cert_der,
            key: root.key,
            chain: Vec::new(),
            root: None,
        }
    }

    fn intermediate(root: &Ca, name: &str, validity: Validity) -> Ca {
        let made = generate::intermediate_ca(
            &CaOptions {
                common_name: name.into(),
                key_type: KeyType::P256,
                validity,
            },
            root,
        )
        .unwrap();
        Ca {
            cert_der: made.cert_der,
            key: made.key,
            chain: Vec::new(),
            root: Some(root.cert_der.clone()),
        }
    }

    fn server(ca: &Ca, hosts: &[&str], validity: Validity) -> Vec<u8> {
        generate::server(
            &ServerOptions {
                hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                key_type: KeyType::P256,
                validity,
            },
            ca,
        )
        .unwrap()
        .cert_der
    }

    fn client(ca: &Ca, cn: &str, validity: Validity) -> Vec<u8> {
        generate::client(
            &ClientOptions {
                common_name: cn.into(),
                key_type: KeyType::P256,
                validity,
            },
            ca,
        )
        .unwrap()
        .cert_der
    }

    fn check(presented: &[Vec<u8>], anchors: &[Vec<u8>], host: &str) -> Vec<Diagnosis> {
        server_chain(&ServerChain {
            presented,
            anchors,
            ca_file: Some("ca.pem"),
            host,
            now: now(),
        })
    }

    fn codes(found: &[Diagnosis]) -> Vec<LintCode> {
        found.iter().map(|d| d.code).collect()
    }

    fn text(found: &[Diagnosis]) -> String {
        found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The certificate as X.509 v1: the same fields without the version and the extensions
    /// (so a CN and no SAN, as `openssl x509 -req` without -extfile makes), signed again by
    /// `issuer`'s P-256 key.
    fn as_v1(cert: &[u8], issuer: &Ca) -> Vec<u8> {
        let (cert_body, _) = der_body(cert);
        let (tbs, rest) = der_element(cert_body);
        let (sig_alg, _) = der_element(rest);
        let mut fields = der_body(tbs).0;
        let mut kept = Vec::new();
        while !fields.is_empty() {
            let (field, rest) = der_element(fields);
            if field[0] != 0xA0 && field[0] != 0xA3 {
                kept.extend_from_slice(field);
            }
            fields = rest;
        }
        let tbs = der(0x30, &kept);
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            issuer.key.pkcs8_der(),
            &rng,
        )
        .unwrap();
        let sig = key.sign(&rng, &tbs).unwrap();
        let mut bits = vec![0];
        bits.extend_from_slice(sig.as_ref());
        let mut body = tbs;
        body.extend_from_slice(sig_alg);
        body.extend_from_slice(&der(0x03, &bits));
        der(0x30, &body)
    }

    /// One DER element and what follows it.
    fn der_element(data: &[u8]) -> (&[u8], &[u8]) {
        let (header, len) = der_header(data);
        data.split_at(header + len)
    }

    /// The content of one DER element, and what follows it.
    fn der_body(data: &[u8]) -> (&[u8], &[u8]) {
        let (header, len) = der_header(data);
        (&data[header..header + len], &data[header + len..])
    }

    fn der_header(data: &[u8]) -> (usize, usize) {
        let first = usize::from(data[1]);
        if first < 0x80 {
            return (2, first);
        }
        let n = first & 0x7F;
        let len = data[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, len)
    }

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap());
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | u8::try_from(bytes.len()).unwrap());
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn a_good_chain_has_no_problem() {
        let ca = ca("Test CA");
        let leaf = server(&ca, &["broker.local", "127.0.0.1"], valid());
        let found = check(&[leaf.clone()], &[ca.cert_der.clone()], "127.0.0.1");
        assert!(found.is_empty(), "{}", text(&found));
        let found = check(&[leaf], &[ca.cert_der.clone()], "broker.local");
        assert!(found.is_empty(), "{}", text(&found));
    }

    #[test]
    fn nothing_presented_or_garbage() {
        let ca = ca("Test CA");
        assert_eq!(
            codes(&check(&[], &[ca.cert_der.clone()], "h")),
            [LintCode::CertMissing]
        );
        let mut leaf = server(&ca, &["h"], valid());
        leaf.truncate(leaf.len() / 2);
        assert_eq!(
            codes(&check(&[leaf], &[ca.cert_der.clone()], "h")),
            [LintCode::CertUnparseable]
        );
    }

    #[test]
    fn name_mismatch_names_the_hosts_and_the_fix() {
        let ca = ca("Test CA");
        let leaf = server(&ca, &["other.example"], valid());
        let found = check(&[leaf], &[ca.cert_der.clone()], "broker.local");
        assert_eq!(codes(&found), [LintCode::NameMismatch]);
        let d = &found[0];
        assert!(d
            .cause
            .contains("is for other.example (SAN); you dialed broker.local"));
        assert!(d
            .fix
            .as_deref()
            .unwrap()
            .contains("--host broker.local --host other.example"));
    }

    #[test]
    fn v1_cn_only_dialed_by_its_cn_and_by_another_name() {
        let ca = ca("Test CA");
        // generate::server puts the first host in the CN.
        let v1 = as_v1(&server(&ca, &["broker.local"], valid()), &ca);
        assert_eq!(CertInfo::from_der(&v1).unwrap().version, 1);
        let found = check(&[v1.clone()], &[ca.cert_der.clone()], "broker.local");
        assert_eq!(
            codes(&found),
            [LintCode::CertV1, LintCode::NameCnOnly],
            "{}",
            text(&found)
        );
        assert!(found[1].cause.contains("names broker.local only in its CN"));
        let found = check(&[v1], &[ca.cert_der.clone()], "127.0.0.1");
        assert_eq!(
            codes(&found),
            [LintCode::CertV1, LintCode::NameMismatch],
            "{}",
            text(&found)
        );
        assert!(found[1]
            .cause
            .contains("names broker.local in its CN and has no SAN; you dialed 127.0.0.1"));
    }

    #[test]
    fn validity() {
        let ca = ca("Test CA");
        let old = Validity {
            not_before: now() - 20 * DAY,
            not_after: now() - 10 * DAY,
        };
        let found = check(&[server(&ca, &["h"], old)], &[ca.cert_der.clone()], "h");
        assert_eq!(codes(&found), [LintCode::CertExpired]);
        assert!(found[0].cause.contains("expired on"), "{}", text(&found));
        assert!(found[0].cause.contains("days ago"), "{}", text(&found));
        let future = Validity {
            not_before: now() + 10 * DAY,
            not_after: now() + 20 * DAY,
        };
        let found = check(&[server(&ca, &["h"], future)], &[ca.cert_der.clone()], "h");
        assert_eq!(codes(&found), [LintCode::CertNotYetValid]);
    }

    #[test]
    fn a_client_certificate_as_server_certificate_lacks_server_auth() {
        let ca = ca("Test CA");
        let leaf = client(&ca, "h", valid());
        let found = check(&[leaf], &[ca.cert_der.clone()], "h");
        assert!(
            codes(&found).contains(&LintCode::EkuNoServerAuth),
            "{}",
            text(&found)
        );
    }

    #[test]
    fn unknown_ca_in_its_forms() {
        let ca1 = ca("Test CA");
        let ca2 = ca("Other CA");
        let leaf = server(&ca1, &["h"], valid());
        // Another CA.
        let found = check(&[leaf.clone()], &[ca2.cert_der.clone()], "h");
        assert_eq!(codes(&found), [LintCode::ChainNotAnchored]);
        assert!(found[0].cause.contains("unknown CA"), "{}", text(&found));
        assert!(found[0].cause.contains("issued by CN=Test CA"));
        assert!(found[0].cause.contains("(it holds CN=Other CA)"));
        // A CA of the same name, made again.
        let again = ca("Test CA");
        let found = check(&[leaf.clone()], &[again.cert_der.clone()], "h");
        assert_eq!(codes(&found), [LintCode::ChainNotAnchored]);
        assert!(found[0].cause.contains("different key"), "{}", text(&found));
        // The server sends its root, which the CA file does not hold.
        let found = check(&[leaf, ca1.cert_der.clone()], &[ca2.cert_der.clone()], "h");
        assert_eq!(codes(&found), [LintCode::ChainNotAnchored]);
        assert!(found[0]
            .cause
            .contains("chain ends at the root CA CN=Test CA, which is not in your CA file ca.pem"));
        // A self-signed certificate.
        let found = check(&[ca1.cert_der.clone()], &[ca2.cert_der.clone()], "Test CA");
        assert!(
            found
                .iter()
                .any(|d| d.code == LintCode::ChainNotAnchored && d.cause.contains("self-signed")),
            "{}",
            text(&found)
        );
        // The system bundle.
        let found = server_chain(&ServerChain {
            presented: &[server(&ca1, &["h"], valid())],
            anchors: &[],
            ca_file: None,
            host: "h",
            now: now(),
        });
        assert!(
            found[0].cause.contains("the system CA bundle"),
            "{}",
            text(&found)
        );
    }

    #[test]
    fn intermediates_missing_unknown_or_expired() {
        let root = ca("Test Root CA");
        let inter = intermediate(&root, "Test Intermediate CA", valid());
        let leaf = server(&inter, &["h"], valid());
        let anchors = [root.cert_der.clone()];
        let found = check(&[leaf.clone()], &anchors, "h");
        assert_eq!(codes(&found), [LintCode::ChainIncomplete]);
        assert!(found[0].cause.contains("chain incomplete"));
        assert!(found[0].fix.as_deref().unwrap().contains("chain = "));
        let full = [leaf, inter.cert_der.clone()];
        let found = check(&full, &anchors, "h");
        assert!(found.is_empty(), "{}", text(&found));
        let other = ca("Other Root");
        let found = check(&full, &[other.cert_der.clone()], "h");
        assert_eq!(codes(&found), [LintCode::ChainNotAnchored]);
        assert!(found[0]
            .cause
            .contains("unknown CA: the broker's chain ends at CN=Test Intermediate CA"));
        // An expired intermediate under a trusted root.
        let old = Validity {
            not_before: now() - 20 * DAY,
            not_after: now() - DAY,
        };
        let stale = intermediate(&root, "Stale Intermediate CA", old);
        let leaf = server(&stale, &["h"], valid());
        let found = check(&[leaf, stale.cert_der.clone()], &anchors, "h");
        assert_eq!(codes(&found), [LintCode::CertExpired]);
        assert!(found[0]
            .cause
            .contains("intermediate CA CN=Stale Intermediate CA"));
    }

    #[test]
    fn what_only_the_verifier_sees_is_chain_verify_failed() {
        // An intermediate that is not valid yet: the names, the leaf and the path are fine.
        let root = ca("Test Root CA");
        let future = Validity {
            not_before: now() + 10 * DAY,
            not_after: now() + 40 * DAY,
        };
        let early = intermediate(&root, "Early Intermediate CA", future);
        let leaf = server(&early, &["h"], valid());
        let found = check(
            &[leaf, early.cert_der.clone()],
            &[root.cert_der.clone()],
            "h",
        );
        assert_eq!(
            codes(&found),
            [LintCode::ChainVerifyFailed],
            "{}",
            text(&found)
        );
        assert!(found[0].cause.contains("not valid yet"), "{}", text(&found));
    }

    fn check_client(presented: &[Vec<u8>], accepted: &[Vec<u8>]) -> Vec<Diagnosis> {
        client_certificate(&ClientCert {
            presented,
            accepted_issuers: accepted,
            now: now(),
        })
    }

    fn subject_of(der: &[u8]) -> Vec<u8> {
        CertInfo::from_der(der).unwrap().subject_raw
    }

    #[test]
    fn client_certificates() {
        let stranger = ca("Stranger CA");
        let ca = ca("Client CA");
        let accepted = [subject_of(&ca.cert_der)];
        let good = client(&ca, "dev1", valid());
        assert!(check_client(&[good], &accepted).is_empty());
        assert_eq!(
            codes(&check_client(&[], &accepted)),
            [LintCode::CertMissing]
        );
        let found = check_client(&[client(&stranger, "intruder", valid())], &accepted);
        assert_eq!(codes(&found), [LintCode::ChainNotAnchored]);
        assert_eq!(
            found[0].cause,
            "CN=intruder was issued by CN=Stranger CA; the broker accepts certificates from \
             CN=Client CA"
        );
        // Without the list, the issuer cannot be judged.
        assert!(check_client(&[client(&stranger, "intruder", valid())], &[]).is_empty());
        let old = Validity {
            not_before: now() - 20 * DAY,
            not_after: now() - DAY,
        };
        let found = check_client(&[client(&ca, "dev1", old)], &accepted);
        assert_eq!(codes(&found), [LintCode::CertExpired]);
        assert!(found[0].fix.as_deref().unwrap().contains("--cn dev1"));
        let future = Validity {
            not_before: now() + DAY,
            not_after: now() + 20 * DAY,
        };
        let found = check_client(&[client(&ca, "dev1", future)], &accepted);
        assert_eq!(codes(&found), [LintCode::CertNotYetValid]);
        let found = check_client(&[server(&ca, &["dev1"], valid())], &accepted);
        assert_eq!(codes(&found), [LintCode::EkuNoClientAuth]);
        let v1 = as_v1(&client(&ca, "dev1", valid()), &ca);
        let found = check_client(&[v1], &accepted);
        assert_eq!(codes(&found), [LintCode::CertV1], "{}", text(&found));
        let mut broken = client(&ca, "dev1", valid());
        broken.truncate(10);
        assert_eq!(
            codes(&check_client(&[broken], &accepted)),
            [LintCode::CertUnparseable]
        );
        // Issued by an intermediate the client sends, under the accepted root.
        let inter = intermediate(&ca, "Client Intermediate CA", valid());
        let leaf = client(&inter, "dev2", valid());
        assert!(check_client(&[leaf.clone(), inter.cert_der.clone()], &accepted).is_empty());
        assert_eq!(
            codes(&check_client(&[leaf], &accepted)),
            [LintCode::ChainNotAnchored]
        );
    }

    #[test]
    fn rejections_name_the_same_codes() {
        use Rejection as R;
        let table = [
            (Purpose::Client, R::NoCertificate, LintCode::CertMissing),
            (Purpose::Server, R::NoCertificate, LintCode::CertMissing),
            (
                Purpose::Client,
                R::UnknownIssuer,
                LintCode::ChainNotAnchored,
            ),
            (
                Purpose::Server,
                R::UnknownIssuer,
                LintCode::ChainNotAnchored,
            ),
            (Purpose::Client, R::Expired, LintCode::CertExpired),
            (Purpose::Server, R::NotYetValid, LintCode::CertNotYetValid),
            (Purpose::Client, R::Revoked, LintCode::CertRevoked),
            (Purpose::Client, R::V1, LintCode::CertV1),
            (Purpose::Server, R::V1, LintCode::CertV1),
            (Purpose::Client, R::WrongPurpose, LintCode::EkuNoClientAuth),
            (Purpose::Server, R::WrongPurpose, LintCode::EkuNoServerAuth),
            (Purpose::Server, R::NameMismatch, LintCode::NameMismatch),
        ];
        for (purpose, r, code) in table {
            let d = rejection(purpose, r);
            assert_eq!(d.code, code, "{purpose:?} {r:?}");
            assert!(d.to_string().starts_with(&format!("[{code}] ")), "{d}");
        }
        let d = rejection(Purpose::Client, R::NoCertificate);
        assert_eq!(
            d.cause,
            "the broker requires a client certificate and none was given"
        );
        assert!(d.to_string().contains("; fix: add --cert"), "{d}");
    }
}
