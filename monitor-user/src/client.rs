//! A client of a running agent's API, for the commands that show what an agent knows
//! (`leakscope top`, `leakscope report`): plain HTTP or HTTPS, with the basic-auth
//! credentials of an agent started with `--web-config-file` (see `http::web`).
//!
//! One connection per request: these commands ask a few times a second at most, and a fresh
//! connection recovers by itself from an agent restart. Every request is bounded in time
//! ([`ClientOptions::timeout`]) and in size ([`MAX_RESPONSE`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};

/// The agent's default `--listen`.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:9633";
/// The largest response read: the API caps its lists (`--max-processes`), and a profile of
/// the largest process is a few MiB; anything beyond is not an agent's answer.
pub const MAX_RESPONSE: usize = 16 << 20;
/// Where Debian keeps the system's trusted CAs, used for https without `--ca-file`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The environment variable a password may come from (a flag would show it in `ps`).
pub const PASSWORD_ENV: &str = "LEAKSCOPE_PASSWORD";
/// What the agent's reason text is cut to in an error message.
const MAX_REASON: usize = 400;

/// Where the agent is and how to log in to it.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOptions {
    /// The agent's address: http:// or https://, as its --listen and --web-config-file say.
    #[arg(long = "agent", value_name = "URL", default_value = DEFAULT_AGENT)]
    pub agent: String,
    /// Basic-auth user of the agent's --web-config-file (basic_auth_users).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// File whose first line is the password of --user (or set LEAKSCOPE_PASSWORD).
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the agent's certificate, for https (default: the
    /// system's CAs).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Longest wait for one answer of the agent.
    #[arg(long = "timeout", value_name = "DURATION", default_value = "10s",
          value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 5s, 1m)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err(format!("`{s}` is out of range: use 100ms to 10m"));
    }
    Ok(d)
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            agent: DEFAULT_AGENT.into(),
            user: None,
            password_file: None,
            ca_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{url}` is not an agent address: {detail} (e.g. {DEFAULT_AGENT})")]
    Url { url: String, detail: String },
    #[error(
        "no leakscope agent is listening at {url}: start one with `sudo leakscope run` (or \
         `cargo xtask run` from a checkout), or point --agent at a running one"
    )]
    NotRunning { url: String },
    #[error("cannot connect to the agent at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error(
        "TLS with the agent at {url} failed: {detail} (is --ca-file the CA of its certificate?)"
    )]
    Tls { url: String, detail: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error(
        "the agent at {url} asks for credentials ({reason}): pass --user and --password-file \
         (or {PASSWORD_ENV}) of a user in its --web-config-file"
    )]
    Unauthorized { url: String, reason: String },
    #[error("the agent refused {path}: {reason}")]
    Forbidden { path: String, reason: String },
    #[error("the agent has no {path}: {reason}")]
    NotFound { path: String, reason: String },
    #[error("the agent answered {status} to {path}: {reason}")]
    Status {
        path: String,
        status: StatusCode,
        reason: String,
    },
    #[error("the agent did not answer {path} within {timeout:?}")]
    Timeout { path: String, timeout: Duration },
    #[error("the agent's answer to {path} is larger than {MAX_RESPONSE} bytes")]
    TooLarge { path: String },
    #[error("HTTP with the agent failed on {path}: {detail}")]
    Http { path: String, detail: String },
    #[error("the agent's answer to {path} is not the JSON expected: {cause}")]
    Json {
        path: String,
        cause: serde_json::Error,
    },
}

impl ClientError {
    /// True when nothing listens at the address: the caller may wait for an agent to start.
    pub fn is_not_running(&self) -> bool {
        matches!(self, Self::NotRunning { .. })
    }
}

/// A client of one agent.
#[derive(Clone)]
pub struct AgentClient {
    /// The address as given, for messages.
    url: String,
    host: String,
    port: u16,
    /// The Host header: host and port as in the URL.
    authority: String,
    /// A path prefix of the URL (an agent behind a reverse proxy), without the trailing '/'.
    base_path: String,
    tls: Option<TlsConnector>,
    authorization: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the authorization header.
        f.debug_struct("AgentClient")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("credentials", &self.authorization.is_some())
            .finish()
    }
}

impl AgentClient {
    /// Checks the address and reads the credentials and CA now, so a mistake is reported
    /// before the first request.
    pub fn new(options: &ClientOptions) -> Result<Self, ClientError> {
        let url = options.agent.trim().to_string();
        let bad = |detail: &str| ClientError::Url {
            url: url.clone(),
            detail: detail.into(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("it has no scheme")),
        };
        if uri.query().is_some() {
            return Err(bad("it has a query"));
        }
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials go in --user and --password-file, not the URL",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(connector(options.ca_file.as_deref())?)
        } else {
            if options.ca_file.is_some() {
                return Err(bad("--ca-file is for an https:// agent"));
            }
            None
        };
        let authorization = credentials(options)?.map(|(user, password)| {
            let pair = format!("{user}:{password}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self {
            authority: authority.as_str().to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            url,
            host,
            port,
            tls,
            authorization,
            timeout: options.timeout,
        })
    }

    /// The agent's address as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// GETs `path_and_query` (e.g. `/api/v1/processes`) and parses the answer.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, ClientError> {
        let body = self.get_bytes(path_and_query).await?;
        serde_json::from_slice(&body).map_err(|cause| ClientError::Json {
            path: path_and_query.into(),
            cause,
        })
    }

    /// GETs `path_and_query` within the client's timeout.
    pub async fn get_bytes(&self, path_and_query: &str) -> Result<Bytes, ClientError> {
        self.get_bytes_within(path_and_query, self.timeout).await
    }

    /// GETs `path_and_query` within `timeout`: for requests the agent answers slowly on
    /// purpose (a growth profile takes its `seconds`).
    pub async fn get_bytes_within(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        tokio::time::timeout(timeout, self.get(path_and_query))
            .await
            .map_err(|_| ClientError::Timeout {
                path: path_and_query.into(),
                timeout,
            })?
    }

    async fn get(&self, path_and_query: &str) -> Result<Bytes, ClientError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                    url: self.url.clone(),
                },
                _ => ClientError::Connect {
                    url: self.url.clone(),
                    detail: e.to_string(),
                },
            })?;
        match &self.tls {
            None => self.exchange(tcp, path_and_query).await,
            Some(connector) => {
                let name =
                    ServerName::try_from(self.host.clone()).map_err(|e| ClientError::Url {
                        url: self.url.clone(),
                        detail: e.to_string(),
                    })?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Tls {
                        url: self.url.clone(),
                        detail: crate::error::chain(&e).to_string(),
                    })?;
                self.exchange(tls, path_and_query).await
            }
        }
    }

    async fn exchange<S>(&self, stream: S, path_and_query: &str) -> Result<Bytes, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let http = |detail: String| ClientError::Http {
            path: path_and_query.into(),
            detail,
        };
        if !path_and_query.starts_with('/') {
            return Err(http("the path must start with '/'".into()));
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(crate::error::chain(&e).to_string()))?;
        // Drives the connection; aborted once the body is read.
        let driver = tokio::spawn(conn);
        let mut request = Request::get(format!("{}{path_and_query}", self.base_path))
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("leakscope/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http(crate::error::chain(&e).to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ClientError::TooLarge {
                            path: path_and_query.into(),
                        }
                    } else {
                        http(crate::error::chain(&*e).to_string())
                    }
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        }
        .await;
        driver.abort();
        let (status, body) = result?;
        if status.is_success() {
            return Ok(body);
        }
        let reason = reason_text(&body, status);
        let path = path_and_query.to_string();
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized {
                url: self.url.clone(),
                reason: if self.authorization.is_some() {
                    format!("the user or password is wrong: {reason}")
                } else {
                    reason
                },
            },
            StatusCode::FORBIDDEN => ClientError::Forbidden { path, reason },
            StatusCode::NOT_FOUND => ClientError::NotFound { path, reason },
            status => ClientError::Status {
                path,
                status,
                reason,
            },
        })
    }
}

/// The agent's refusals are one line of text saying why; keep it short and printable.
fn reason_text(body: &[u8], status: StatusCode) -> String {
    let text: String = String::from_utf8_lossy(body)
        .trim()
        .chars()
        .filter(|c| !c.is_control() || *c == ' ')
        .take(MAX_REASON)
        .collect();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string()
    } else {
        text
    }
}

/// The user and password, when a user is given; a password without a user is a mistake.
fn credentials(options: &ClientOptions) -> Result<Option<(String, String)>, ClientError> {
    let from_env = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
    let Some(user) = &options.user else {
        if options.password_file.is_some() {
            return Err(ClientError::Credentials(
                "--password-file needs --user".into(),
            ));
        }
        return Ok(None);
    };
    if user.contains(':') {
        return Err(ClientError::Credentials(
            "a basic-auth user name cannot contain ':'".into(),
        ));
    }
    let password = match (&options.password_file, from_env) {
        (Some(path), _) => read_password(path)?,
        (None, Some(p)) => p,
        (None, None) => {
            return Err(ClientError::Credentials(format!(
                "--user {user} needs --password-file PATH or {PASSWORD_ENV}"
            )));
        }
    };
    Ok(Some((user.clone(), password)))
}

fn read_password(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Credentials(format!(
            "cannot read --password-file {}: {e}",
            path.display()
        ))
    })?;
    // The first line, so `echo secret > file` works.
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(ClientError::Credentials(format!(
            "--password-file {} is empty",
            path.display()
        )));
    }
    Ok(password)
}

fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let ca_err = |detail: String| {
        ClientError::Credentials(format!(
            "CA file {}: {detail}{}",
            path.display(),
            if ca_file.is_none() {
                " (pass --ca-file with the CA of the agent's certificate)"
            } else {
                ""
            }
        ))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| ca_err(e.to_string()))?)
            .map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate in it".into()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::{Router, http::StatusCode as AxumStatus, routing::get};

    use super::*;

    async fn serve(router: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    fn client(addr: SocketAddr) -> AgentClient {
        AgentClient::new(&ClientOptions {
            agent: format!("http://{addr}"),
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        })
        .unwrap()
    }

    fn router() -> Router {
        Router::new()
            .route("/json", get(|| async { r#"{"a": 1, "b": [2, 3]}"# }))
            .route("/notjson", get(|| async { "ok\n" }))
            .route(
                "/forbidden",
                get(|| async {
                    (
                        AxumStatus::FORBIDDEN,
                        "the process API is served on loopback only\n",
                    )
                }),
            )
            .route(
                "/missing",
                get(|| async { (AxumStatus::NOT_FOUND, "profiling is off\n") }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .route("/huge", get(|| async { vec![b'x'; MAX_RESPONSE + 1] }))
            .route(
                "/auth",
                get(|headers: axum::http::HeaderMap| async move {
                    let want = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("oncall:s3cret")
                    );
                    match headers.get(header::AUTHORIZATION) {
                        Some(v) if v.as_bytes() == want.as_bytes() => {
                            (AxumStatus::OK, "\"in\"").into_response()
                        }
                        _ => (AxumStatus::UNAUTHORIZED, "Unauthorized\n").into_response(),
                    }
                }),
            )
    }

    use axum::response::IntoResponse as _;

    #[tokio::test]
    async fn reads_json_and_bytes_from_a_real_server() {
        let c = client(serve(router()).await);
        let v: serde_json::Value = c.get_json("/json").await.unwrap();
        assert_eq!(v["b"][1], 3);
        assert_eq!(&c.get_bytes("/notjson").await.unwrap()[..], b"ok\n");
        let err = c
            .get_json::<serde_json::Value>("/notjson")
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Json { .. }), "{err}");
    }

    #[tokio::test]
    async fn refusals_carry_the_agents_reason() {
        let c = client(serve(router()).await);
        let err = c.get_bytes("/forbidden").await.unwrap_err();
        assert!(matches!(err, ClientError::Forbidden { .. }), "{err}");
        assert!(err.to_string().contains("loopback only"), "{err}");
        let err = c.get_bytes("/missing").await.unwrap_err();
        assert!(matches!(err, ClientError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("profiling is off"), "{err}");
        let err = c.get_bytes("/auth").await.unwrap_err();
        assert!(matches!(err, ClientError::Unauthorized { .. }), "{err}");
        assert!(err.to_string().contains("--password-file"), "{err}");
    }

    #[tokio::test]
    async fn sends_basic_auth_from_a_password_file() {
        let addr = serve(router()).await;
        let dir = std::env::temp_dir().join(format!("leakscope-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let with = |password_file: PathBuf| ClientOptions {
            agent: format!("http://{addr}"),
            user: Some("oncall".into()),
            password_file: Some(password_file),
            ..ClientOptions::default()
        };
        let c = AgentClient::new(&with(file.clone())).unwrap();
        assert_eq!(c.get_json::<String>("/auth").await.unwrap(), "in");
        std::fs::write(&file, "wrong\n").unwrap();
        let c = AgentClient::new(&with(file.clone())).unwrap();
        let err = c.get_bytes("/auth").await.unwrap_err();
        assert!(err.to_string().contains("wrong"), "{err}");
        let err = AgentClient::new(&with(dir.join("absent"))).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn bounds_time_and_size() {
        let c = client(serve(router()).await);
        let err = c
            .get_bytes_within("/slow", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        let err = c.get_bytes("/huge").await.unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn no_agent_offers_the_command_to_start_one() {
        // A port just freed: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = client(addr)
            .get_bytes("/api/v1/processes")
            .await
            .unwrap_err();
        assert!(err.is_not_running(), "{err}");
        assert!(err.to_string().contains("sudo leakscope run"), "{err}");
    }

    #[test]
    fn bad_addresses_and_credentials_are_refused_up_front() {
        for (agent, want) in [
            ("127.0.0.1:9633", "scheme"),
            ("ftp://127.0.0.1:9633", "http or https"),
            ("http://u:p@127.0.0.1:9633", "--user"),
            ("http://127.0.0.1:9633/?x=1", "query"),
        ] {
            let err = AgentClient::new(&ClientOptions {
                agent: agent.into(),
                ..ClientOptions::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains(want), "{agent}: {err}");
        }
        let err = AgentClient::new(&ClientOptions {
            password_file: Some("/nonexistent".into()),
            ..ClientOptions::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("needs --user"), "{err}");
    }

    #[tokio::test]
    async fn speaks_https_with_the_given_ca() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("leakscope-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"[1,2]")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let options = ClientOptions {
            agent: format!("https://localhost:{port}"),
            ca_file: Some(ca.clone()),
            ..ClientOptions::default()
        };
        let c = AgentClient::new(&options).unwrap();
        assert_eq!(c.get_json::<Vec<u32>>("/x").await.unwrap(), vec![1, 2]);
        // A CA that did not sign it: a TLS error, not "not running".
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, other.cert.pem()).unwrap();
        let c = AgentClient::new(&options).unwrap();
        let err = c.get_bytes("/x").await.unwrap_err();
        assert!(matches!(err, ClientError::Tls { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
