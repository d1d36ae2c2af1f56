//! OCSP stapling: an OCSP response read from a file (DER, as `openssl ocsp -respout` writes
//! it, or PEM-wrapped), checked against the server certificate before it is stapled.
//!
//! The checks are those a client would make first, so that a wrong file is reported by the
//! broker rather than by every client: the responder answered `successful`, the response is a
//! basic one, one of its single responses is for our certificate (serial number, and the
//! issuer name hash when its hash is SHA-1 or SHA-256), and its `nextUpdate` is not past. The
//! responder's signature is the client's to verify (it knows which responders it trusts).
//! Only the structure needed for that is read; nothing here panics on any input.

use x509_parser::asn1_rs::{Any, Class, FromDer, GeneralizedTime, Tag};

/// What an OCSP response says about the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspCertStatus {
    /// Not revoked.
    Good,
    /// Revoked: such a response is never stapled.
    Revoked,
    /// The responder does not know the certificate.
    Unknown,
}

impl OcspCertStatus {
    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Revoked => "revoked",
            Self::Unknown => "unknown",
        }
    }
}

/// A response that passed the checks, ready to staple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Staple {
    /// The OCSPResponse, DER (what the TLS handshake carries).
    pub(crate) der: Vec<u8>,
    /// What it says about the certificate.
    pub(crate) status: OcspCertStatus,
    /// Its `nextUpdate` (Unix seconds), if it names one.
    pub(crate) next_update: Option<i64>,
}

/// Why an OCSP response is not stapled. The certificate is served all the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OcspRefusal {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Read(String),
    /// The bytes are not an OCSP response.
    #[error("not a DER OCSP response ({0}); write it with `openssl ocsp ... -respout FILE`")]
    Malformed(&'static str),
    /// The responder refused to answer (tryLater, unauthorized, ...).
    #[error("the responder's status is {0}, not successful: ask the responder again")]
    NotSuccessful(&'static str),
    /// A response type other than id-pkix-ocsp-basic.
    #[error("not a basic OCSP response (the only type TLS clients understand)")]
    NotBasic,
    /// No single response is for the served certificate.
    #[error(
        "it is for another certificate (none of its responses names serial {serial} of \
         this issuer): fetch the response for this certificate"
    )]
    OtherCertificate {
        /// The served certificate's serial, hex.
        serial: String,
    },
    /// Past its nextUpdate: clients would refuse it.
    #[error("it is past its nextUpdate ({0}): fetch a fresh response")]
    Expired(String),
    /// It says the served certificate is revoked.
    #[error(
        "it says this server certificate is REVOKED: replace the certificate (the response is \
         not stapled)"
    )]
    Revoked,
}

impl OcspRefusal {
    /// Whether this deserves an error rather than a warning (the certificate is revoked).
    pub fn is_severe(&self) -> bool {
        matches!(self, Self::Revoked)
    }
}

/// id-pkix-ocsp-basic, 1.3.6.1.5.5.7.48.1.1 (the OID's content octets).
const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// id-sha1, 1.3.14.3.2.26.
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// id-sha256, 2.16.840.1.101.3.4.2.1.
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

/// The certificate a response must be for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForCertificate<'a> {
    /// The serial number's content octets (x509-parser's `raw_serial`).
    pub(crate) serial: &'a [u8],
    /// The DER of the certificate's issuer name.
    pub(crate) issuer_name: &'a [u8],
}

/// Checks the response in `data` (DER, or PEM-wrapped) against `cert` at `now` (Unix
/// seconds): `Ok` when it may be stapled.
///
/// # Errors
/// [`OcspRefusal`]: why it must not be stapled.
pub(crate) fn check(
    data: &[u8],
    cert: ForCertificate<'_>,
    now: i64,
) -> Result<Staple, OcspRefusal> {
    let der = der_of(data)?;
    let single = find_single(&der, cert)?;
    if let Some(next) = single.next_update {
        if next < now {
            return Err(OcspRefusal::Expired(moat_pki::inspect::rfc3339(next)));
        }
    }
    if single.status == OcspCertStatus::Revoked {
        return Err(OcspRefusal::Revoked);
    }
    Ok(Staple {
        der,
        status: single.status,
        next_update: single.next_update,
    })
}

