//! ring against aws-lc-rs, through rustls' `CryptoProvider`, for what a TLS 1.3 server does per
//! handshake: the signature (ECDSA P-256, RSA-2048 PSS), the key exchange (X25519, P-256 ECDH),
//! a client chain verification and its CertificateVerify check (mTLS), a ticket, and whole
//! handshakes in memory (server side only: the client's work is not counted).
//!
//! Times are this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so that other work on the machine
//! changes them less than wall-clock times; each figure is the best of ROUNDS rounds, the two
//! providers alternating.
//!
//!   cargo run --release                      # everything
//!   ROUNDS=9 ITERS=400 cargo run --release
//!   ONLY="P-256 full" PROVIDER=ring ...      # the cases whose label contains it, one provider
//!   SUITE128=1 ...                           # clients offer TLS13_AES_128_GCM_SHA256 only
//!   SHOW=1 ...                               # print each handshake's group and suite

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls::{HandshakeKind, NamedGroup, SignatureScheme};

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec, a valid clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Cert {
    der: CertificateDer<'static>,
    key: Vec<u8>,
}

struct Pki {
    ca: CertificateDer<'static>,
    server: Cert,
    client: Cert,
    rsa_ca: CertificateDer<'static>,
    rsa_server: Cert,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p
    };
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ca_cert = ca_params("Bench CA").self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params("Bench CA"), ca_key);
    let leaf =
        |issuer: &Issuer<'_, KeyPair>, alg: &'static rcgen::SignatureAlgorithm, name: &str| {
            let key = KeyPair::generate_for(alg).unwrap();
            let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = p.signed_by(&key, issuer).unwrap();
            Cert {
                der: cert.der().clone(),
                key: key.serialize_der(),
            }
        };
    let server = leaf(&ca, &rcgen::PKCS_ECDSA_P256_SHA256, "localhost");
    let client = leaf(&ca, &rcgen::PKCS_ECDSA_P256_SHA256, "bench-client");
    let rsa_ca_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa_ca_cert = ca_params("Bench RSA CA").self_signed(&rsa_ca_key).unwrap();
    let rsa_ca = Issuer::new(ca_params("Bench RSA CA"), rsa_ca_key);
    let rsa_server = leaf(&rsa_ca, &rcgen::PKCS_RSA_SHA256, "localhost");
    Pki {
        ca: ca_cert.der().clone(),
        server,
        client,
        rsa_ca: rsa_ca_cert.der().clone(),
        rsa_server,
    }
}

fn key_der(c: &Cert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone()))
}

fn roots(ca: &CertificateDer<'static>) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(ca.clone()).unwrap();
    Arc::new(r)
}

/// The server configuration Moat builds (moat-tls): TLS 1.3 and 1.2, a session cache, a
/// ticketer, `tickets` tickets after each handshake.
fn server_config(
    p: &Arc<CryptoProvider>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cert: &Cert,
    client_ca: Option<&CertificateDer<'static>>,
    tickets: usize,
) -> Arc<ServerConfig> {
    let b = ServerConfig::builder_with_provider(Arc::clone(p))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => b.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca), Arc::clone(p))
                .build()
                .unwrap(),
        ),
    };
    let mut c = b
        .with_single_cert(vec![cert.der.clone()], key_der(cert))
        .unwrap();
    c.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    c.ticketer = ticketer;
    c.send_tls13_tickets = tickets;
    Arc::new(c)
}

fn client_config(
    p: &Arc<CryptoProvider>,
    ca: &CertificateDer<'static>,
    client: Option<&Cert>,
    resume: bool,
) -> Arc<ClientConfig> {
    // SUITE128=1: a client that offers TLS13_AES_128_GCM_SHA256 only (what the handshake costs
    // with SHA-256, which has hardware support here, instead of SHA-384).
    let mut p = (**p).clone();
    if std::env::var_os("SUITE128").is_some() {
        p.cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
    let b = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(ca));
    let mut c = match client {
        None => b.with_no_client_auth(),
        Some(c) => b
            .with_client_auth_cert(vec![c.der.clone()], key_der(c))
            .unwrap(),
    };
    if !resume {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(c)
}

/// One handshake in memory; returns the server's CPU time (ns), whether it resumed, and the
/// bytes the server wrote.
fn handshake(s_cfg: &Arc<ServerConfig>, c_cfg: &Arc<ClientConfig>) -> (u64, bool, usize) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(Arc::clone(c_cfg), name).unwrap();
    let t = cpu_ns();
    let mut s = ServerConnection::new(Arc::clone(s_cfg)).unwrap();
    let mut srv = cpu_ns() - t;
    let mut buf = Vec::with_capacity(8192);
    let mut written = 0;
    for _ in 0..20 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let t = cpu_ns();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        srv += cpu_ns() - t;
        written += buf.len();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    assert!(!s.is_handshaking());
    let t = cpu_ns();
    let resumed = s.handshake_kind() == Some(HandshakeKind::Resumed);
    if std::env::var_os("SHOW").is_some() {
        eprintln!(
            "  {:?} {:?} resumed={resumed}",
            s.negotiated_key_exchange_group().map(|g| g.name()),
            s.negotiated_cipher_suite().map(|c| c.suite())
        );
    }
    drop(s);
    srv += cpu_ns() - t;
    (srv, resumed, written)
}

