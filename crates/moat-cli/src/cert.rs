//! `moat cert ...`: the certificate toolkit's CLI over moat-pki.
//!
//! Exit codes: 0 ok, 1 the check found a problem (lint errors, a chain that does not verify),
//! 2 usage or I/O error (returned as `Err`). Secrets (keys, passphrases) are never printed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context};
use moat_pki::generate::{self, Ca, CaOptions, ClientOptions, ServerOptions};
use moat_pki::inspect::{self, Entry, FileReport};
use moat_pki::lint::{self, LintFile, LintInput};
use moat_pki::{store, KeyType, LintProfile, Purpose, Severity, Validity};
use zeroize::Zeroizing;

/// Flags of `moat cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertCommand {
    /// Make a CA (DIR/ca.pem, DIR/ca.key); with --intermediate, one signed by --ca ROOTDIR.
    Ca(CaArgs),
    /// Make a server certificate: CN = first host, every host in the SAN, serverAuth.
    Server(ServerArgs),
    /// Make a client certificate: CN = the device identity, clientAuth.
    Client(ClientArgs),
    /// Show what PEM/DER files hold: subjects, SANs, issuer, validity, key, fingerprints, order.
    Inspect(InspectArgs),
    /// Does the chain verify against the CA, now, for this host, for this purpose?
    Verify(VerifyArgs),
    /// Check certificate, chain and key files against the certificate rules.
    Lint(LintArgs),
    /// Split a bundle (any order) into leaf.pem, an ordered chain.pem, and root.pem.
    Split(SplitArgs),
    /// Write an encrypted key (PKCS#8 or legacy "Proc-Type: 4,ENCRYPTED") as plain PKCS#8.
    DecryptKey(DecryptKeyArgs),
    /// Revoke a certificate of this CA: record it in DIR/revoked.toml, re-sign DIR/ca.crl.
    Revoke(RevokeArgs),
    /// Sign DIR/ca.crl again (a new next update) without revoking anything new.
    Crl(CrlArgs),
    /// Ask the running broker what expires, soonest first: the certificates it serves and
    /// trusts, CRL next updates, and its connected clients' certificates.
    Inventory(InventoryArgs),
}

