//! `moat serve` without a config file: a local CA and a server certificate under the data
//! dir (made on the first start, reused after), a loopback tcp listener, and tls and wss
//! listeners that need a client certificate or a password.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use moat_pki::generate::{self, Ca, CaOptions, ServerOptions};
use moat_pki::inspect::CertInfo;
use moat_pki::{store, KeyType, Validity};
use moat_server::config_file::{AuthFile, ConfigFile, ListenerFile, TlsFile};

/// The files the first run made or found.
#[derive(Debug)]
pub(crate) struct LocalPki {
    pub(crate) dir: PathBuf,
    pub(crate) ca_pem: PathBuf,
    pub(crate) created_ca: bool,
    pub(crate) hosts: Vec<String>,
}

/// The names clients may dial: localhost, this machine's hostname, loopback and every
/// non-loopback address of its interfaces.
pub(crate) fn local_hosts() -> Vec<String> {
    let mut hosts = vec!["localhost".to_owned()];
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() && name != "localhost" {
            hosts.push(name.to_owned());
        }
    }
    hosts.push("127.0.0.1".into());
    hosts.push("::1".into());
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for iface in ifaces {
            let ip: IpAddr = iface.ip();
            if ip.is_loopback() || is_link_local(ip) {
                continue;
            }
            let text = ip.to_string();
            if !hosts.contains(&text) {
                hosts.push(text);
            }
        }
    }
    hosts
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Makes (or reuses) `data_dir/pki`: ca.pem, ca.key (0600), server.pem, server.key (0600).
/// The server certificate is made again when it no longer covers a local name or is about
/// to expire, unless another certificate was installed in its place (the admin console, by
/// hand); the CA is kept, so client certificates stay valid. While a certificate set is
/// deleted (`data_dir/tls/<id>/removed`), no server certificate is made.
pub(crate) fn ensure_pki(data_dir: &Path) -> anyhow::Result<LocalPki> {
    let dir = data_dir.join("pki");
    create_private_dir(&dir)?;
    let ca_pem = dir.join(store::CA_CERT);
    let ca_key = dir.join(store::CA_KEY);
    let now = SystemTime::now();
    let mut created_ca = false;
    if !ca_pem.exists() || !ca_key.exists() {
        let root = generate::root_ca(&CaOptions {
            common_name: "Moat local CA".into(),
            key_type: KeyType::P256,
            validity: Validity::days_from(now, 3650),
        })?;
        store::write_file(&ca_key, root.key.to_pkcs8_pem().as_bytes(), true, true)?;
        store::write_file(&ca_pem, root.cert_pem().as_bytes(), false, true)?;
        created_ca = true;
    }
    let ca = Ca {
        cert_der: read_cert(&ca_pem)?,
        key: moat_pki::key::load(&std::fs::read(&ca_key)?, None)
            .with_context(|| format!("{}", ca_key.display()))?,
        chain: Vec::new(),
        root: None,
    };
    let hosts = local_hosts();
    let server_pem = dir.join("server.pem");
    let server_key = dir.join("server.key");
    // A certificate set deleted with the admin API stays deleted: its listeners start
    // without material, and no new server certificate is made behind the admin's back.
    let deleted = moat_server::removed_certificate_sets(&data_dir.join("tls"));
    // A certificate installed in its place (admin console, by hand) is the operator's: only
    // the one made here is renewed. `server.made.pem` is a copy of what was made here (a data
    // dir from before it existed adopts its current certificate).
    let made = dir.join("server.made.pem");
    if !made.exists() {
        if let Ok(current) = std::fs::read(&server_pem) {
            store::write_file(&made, &current, false, true)?;
        }
    }
    let replaced = match (std::fs::read(&server_pem), std::fs::read(&made)) {
        (Ok(current), Ok(ours)) => current != ours,
        _ => false,
    };
    let reissue = deleted.is_empty()
        && !replaced
        && (created_ca
            || !server_key.exists()
            || match read_cert(&server_pem)
                .ok()
                .and_then(|d| CertInfo::from_der(&d).ok())
            {
                None => true,
                Some(info) => {
                    let soon = now
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64 + 30 * 86_400)
                        .unwrap_or(0);
                    info.not_after_unix < soon
                        || !hosts.iter().all(|h| moat_pki::lint::covers(&info, h))
                }
            });
    if reissue {
        let server = generate::server(
            &ServerOptions {
                hosts: hosts.clone(),
                key_type: KeyType::P256,
                validity: Validity::days_from(now, 397),
            },
            &ca,
        )?;
        store::write_file(
            &server_key,
            server.key.to_pkcs8_pem().as_bytes(),
            true,
            true,
        )?;
        store::write_file(&server_pem, server.cert_pem().as_bytes(), false, true)?;
        store::write_file(&made, server.cert_pem().as_bytes(), false, true)?;
    }
    Ok(LocalPki {
        dir,
        ca_pem,
        created_ca,
        hosts,
    })
}

/// The ACL file of the embedded defaults, written on the first start when missing: it allows
/// what the defaults allowed without one (every topic to every client that may connect), so
/// that the admin console has a file to edit.
pub(crate) const DEFAULT_ACL: &str = "\
# The ACL of `moat serve`'s embedded defaults (rules: docs/AUTH.md). Edit it here or in the
# admin console; changes apply live. With no rule, every client that may connect may publish
# and subscribe to every topic.
default = \"allow\"
";