struct Env {
    iters: u32,
}

/// The mean CPU time of `f` over `iters` calls, in microseconds.
fn time<F: FnMut()>(env: &Env, mut f: F) -> f64 {
    f();
    let t = cpu_ns();
    for _ in 0..env.iters {
        f();
    }
    (cpu_ns() - t) as f64 / 1000.0 / f64::from(env.iters)
}

fn group(p: &CryptoProvider, g: NamedGroup) -> &'static dyn rustls::crypto::SupportedKxGroup {
    *p.kx_groups.iter().find(|k| k.name() == g).unwrap()
}

type Case<'a> = (&'a str, Box<dyn Fn(&Env, &Arc<CryptoProvider>) -> f64 + 'a>);

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let iters: u32 = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let only = std::env::var("ONLY").ok();
    let env = Env { iters };
    let pki = pki();
    let mut providers: Vec<(
        &str,
        Arc<CryptoProvider>,
        Arc<dyn rustls::server::ProducesTickets>,
    )> = vec![
        (
            "ring",
            Arc::new(rustls::crypto::ring::default_provider()),
            rustls::crypto::ring::Ticketer::new().unwrap(),
        ),
        (
            "aws-lc-rs",
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        ),
    ];
    // PROVIDER=ring or PROVIDER=aws-lc-rs: that one only (for a profiler).
    if let Ok(only) = std::env::var("PROVIDER") {
        providers.retain(|p| p.0 == only);
    }
    let now = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    );
    // What TLS 1.3 signs in a CertificateVerify: 64 spaces, a context string, a hash.
    let mut tbs = vec![0x20u8; 64];
    tbs.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
    tbs.extend_from_slice(&[7u8; 32]);
    let pki = &pki;
    let tbs = &tbs;

    let sign = move |cert: &'static str,
                     scheme: SignatureScheme|
          -> Box<dyn Fn(&Env, &Arc<CryptoProvider>) -> f64> {
        Box::new(move |env: &Env, p: &Arc<CryptoProvider>| {
            let c = if cert == "rsa" {
                &pki.rsa_server
            } else {
                &pki.server
            };
            let key = p.key_provider.load_private_key(key_der(c)).unwrap();
            let signer = key.choose_scheme(&[scheme]).unwrap();
            time(env, || {
                std::hint::black_box(signer.sign(tbs).unwrap());
            })
        })
    };
    let kx = |g: NamedGroup| -> Box<dyn Fn(&Env, &Arc<CryptoProvider>) -> f64> {
        Box::new(move |env: &Env, p: &Arc<CryptoProvider>| {
            let grp = group(p, g);
            let peer = grp.start().unwrap();
            let peer_pub = peer.pub_key().to_vec();
            // The server's part: a key pair, then the shared secret with the client's share.
            time(env, || {
                let mine = grp.start().unwrap();
                std::hint::black_box(mine.pub_key());
                std::hint::black_box(mine.complete(&peer_pub).unwrap());
            })
        })
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "ECDSA P-256 sign (SHA-256)",
            sign("p256", SignatureScheme::ECDSA_NISTP256_SHA256),
        ),
        (
            "RSA-2048 PSS sign (SHA-256)",
            sign("rsa", SignatureScheme::RSA_PSS_SHA256),
        ),
        ("X25519 key pair + shared secret", kx(NamedGroup::X25519)),
        (
            "P-256 ECDH key pair + shared secret",
            kx(NamedGroup::secp256r1),
        ),
        (
            "client chain verification (webpki, P-256 leaf + CA)",
            Box::new(move |env: &Env, p: &Arc<CryptoProvider>| {
                let v = WebPkiClientVerifier::builder_with_provider(roots(&pki.ca), Arc::clone(p))
                    .build()
                    .unwrap();
                time(env, || {
                    v.verify_client_cert(&pki.client.der, &[], now).unwrap();
                })
            }),
        ),
        (
            "client CertificateVerify check (ECDSA P-256)",
            Box::new(move |env: &Env, p: &Arc<CryptoProvider>| {
                let key = p
                    .key_provider
                    .load_private_key(key_der(&pki.client))
                    .unwrap();
                let signer = key
                    .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
                    .unwrap();
                let sig = signer.sign(tbs).unwrap();
                // What rustls does with a client's CertificateVerify: the scheme's algorithm
                // from the provider, the key from the parsed certificate.
                let algs = p
                    .signature_verification_algorithms
                    .mapping
                    .iter()
                    .find(|(s, _)| *s == SignatureScheme::ECDSA_NISTP256_SHA256)
                    .unwrap()
                    .1;
                time(env, || {
                    let ee = webpki::EndEntityCert::try_from(&pki.client.der).unwrap();
                    ee.verify_signature(algs[0], tbs, &sig).unwrap();
                })
            }),
        ),
        (
            "server chain verification (client side, for reference)",
            Box::new(move |env: &Env, p: &Arc<CryptoProvider>| {
                let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots(&pki.ca),
                    Arc::clone(p),
                )
                .build()
                .unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                time(env, || {
                    v.verify_server_cert(&pki.server.der, &[], &name, &[], now)
                        .unwrap();
                })
            }),
        ),
    ];
    let mut hs: Vec<Case<'_>> = Vec::new();
    for tickets in [2usize, 1, 0] {
        let label = |what: &str| -> &'static str {
            Box::leak(
                format!("handshake, server side: {what}, {tickets} ticket(s)").into_boxed_str(),
            )
        };
        let tks = tickets;
        hs.push((
            label("P-256 full"),
            Box::new(move |env, p| {
                let tk = ticketer_of(p);
                let s = server_config(p, tk, &pki.server, None, tks);
                let c = client_config(p, &pki.ca, None, false);
                hs_time(env, &s, &c, false)
            }),
        ));
        hs.push((
            label("RSA-2048 full"),
            Box::new(move |env, p| {
                let tk = ticketer_of(p);
                let s = server_config(p, tk, &pki.rsa_server, None, tks);
                let c = client_config(p, &pki.rsa_ca, None, false);
                hs_time(env, &s, &c, false)
            }),
        ));
        hs.push((
            label("mTLS P-256 full"),
            Box::new(move |env, p| {
                let tk = ticketer_of(p);
                let s = server_config(p, tk, &pki.server, Some(&pki.ca), tks);
                let c = client_config(p, &pki.ca, Some(&pki.client), false);
                hs_time(env, &s, &c, false)
            }),
        ));
        if tickets > 0 {
            hs.push((
                label("P-256 resumed (ticket)"),
                Box::new(move |env, p| {
                    let tk = ticketer_of(p);
                    let s = server_config(p, tk, &pki.server, None, tks);
                    let c = client_config(p, &pki.ca, None, true);
                    hs_time(env, &s, &c, true)
                }),
            ));
        }
    }
    let mut all = cases;
    all.extend(hs);
    println!(
        "{:<62} {:>10} {:>10} {:>7}",
        "server CPU per operation (us, best of rounds)",
        providers[0].0,
        providers.get(1).map_or("", |p| p.0),
        "ratio"
    );
    for (label, f) in &all {
        if let Some(o) = &only {
            if !label.contains(o.as_str()) {
                continue;
            }
        }
        let mut best = vec![f64::INFINITY; providers.len()];
        for _ in 0..rounds {
            for (i, (_, p, _)) in providers.iter().enumerate() {
                let v = f(&env, p);
                if v < best[i] {
                    best[i] = v;
                }
            }
        }
        println!(
            "{label:<62} {:>10.1} {:>10.1} {:>7.2}",
            best[0],
            best.get(1).copied().unwrap_or(f64::NAN),
            best.get(1).copied().unwrap_or(f64::NAN) / best[0]
        );
    }
    let _ = &providers[0].2;
}

fn ticketer_of(p: &Arc<CryptoProvider>) -> Arc<dyn rustls::server::ProducesTickets> {
    // The provider's own ticketer (told apart by its key exchange groups' addresses).
    let ring = rustls::crypto::ring::default_provider();
    if std::ptr::eq(p.kx_groups[0], ring.kx_groups[0]) {
        rustls::crypto::ring::Ticketer::new().unwrap()
    } else {
        rustls::crypto::aws_lc_rs::Ticketer::new().unwrap()
    }
}

fn hs_time(env: &Env, s: &Arc<ServerConfig>, c: &Arc<ClientConfig>, resume: bool) -> f64 {
    // Resumption: a first full handshake leaves the client tickets.
    let (_, r, _) = handshake(s, c);
    assert!(!r);
    let n = env.iters.clamp(1, 200);
    let mut total = 0u64;
    for _ in 0..n {
        let (ns, resumed, _) = handshake(s, c);
        assert_eq!(resumed, resume, "resumed");
        total += ns;
    }
    total as f64 / 1000.0 / f64::from(n)
}