/// The DER inside a PEM block (`-----BEGIN OCSP RESPONSE-----`), or the data itself.
pub(crate) fn der_of(data: &[u8]) -> Result<Vec<u8>, OcspRefusal> {
    if !data.windows(11).any(|w| w == b"-----BEGIN ") {
        return Ok(data.to_vec());
    }
    moat_pki::decode::decode(data)
        .ok()
        .and_then(|d| d.items.into_iter().next())
        .map(|i| i.der)
        .ok_or(OcspRefusal::Malformed("a PEM block that cannot be decoded"))
}

/// One SingleResponse, read.
#[derive(Debug, PartialEq, Eq)]
struct Single {
    status: OcspCertStatus,
    next_update: Option<i64>,
}

/// Walks OCSPResponse -> ResponseBytes -> BasicOCSPResponse -> ResponseData -> responses and
/// returns the one for `cert`.
fn find_single(der: &[u8], cert: ForCertificate<'_>) -> Result<Single, OcspRefusal> {
    let top = whole(der, "the response")?;
    let parts = children(&top, Tag::Sequence, "OCSPResponse")?;
    let status = parts
        .first()
        .filter(|a| a.class() == Class::Universal && a.tag() == Tag::Enumerated)
        .ok_or(OcspRefusal::Malformed("no responseStatus"))?;
    match status.data {
        [0] => {}
        [code] => return Err(OcspRefusal::NotSuccessful(status_name(*code))),
        _ => return Err(OcspRefusal::Malformed("a responseStatus of several bytes")),
    }
    let bytes = parts
        .get(1)
        .filter(|a| a.class() == Class::ContextSpecific && a.tag() == Tag(0))
        .ok_or(OcspRefusal::Malformed(
            "a successful response without responseBytes",
        ))?;
    let bytes = whole(bytes.data, "responseBytes")?;
    let bytes = children(&bytes, Tag::Sequence, "ResponseBytes")?;
    let (Some(kind), Some(response)) = (bytes.first(), bytes.get(1)) else {
        return Err(OcspRefusal::Malformed(
            "ResponseBytes without its two fields",
        ));
    };
    if kind.tag() != Tag::Oid || response.tag() != Tag::OctetString {
        return Err(OcspRefusal::Malformed(
            "ResponseBytes fields of the wrong types",
        ));
    }
    if kind.data != OID_OCSP_BASIC {
        return Err(OcspRefusal::NotBasic);
    }
    let basic = whole(response.data, "BasicOCSPResponse")?;
    let basic = children(&basic, Tag::Sequence, "BasicOCSPResponse")?;
    let data = basic
        .first()
        .ok_or(OcspRefusal::Malformed("no tbsResponseData"))?;
    let fields = children(data, Tag::Sequence, "ResponseData")?;
    // version [0] and responderID [1]/[2] are context-specific, producedAt is a
    // GeneralizedTime: `responses` is the one universal SEQUENCE.
    let responses = fields
        .iter()
        .find(|a| a.class() == Class::Universal && a.tag() == Tag::Sequence)
        .ok_or(OcspRefusal::Malformed("ResponseData without responses"))?;
    for single in children(responses, Tag::Sequence, "responses")? {
        if let Some(found) = single_for(&single, cert)? {
            return Ok(found);
        }
    }
    Err(OcspRefusal::OtherCertificate {
        serial: moat_pki::crl::serial_hex(cert.serial),
    })
}

