//! The CLI's side of the API: a small GraphQL client and the stored token
//! (`~/.config/infinibay/token`, mode 0600; the server URL beside it in `server`).

use std::path::PathBuf;

use serde_json::{Value, json};
use thiserror::Error;

/// Default server when neither `--server`, `INFINIBAY_SERVER` nor a stored one is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// HTTP failed.
    #[error("cannot reach {server}: {source}")]
    Http {
        /// Server URL.
        server: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The server answered with GraphQL errors.
    #[error("{code}: {message}")]
    Api {
        /// `extensions.code`.
        code: String,
        /// Message.
        message: String,
    },
    /// Local files.
    #[error("{0}")]
    Local(String),
}

/// Where the token and server URL are kept.
pub fn config_dir() -> Result<PathBuf, ClientError> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("infinibay"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config/infinibay"))
        .ok_or_else(|| ClientError::Local("HOME is not set: cannot find ~/.config".into()))
}

/// Store the token (0600) and the server it is for.
pub fn save_login(server: &str, token: &str) -> Result<PathBuf, ClientError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = config_dir()?;
    let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(local)?;
    let path = dir.join("token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(local)?;
    f.write_all(token.as_bytes()).map_err(local)?;
    std::fs::write(dir.join("server"), server).map_err(local)?;
    Ok(path)
}

/// The stored token and server, if any.
pub fn load_login() -> Option<(String, String)> {
    let dir = config_dir().ok()?;
    let token = std::fs::read_to_string(dir.join("token")).ok()?;
    let server =
        std::fs::read_to_string(dir.join("server")).unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    Some((server.trim().to_owned(), token.trim().to_owned()))
}

/// A GraphQL client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    server: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// For `server` (base URL), optionally with a token.
    pub fn new(server: &str, token: Option<String>) -> Self {
        Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// The base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Run a query; GraphQL errors become [`ClientError::Api`].
    pub async fn query(&self, query: &str, variables: Value) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .post(format!("{}/graphql", self.server))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        let http = |source| ClientError::Http {
            server: self.server.clone(),
            source,
        };
        let body: Value = request
            .send()
            .await
            .map_err(http)?
            .json()
            .await
            .map_err(http)?;
        if let Some(err) = body.get("errors").and_then(|e| e.get(0)) {
            return Err(ClientError::Api {
                code: err
                    .pointer("/extensions/code")
                    .and_then(|c| c.as_str())
                    .unwrap_or("ERROR")
                    .to_owned(),
                message: err
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("unknown error")
                    .to_owned(),
            });
        }
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }

    /// `login` → token.
    pub async fn login(&self, username: &str, password: &str) -> Result<String, ClientError> {
        let data = self
            .query(
                "mutation($u:String!,$p:String!){login(username:$u,password:$p){token}}",
                json!({"u": username, "p": password}),
            )
            .await?;
        data.pointer("/login/token")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Local("login answered without a token".into()))
    }
}
