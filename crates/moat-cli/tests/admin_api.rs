//! The admin HTTP API of `moat serve` (docs/ADMIN-API.md) as a client sees it: the real
//! binary in a temp dir, ephemeral ports everywhere, HTTP with reqwest and MQTT with
//! moat-client. Also checks that every (path, method) of crates/moat-admin/openapi.json is
//! routed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_client::{connect_tcp, ClientError, ConnectOptions, ProtocolVersion, QoS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A `moat serve` process, killed on drop.
struct Moat {
    child: Child,
    /// Listener name → address.
    listeners: Vec<(String, SocketAddr)>,
    /// The admin API's base URL, without the trailing slash.
    base: String,
    admin_token_file: PathBuf,
    viewer_token_file: PathBuf,
    audit_log: PathBuf,
    /// Everything printed on stdout up to the admin line.
    startup: String,
    stderr_file: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// Two listeners (anonymous and password-only), an ACL file that allows everything, and the
/// admin API on an ephemeral port.
const CONFIG: &str = r#"
[[listeners]]
name = "local"
bind = "127.0.0.1:0"
allow_anonymous = true

[[listeners]]
name = "secure"
bind = "127.0.0.1:0"
allow_anonymous = false
auth = "password"

[auth]
acl_file = "acl.toml"

[admin]
bind = "127.0.0.1:0"
"#;

impl Moat {
    fn start() -> Self {
        Self::start_with(CONFIG)
    }

    fn start_with(config_text: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("moat-data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("acl.toml"), "default = \"allow\"\n").expect("acl");
        let config = dir.path().join("moat.toml");
        std::fs::write(&config, config_text).expect("config");
        let stderr_file = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).expect("stderr file"))
            .spawn()
            .expect("start moat serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut listeners = Vec::new();
        let mut startup = String::new();
        let admin_line = loop {
            let line = rx
                .recv_timeout(TIMEOUT)
                .expect("moat serve printed no admin API line");
            startup.push_str(&line);
            startup.push('\n');
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["moat:", "listener", name, "on", url] = words[..] {
                // mqtt://ADDR, mqtts://ADDR or wss://ADDR/PATH
                let rest = url.split("://").nth(1).expect("url");
                let addr = rest.split('/').next().expect("url").parse().expect(url);
                listeners.push((name.to_owned(), addr));
            }
            if line.starts_with("moat: admin API and console on ") {
                break line;
            }
        };
        // moat: admin API and console on http://ADDR/ (admin token in P, viewer token in P;
        // the audit log is P)
        let url = admin_line.split_whitespace().nth(6).expect("url");
        let base = url.trim_end_matches('/').to_owned();
        let after = |marker: &str, end: char| -> PathBuf {
            let rest = admin_line.split(marker).nth(1).expect(marker);
            PathBuf::from(rest.split(end).next().expect(marker))
        };
        let rel = |p: PathBuf| {
            if p.is_absolute() {
                p
            } else {
                dir.path().join(p)
            }
        };
        let admin_token_file = rel(after("admin token in ", ','));
        let viewer_token_file = rel(after("viewer token in ", ';'));
        let audit_log = rel(after("the audit log is ", ')'));
        Self {
            child,
            listeners,
            base,
            admin_token_file,
            viewer_token_file,
            audit_log,
            startup,
            stderr_file,
            dir,
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .expect("http client"),
        }
    }

    fn mqtt(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.listeners))
            .1
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(&self.admin_token_file)
            .expect("admin token")
            .trim()
            .to_owned()
    }

    fn viewer_token(&self) -> String {
        std::fs::read_to_string(&self.viewer_token_file)
            .expect("viewer token")
            .trim()
            .to_owned()
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// A request with the admin token.
    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path).bearer_auth(self.admin_token())
    }

    /// Sends with the admin token; the status and the JSON body (Null when there is none).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.admin(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        send(req).await
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status and the JSON body (Null when empty or not JSON).
async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("http request");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Polls `f` until it returns Some, at most [`TIMEOUT`].
async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn opts(id: &str) -> ConnectOptions {
    ConnectOptions::new(id).protocol(ProtocolVersion::V5)
}

async fn connect(addr: SocketAddr, o: ConnectOptions) -> Result<moat_client::Client, ClientError> {
    tokio::time::timeout(TIMEOUT, connect_tcp(addr, o))
        .await
        .expect("connect timed out")
        .map(|(c, _)| c)
}