/// The SingleResponse `single` read, if it is for `cert`.
fn single_for(single: &Any<'_>, cert: ForCertificate<'_>) -> Result<Option<Single>, OcspRefusal> {
    let fields = children(single, Tag::Sequence, "SingleResponse")?;
    let (Some(cert_id), Some(status), Some(_this_update)) =
        (fields.first(), fields.get(1), fields.get(2))
    else {
        return Err(OcspRefusal::Malformed(
            "a SingleResponse without its fields",
        ));
    };
    let id = children(cert_id, Tag::Sequence, "CertID")?;
    let (Some(alg), Some(name_hash), Some(serial)) = (id.first(), id.get(1), id.get(3)) else {
        return Err(OcspRefusal::Malformed("a CertID without its fields"));
    };
    if serial.tag() != Tag::Integer || serial.data != cert.serial {
        return Ok(None);
    }
    if !issuer_matches(alg, name_hash.data, cert.issuer_name)? {
        return Ok(None);
    }
    if status.class() != Class::ContextSpecific {
        return Err(OcspRefusal::Malformed(
            "a certStatus that is not [0], [1] or [2]",
        ));
    }
    let status = match status.tag() {
        Tag(0) => OcspCertStatus::Good,
        Tag(1) => OcspCertStatus::Revoked,
        Tag(2) => OcspCertStatus::Unknown,
        _ => {
            return Err(OcspRefusal::Malformed(
                "a certStatus that is not [0], [1] or [2]",
            ))
        }
    };
    let next_update = match fields
        .get(3)
        .filter(|a| a.class() == Class::ContextSpecific && a.tag() == Tag(0))
    {
        Some(next) => Some(time(&whole(next.data, "nextUpdate")?)?),
        None => None,
    };
    Ok(Some(Single {
        status,
        next_update,
    }))
}

/// Whether the CertID's issuer name hash is that of `issuer_name`; `true` when the hash
/// algorithm is neither SHA-1 nor SHA-256 (the serial alone then decides).
fn issuer_matches(alg: &Any<'_>, hash: &[u8], issuer_name: &[u8]) -> Result<bool, OcspRefusal> {
    let alg = children(alg, Tag::Sequence, "hashAlgorithm")?;
    let Some(oid) = alg.first().filter(|a| a.tag() == Tag::Oid) else {
        return Err(OcspRefusal::Malformed("a hashAlgorithm without its OID"));
    };
    let digest = match oid.data {
        OID_SHA1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        OID_SHA256 => &ring::digest::SHA256,
        _ => return Ok(true),
    };
    Ok(ring::digest::digest(digest, issuer_name).as_ref() == hash)
}

/// A GeneralizedTime in Unix seconds.
fn time(any: &Any<'_>) -> Result<i64, OcspRefusal> {
    GeneralizedTime::try_from(any)
        .ok()
        .and_then(|t| t.utc_datetime().ok())
        .map(|t| t.unix_timestamp())
        .ok_or(OcspRefusal::Malformed(
            "a time that is not a GeneralizedTime",
        ))
}

/// The one DER value `input` holds (nothing after it).
fn whole<'a>(input: &'a [u8], what: &'static str) -> Result<Any<'a>, OcspRefusal> {
    match Any::from_der(input) {
        Ok(([], any)) => Ok(any),
        Ok(_) | Err(_) => Err(OcspRefusal::Malformed(what)),
    }
}

/// The values inside `any`, which must be a universal `tag` (a SEQUENCE).
fn children<'a>(any: &Any<'a>, tag: Tag, what: &'static str) -> Result<Vec<Any<'a>>, OcspRefusal> {
    if any.class() != Class::Universal || any.tag() != tag {
        return Err(OcspRefusal::Malformed(what));
    }
    let mut rest = any.data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (next, item) = Any::from_der(rest).map_err(|_| OcspRefusal::Malformed(what))?;
        out.push(item);
        rest = next;
    }
    Ok(out)
}

