//! A small client of the running broker's admin API, for the commands that ask it
//! (`moat cert inventory`, `moat forward status`).

use std::path::PathBuf;

use anyhow::{bail, Context};

/// Where the admin API is and how to authenticate.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The broker's admin API.
    #[arg(long, default_value = "http://127.0.0.1:18083")]
    pub(crate) admin: String,
    /// The file holding an admin or viewer token.
    #[arg(long, default_value = "moat-data/admin.token")]
    pub(crate) token_file: PathBuf,
    /// The CA to verify an https admin API with.
    #[arg(long)]
    pub(crate) cafile: Option<PathBuf>,
}

/// GET requests with the token, on a runtime of its own.
pub(crate) struct AdminClient {
    base: String,
    token: zeroize::Zeroizing<String>,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl AdminClient {
    pub(crate) fn new(a: &AdminArgs) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(&a.token_file).with_context(|| {
            format!(
                "cannot read the admin token {} (give --token-file: admin.token or viewer.token \
                 in the broker's data dir)",
                a.token_file.display()
            )
        })?;
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = &a.cafile {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            http = http.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{}: not a PEM certificate", ca.display()))?,
            );
        }
        Ok(Self {
            base: a.admin.trim_end_matches('/').to_owned(),
            token: zeroize::Zeroizing::new(token.trim().to_owned()),
            http: http.build().context("cannot make an HTTP client")?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?,
        })
    }

    /// GETs `path`; returns the URL (for messages) and the body of a 2xx answer. Any other
    /// answer is an error with the API's message.
    pub(crate) fn get(&self, path: &str) -> anyhow::Result<(String, String)> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let resp = self
                .http
                .get(&url)
                .bearer_auth(self.token.as_str())
                .send()
                .await
                .with_context(|| {
                    format!(
                        "cannot reach the broker's admin API at {url} (is moat serve running? \
                         --admin)"
                    )
                })?;
            let status = resp.status();
            let body = resp.text().await.context("the answer broke off")?;
            if !status.is_success() {
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or(body);
                bail!("{url}: {status}: {message}");
            }
            Ok((url, body))
        })
    }
}