#[derive(Debug, clap::Args)]
struct InventoryArgs {
    #[command(flatten)]
    admin: crate::admin_client::AdminArgs,
    /// Print the broker's JSON as it is.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["cert", "serial"])))]
struct RevokeArgs {
    /// The CA directory (ca.pem, ca.key) that issued the certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The certificate to revoke (PEM or DER); it must be issued by this CA.
    cert: Option<PathBuf>,
    /// The serial to revoke (hex, colons optional), when the certificate file is gone.
    #[arg(long)]
    serial: Option<String>,
    /// Why: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded,
    /// cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.
    #[arg(long, default_value = "unspecified")]
    reason: moat_pki::crl::RevocationReason,
    /// Days until the CRL's next update (a broker warns about a CRL past it).
    #[arg(long, default_value_t = moat_pki::crl::DEFAULT_CRL_DAYS)]
    days: u32,
    /// Passphrase file for the CA's key.
    #[arg(long, visible_alias = "passphrase-file")]
    ca_passphrase_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CrlArgs {
    /// The CA directory (ca.pem, ca.key).
    #[arg(long)]
    ca: PathBuf,
    /// Days until the CRL's next update.
    #[arg(long, default_value_t = moat_pki::crl::DEFAULT_CRL_DAYS)]
    days: u32,
    /// Passphrase file for the CA's key.
    #[arg(long, visible_alias = "passphrase-file")]
    ca_passphrase_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CaArgs {
    /// Directory to write ca.pem and ca.key into (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Common name of the CA.
    #[arg(long)]
    cn: Option<String>,
    /// Key type: p256, p384, ed25519, rsa2048, rsa3072, rsa4096.
    #[arg(long, default_value = "p256")]
    key_type: KeyType,
    /// Validity in days (default 3650 for a root, 1825 for an intermediate).
    #[arg(long)]
    days: Option<u32>,
    /// Encrypt ca.key with the passphrase in this file (its first line).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Make an intermediate CA signed by the CA in --ca.
    #[arg(long, requires = "ca")]
    intermediate: bool,
    /// The issuing CA's directory (for --intermediate).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Passphrase file for the issuing CA's key.
    #[arg(long)]
    ca_passphrase_file: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The CA directory (ca.pem, ca.key).
    #[arg(long)]
    ca: PathBuf,
    /// Host name or IP address clients dial; repeat for more. The first is the CN.
    #[arg(long = "host", required = true)]
    hosts: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Key type: p256, p384, ed25519, rsa2048, rsa3072, rsa4096.
    #[arg(long, default_value = "p256")]
    key_type: KeyType,
    /// Validity in days.
    #[arg(long, default_value_t = 397)]
    days: u32,
    /// Passphrase file for the CA's key.
    #[arg(long)]
    ca_passphrase_file: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// The CA directory (ca.pem, ca.key).
    #[arg(long)]
    ca: PathBuf,
    /// The device identity (the CN); files are ID.pem and ID.key.
    #[arg(long)]
    cn: String,
    /// Output directory.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Key type: p256, p384, ed25519, rsa2048, rsa3072, rsa4096.
    #[arg(long, default_value = "p256")]
    key_type: KeyType,
    /// Validity in days.
    #[arg(long, default_value_t = 397)]
    days: u32,
    /// Passphrase file for the CA's key.
    #[arg(long)]
    ca_passphrase_file: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// Files to inspect (PEM or DER).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The certificate (the leaf; intermediates may follow it in the same file).
    cert: PathBuf,
    /// Intermediates.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// The CA (trust anchor) file or a CA directory.
    #[arg(long)]
    ca: PathBuf,
    /// Host name or IP address the certificate must be valid for.
    #[arg(long)]
    host: Option<String>,
    /// server or client.
    #[arg(long, default_value = "server")]
    purpose: Purpose,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct LintArgs {
    /// The certificate (leaf).
    #[arg(long, required_unless_present_any = ["key", "chain", "ca", "client_ca"])]
    cert: Option<PathBuf>,
    /// Intermediates.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// The private key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The key's passphrase (first line of this file).
    #[arg(long)]
    key_passphrase_file: Option<PathBuf>,
    /// The CA the certificate must chain to (a file, or a CA directory).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The CA the broker verifies client certificates with.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Host name or IP address clients dial; repeat for more.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// server or client.
    #[arg(long, default_value = "server")]
    purpose: Purpose,
    /// strict (what every client accepts) or broker (what the broker serves with warnings).
    #[arg(long, default_value = "strict", value_parser = ["strict", "broker"])]
    profile: String,
    /// Warn when a certificate expires within this many days.
    #[arg(long, default_value_t = 30)]
    warn_days: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SplitArgs {
    /// The bundle: leaf, intermediates and maybe the root, in any order.
    bundle: PathBuf,
    /// Output directory for leaf.pem, chain.pem and root.pem.
    #[arg(long)]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct DecryptKeyArgs {
    /// The encrypted key.
    key: PathBuf,
    /// Where to write the unencrypted PKCS#8 key (mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// The passphrase (first line of this file); without it, a prompt on the terminal.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

/// Runs `moat cert`.
pub(crate) fn run(args: CertArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CertCommand::Ca(a) => ca(a),
        CertCommand::Server(a) => server(a),
        CertCommand::Client(a) => client(a),
        CertCommand::Inspect(a) => inspect_cmd(&a),
        CertCommand::Verify(a) => verify_cmd(&a),
        CertCommand::Lint(a) => lint_cmd(a),
        CertCommand::Split(a) => split_cmd(&a),
        CertCommand::DecryptKey(a) => decrypt_key(&a),
        CertCommand::Revoke(a) => revoke_cmd(&a),
        CertCommand::Crl(a) => crl_cmd(&a),
        CertCommand::Inventory(a) => inventory_cmd(&a),
    }
}

/// GET /api/v1/expiry of the running broker, as a table (or the JSON with --json).
fn inventory_cmd(a: &InventoryArgs) -> anyhow::Result<ExitCode> {
    let client = crate::admin_client::AdminClient::new(&a.admin)?;
    let get = |path: &str| client.get(path);
    let (url, body) = get("/api/v1/expiry")?;
    if a.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let items: Vec<serde_json::Value> =
        serde_json::from_str(&body).with_context(|| format!("{url}: not the expected JSON"))?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|i| {
            let place = match (i["certificate_set"].as_str(), i["client_id"].as_str()) {
                (Some(set), _) => format!("set {set}"),
                (_, Some(client)) => format!("client {client}"),
                _ => "-".into(),
            };
            [
                text(&i["level"]),
                text(&i["kind"]),
                place,
                text(&i["subject"]),
                text(&i["not_after"]),
                i["days_left"]
                    .as_i64()
                    .map_or("-".into(), |d| d.to_string()),
            ]
        })
        .collect();
    let header = ["LEVEL", "KIND", "WHERE", "SUBJECT", "EXPIRES", "DAYS"].map(str::to_owned);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        println!("(nothing: the broker serves no TLS listener and has no client certificates)");
    }
    let (url, body) = get("/api/v1/client-cas")?;
    let cas: Vec<serde_json::Value> =
        serde_json::from_str(&body).with_context(|| format!("{url}: not the expected JSON"))?;
    if !cas.is_empty() {
        println!();
        println!("Client CAs and the connected clients that chain to each:");
        for ca in &cas {
            let clients = ca["clients"].as_u64().unwrap_or(0);
            println!(
                "  {}  {}  {}  expires {}  {clients} client(s)",
                text(&ca["listener"]),
                text(&ca["subject"]),
                text(&ca["fingerprint"]),
                text(&ca["not_after"]),
            );
            let ids: Vec<String> = ca["client_ids"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            if !ids.is_empty() {
                let more = clients.saturating_sub(ids.len() as u64);
                let tail = if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                };
                println!("    {}{tail}", ids.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke_cmd(a: &RevokeArgs) -> anyhow::Result<ExitCode> {
    use moat_pki::crl;
    let ca = load_ca(&a.ca, a.ca_passphrase_file.as_deref())?;
    let (serial, what) = match (&a.cert, &a.serial) {
        (Some(path), _) => {
            let der = certs_of(path)?.remove(0);
            let name = path.display().to_string();
            (crl::serial_issued_by(&ca, &der, &name)?, name)
        }
        (None, Some(s)) => {
            let serial = crl::parse_serial(s)?;
            let hex = crl::serial_hex(&serial);
            (serial, format!("serial {hex}"))
        }
        (None, None) => bail!("give the certificate file or --serial"),
    };
    let written = crl::revoke(&a.ca, &ca, &serial, a.reason, SystemTime::now(), a.days)?;
    let hex = crl::serial_hex(&serial);
    if written.newly_revoked {
        println!("revoked {what} (serial {hex}, reason {})", a.reason);
    } else {
        println!("{what} (serial {hex}) was already revoked; the CRL is signed again");
    }
    print_crl(&written);
    Ok(ExitCode::SUCCESS)
}

fn crl_cmd(a: &CrlArgs) -> anyhow::Result<ExitCode> {
    let ca = load_ca(&a.ca, a.ca_passphrase_file.as_deref())?;
    let written = moat_pki::crl::refresh(&a.ca, &ca, SystemTime::now(), a.days)?;
    print_crl(&written);
    Ok(ExitCode::SUCCESS)
}

fn print_crl(w: &moat_pki::crl::CrlWritten) {
    let next = w
        .next_update
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .map_or_else(|| "?".into(), inspect::rfc3339);
    println!(
        "wrote {} (CRL number {}, {} revoked, next update {next})",
        w.path.display(),
        w.crl_number,
        w.revoked
    );
    println!(
        "a broker applies it live when its TLS listener names it: crl = [\"{}\"] under \
         [listeners.tls]; sign it again with `moat cert crl --ca DIR` before the next update",
        w.path.display()
    );
}

fn read_pass(file: Option<&Path>) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    Ok(match file {
        Some(f) => Some(store::read_passphrase_file(f)?),
        None => None,
    })
}

/// A passphrase from a file, else from a prompt when stdin is a terminal.
fn pass_or_prompt(file: Option<&Path>, prompt: &str) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    if let Some(p) = read_pass(file)? {
        return Ok(Some(p));
    }
    if std::io::stdin().is_terminal() {
        let p =
            Zeroizing::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
        return Ok(Some(Zeroizing::new(p.as_bytes().to_vec())));
    }
    Ok(None)
}

fn load_ca(dir: &Path, pass_file: Option<&Path>) -> anyhow::Result<Ca> {
    let pass = if store::ca_key_is_encrypted(dir) {
        let p = pass_or_prompt(
            pass_file,
            &format!("passphrase for {}: ", dir.join(store::CA_KEY).display()),
        )?;
        if p.is_none() {
            bail!(
                "{} is encrypted: give --ca-passphrase-file FILE (or run on a terminal to be prompted)",
                dir.join(store::CA_KEY).display()
            );
        }
        p
    } else {
        None
    };
    Ok(store::load_ca(dir, pass.as_ref().map(|p| p.as_slice()))?)
}

fn ca(a: CaArgs) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    let pass = read_pass(a.passphrase_file.as_deref())?;
    let (ca, kind) = if a.intermediate {
        let Some(root_dir) = &a.ca else {
            bail!("--intermediate needs --ca ROOTDIR")
        };
        let issuer = load_ca(root_dir, a.ca_passphrase_file.as_deref())?;
        let opts = CaOptions {
            common_name: a
                .cn
                .clone()
                .unwrap_or_else(|| "Moat Intermediate CA".into()),
            key_type: a.key_type,
            validity: Validity::days_from(now, a.days.unwrap_or(1825)),
        };
        let made = generate::intermediate_ca(&opts, &issuer)?;
        let mut chain = Vec::new();
        if issuer.is_intermediate() {
            chain.push(issuer.cert_der.clone());
            chain.extend(issuer.chain.iter().cloned());
        }
        let root = Some(issuer.anchor().to_vec());
        (
            Ca {
                cert_der: made.cert_der,
                key: made.key,
                chain,
                root,
            },
            "intermediate CA",
        )
    } else {
        if a.ca.is_some() {
            bail!("--ca is only for --intermediate");
        }
        let opts = CaOptions {
            common_name: a.cn.clone().unwrap_or_else(|| "Moat Root CA".into()),
            key_type: a.key_type,
            validity: Validity::days_from(now, a.days.unwrap_or(3650)),
        };
        let made = generate::root_ca(&opts)?;
        (
            Ca {
                cert_der: made.cert_der,
                key: made.key,
                chain: Vec::new(),
                root: None,
            },
            "root CA",
        )
    };
    let files = store::write_ca(&a.out, &ca, pass.as_ref().map(|p| p.as_slice()), a.force)?;
    let info = inspect::CertInfo::from_der(&ca.cert_der)?;
    println!(
        "made {kind} {} ({}, valid until {})",
        info.subject, info.key, info.not_after
    );
    println!("  sha256 {}", info.sha256_fingerprint);
    for f in files {
        println!("  wrote {}", f.display());
    }
    if pass.is_some() {
        println!("  the key is encrypted (PKCS#8, AES-256-CBC)");
    }
    Ok(ExitCode::SUCCESS)
}

fn server(a: ServerArgs) -> anyhow::Result<ExitCode> {
    let issuer = load_ca(&a.ca, a.ca_passphrase_file.as_deref())?;
    let opts = ServerOptions {
        hosts: a.hosts.clone(),
        key_type: a.key_type,
        validity: Validity::days_from(SystemTime::now(), a.days),
    };
    store::ensure_dir(&a.out)?;
    let cert_path = a.out.join("server.pem");
    let key_path = a.out.join("server.key");
    let chain_path = a.out.join("chain.pem");
    let chain = issuer.presented_chain();
    let mut paths = vec![cert_path.clone(), key_path.clone()];
    if !chain.is_empty() {
        paths.push(chain_path.clone());
    }
    store::check_absent(&paths, a.force)?;
    let made = generate::server(&opts, &issuer)?;
    store::write_key(&key_path, &made.key, None, a.force)?;
    store::write_file(&cert_path, made.cert_pem().as_bytes(), false, a.force)?;
    if !chain.is_empty() {
        let text: String = chain
            .iter()
            .map(|c| moat_pki::decode::cert_pem(c))
            .collect();
        store::write_file(&chain_path, text.as_bytes(), false, a.force)?;
    }
    report_made("server certificate", &made.cert_der, &paths)?;
    Ok(ExitCode::SUCCESS)
}

fn client(a: ClientArgs) -> anyhow::Result<ExitCode> {
    let issuer = load_ca(&a.ca, a.ca_passphrase_file.as_deref())?;
    let file_stem = safe_file_stem(&a.cn)?;
    let opts = ClientOptions {
        common_name: a.cn.clone(),
        key_type: a.key_type,
        validity: Validity::days_from(SystemTime::now(), a.days),
    };
    store::ensure_dir(&a.out)?;
    let cert_path = a.out.join(format!("{file_stem}.pem"));
    let key_path = a.out.join(format!("{file_stem}.key"));
    let paths = vec![cert_path.clone(), key_path.clone()];
    store::check_absent(&paths, a.force)?;
    let made = generate::client(&opts, &issuer)?;
    store::write_key(&key_path, &made.key, None, a.force)?;
    store::write_file(&cert_path, made.cert_pem().as_bytes(), false, a.force)?;
    report_made("client certificate", &made.cert_der, &paths)?;
    if issuer.is_intermediate() {
        println!(
            "  note: the broker's client CA must hold {} and its issuers",
            a.ca.join(store::CA_CERT).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn safe_file_stem(cn: &str) -> anyhow::Result<String> {
    let ok = !cn.is_empty()
        && cn != "."
        && cn != ".."
        && cn
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if !ok {
        bail!(
            "--cn {cn:?} cannot be used as a file name (use letters, digits, '-', '_', '.', '@')"
        );
    }
    Ok(cn.to_owned())
}

fn report_made(what: &str, der: &[u8], paths: &[PathBuf]) -> anyhow::Result<()> {
    let info = inspect::CertInfo::from_der(der)?;
    println!(
        "made {what} {} ({}, valid until {})",
        info.subject, info.key, info.not_after
    );
    if !info.sans.is_empty() {
        let sans: Vec<String> = info.sans.iter().map(ToString::to_string).collect();
        println!("  SAN {}", sans.join(", "));
    }
    println!("  sha256 {}", info.sha256_fingerprint);
    for p in paths {
        println!("  wrote {}", p.display());
    }
    Ok(())
}

fn inspect_cmd(a: &InspectArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    let mut bad = false;
    for f in &a.files {
        let data = store::read(f)?;
        match inspect::inspect_bytes(f, &data) {
            Ok(r) => reports.push(Ok(r)),
            Err(e) => {
                bad = true;
                reports.push(Err((f.display().to_string(), e.to_string())));
            }
        }
    }
    if a.json {
        let v: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| match r {
                Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                Err((path, e)) => serde_json::json!({ "path": path, "error": e }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &reports {
            match r {
                Ok(r) => print_report(r),
                Err((path, e)) => println!("{path}: {e}"),
            }
        }
    }
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_report(r: &FileReport) {
    let certs = r
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Certificate { .. }))
        .count();
    println!(
        "{}: {:?}, {} object(s), {certs} certificate(s)",
        r.path,
        r.encoding,
        r.entries.len()
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for e in &r.entries {
        match e {
            Entry::Certificate {
                index,
                info,
                signed_by,
            } => {
                println!("  [{index}] certificate");
                println!("      subject:    {}", info.subject);
                let sans: Vec<String> = info.sans.iter().map(ToString::to_string).collect();
                println!(
                    "      SANs:       {}",
                    if info.has_san {
                        sans.join(", ")
                    } else {
                        "(none)".into()
                    }
                );
                let by = match signed_by {
                    Some(i) if i == index => " (self-signed)".to_owned(),
                    Some(i) => format!(" (signed by [{i}])"),
                    None => String::new(),
                };
                println!("      issuer:     {}{by}", info.issuer);
                println!("      version:    {}", info.version);
                println!("      serial:     {}", info.serial);
                let state = if info.not_after_unix < now {
                    "EXPIRED".to_owned()
                } else if info.not_before_unix > now {
                    "NOT YET VALID".to_owned()
                } else {
                    format!("{} days left", (info.not_after_unix - now) / 86_400)
                };
                println!(
                    "      validity:   {} to {} ({state})",
                    info.not_before, info.not_after
                );
                println!("      key:        {}", info.key);
                println!("      signature:  {}", info.signature_algorithm);
                for x in &info.extensions {
                    let crit = if x.critical { " (critical)" } else { "" };
                    println!("      ext:        {}{crit}: {}", x.name, x.value);
                }
                println!("      sha256:     {}", info.sha256_fingerprint);
            }
            Entry::PrivateKey {
                index,
                format,
                algorithm,
                encrypted,
            } => {
                let alg = algorithm
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), ToString::to_string);
                let enc = if *encrypted { ", encrypted" } else { "" };
                println!("  [{index}] private key ({format:?}, {alg}{enc})");
            }
            Entry::Other { index, what, error } => match error {
                Some(e) => println!("  [{index}] {what}: {e}"),
                None => println!("  [{index}] {what}"),
            },
        }
    }
    if r.chain_order.len() > 1 {
        let order: Vec<String> = r.chain_order.iter().map(|i| format!("[{i}]")).collect();
        println!("  chain order (leaf first): {}", order.join(" -> "));
    }
}

/// Certificates of a file, or of DIR/ca.pem for a CA directory.
fn certs_of(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let file = if path.is_dir() {
        path.join(store::CA_CERT)
    } else {
        path.to_owned()
    };
    let data = store::read(&file)?;
    let decoded = moat_pki::decode::decode(&data).with_context(|| format!("{}", file.display()))?;
    let certs = decoded.certificates();
    if certs.is_empty() {
        bail!("{}: no certificate in the file", file.display());
    }
    Ok(certs)
}

/// For a CA directory of an intermediate, the root is the anchor clients use.
fn anchors_of(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut certs = certs_of(path)?;
    if path.is_dir() && path.join(store::ROOT).exists() {
        certs.extend(certs_of(&path.join(store::ROOT))?);
    }
    Ok(certs)
}

fn verify_cmd(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut certs = certs_of(&a.cert)?;
    let leaf = certs.remove(0);
    if let Some(chain) = &a.chain {
        certs.extend(certs_of(chain)?);
    }
    let anchors = anchors_of(&a.ca)?;
    let result = moat_pki::verify::verify(
        &leaf,
        &certs,
        &anchors,
        a.host.as_deref(),
        a.purpose,
        SystemTime::now(),
    );
    let purpose = match a.purpose {
        Purpose::Server => "server",
        Purpose::Client => "client",
    };
    if a.json {
        let v = match &result {
            Ok(path) => {
                serde_json::json!({ "ok": true, "path": path, "purpose": purpose, "host": a.host })
            }
            Err(e) => {
                serde_json::json!({ "ok": false, "error": e.explanation, "webpki": e.webpki, "purpose": purpose, "host": a.host })
            }
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    match result {
        Ok(path) => {
            if !a.json {
                let host = a
                    .host
                    .as_deref()
                    .map(|h| format!(" for {h}"))
                    .unwrap_or_default();
                println!(
                    "{}: OK, valid now as a {purpose} certificate{host}",
                    a.cert.display()
                );
                println!("  path: {}", path.join(" <- "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if !a.json {
                println!(
                    "{}: FAILED: {} ({})",
                    a.cert.display(),
                    e.explanation,
                    e.webpki
                );
                println!(
                    "  run `moat cert lint --cert {} --ca {}` for the details and fixes",
                    a.cert.display(),
                    a.ca.display()
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn lint_file(path: &Path) -> anyhow::Result<LintFile> {
    Ok(LintFile::new(
        path.display().to_string(),
        store::read(path)?,
    ))
}

fn lint_cmd(a: LintArgs) -> anyhow::Result<ExitCode> {
    let mut input = LintInput::new(SystemTime::now());
    input.cert = a.cert.as_deref().map(lint_file).transpose()?;
    input.chain = a.chain.as_deref().map(lint_file).transpose()?;
    input.key = a.key.as_deref().map(lint_file).transpose()?;
    input.key_passphrase = read_pass(a.key_passphrase_file.as_deref())?;
    input.ca = match &a.ca {
        Some(p) if p.is_dir() => {
            let root = p.join(store::ROOT);
            let f = if root.exists() {
                root
            } else {
                p.join(store::CA_CERT)
            };
            Some(lint_file(&f)?)
        }
        Some(p) => Some(lint_file(p)?),
        None => None,
    };
    input.client_ca = a.client_ca.as_deref().map(lint_file).transpose()?;
    input.hosts = a.hosts;
    input.purpose = a.purpose;
    input.profile = if a.profile == "broker" {
        LintProfile::BrokerStartup
    } else {
        LintProfile::Strict
    };
    input.expiry_warning = std::time::Duration::from_secs(u64::from(a.warn_days) * 86_400);
    let findings = lint::lint(&input);
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    if a.json {
        let v = serde_json::json!({ "ok": errors == 0, "errors": errors, "warnings": warnings, "findings": findings });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for f in &findings {
            println!("{f}");
        }
        println!("{errors} error(s), {warnings} warning(s)");
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn split_cmd(a: &SplitArgs) -> anyhow::Result<ExitCode> {
    let certs = certs_of(&a.bundle)?;
    let infos = certs
        .iter()
        .map(|c| inspect::CertInfo::from_der(c))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| a.bundle.display().to_string())?;
    let s = moat_pki::split::split(&infos).with_context(|| a.bundle.display().to_string())?;
    store::ensure_dir(&a.out)?;
    let leaf_path = a.out.join("leaf.pem");
    let chain_path = a.out.join("chain.pem");
    let root_path = a.out.join("root.pem");
    let mut paths = vec![leaf_path.clone()];
    if !s.chain.is_empty() {
        paths.push(chain_path.clone());
    }
    if s.root.is_some() {
        paths.push(root_path.clone());
    }
    store::check_absent(&paths, a.force)?;
    store::write_file(
        &leaf_path,
        moat_pki::decode::cert_pem(s.leaf.der()).as_bytes(),
        false,
        a.force,
    )?;
    println!("leaf:  {} -> {}", s.leaf.subject, leaf_path.display());
    if !s.chain.is_empty() {
        let text: String = s
            .chain
            .iter()
            .map(|c| moat_pki::decode::cert_pem(c.der()))
            .collect();
        store::write_file(&chain_path, text.as_bytes(), false, a.force)?;
        for c in &s.chain {
            println!("chain: {} -> {}", c.subject, chain_path.display());
        }
    }
    if let Some(root) = &s.root {
        store::write_file(
            &root_path,
            moat_pki::decode::cert_pem(root.der()).as_bytes(),
            false,
            a.force,
        )?;
        println!(
            "root:  {} -> {} (clients trust it; servers need not send it)",
            root.subject,
            root_path.display()
        );
    }
    for c in &s.unrelated {
        println!("not on the leaf's path (left out): {}", c.subject);
    }
    Ok(if s.unrelated.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn decrypt_key(a: &DecryptKeyArgs) -> anyhow::Result<ExitCode> {
    let data = store::read(&a.key)?;
    let key = match moat_pki::key::load(&data, None) {
        Ok(k) => k,
        Err(moat_pki::KeyError::Encrypted(_)) => {
            let pass = pass_or_prompt(
                a.passphrase_file.as_deref(),
                &format!("passphrase for {}: ", a.key.display()),
            )?;
            let Some(pass) = pass else {
                bail!("{} is encrypted: give --passphrase-file FILE (or run on a terminal to be prompted)", a.key.display());
            };
            moat_pki::key::load(&data, Some(&pass)).with_context(|| a.key.display().to_string())?
        }
        Err(e) => return Err(anyhow::Error::new(e).context(a.key.display().to_string())),
    };
    store::write_key(&a.out, &key, None, a.force)?;
    println!(
        "wrote {} ({}, unencrypted PKCS#8, mode 0600)",
        a.out.display(),
        key.algorithm()
    );
    Ok(ExitCode::SUCCESS)
}