fn openapi_file() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../moat-admin/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("openapi.json")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_of_the_openapi_document_is_routed() {
    let moat = Moat::start();
    // The served document is the file.
    let resp = moat
        .request(Method::GET, "/api/v1/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let served: Value = resp.json().await.unwrap();
    let doc = openapi_file();
    assert_eq!(served, doc, "the served document is not openapi.json");
    assert_eq!(doc["openapi"], "3.0.3");

    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            // A harmless request: placeholders that name nothing, and a body that misses its
            // fields (so that nothing is changed).
            let concrete = path
                .replace("{client_id}", "no-such-client")
                .replace("{username}", "no-such-user")
                .replace("{id}", "no-such-set");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = moat.admin(m, &concrete);
            if op.get("requestBody").is_some() {
                req = req.json(&json!({"no_such_field": 1}));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let missing = status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND && code(&body) == "not_found");
            assert!(
                !missing,
                "{method} {path} is in openapi.json but not routed: {status} {body}"
            );
            // Every documented answer of an authenticated operation includes 401, 403, 429.
            if op["security"] != json!([]) {
                for s in ["401", "403", "429"] {
                    assert!(
                        op["responses"].get(s).is_some(),
                        "{method} {path}: {s} not documented"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 28, "only {checked} operations in openapi.json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_sessions_csrf_audit_and_the_slow_down() {
    let moat = Moat::start();
    let admin = moat.admin_token();
    let viewer = moat.viewer_token();
    assert!(admin.len() >= 32 && viewer.len() >= 32 && admin != viewer);

    // The token files are 0600; start-up never shows a token.
    #[cfg(unix)]
    for f in [&moat.admin_token_file, &moat.viewer_token_file] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    assert!(!moat.startup.contains(&admin) && !moat.startup.contains(&viewer));

    // No token: 401.
    let (status, body) = send(moat.request(Method::GET, "/api/v1/overview")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "unauthorized");
    let (status, _) = send(moat.request(Method::GET, "/metrics")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The viewer reads, but may not change.
    let (status, body) = send(
        moat.request(Method::GET, "/api/v1/overview")
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["version"].is_string());
    let (status, body) = send(
        moat.request(Method::POST, "/api/v1/users")
            .bearer_auth(&viewer)
            .json(&json!({"username": "v", "password": "viewer-cannot"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "forbidden");
    let (status, _) = send(
        moat.request(Method::GET, "/api/v1/audit")
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Metrics with a token: Prometheus text.
    let resp = moat
        .admin(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));

    // Login: an HttpOnly SameSite=Strict cookie and a CSRF token.
    let resp = moat
        .request(Method::POST, "/api/v1/login")
        .json(&json!({ "token": admin }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let login: Value = resp.json().await.unwrap();
    assert_eq!(login["role"], "admin");
    let csrf = login["csrf"].as_str().unwrap().to_owned();
    assert!(csrf.len() >= 32);
    assert!(set_cookie.starts_with("moat_session="), "{set_cookie}");
    let attrs: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"HttpOnly"), "{set_cookie}");
    assert!(attrs.contains(&"SameSite=Strict"), "{set_cookie}");
    assert!(attrs.contains(&"Path=/"), "{set_cookie}");
    assert!(!attrs.contains(&"Secure"), "plain HTTP: {set_cookie}");
    let cookie = attrs[0].to_owned();
    assert!(!cookie.contains(&admin) && !cookie.contains(&csrf));

    // The session answers the same body.
    let (status, body) = send(
        moat.request(Method::GET, "/api/v1/session")
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, login);

    // A change with the cookie but without the CSRF header: 403 csrf; with it: done.
    let password = "pw-that-must-not-be-logged-7f3a";
    let new_user = json!({"username": "carol", "password": password});
    let (status, body) = send(
        moat.request(Method::POST, "/api/v1/users")
            .header("cookie", &cookie)
            .json(&new_user),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "csrf");
    let (status, body) = send(
        moat.request(Method::POST, "/api/v1/users")
            .header("cookie", &cookie)
            .header("x-csrf-token", "not-the-token")
            .json(&new_user),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "csrf");
    let (status, body) = send(
        moat.request(Method::POST, "/api/v1/users")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&new_user),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Logout ends the session.
    let (status, _) = send(
        moat.request(Method::POST, "/api/v1/logout")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(
        moat.request(Method::GET, "/api/v1/session")
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The audit log: one line per change and per login, no secrets.
    let log = std::fs::read_to_string(&moat.audit_log).expect("audit.log");
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect();
    let actions: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("POST /api/v1/users", "forbidden"),
        ("POST /api/v1/login", "ok"),
        ("POST /api/v1/users", "csrf"),
        ("POST /api/v1/users", "csrf"),
        ("POST /api/v1/users", "ok"),
        ("POST /api/v1/logout", "ok"),
    ]
    .iter()
    .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(actions, expected, "{log}");
    for e in &entries {
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e["address"], "127.0.0.1");
    }
    assert_eq!(entries[0]["who"], "viewer");
    assert_eq!(entries[4]["who"], "admin");
    for secret in [&admin, &viewer, &csrf, &password.to_owned(), &cookie] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret in audit.log: {log}"
        );
    }
    // The API shows the same entries, newest first.
    let (status, body) = moat.call(Method::GET, "/api/v1/audit?limit=2", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert_eq!(body[0]["action"], "POST /api/v1/logout");

    // The slow-down: 5 bad tokens are 401, the 6th is 429 with Retry-After, and then the
    // good token is refused too while the address is blocked.
    for n in 1..=5 {
        let (status, body) = send(
            moat.request(Method::GET, "/api/v1/overview")
                .bearer_auth(format!("bad-token-{n}")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {n}: {body}");
    }
    let resp = moat
        .request(Method::GET, "/api/v1/overview")
        .bearer_auth("bad-token-6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "too_many_attempts");
    let (status, body) = moat.call(Method::GET, "/api/v1/overview", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let (status, _) = send(
        moat.request(Method::POST, "/api/v1/login")
            .json(&json!({ "token": admin })),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Nothing printed later shows a token either.
    let stderr = std::fs::read_to_string(&moat.stderr_file).unwrap_or_default();
    assert!(!stderr.contains(&admin) && !stderr.contains(&viewer));
    drop(moat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_the_acl_apply_live() {
    let moat = Moat::start();
    let secure = moat.mqtt("secure");
    let local = moat.mqtt("local");

    // Not a user yet: refused.
    let refused = connect(secure, opts("dave-1").credentials("dave", "first-pw")).await;
    assert!(
        matches!(refused, Err(ClientError::Refused(_))),
        "{refused:?}"
    );

    let (status, body) = moat
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "dave", "password": "first-pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = moat
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "dave", "password": "again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "user_exists");
    let (status, body) = moat
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "bad:name", "password": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&body), "invalid_username");
    let (status, body) = moat
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "erin", "password": ""})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&body), "invalid_password");
    let (status, body) = moat.call(Method::GET, "/api/v1/users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([{"username": "dave", "scheme": "argon2"}]));

    // A real MQTT client logs in with that password.
    let c = connect(secure, opts("dave-1").credentials("dave", "first-pw"))
        .await
        .expect("dave logs in");
    c.disconnect().await.unwrap();
    let wrong = connect(secure, opts("dave-2").credentials("dave", "wrong")).await;
    assert!(matches!(wrong, Err(ClientError::Refused(_))), "{wrong:?}");

    // A new password: the old one is refused, the new one works.
    let (status, body) = moat
        .call(
            Method::PUT,
            "/api/v1/users/dave/password",
            Some(json!({"password": "second-pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let old = connect(secure, opts("dave-3").credentials("dave", "first-pw")).await;
    assert!(matches!(old, Err(ClientError::Refused(_))), "{old:?}");
    let c = connect(secure, opts("dave-4").credentials("dave", "second-pw"))
        .await
        .expect("the new password works");
    c.disconnect().await.unwrap();
    let (status, body) = moat
        .call(
            Method::PUT,
            "/api/v1/users/nobody/password",
            Some(json!({"password": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "no_user");

    // Removed: refused.
    let (status, _) = moat.call(Method::DELETE, "/api/v1/users/dave", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let gone = connect(secure, opts("dave-5").credentials("dave", "second-pw")).await;
    assert!(matches!(gone, Err(ClientError::Refused(_))), "{gone:?}");
    let (status, body) = moat.call(Method::DELETE, "/api/v1/users/dave", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "no_user");

    // The audit log names no password.
    let log = std::fs::read_to_string(&moat.audit_log).unwrap();
    for pw in ["first-pw", "second-pw"] {
        assert!(!log.contains(pw), "{log}");
    }

    // ACL: an invalid one is refused with its line, and nothing changes.
    let (status, before) = moat.call(Method::GET, "/api/v1/acl", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(before["text"], "default = \"allow\"\n");
    let invalid = "default = \"allow\"\n\n[[rule]]\nall = true\naction = \"fly\"\npermission = \"deny\"\ntopics = [\"a\"]\n";
    let (status, body) = moat
        .call(Method::PUT, "/api/v1/acl", Some(json!({ "text": invalid })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(code(&body), "invalid_acl");
    let line = body["error"]["errors"][0]["line"].as_u64().expect("a line");
    assert!(line >= 3, "{body}");
    let (_, after) = moat.call(Method::GET, "/api/v1/acl", None).await;
    assert_eq!(after, before);

    // The broker reloads both files together: while one of them, edited by hand, does not
    // load, an edit of the other is refused (409) and nothing is written.
    let passwd = moat.dir.path().join("moat-data/passwd");
    let good_passwd = std::fs::read_to_string(&passwd).unwrap();
    std::fs::write(&passwd, "no colon on this line\n").unwrap();
    let (status, body) = moat
        .call(
            Method::PUT,
            "/api/v1/acl",
            Some(json!({ "text": "default = \"deny\"\n" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "invalid_password_file");
    let (_, unchanged) = moat.call(Method::GET, "/api/v1/acl", None).await;
    assert_eq!(unchanged, before);
    std::fs::write(&passwd, good_passwd).unwrap();
    let acl_file = moat.dir.path().join("moat-data/acl.toml");
    std::fs::write(&acl_file, "default = \"maybe\"\n").unwrap();
    let (status, body) = moat
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "frank", "password": "pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "invalid_acl_file");
    let (_, users) = moat.call(Method::GET, "/api/v1/users", None).await;
    assert_eq!(users, json!([]));

    // A valid one that denies publishing to secret/#: applied live.
    let acl = "default = \"allow\"\n\n[[rule]]\nall = true\naction = \"publish\"\npermission = \"deny\"\ntopics = [\"secret/#\"]\n";
    let (status, body) = moat
        .call(Method::PUT, "/api/v1/acl", Some(json!({ "text": acl })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"rules": 1}));
    let (_, now) = moat.call(Method::GET, "/api/v1/acl", None).await;
    assert_eq!(now["text"], acl);
    assert_eq!(now["rules"], 1);

    let sub = connect(local, opts("acl-sub")).await.expect("subscriber");
    let suback = sub
        .subscribe(&[
            ("secret/#", moat_client::SubscriptionOptions::default()),
            ("open/#", moat_client::SubscriptionOptions::default()),
        ])
        .await
        .expect("subscribe");
    assert!(
        suback.reason_codes.iter().all(|r| !r.is_error()),
        "{suback:?}"
    );
    let publisher = connect(local, opts("acl-pub")).await.expect("publisher");
    // QoS 1: the broker has judged the first message once it is acknowledged.
    let denied = publisher
        .publish("secret/plans", "hidden", QoS::AtLeastOnce, false)
        .await;
    assert!(
        matches!(denied, Err(ClientError::PublishRejected(_)) | Ok(())),
        "{denied:?}"
    );
    let publisher = if publisher.is_closed() {
        connect(local, opts("acl-pub-2")).await.expect("publisher")
    } else {
        publisher
    };
    publisher
        .publish("open/news", "visible", QoS::AtLeastOnce, false)
        .await
        .expect("allowed publish");
    let got = tokio::time::timeout(TIMEOUT, sub.recv())
        .await
        .expect("a message")
        .expect("recv")
        .expect("a message");
    assert_eq!(
        got.topic, "open/news",
        "the denied message was delivered first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_listed_paged_detailed_and_disconnected() {
    let moat = Moat::start();
    let local = moat.mqtt("local");
    let mut clients = Vec::new();
    for id in ["list-a", "list-b", "list-c", "other-1"] {
        clients.push(
            connect(local, opts(id).keep_alive(60))
                .await
                .expect("connect"),
        );
    }
    clients[0]
        .subscribe(&[(
            "sensors/+/temp",
            moat_client::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )])
        .await
        .expect("subscribe");

    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = poll("3 clients listed", || async {
        let (status, body) = moat
            .call(Method::GET, "/api/v1/clients?prefix=list-&limit=2", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["more"] == true).then_some(body)
    })
    .await;
    assert_eq!(ids(&first), ["list-a", "list-b"]);
    let c = &first["items"][0];
    assert_eq!(c["listener"], "local");
    assert_eq!(c["protocol"], "5.0");
    assert_eq!(c["keep_alive"], 60);
    assert_eq!(c["username"], Value::Null);
    assert_eq!(c["tls"], Value::Null);
    assert!(c["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let (status, rest) = moat
        .call(
            Method::GET,
            "/api/v1/clients?prefix=list-&limit=2&after=list-b",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&rest), ["list-c"]);
    assert_eq!(rest["more"], false);
    let (_, all) = moat.call(Method::GET, "/api/v1/clients", None).await;
    assert_eq!(ids(&all), ["list-a", "list-b", "list-c", "other-1"]);
    let (status, body) = moat
        .call(Method::GET, "/api/v1/clients?limit=abc", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "bad_request");

    // Details show the subscription.
    let detail = poll("the subscription in the details", || async {
        let (status, body) = moat.call(Method::GET, "/api/v1/clients/list-a", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["subscriptions"].as_array().map_or(0, Vec::len) == 1).then_some(body)
    })
    .await;
    assert_eq!(
        detail["subscriptions"],
        json!([{"filter": "sensors/+/temp", "qos": 1}])
    );
    assert_eq!(detail["client_id"], "list-a");
    assert_eq!(detail["connected"]["client_id"], "list-a");
    assert_eq!(detail["connected"]["subscriptions"], 1);
    let (status, body) = moat.call(Method::GET, "/api/v1/clients/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body), "no_client");

    // Disconnect: its connection ends (v5: DISCONNECT 0x98).
    let (status, body) = moat
        .call(Method::POST, "/api/v1/clients/list-c/disconnect", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"disconnected": true}));
    let ended = tokio::time::timeout(TIMEOUT, clients[2].recv())
        .await
        .expect("the connection did not end");
    assert!(
        matches!(
            ended,
            Err(ClientError::Disconnected(Some(rc))) if rc == moat_client::ReasonCode::ADMINISTRATIVE_ACTION
        ),
        "{ended:?}"
    );
    assert!(clients[2].is_closed());
    poll("list-c gone from the list", || async {
        let (_, body) = moat
            .call(Method::GET, "/api/v1/clients?prefix=list-", None)
            .await;
        (ids(&body) == ["list-a", "list-b"]).then_some(())
    })
    .await;
    let (_, body) = moat
        .call(Method::POST, "/api/v1/clients/list-c/disconnect", None)
        .await;
    assert_eq!(body, json!({"disconnected": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_browsed_and_deleted() {
    let moat = Moat::start();
    let c = connect(moat.mqtt("local"), opts("retainer"))
        .await
        .expect("connect");
    for (topic, payload) in [
        ("ret/a", &b"alpha"[..]),
        ("ret/b", &[0xff, 0xfe][..]),
        ("other/c", &b"gamma"[..]),
    ] {
        c.publish(topic, payload.to_vec(), QoS::AtLeastOnce, true)
            .await
            .expect("publish");
    }
    let topics = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["topic"].as_str().unwrap().to_owned())
            .collect()
    };
    let page = poll("2 retained under ret/", || async {
        let (status, body) = moat
            .call(Method::GET, "/api/v1/retained?prefix=ret/", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (topics(&body).len() == 2).then_some(body)
    })
    .await;
    assert_eq!(topics(&page), ["ret/a", "ret/b"]);
    assert_eq!(page["more"], false);
    let a = &page["items"][0];
    assert_eq!(a["payload"], "alpha");
    assert_eq!(a["payload_base64"], "YWxwaGE=");
    assert_eq!(a["size"], 5);
    assert_eq!(a["qos"], 1);
    assert_eq!(a["truncated"], false);
    // Not UTF-8: no text, the bytes in base64.
    assert_eq!(page["items"][1]["payload"], Value::Null);
    assert_eq!(page["items"][1]["payload_base64"], "//4=");
    let (_, one) = moat
        .call(Method::GET, "/api/v1/retained?prefix=ret/&limit=1", None)
        .await;
    assert_eq!(topics(&one), ["ret/a"]);
    assert_eq!(one["more"], true);
    let (_, next) = moat
        .call(
            Method::GET,
            "/api/v1/retained?prefix=ret/&limit=1&after=ret/a",
            None,
        )
        .await;
    assert_eq!(topics(&next), ["ret/b"]);
    assert_eq!(next["more"], false);

    let (status, body) = moat
        .call(Method::DELETE, "/api/v1/retained?topic=ret/a", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"deleted": true}));
    let (_, page) = moat
        .call(Method::GET, "/api/v1/retained?prefix=ret/", None)
        .await;
    assert_eq!(topics(&page), ["ret/b"]);
    let (_, body) = moat
        .call(Method::DELETE, "/api/v1/retained?topic=ret/a", None)
        .await;
    assert_eq!(body, json!({"deleted": false}));
    let (status, body) = moat
        .call(Method::DELETE, "/api/v1/retained?topic=ret/%23", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "bad_request");

    // A new subscriber no longer gets the deleted one.
    let s = connect(moat.mqtt("local"), opts("late"))
        .await
        .expect("sub");
    s.subscribe(&[("ret/#", moat_client::SubscriptionOptions::default())])
        .await
        .expect("subscribe");
    let got = tokio::time::timeout(TIMEOUT, s.recv())
        .await
        .expect("retained")
        .expect("recv")
        .expect("message");
    assert_eq!(got.topic, "ret/b");
}

/// mqtts and wss serving one certificate set (client certificates optional, from `pki`).
fn tls_config(pki: &moat_testkit::pki::TestPki, cert: &Path, key: &Path) -> String {
    let tls = format!(
        "tls = {{ cert = {cert:?}, key = {key:?}, client_auth = \"optional\", client_ca = {ca:?} }}",
        ca = pki.ca_pem
    );
    format!(
        "[[listeners]]\nname = \"mqtts\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n{tls}\n\n\
         [[listeners]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\n{tls}\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n"
    )
}

/// The SHA-256 fingerprint (openssl style) of the certificate a TLS handshake to `addr`
/// sees, or None if the handshake is refused.
async fn served_fingerprint(pki: &moat_testkit::pki::TestPki, addr: SocketAddr) -> Option<String> {
    let tls = moat_testkit::pki::tls_connect(addr, "localhost", pki.client_config(None))
        .await
        .ok()?;
    let der = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    moat_server::CertDetail::of(&der, std::time::SystemTime::now()).map(|d| d.fingerprint_sha256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upload_changes_nothing_and_a_deletion_disconnects_mqtts_and_wss_clients() {
    use moat_client::moat_codec::{Packet, ReasonCode};
    let pki = moat_testkit::pki::TestPki::new("Admin API Test CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = pki.client("device-1");
    let moat = Moat::start_with(&tls_config(&pki, &cert, &key));
    let (mqtts, wss) = (moat.mqtt("mqtts"), moat.mqtt("wss"));

    let (status, set) = moat
        .call(Method::GET, "/api/v1/certificates/mqtts", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["listeners"], json!(["mqtts", "wss"]));
    let fingerprint = set["certificate"]["fingerprint_sha256"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    assert_eq!(
        served_fingerprint(&pki, mqtts).await,
        Some(fingerprint.clone())
    );

    // A v5 client over mqtts with its certificate, and `moat sub` over wss.
    let tls = moat_testkit::pki::tls_connect(
        mqtts,
        "localhost",
        pki.client_config(Some((&client_cert, &client_key))),
    )
    .await
    .expect("tls");
    let (mut framed, connack) = moat_client::connect_framed(tls, &opts("over-mqtts"))
        .await
        .expect("connect over mqtts");
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
    let mut sub = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["sub", "-L", &format!("wss://127.0.0.1:{}/mqtt", wss.port())])
        .arg("--cafile")
        .arg(&pki.ca_pem)
        .arg("--cert")
        .arg(&client_cert)
        .arg("--key")
        .arg(&client_key)
        .args(["-i", "over-wss", "-t", "t/#"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moat sub");
    poll("both TLS clients connected", || async {
        let (_, set) = moat
            .call(Method::GET, "/api/v1/certificates/mqtts", None)
            .await;
        (set["connected_clients"] == json!(2)).then_some(())
    })
    .await;

    // A bad upload (an expired certificate): refused with the named finding, nothing staged,
    // the old certificate still served.
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let (old_cert, old_key) = pki.server_with_validity(
        "expired",
        &["localhost"],
        moat_pki::Validity {
            not_before: now - 60 * day,
            not_after: now - 30 * day,
        },
    );
    let (status, body) = moat
        .call(
            Method::PUT,
            "/api/v1/certificates/mqtts/pending",
            Some(json!({
                "cert": std::fs::read_to_string(&old_cert).unwrap(),
                "key": std::fs::read_to_string(&old_key).unwrap(),
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(code(&body), "certificate_refused");
    let findings = body["error"]["findings"].as_array().expect("findings");
    let expired = findings
        .iter()
        .find(|f| f["code"] == "cert-expired")
        .unwrap_or_else(|| panic!("no cert-expired finding: {body}"));
    assert_eq!(expired["severity"], "error");
    assert!(
        expired["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{expired}"
    );
    let (_, set) = moat
        .call(Method::GET, "/api/v1/certificates/mqtts", None)
        .await;
    assert!(set["pending"].is_null(), "{set}");
    assert_eq!(
        served_fingerprint(&pki, mqtts).await,
        Some(fingerprint.clone())
    );
    assert_eq!(served_fingerprint(&pki, wss).await, Some(fingerprint));

    // The deletion says first whom it disconnects, then does it.
    let (status, preview) = moat
        .call(
            Method::GET,
            "/api/v1/certificates/mqtts/delete-preview",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        preview,
        json!({"listeners": [{"name": "mqtts", "clients": 1}, {"name": "wss", "clients": 1}], "total": 2})
    );
    let (status, report) = moat
        .call(Method::DELETE, "/api/v1/certificates/mqtts", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["total"], 2);
    // The v5 client is told why, then the connection ends.
    let packet = tokio::time::timeout(TIMEOUT, framed.recv())
        .await
        .expect("DISCONNECT in time")
        .expect("read");
    match packet {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::ADMINISTRATIVE_ACTION);
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    // `moat sub` over wss ends (its reconnection is refused).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if sub.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "moat sub over wss still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Handshakes are refused on both listeners until material is back.
    assert_eq!(served_fingerprint(&pki, mqtts).await, None);
    assert_eq!(served_fingerprint(&pki, wss).await, None);
    let (status, restored) = moat
        .call(Method::POST, "/api/v1/certificates/mqtts/restore", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert!(served_fingerprint(&pki, mqtts).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_https_with_a_listeners_certificate() {
    let pki = moat_testkit::pki::TestPki::new("Admin HTTPS CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let config = tls_config(&pki, &cert, &key).replace(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        "[admin]\n# the console's port\nbind = \"127.0.0.1:0\"\ntls_listener = \"mqtts\"\n",
    );
    let moat = Moat::start_with(&config);
    assert!(moat.base.starts_with("https://"), "{}", moat.base);
    let root = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_pem).unwrap()).expect("CA");
    let https = reqwest::Client::builder()
        .add_root_certificate(root)
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let base = moat.base.replace("127.0.0.1", "localhost");
    let resp = https
        .post(format!("{base}/api/v1/login"))
        .json(&json!({"token": moat.admin_token()}))
        .send()
        .await
        .expect("login over https");
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP to the same port gets nothing.
    assert!(moat
        .http
        .get(format!(
            "{}/api/v1/openapi.json",
            moat.base.replace("https", "http")
        ))
        .send()
        .await
        .is_err());

    // A new certificate for the listener, uploaded and activated through the API (as the
    // console does): the admin API's next handshake serves it too, without a restart.
    let admin_addr: SocketAddr = moat
        .base
        .trim_start_matches("https://")
        .parse()
        .expect("admin address");
    let before = served_fingerprint(&pki, admin_addr)
        .await
        .expect("admin handshake");
    assert_eq!(
        served_fingerprint(&pki, moat.mqtt("mqtts")).await,
        Some(before.clone())
    );
    let (new_cert, new_key) = pki.server("rotated", &["localhost", "127.0.0.1"]);
    let upload = json!({
        "cert": std::fs::read_to_string(&new_cert).unwrap(),
        "key": std::fs::read_to_string(&new_key).unwrap(),
    });
    upload_and_activate(&moat, &https, &base, "mqtts", upload.clone()).await;
    let rotated = served_fingerprint(&pki, moat.mqtt("mqtts"))
        .await
        .expect("mqtts handshake");
    assert_ne!(rotated, before);
    assert_eq!(served_fingerprint(&pki, admin_addr).await, Some(rotated));

    // A change of the set's settings (client certificates now required) is written into the
    // config file: the tls tables of its listeners (mqtts and wss) change, the rest keeps its
    // text and gains no defaults.
    let mut upload = upload;
    upload["client_auth"] = json!("required");
    upload_and_activate(&moat, &https, &base, "mqtts", upload).await;
    let written = std::fs::read_to_string(moat.dir.path().join("moat.toml")).expect("config");
    assert!(written.contains("# the console's port"), "{written}");
    assert!(written.contains("client_auth = \"required\""), "{written}");
    assert!(!written.contains("client_auth = \"optional\""), "{written}");
    assert!(
        !written.contains("max_inflight"),
        "no defaults added: {written}"
    );
}

/// Uploads `upload` as certificate set `id`'s pending material and activates it, with the
/// admin token, over `client` (HTTPS when the admin API serves it).
async fn upload_and_activate(
    moat: &Moat,
    client: &reqwest::Client,
    base: &str,
    id: &str,
    upload: Value,
) {
    let (status, body) = send(
        client
            .put(format!("{base}/api/v1/certificates/{id}/pending"))
            .bearer_auth(moat.admin_token())
            .json(&upload),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        client
            .post(format!("{base}/api/v1/certificates/{id}/activate"))
            .bearer_auth(moat.admin_token()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moat_cert_inventory_lists_what_the_running_broker_serves_and_its_clients_soonest_first() {
    let pki = moat_testkit::pki::TestPki::new("Inventory CA");
    let (cert, key) = pki.server("server", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = pki.client("device-7");
    let moat = Moat::start_with(&tls_config(&pki, &cert, &key));
    let tls = moat_testkit::pki::tls_connect(
        moat.mqtt("mqtts"),
        "localhost",
        pki.client_config(Some((&client_cert, &client_key))),
    )
    .await
    .expect("tls");
    let (_framed, _) = moat_client::connect_framed(tls, &opts("inventoried"))
        .await
        .expect("connect");
    let inventory = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["cert", "inventory", "--admin", &moat.base, "--token-file"])
            .arg(&moat.viewer_token_file)
            .args(extra)
            .output()
            .expect("moat cert inventory");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let table = inventory(&[]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("LEVEL"), "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("server") && l.contains("set mqtts") && l.contains("CN=localhost")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("client") && l.contains("client inventoried")),
        "{table}"
    );
    // Which client CA each client chains to.
    assert!(
        table.contains("Client CAs") && table.contains("CN=Inventory CA"),
        "{table}"
    );
    assert!(table.contains("    inventoried"), "{table}");
    let (status, cas) = moat.call(Method::GET, "/api/v1/client-cas", None).await;
    assert_eq!(status, StatusCode::OK, "{cas}");
    let mqtts = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["listener"] == "mqtts")
        .expect("mqtts CA");
    assert_eq!(mqtts["clients"], 1, "{cas}");
    assert_eq!(mqtts["client_ids"], serde_json::json!(["inventoried"]));
    let fingerprint = mqtts["fingerprint"].as_str().unwrap().to_owned();
    let (status, client) = moat
        .call(Method::GET, "/api/v1/clients/inventoried", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(client["connected"]["tls"]["ca_fingerprint"], *fingerprint);
    assert_eq!(client["connected"]["tls"]["ca_subject"], "CN=Inventory CA");
    let path = format!(
        "/api/v1/client-cas/{}/disconnect",
        fingerprint.replace(':', "")
    );
    let (status, done) = moat.call(Method::POST, &path, None).await;
    assert_eq!(
        (status, &done["disconnected"]),
        (StatusCode::OK, &serde_json::json!(1))
    );
    let (status, err) = moat
        .call(Method::POST, "/api/v1/client-cas/00ff/disconnect", None)
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::NOT_FOUND, "no_client_ca")
    );

    let json: Value = serde_json::from_str(&inventory(&["--json"])).expect("json");
    let left: Vec<i64> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["seconds_left"].as_i64().unwrap())
        .collect();
    assert!(
        left.windows(2).all(|w| w[0] <= w[1]),
        "soonest first: {left:?}"
    );

    // A wrong token is a clear error, not a table.
    let bad = moat.dir.path().join("bad.token");
    std::fs::write(&bad, "not-the-token-at-all").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["cert", "inventory", "--admin", &moat.base, "--token-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
