//! A bundle (leaf, intermediates, root, in any order) into leaf, ordered chain and root.

use crate::inspect::CertInfo;

/// Orders certificates as a chain: the leaf first, then each certificate's issuer. Those not on
/// the path follow in their original order. Returns indexes into `certs`.
pub fn order(certs: &[CertInfo]) -> Vec<usize> {
    if certs.is_empty() {
        return Vec::new();
    }
    // The leaf: a certificate that issued none of the others; prefer a non-CA one.
    let issued_nothing = |i: usize| {
        if certs[i].self_signed {
            return certs.len() == 1;
        }
        !certs
            .iter()
            .enumerate()
            .any(|(j, c)| j != i && c.issued_by(&certs[i]))
    };
    let leaf = (0..certs.len())
        .find(|&i| issued_nothing(i) && !certs[i].is_ca())
        .or_else(|| (0..certs.len()).find(|&i| issued_nothing(i)))
        .unwrap_or(0);
    let mut path = vec![leaf];
    let mut current = leaf;
    while !certs[current].self_signed {
        let next =
            (0..certs.len()).find(|&j| !path.contains(&j) && certs[current].issued_by(&certs[j]));
        match next {
            Some(j) => {
                path.push(j);
                current = j;
            }
            None => break,
        }
    }
    for i in 0..certs.len() {
        if !path.contains(&i) {
            path.push(i);
        }
    }
    path
}

/// A bundle taken apart.
#[derive(Debug, Clone)]
pub struct Split {
    /// The end-entity certificate.
    pub leaf: CertInfo,
    /// The intermediates, each followed by its issuer.
    pub chain: Vec<CertInfo>,
    /// The self-signed root, when the bundle has one.
    pub root: Option<CertInfo>,
    /// Certificates that are not on the leaf's path.
    pub unrelated: Vec<CertInfo>,
}

/// Why a bundle cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// The bundle holds no certificate.
    #[error("no certificate in the bundle")]
    Empty,
}

/// Splits a bundle's certificates.
///
/// # Errors
/// [`SplitError::Empty`] when there is no certificate.
pub fn split(certs: &[CertInfo]) -> Result<Split, SplitError> {
    if certs.is_empty() {
        return Err(SplitError::Empty);
    }
    let ordered = order(certs);
    let leaf = certs[ordered[0]].clone();
    let mut chain = Vec::new();
    let mut root = None;
    let mut unrelated = Vec::new();
    let mut on_path = true;
    let mut prev = leaf.clone();
    for &i in &ordered[1..] {
        let c = &certs[i];
        if on_path && prev.issued_by(c) {
            if c.self_signed {
                root = Some(c.clone());
            } else {
                chain.push(c.clone());
            }
            prev = c.clone();
        } else {
            on_path = false;
            unrelated.push(c.clone());
        }
    }
    Ok(Split {
        leaf,
        chain,
        root,
        unrelated,
    })
}