/// OCSPResponseStatus names (RFC 6960 4.2.1).
fn status_name(code: u8) -> &'static str {
    match code {
        1 => "malformedRequest",
        2 => "internalError",
        3 => "tryLater",
        5 => "sigRequired",
        6 => "unauthorized",
        _ => "an unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER TLV (short or long form length).
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 128 {
            out.push(n as u8);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn gtime(s: &str) -> Vec<u8> {
        tlv(0x18, s.as_bytes())
    }

    const ISSUER: &[u8] = &[0x30, 0x03, 0x31, 0x01, 0x00];

    /// An OCSPResponse with one SingleResponse for `serial`, status `status_tag` ([0] good,
    /// [1] revoked, [2] unknown), and a nextUpdate if given.
    fn response(serial: &[u8], status: Vec<u8>, next: Option<&str>) -> Vec<u8> {
        let name_hash = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, ISSUER);
        let cert_id = seq(&[
            seq(&[tlv(0x06, OID_SHA1), vec![0x05, 0x00]]),
            tlv(0x04, name_hash.as_ref()),
            tlv(0x04, &[0u8; 20]),
            tlv(0x02, serial),
        ]);
        let mut single = vec![cert_id, status, gtime("20260101000000Z")];
        if let Some(n) = next {
            single.push(tlv(0xa0, &gtime(n)));
        }
        let data = seq(&[
            tlv(0xa2, &tlv(0x04, &[1u8; 20])),
            gtime("20260101000000Z"),
            seq(&[seq(&single)]),
        ]);
        let basic = seq(&[
            data,
            seq(&[tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])]),
            tlv(0x03, &[0x00, 0x01]),
        ]);
        let bytes = seq(&[tlv(0x06, OID_OCSP_BASIC), tlv(0x04, &basic)]);
        seq(&[tlv(0x0a, &[0]), tlv(0xa0, &bytes)])
    }

    fn good() -> Vec<u8> {
        vec![0x80, 0x00]
    }

    fn ours(serial: &[u8]) -> ForCertificate<'_> {
        ForCertificate {
            serial,
            issuer_name: ISSUER,
        }
    }

    /// 2026-01-01 00:00:00 UTC.
    const NOW: i64 = 1_767_225_600;

    #[test]
    fn a_good_response_for_our_serial_is_stapled() {
        let der = response(&[0x12, 0x34], good(), Some("20300101000000Z"));
        let s = check(&der, ours(&[0x12, 0x34]), NOW).unwrap();
        assert_eq!(s.status, OcspCertStatus::Good);
        assert_eq!(s.next_update, Some(1_893_456_000));
        assert_eq!(s.der, der);
        let unknown = response(&[0x12, 0x34], vec![0x82, 0x00], None);
        let s = check(&unknown, ours(&[0x12, 0x34]), NOW).unwrap();
        assert_eq!((s.status, s.next_update), (OcspCertStatus::Unknown, None));
    }

    #[test]
    fn refusals_say_why() {
        let other = response(&[0x99], good(), None);
        assert!(matches!(
            check(&other, ours(&[0x12, 0x34]), NOW),
            Err(OcspRefusal::OtherCertificate { .. })
        ));
        let old = response(&[0x12], good(), Some("20250101000000Z"));
        assert!(matches!(
            check(&old, ours(&[0x12]), NOW),
            Err(OcspRefusal::Expired(_))
        ));
        let revoked = response(&[0x12], tlv(0xa1, &gtime("20250101000000Z")), None);
        let e = check(&revoked, ours(&[0x12]), NOW).unwrap_err();
        assert!(e.is_severe() && e.to_string().contains("REVOKED"), "{e}");
        let try_later = seq(&[tlv(0x0a, &[3])]);
        assert_eq!(
            check(&try_later, ours(&[0x12]), NOW),
            Err(OcspRefusal::NotSuccessful("tryLater"))
        );
        // Same serial, another issuer.
        let mut other_issuer = ours(&[0x12]);
        other_issuer.issuer_name = &[0x30, 0x00];
        let der = response(&[0x12], good(), None);
        assert!(matches!(
            check(&der, other_issuer, NOW),
            Err(OcspRefusal::OtherCertificate { .. })
        ));
    }

    #[test]
    fn pem_wrapped_responses_are_read() {
        let der = response(&[0x12], good(), None);
        let pem = moat_pki::decode::cert_pem(&der).replace("CERTIFICATE", "OCSP RESPONSE");
        assert_eq!(check(pem.as_bytes(), ours(&[0x12]), NOW).unwrap().der, der);
    }

    /// No input panics: every prefix and every one-byte corruption of a valid response.
    #[test]
    fn garbage_never_panics() {
        let der = response(&[0x12, 0x34], good(), Some("20300101000000Z"));
        for n in 0..der.len() {
            let _ = check(&der[..n], ours(&[0x12, 0x34]), NOW);
            let mut bad = der.clone();
            bad[n] ^= 0xff;
            let _ = check(&bad, ours(&[0x12, 0x34]), NOW);
        }
        for data in [&b""[..], b"\x30", b"\x30\x80\x00\x00", b"-----BEGIN X-----"] {
            assert!(check(data, ours(&[1]), NOW).is_err());
        }
    }
}