/// Writes `data_dir/acl.toml` ([`DEFAULT_ACL`]) if it does not exist.
pub(crate) fn ensure_acl(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("acl.toml");
    if !path.exists() {
        store::write_file(&path, DEFAULT_ACL.as_bytes(), false, false)?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700 where the platform has modes.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn read_cert(path: &Path) -> anyhow::Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    moat_pki::decode::decode(&data)
        .ok()
        .and_then(|d| d.certificates().into_iter().next())
        .with_context(|| format!("{}: no certificate", path.display()))
}

/// The configuration `moat serve` uses without a file: it names the files [`ensure_pki`]
/// makes, so it lives beside it.
pub(crate) fn default_config(data_dir: &Path) -> ConfigFile {
    let pki = |f: &str| Some(data_dir.join("pki").join(f));
    let tls = TlsFile {
        cert: pki("server.pem"),
        key: pki("server.key"),
        client_auth: Some("optional".into()),
        client_ca: pki("ca.pem").map(moat_server::config_file::Paths::One),
        identity: Some("cn".into()),
        ..TlsFile::default()
    };
    ConfigFile {
        data_dir: Some(data_dir.to_owned()),
        listeners: vec![
            ListenerFile {
                name: Some("local".into()),
                kind: Some("tcp".into()),
                bind: Some("127.0.0.1:1883".into()),
                allow_anonymous: Some(true),
                ..ListenerFile::default()
            },
            ListenerFile {
                name: Some("mqtts".into()),
                kind: Some("tls".into()),
                bind: Some("0.0.0.0:8883".into()),
                allow_anonymous: Some(false),
                auth: Some("either".into()),
                tls: Some(tls.clone()),
                ..ListenerFile::default()
            },
            ListenerFile {
                name: Some("wss".into()),
                kind: Some("wss".into()),
                bind: Some("0.0.0.0:8084".into()),
                allow_anonymous: Some(false),
                auth: Some("either".into()),
                path: Some("/mqtt".into()),
                tls: Some(tls),
                ..ListenerFile::default()
            },
        ],
        auth: Some(AuthFile {
            acl_file: Some("acl.toml".into()),
            ..AuthFile::default()
        }),
        ..ConfigFile::default()
    }
}

/// What `moat serve` prints once on a start without a config file: where the CA is and
/// commands to paste. Nothing secret.
pub(crate) fn guidance(pki: &LocalPki, data_dir: &Path) -> String {
    let ca = pki.ca_pem.display();
    let pki_dir = pki.dir.display();
    let made = if pki.created_ca { "made" } else { "reused" };
    let d = data_dir.display();
    format!(
        "\
moat: local CA {made}: {ca} (clients need it: --cafile {ca})
moat: server certificate for {hosts}
moat: tls (8883) and wss (8084) need a client certificate or a password; anonymous is refused there.
moat: make a client certificate (its CN becomes the username):
    moat cert client --ca {pki_dir} --cn device1
moat: then try, from this folder:
    moat sub -L mqtts://localhost:8883 --cafile {ca} --cert device1.pem --key device1.key -t test -v
    moat pub -L mqtts://localhost:8883 --cafile {ca} --cert device1.pem --key device1.key -t test -m hello
    mosquitto_sub -h localhost -p 8883 --cafile {ca} --cert device1.pem --key device1.key -t test -v
    mosquitto_pub -h localhost -p 8883 --cafile {ca} --cert device1.pem --key device1.key -t test -m hello
    mqttx sub -h localhost -p 8084 -l wss --path /mqtt --ca {ca} --cert device1.pem --key device1.key -t test
    moat pub -L wss://localhost:8084/mqtt --cafile {ca} --cert device1.pem --key device1.key -t test -m hello
moat: plain MQTT on loopback (anonymous): mosquitto_sub -h 127.0.0.1 -p 1883 -t test -v
moat: data in {d}; `moat serve --print-config` shows the settings in force.
",
        hosts = pki.hosts.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_certificate_set_is_not_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        ensure_pki(data).unwrap();
        let server = data.join("pki").join("server.pem");
        assert!(server.exists());

        std::fs::remove_file(&server).unwrap();
        std::fs::remove_file(data.join("pki").join("server.key")).unwrap();
        std::fs::create_dir_all(data.join("tls").join("mqtts")).unwrap();
        std::fs::write(data.join("tls").join("mqtts").join("removed"), "").unwrap();
        ensure_pki(data).unwrap();
        assert!(!server.exists(), "made again while the set is deleted");

        std::fs::remove_file(data.join("tls").join("mqtts").join("removed")).unwrap();
        ensure_pki(data).unwrap();
        assert!(server.exists());
    }

    #[test]
    fn an_installed_certificate_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        ensure_pki(data).unwrap();
        let server = data.join("pki").join("server.pem");
        // What the admin console installs: another certificate, not covering the local names.
        let ca = generate::root_ca(&CaOptions {
            common_name: "Other CA".into(),
            key_type: KeyType::P256,
            validity: Validity::days_from(SystemTime::now(), 30),
        })
        .unwrap();
        let other = ca.cert_pem();
        std::fs::write(&server, &other).unwrap();
        ensure_pki(data).unwrap();
        assert_eq!(std::fs::read_to_string(&server).unwrap(), other);

        // The one made here is still renewed when it no longer fits.
        let made = std::fs::read(data.join("pki").join("server.made.pem")).unwrap();
        std::fs::write(&server, made).unwrap();
        std::fs::remove_file(data.join("pki").join("server.key")).unwrap();
        ensure_pki(data).unwrap();
        assert!(data.join("pki").join("server.key").exists());
    }
}
