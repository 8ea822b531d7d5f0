//! `--web-config-file`: TLS and basic auth for the agent's endpoints, configured in the
//! Prometheus exporter-toolkit format, so the file node_exporter already uses works here too:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths are relative to this file
//!   key_file: server.key
//!   # optional: client_auth_type (NoClientCert, VerifyClientCertIfGiven,
//!   # RequireAndVerifyClientCert), client_ca_file, min_version / max_version (TLS12, TLS13)
//! basic_auth_users:
//!   prometheus: $2y$10$…         # bcrypt, e.g. `htpasswd -nBC 10 "" | tr -d ':\n'`
//!   oncall: $2y$10$…
//! profiling_users: [oncall]      # leakscope's own key: who may use /debug/pprof/
//! ```
//!
//! `profiling_users` is not an exporter-toolkit key: a profile looks inside any process on the
//! node, which the credentials Prometheus scrapes with must not allow. Under basic auth a path
//! under `/debug/pprof/` needs a user listed there (403 otherwise); every other path takes any
//! user of `basic_auth_users`. exporter-toolkit refuses keys it does not know, so a file that
//! sets it is leakscope's alone.
//!
//! Failed logins are counted per client address: past [`AUTH_FAILURE_BURST`] in
//! [`AUTH_FAILURE_WINDOW`], that address gets 429 without a bcrypt check until the window ends
//! (credentials verified recently still work from it).
//!
//! `/healthz` never asks for credentials: kubelet probes cannot send any without writing the
//! password into the pod spec, and it tells nothing `/metrics` does not (ok, or which probe is
//! off). It is served over TLS like every other path when TLS is on (probes use
//! `scheme: HTTPS`, which does not verify the certificate).
//!
//! The certificate and key are re-read when their files change (checked at most every
//! [`CERT_RECHECK`]), so a rotated Kubernetes Secret takes effect without a restart; a
//! rotation caught half-way keeps the previous pair until both files match again.

mod serve;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use leakscope_api::metrics as names;
use log::{info, warn};
use prometheus::core::Collector as _;
use serde::Deserialize;
pub use serve::{
    HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER,
    MAX_HANDSHAKES, SHUTDOWN_GRACE, WRITE_TIMEOUT,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
        sign::CertifiedKey,
    },
};

/// How long a successful password check is remembered. bcrypt costs tens of milliseconds by
/// design; Prometheus scrapes every few seconds with the same credentials.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many remembered credentials (only correct ones are remembered).
const AUTH_CACHE_MAX: usize = 64;
/// Failed logins one address may make per [`AUTH_FAILURE_WINDOW`] before it gets 429 without
/// a bcrypt check: room for a person's typos and a misconfigured scraper's retries, while a
/// guesser gets 10 tries a minute instead of as many as the CPU allows.
pub const AUTH_FAILURE_BURST: u32 = 10;
/// The window failed logins are counted in, from an address's first failure in it.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are tracked; past it, new addresses share one bucket (an attacker
/// with that many addresses then slows only other new addresses, not known ones or cached
/// credentials), so the table cannot grow without bound.
const AUTH_FAILURE_PEERS: usize = 4096;
/// How often the certificate files are checked for a change.
pub const CERT_RECHECK: Duration = Duration::from_secs(10);
const REALM: &str = "Basic realm=\"leakscope\", charset=\"UTF-8\"";
/// Paths served without credentials (see the module documentation for why).
const OPEN_PATHS: &[&str] = &["/healthz"];
/// Paths under it need a user of `profiling_users`.
const PROFILING_PREFIX: &str = "/debug/pprof";

/// bcrypt checks running at once: one core fewer than the machine has, so a flood of wrong
/// passwords leaves the agent a core. Remembered credentials skip the queue, so scrapes keep
/// working during such a flood.
fn bcrypt_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read the web config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("web config file {path}: {}", crate::error::chain(.cause))]
    Yaml {
        path: PathBuf,
        cause: serde_norway::Error,
    },
    #[error(
        "web config file {path}: `{key}` is an exporter-toolkit setting that leakscope does not \
         support{hint}"
    )]
    Unsupported {
        path: PathBuf,
        key: &'static str,
        hint: &'static str,
    },
    #[error("web config file {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error(
        "web config file {path}: basic_auth_users.{user} is not a bcrypt hash ({detail}); make \
         one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
    )]
    BadHash {
        path: PathBuf,
        user: String,
        detail: String,
    },
    #[error("web config file {path}: tls_server_config.{key} {file}: {detail}")]
    TlsFile {
        path: PathBuf,
        key: &'static str,
        file: PathBuf,
        detail: String,
    },
}

/// The file as written; every key exporter-toolkit knows is listed, so those leakscope does
/// not implement get a precise error instead of a generic "unknown field".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<TlsFileConfig>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<HttpFileConfig>,
    /// leakscope's own: users of `basic_auth_users` who may use `/debug/pprof/`.
    profiling_users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFileConfig {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cert: Option<serde_norway::Value>,
    key: Option<serde_norway::Value>,
    client_ca: Option<serde_norway::Value>,
    cipher_suites: Option<serde_norway::Value>,
    curve_preferences: Option<serde_norway::Value>,
    prefer_server_cipher_suites: Option<serde_norway::Value>,
    client_allowed_sans: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFileConfig {
    http2: Option<bool>,
    headers: Option<serde_norway::Value>,
}

/// What the endpoints are served with: plain HTTP without auth unless a web config says
/// otherwise.
#[derive(Clone, Default)]
pub struct Web {
    tls: Option<Arc<ServerConfig>>,
    auth: Option<Arc<BasicAuth>>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.auth.is_some())
            .field(
                "profiling_users",
                &self.auth.as_ref().map_or(0, |a| a.profiling_users.len()),
            )
            .finish()
    }
}

impl Web {
    /// Reads and checks a web config file: every file it names is read now, so a mistake
    /// stops the agent at start instead of failing every scrape.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, WebConfigError> {
        let invalid = |detail: String| WebConfigError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|source| WebConfigError::Yaml {
                path: path.to_path_buf(),
                cause: source,
            })?
        };
        // A config that secures nothing is almost certainly a mistake (an empty Secret, a
        // typo in a section name caught as `null`): refuse it rather than serve in the clear.
        if file.tls_server_config.is_none() && file.basic_auth_users.is_none() {
            return Err(invalid(
                "configures neither tls_server_config nor basic_auth_users".into(),
            ));
        }
        if let Some(http) = &file.http_server_config {
            if http.headers.is_some() {
                return Err(unsupported(path, "http_server_config.headers", ""));
            }
            if http.http2 == Some(true) {
                warn!("web config: http_server_config.http2 is ignored: leakscope serves HTTP/1.1");
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = file
            .tls_server_config
            .map(|t| tls_config(path, base, t).map(Arc::new))
            .transpose()?;
        let profiling_users = file.profiling_users.unwrap_or_default();
        let auth = match file.basic_auth_users {
            Some(users) if users.is_empty() => {
                return Err(invalid("basic_auth_users lists no user".into()));
            }
            Some(users) => {
                if let Some(stranger) = profiling_users.iter().find(|u| !users.contains_key(*u)) {
                    return Err(invalid(format!(
                        "profiling_users: `{stranger}` is not one of basic_auth_users (a \
                         profiling user logs in with basic auth like any other)"
                    )));
                }
                let mut auth = BasicAuth::new(path, users)?;
                auth.profiling_users = profiling_users.into_iter().collect();
                Some(Arc::new(auth))
            }
            None if !profiling_users.is_empty() => {
                return Err(invalid(
                    "profiling_users needs basic_auth_users: profiling users log in with basic \
                     auth"
                        .into(),
                ));
            }
            None => None,
        };
        if auth.is_some() && tls.is_none() {
            warn!(
                "web config {}: basic auth without TLS sends passwords in clear text",
                path.display()
            );
        }
        Ok(Self { tls, auth })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// True when basic auth is on and names at least one profiling user: `/debug/pprof/` then
    /// reaches its handler only with such a user's credentials (see [`AuthenticatedUser`]).
    pub fn profiling_users_configured(&self) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|a| !a.profiling_users.is_empty())
    }

    /// The router, behind basic auth when the config asks for it.
    pub fn protect(&self, router: Router) -> Router {
        match &self.auth {
            Some(auth) => router.layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                require_auth,
            )),
            None => router,
        }
    }
}

fn unsupported(path: &Path, key: &'static str, hint: &'static str) -> WebConfigError {
    WebConfigError::Unsupported {
        path: path.to_path_buf(),
        key,
        hint,
    }
}

/// Serves `router` on `listener`, over TLS and behind basic auth as `web` says, until
/// `shutdown` completes; then stops accepting, lets requests in flight finish for at most
/// [`SHUTDOWN_GRACE`] and returns. Connection caps and timeouts: see `web/serve.rs`. Handlers
/// find the peer's address as `axum::extract::ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    web: &Web,
) -> std::io::Result<()> {
    let limits = serve::Limits::default();
    serve::serve(
        listener,
        web.protect(router),
        shutdown,
        web.tls.clone().map(TlsAcceptor::from),
        limits,
        serve::Peers::new(&limits),
    )
    .await
}

/// Counters of the HTTP server, for `/metrics` through [`metric_families`].
#[derive(Debug)]
pub struct HttpStats {
    pub connections_open: AtomicU64,
    pub refused_total_cap: AtomicU64,
    pub refused_peer_cap: AtomicU64,
    pub write_timeouts: AtomicU64,
    pub dropped_at_shutdown: AtomicU64,
    pub bcrypt_verifications: AtomicU64,
    pub auth_rate_limited: AtomicU64,
}

/// One server per agent, so one set of counters for the process.
pub static STATS: HttpStats = HttpStats {
    connections_open: AtomicU64::new(0),
    refused_total_cap: AtomicU64::new(0),
    refused_peer_cap: AtomicU64::new(0),
    write_timeouts: AtomicU64::new(0),
    dropped_at_shutdown: AtomicU64::new(0),
    bcrypt_verifications: AtomicU64::new(0),
    auth_rate_limited: AtomicU64::new(0),
};

/// [`STATS`] as Prometheus families, every series present from the start.
pub fn metric_families() -> Vec<prometheus::proto::MetricFamily> {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = Vec::new();
    let open =
        prometheus::IntGauge::new(names::HTTP_CONNECTIONS_OPEN, "HTTP connections open now.")
            .expect("valid metric");
    open.set(i64::try_from(get(&STATS.connections_open)).unwrap_or(i64::MAX));
    out.extend(open.collect());
    let refused = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            names::HTTP_CONNECTIONS_REFUSED_TOTAL,
            "HTTP connections closed at accept: over the total cap, or over the per-address cap.",
        ),
        &["cap"],
    )
    .expect("valid metric");
    refused
        .with_label_values(&["total"])
        .inc_by(get(&STATS.refused_total_cap));
    refused
        .with_label_values(&["peer"])
        .inc_by(get(&STATS.refused_peer_cap));
    out.extend(refused.collect());
    for (name, help, value) in [
        (
            names::HTTP_WRITE_TIMEOUTS_TOTAL,
            "HTTP connections closed because the client did not read the response.",
            &STATS.write_timeouts,
        ),
        (
            names::HTTP_CONNECTIONS_DROPPED_AT_SHUTDOWN_TOTAL,
            "HTTP connections still busy at the shutdown deadline, dropped.",
            &STATS.dropped_at_shutdown,
        ),
        (
            names::HTTP_AUTH_BCRYPT_VERIFICATIONS_TOTAL,
            "Basic-auth passwords checked with bcrypt (remembered credentials are not).",
            &STATS.bcrypt_verifications,
        ),
        (
            names::HTTP_AUTH_RATE_LIMITED_TOTAL,
            "Basic-auth attempts answered 429: too many failed logins from the address.",
            &STATS.auth_rate_limited,
        ),
    ] {
        let c = prometheus::IntCounter::new(name, help).expect("valid metric");
        c.inc_by(get(value));
        out.extend(c.collect());
    }
    out
}

// ---------------------------------------------------------------- TLS

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(path: &Path, base: &Path, t: TlsFileConfig) -> Result<ServerConfig, WebConfigError> {
    let invalid = |detail: String| WebConfigError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    for (set, key, hint) in [
        (
            t.cert.is_some(),
            "tls_server_config.cert",
            ": put the certificate in a file and name it in cert_file",
        ),
        (
            t.key.is_some(),
            "tls_server_config.key",
            ": put the key in a file and name it in key_file",
        ),
        (
            t.client_ca.is_some(),
            "tls_server_config.client_ca",
            ": name a file in client_ca_file",
        ),
        (
            t.cipher_suites.is_some(),
            "tls_server_config.cipher_suites",
            " (rustls offers only modern AEAD suites)",
        ),
        (
            t.curve_preferences.is_some(),
            "tls_server_config.curve_preferences",
            "",
        ),
        (
            t.prefer_server_cipher_suites.is_some(),
            "tls_server_config.prefer_server_cipher_suites",
            "",
        ),
        (
            t.client_allowed_sans.is_some(),
            "tls_server_config.client_allowed_sans",
            "",
        ),
    ] {
        if set {
            return Err(unsupported(path, key, hint));
        }
    }
    let resolve = |p: &str| base.join(p);
    let (cert_file, key_file) = match (t.cert_file.as_deref(), t.key_file.as_deref()) {
        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => (resolve(c), resolve(k)),
        _ => {
            return Err(invalid(
                "tls_server_config needs both cert_file and key_file".into(),
            ));
        }
    };
    let versions =
        protocol_versions(t.min_version.as_deref(), t.max_version.as_deref()).map_err(invalid)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| invalid(format!("TLS versions: {e}")))?;
    let builder = match client_auth(t.client_auth_type.as_deref()).map_err(invalid)? {
        ClientAuth::None => {
            if t.client_ca_file.is_some() {
                return Err(invalid(
                    "client_ca_file needs client_auth_type VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert"
                        .into(),
                ));
            }
            builder.with_no_client_auth()
        }
        ClientAuth::Verify { required } => {
            let Some(ca) = t.client_ca_file.as_deref() else {
                return Err(invalid(format!(
                    "client_auth_type {} needs client_ca_file",
                    t.client_auth_type.as_deref().unwrap_or_default()
                )));
            };
            let ca = resolve(ca);
            let tls_err = |detail: String| WebConfigError::TlsFile {
                path: path.to_path_buf(),
                key: "client_ca_file",
                file: ca.clone(),
                detail,
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certs(&ca).map_err(tls_err)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("not a usable CA certificate: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| tls_err(format!("client verifier: {e}")))?,
            )
        }
    };
    let resolver = ReloadingCert::new(path, cert_file, key_file, provider)?;
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // Only HTTP/1.1 is served (axum's http1 feature): say so in ALPN.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn protocol_versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |v: &str, key: &str| match v {
        "TLS12" => Ok(2),
        "TLS13" => Ok(3),
        "TLS10" | "TLS11" => Err(format!(
            "tls_server_config.{key}: {v} is not supported (TLS 1.2 is the oldest version rustls speaks)"
        )),
        other => Err(format!(
            "tls_server_config.{key}: `{other}` is not a TLS version (TLS12 or TLS13)"
        )),
    };
    let lo = min
        .map(|v| rank(v, "min_version"))
        .transpose()?
        .unwrap_or(2);
    let hi = max
        .map(|v| rank(v, "max_version"))
        .transpose()?
        .unwrap_or(3);
    if lo > hi {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    Ok([(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(r, _)| (lo..=hi).contains(r))
        .map(|(_, v)| v)
        .collect())
}

enum ClientAuth {
    None,
    Verify { required: bool },
}

fn client_auth(kind: Option<&str>) -> Result<ClientAuth, String> {
    match kind {
        None | Some("" | "NoClientCert") => Ok(ClientAuth::None),
        Some("VerifyClientCertIfGiven") => Ok(ClientAuth::Verify { required: false }),
        Some("RequireAndVerifyClientCert") => Ok(ClientAuth::Verify { required: true }),
        // Accepting a client certificate without verifying it authenticates nobody.
        Some(k @ ("RequestClientCert" | "RequireAnyClientCert")) => Err(format!(
            "tls_server_config.client_auth_type {k} is not supported: it does not verify the \
             certificate; use RequireAndVerifyClientCert with client_ca_file"
        )),
        Some(other) => Err(format!(
            "tls_server_config.client_auth_type `{other}` is not one of NoClientCert, \
             VerifyClientCertIfGiven, RequireAndVerifyClientCert"
        )),
    }
}

fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM: {other}"),
    }
}

/// The certificate chain and key, re-read when either file changes.
#[derive(Debug)]
struct ReloadingCert {
    config: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl ReloadingCert {
    fn new(
        config: &Path,
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, WebConfigError> {
        let stamp = stamp(&cert_file, &key_file);
        let key = load_pair(config, &cert_file, &key_file, &provider)?;
        Ok(Self {
            config: config.to_path_buf(),
            cert_file,
            key_file,
            provider,
            current: Mutex::new(Loaded {
                key: Arc::new(key),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to serve, re-read first when the files changed since the last look.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.checked.elapsed() >= CERT_RECHECK {
            current.checked = Instant::now();
            let stamp = stamp(&self.cert_file, &self.key_file);
            if stamp != current.stamp {
                match load_pair(
                    &self.config,
                    &self.cert_file,
                    &self.key_file,
                    &self.provider,
                ) {
                    Ok(key) => {
                        info!("TLS certificate reloaded from {}", self.cert_file.display());
                        current.key = Arc::new(key);
                        current.stamp = stamp;
                    }
                    // Half-way through a rotation cert and key may not match yet: keep
                    // serving the old pair and look again at the next check.
                    Err(e) => warn!("keeping the previous TLS certificate: {e}"),
                }
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert_file), mtime(key_file))
}

fn load_pair(
    config: &Path,
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, WebConfigError> {
    let file_err = |key: &'static str, file: &Path| {
        let config = config.to_path_buf();
        let file = file.to_path_buf();
        move |detail: String| WebConfigError::TlsFile {
            path: config,
            key,
            file,
            detail,
        }
    };
    let certs = read_certs(cert_file).map_err(file_err("cert_file", cert_file))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in it (PKCS#8, PKCS#1 or SEC1)".to_string()
            }
            other => pem_error(other),
        })
        .map_err(file_err("key_file", key_file))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| WebConfigError::Invalid {
        path: config.to_path_buf(),
        detail: format!(
            "the key in {} does not go with the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        ),
    })
}

// ---------------------------------------------------------------- basic auth

/// The user a request was authenticated as, in its extensions (absent without basic auth and
/// on open paths). On a path under `/debug/pprof/` it is always one of `profiling_users`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedUser(pub String);

/// What a request's credentials amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// A configured user with the right password.
    User(String),
    /// No credentials, a wrong password or an unknown user.
    Denied,
    /// Too many failed logins from this address: refused without a check, for this long.
    Limited(Duration),
}

pub struct BasicAuth {
    users: HashMap<String, String>,
    /// Users who may use `/debug/pprof/`; all of them are in `users`.
    profiling_users: HashSet<String>,
    /// Checked instead of a real hash for unknown users, so a wrong user name costs the same
    /// time as a wrong password and names cannot be probed by timing.
    dummy_hash: String,
    /// SHA-256 of `user NUL password` of recently verified credentials, and when.
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    failures: Mutex<FailureTable>,
    bcrypt_slots: tokio::sync::Semaphore,
    /// bcrypt verifications run, for tests of the cache.
    verifications: AtomicU64,
    /// Attempts answered [`AuthOutcome::Limited`].
    rate_limited: AtomicU64,
}

/// Failed logins per client address in its current window.
#[derive(Debug)]
struct FailureTable {
    by_peer: HashMap<IpAddr, Window>,
    /// Shared by new addresses once `by_peer` is full of live windows.
    overflow: Window,
    burst: u32,
    window: Duration,
    max_peers: usize,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    /// Failures, and checks still running (counted up front so that a burst sent in parallel
    /// cannot start more bcrypt checks than the limit).
    attempts: u32,
    since: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucket {
    Peer(IpAddr),
    Overflow,
}

impl FailureTable {
    fn new(burst: u32, window: Duration, max_peers: usize) -> Self {
        Self {
            by_peer: HashMap::new(),
            overflow: Window {
                attempts: 0,
                since: Instant::now(),
            },
            burst,
            window,
            max_peers,
        }
    }

    /// Counts an attempt from `peer` before its password is checked, or says how long the
    /// address must wait.
    fn begin(&mut self, peer: IpAddr, now: Instant) -> Result<Bucket, Duration> {
        let key = serve::peer_key(peer);
        let window = self.window;
        if !self.by_peer.contains_key(&key) && self.by_peer.len() >= self.max_peers {
            self.by_peer
                .retain(|_, w| now.saturating_duration_since(w.since) < window);
        }
        let bucket = if self.by_peer.contains_key(&key) || self.by_peer.len() < self.max_peers {
            Bucket::Peer(key)
        } else {
            Bucket::Overflow
        };
        let fresh = Window {
            attempts: 0,
            since: now,
        };
        let w = match bucket {
            Bucket::Peer(key) => self.by_peer.entry(key).or_insert(fresh),
            Bucket::Overflow => &mut self.overflow,
        };
        if now.saturating_duration_since(w.since) >= window {
            *w = fresh;
        }
        if w.attempts >= self.burst {
            return Err((w.since + window).saturating_duration_since(now));
        }
        w.attempts += 1;
        Ok(bucket)
    }

    /// The attempt counted by [`Self::begin`] had the right password: it was no failure.
    fn succeeded(&mut self, bucket: Bucket) {
        match bucket {
            Bucket::Peer(key) => {
                if let Some(w) = self.by_peer.get_mut(&key) {
                    w.attempts = w.attempts.saturating_sub(1);
                    if w.attempts == 0 {
                        self.by_peer.remove(&key);
                    }
                }
            }
            Bucket::Overflow => {
                self.overflow.attempts = self.overflow.attempts.saturating_sub(1);
            }
        }
    }
}

impl BasicAuth {
    fn new(path: &Path, users: BTreeMap<String, String>) -> Result<Self, WebConfigError> {
        let mut cost = 4;
        for (user, hash) in &users {
            if user.is_empty() || user.contains(':') {
                return Err(WebConfigError::Invalid {
                    path: path.to_path_buf(),
                    detail: format!(
                        "basic_auth_users: `{user}` cannot be sent in basic auth (empty, or \
                         contains ':')"
                    ),
                });
            }
            let parts: bcrypt::HashParts =
                hash.parse()
                    .map_err(|e: bcrypt::BcryptError| WebConfigError::BadHash {
                        path: path.to_path_buf(),
                        user: user.clone(),
                        detail: e.to_string(),
                    })?;
            if !(4..=31).contains(&parts.get_cost()) {
                return Err(WebConfigError::BadHash {
                    path: path.to_path_buf(),
                    user: user.clone(),
                    detail: format!("cost {} is outside 4..=31", parts.get_cost()),
                });
            }
            cost = cost.max(parts.get_cost());
        }
        let dummy_hash =
            bcrypt::hash(random_bytes(), cost).map_err(|e| WebConfigError::Invalid {
                path: path.to_path_buf(),
                detail: format!("cannot prepare basic auth: {e}"),
            })?;
        Ok(Self {
            users: users.into_iter().collect(),
            profiling_users: HashSet::new(),
            dummy_hash,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureTable::new(
                AUTH_FAILURE_BURST,
                AUTH_FAILURE_WINDOW,
                AUTH_FAILURE_PEERS,
            )),
            bcrypt_slots: tokio::sync::Semaphore::new(bcrypt_concurrency()),
            verifications: 0.into(),
            rate_limited: 0.into(),
        })
    }

    /// Checks the `Authorization` header of a request from `peer` (None when the address is
    /// unknown, which shares one bucket of failures).
    pub async fn check(&self, peer: Option<IpAddr>, header: Option<&HeaderValue>) -> AuthOutcome {
        // No or malformed credentials cost nothing to refuse, and are what a browser sends
        // first: not a failed login.
        let Some((user, password)) = header.and_then(parse_basic) else {
            return AuthOutcome::Denied;
        };
        let key = cache_key(&user, &password);
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache
                .get(&key)
                .is_some_and(|at| at.elapsed() < AUTH_CACHE_TTL)
            {
                return AuthOutcome::User(user);
            }
        }
        let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let bucket = match self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .begin(peer, Instant::now())
        {
            Ok(bucket) => bucket,
            Err(wait) => {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                STATS.auth_rate_limited.fetch_add(1, Ordering::Relaxed);
                return AuthOutcome::Limited(wait);
            }
        };
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.dummy_hash).clone();
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return AuthOutcome::Denied;
        };
        self.verifications.fetch_add(1, Ordering::Relaxed);
        STATS.bcrypt_verifications.fetch_add(1, Ordering::Relaxed);
        // bcrypt takes tens of milliseconds of CPU: off the async workers.
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false))
            && known.is_some();
        if !ok {
            return AuthOutcome::Denied;
        }
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .succeeded(bucket);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, at| at.elapsed() < AUTH_CACHE_TTL);
        if cache.len() < AUTH_CACHE_MAX {
            cache.insert(key, Instant::now());
        }
        AuthOutcome::User(user)
    }

    pub fn may_profile(&self, user: &str) -> bool {
        self.profiling_users.contains(user)
    }

    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Attempts refused without a check because their address failed too often.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
}

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    // Any value works for the dummy password; randomness only keeps it unguessable.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}

fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(&[0]);
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Basic base64(user:password)` → (user, password). The scheme name is case-insensitive
/// (RFC 9110); the password may contain ':'.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Whether `path` is served by the profiler. The router matches paths as sent (no decoding,
/// no merging of slashes), so a prefix test on the same string sees exactly what it routes.
fn is_profiling_path(path: &str) -> bool {
    path.strip_prefix(PROFILING_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

async fn require_auth(
    State(auth): State<Arc<BasicAuth>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if OPEN_PATHS.contains(&path) {
        return next.run(req).await;
    }
    let profiling = is_profiling_path(path);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match auth
        .check(peer, req.headers().get(header::AUTHORIZATION))
        .await
    {
        AuthOutcome::User(user) if profiling && !auth.may_profile(&user) => (
            StatusCode::FORBIDDEN,
            format!(
                "403 Forbidden: user `{user}` may not profile: list it under profiling_users in \
                 the web config file\n"
            ),
        )
            .into_response(),
        AuthOutcome::User(user) => {
            req.extensions_mut().insert(AuthenticatedUser(user));
            next.run(req).await
        }
        AuthOutcome::Denied => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, REALM)],
            "401 Unauthorized\n",
        )
            .into_response(),
        AuthOutcome::Limited(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let secs = secs.max(1);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                format!(
                    "429 Too Many Requests: too many failed logins from this address; retry in \
                     {secs} s\n"
                ),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        task::JoinSet,
    };
    use tower::ServiceExt as _;

    use super::*;

    /// bcrypt of "s3cret" at the lowest cost, so the tests stay fast.
    fn hash_of(password: &str) -> String {
        bcrypt::hash(password, 4).unwrap()
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "leakscope-web-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::File::create(&p)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cert_pair(dir: &Dir, prefix: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        dir.write(&format!("{prefix}.crt"), &ck.cert.pem());
        dir.write(&format!("{prefix}.key"), &ck.signing_key.serialize_pem());
        ck
    }

    fn err(dir: &Dir, yaml: &str) -> String {
        let p = dir.write("web.yml", yaml);
        Web::load(&p).unwrap_err().to_string()
    }

    #[test]
    fn a_full_config_loads_with_paths_relative_to_the_file() {
        let dir = Dir::new("full");
        cert_pair(&dir, "server");
        let p = dir.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 min_version: TLS12\nbasic_auth_users:\n  prometheus: {}\n",
                hash_of("s3cret")
            ),
        );
        let web = Web::load(&p).unwrap();
        assert_eq!(web.scheme(), "https");
        assert!(web.has_auth());
    }

    #[test]
    fn mistakes_are_named() {
        let dir = Dir::new("errors");
        cert_pair(&dir, "server");
        cert_pair(&dir, "other");
        let missing = Web::load(&dir.0.join("nope.yml")).unwrap_err().to_string();
        assert!(
            missing.contains("cannot read the web config file") && missing.contains("nope.yml"),
            "{missing}"
        );
        let e = err(&dir, "tls_server_config: [unclosed\n");
        assert!(e.contains("web.yml") && e.contains("line"), "{e}");
        let e = err(&dir, "tls_server_confg:\n  cert_file: a\n");
        assert!(e.contains("unknown field `tls_server_confg`"), "{e}");
        let e = err(&dir, "tls_server_config:\n  cert_fil: a\n");
        assert!(e.contains("unknown field `cert_fil`"), "{e}");
        let e = err(&dir, "");
        assert!(e.contains("neither"), "{e}");
        let e = err(&dir, "tls_server_config:\n  cert_file: server.crt\n");
        assert!(e.contains("both cert_file and key_file"), "{e}");
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
        );
        assert!(
            e.contains("tls_server_config.cert_file") && e.contains("missing.crt"),
            "{e}"
        );
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
        );
        assert!(e.contains("does not go with the certificate"), "{e}");
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
        );
        assert!(e.contains("no PEM"), "{e}");
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
        );
        assert!(e.contains("no PEM private key"), "{e}");
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
        );
        assert!(
            e.contains("`tls_server_config.cipher_suites`") && e.contains("does not support"),
            "{e}"
        );
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             min_version: TLS10\n",
        );
        assert!(e.contains("TLS10 is not supported"), "{e}");
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n",
        );
        assert!(e.contains("needs client_ca_file"), "{e}");
        let e = err(&dir, "basic_auth_users:\n  prometheus: hunter2\n");
        assert!(
            e.contains("basic_auth_users.prometheus is not a bcrypt hash")
                && e.contains("htpasswd"),
            "{e}"
        );
        let e = err(
            &dir,
            &format!("basic_auth_users:\n  'a:b': {}\n", hash_of("x")),
        );
        assert!(e.contains("contains ':'"), "{e}");
        let e = err(&dir, "basic_auth_users: {}\n");
        assert!(e.contains("lists no user"), "{e}");
        let e = err(
            &dir,
            "http_server_config:\n  headers: {X-Frame-Options: deny}\nbasic_auth_users: {}\n",
        );
        assert!(e.contains("http_server_config.headers"), "{e}");
    }

    #[test]
    fn client_certificates_can_be_required() {
        let dir = Dir::new("mtls");
        cert_pair(&dir, "server");
        cert_pair(&dir, "ca");
        let p = dir.write(
            "web.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        );
        assert_eq!(Web::load(&p).unwrap().scheme(), "https");
    }

    #[test]
    fn basic_header_parsing() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            parse_basic(&h(&format!("Basic {}", enc("prom:pa:ss")))),
            Some(("prom".into(), "pa:ss".into()))
        );
        assert_eq!(
            parse_basic(&h(&format!("basic {}", enc("u:")))),
            Some(("u".into(), String::new()))
        );
        assert_eq!(parse_basic(&h(&format!("Bearer {}", enc("u:p")))), None);
        assert_eq!(parse_basic(&h("Basic !!!")), None);
        assert_eq!(parse_basic(&h(&format!("Basic {}", enc("no-colon")))), None);
    }

    fn basic(u: &str, p: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ))
        .unwrap()
    }

    fn prom_auth() -> BasicAuth {
        BasicAuth::new(
            Path::new("web.yml"),
            BTreeMap::from([("prom".to_string(), hash_of("s3cret"))]),
        )
        .unwrap()
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));

    #[tokio::test]
    async fn right_passwords_are_remembered_wrong_ones_are_not() {
        let auth = prom_auth();
        let user = AuthOutcome::User("prom".into());
        assert_eq!(auth.check(A, Some(&basic("prom", "s3cret"))).await, user);
        assert_eq!(auth.check(A, Some(&basic("prom", "s3cret"))).await, user);
        assert_eq!(auth.verifications(), 1, "the second check is cached");
        let wrong = Some(basic("prom", "wrong"));
        assert_eq!(auth.check(A, wrong.as_ref()).await, AuthOutcome::Denied);
        assert_eq!(auth.check(A, wrong.as_ref()).await, AuthOutcome::Denied);
        assert_eq!(auth.verifications(), 3, "failures are never cached");
        // An unknown user costs a bcrypt check too (no timing oracle), and fails.
        let stranger = Some(basic("nobody", "s3cret"));
        assert_eq!(auth.check(A, stranger.as_ref()).await, AuthOutcome::Denied);
        assert_eq!(auth.verifications(), 4);
        assert_eq!(auth.check(A, None).await, AuthOutcome::Denied);
        assert_eq!(auth.verifications(), 4, "no credentials, no bcrypt");
    }

    #[tokio::test]
    async fn a_password_flood_is_refused_before_bcrypt_and_only_for_its_address() {
        let auth = prom_auth();
        let right = Some(basic("prom", "s3cret"));
        let user = AuthOutcome::User("prom".into());
        // Remembered before the flood: keeps working from the flooding address.
        assert_eq!(auth.check(A, right.as_ref()).await, user);
        let wrong = Some(basic("prom", "wrong"));
        let mut limited = 0;
        for _ in 0..40 {
            match auth.check(A, wrong.as_ref()).await {
                AuthOutcome::Denied => {}
                AuthOutcome::Limited(wait) => {
                    assert!(wait > Duration::ZERO && wait <= AUTH_FAILURE_WINDOW);
                    limited += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(limited, 40 - AUTH_FAILURE_BURST);
        assert_eq!(auth.rate_limited(), u64::from(limited));
        assert_eq!(auth.verifications(), 1 + u64::from(AUTH_FAILURE_BURST));
        assert_eq!(auth.check(A, right.as_ref()).await, user, "cached");
        let other_user = Some(basic("nobody", "x"));
        assert!(matches!(
            auth.check(A, other_user.as_ref()).await,
            AuthOutcome::Limited(_)
        ));
        // Another address is not affected, and is checked for real.
        let before = auth.verifications();
        assert_eq!(auth.check(B, wrong.as_ref()).await, AuthOutcome::Denied);
        assert_eq!(auth.verifications(), before + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_parallel_flood_starts_no_more_checks_than_the_burst() {
        let auth = Arc::new(prom_auth());
        let mut tasks = JoinSet::new();
        for _ in 0..40 {
            let auth = auth.clone();
            tasks.spawn(async move { auth.check(A, Some(&basic("prom", "wrong"))).await });
        }
        let outcomes = tasks.join_all().await;
        let denied = outcomes
            .iter()
            .filter(|o| **o == AuthOutcome::Denied)
            .count();
        assert_eq!(denied, AUTH_FAILURE_BURST as usize);
        assert_eq!(auth.verifications(), u64::from(AUTH_FAILURE_BURST));
    }

    #[test]
    fn failure_windows_end_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut table = FailureTable::new(2, window, 2);
        let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
        assert_eq!(table.begin(ip(1), t0), Ok(Bucket::Peer(ip(1))));
        assert_eq!(table.begin(ip(1), t0), Ok(Bucket::Peer(ip(1))));
        let later = t0 + Duration::from_secs(20);
        assert_eq!(table.begin(ip(1), later), Err(Duration::from_secs(40)));
        // A right password is no failure.
        table.succeeded(Bucket::Peer(ip(1)));
        assert_eq!(table.begin(ip(1), later), Ok(Bucket::Peer(ip(1))));
        assert!(table.begin(ip(1), later).is_err());
        assert_eq!(
            table.begin(ip(1), t0 + window),
            Ok(Bucket::Peer(ip(1))),
            "a new window"
        );
        // Full of live windows: a new address goes to the overflow bucket, which has the same
        // limit; once a window ends its slot is taken back.
        assert_eq!(table.begin(ip(2), t0 + window), Ok(Bucket::Peer(ip(2))));
        assert_eq!(table.begin(ip(3), t0 + window), Ok(Bucket::Overflow));
        assert_eq!(table.begin(ip(4), t0 + window), Ok(Bucket::Overflow));
        assert!(table.begin(ip(5), t0 + window).is_err());
        assert_eq!(table.by_peer.len(), 2);
        assert_eq!(table.begin(ip(6), t0 + 3 * window), Ok(Bucket::Peer(ip(6))));
        // IPv6 addresses of one /64 are one peer.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            serve::peer_key(v6("2001:db8:1:2::5")),
            serve::peer_key(v6("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            serve::peer_key(v6("2001:db8:1:2::5")),
            serve::peer_key(v6("2001:db8:1:3::5"))
        );
        assert_eq!(serve::peer_key(v6("::ffff:192.0.2.7")), ip(7));
    }

    #[test]
    fn profiling_users_must_be_basic_auth_users() {
        let dir = Dir::new("profiling-users");
        let (prom, oncall) = (hash_of("p"), hash_of("o"));
        let p = dir.write(
            "web.yml",
            &format!(
                "basic_auth_users:\n  prom: {prom}\n  oncall: {oncall}\nprofiling_users: [oncall]\n"
            ),
        );
        let web = Web::load(&p).unwrap();
        assert!(web.profiling_users_configured());
        let auth = web.auth.as_ref().unwrap();
        assert!(auth.may_profile("oncall") && !auth.may_profile("prom"));
        let p = dir.write("web.yml", &format!("basic_auth_users:\n  prom: {prom}\n"));
        assert!(!Web::load(&p).unwrap().profiling_users_configured());
        let e = err(
            &dir,
            &format!("basic_auth_users:\n  prom: {prom}\nprofiling_users: [root]\n"),
        );
        assert!(
            e.contains("profiling_users: `root` is not one of basic_auth_users"),
            "{e}"
        );
        cert_pair(&dir, "server");
        let e = err(
            &dir,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             profiling_users: [prom]\n",
        );
        assert!(e.contains("profiling_users needs basic_auth_users"), "{e}");
    }

    /// The router of a web config with `prom` (scrapes) and `oncall` (profiles); its growth
    /// handler answers with the authenticated user it was given.
    fn profiling_router() -> Router {
        let dir = Dir::new("profiling-router");
        let p = dir.write(
            "web.yml",
            &format!(
                "basic_auth_users:\n  prom: {}\n  oncall: {}\nprofiling_users: [oncall]\n",
                hash_of("p"),
                hash_of("o")
            ),
        );
        let web = Web::load(&p).unwrap();
        let who = |axum::Extension(AuthenticatedUser(user)): axum::Extension<AuthenticatedUser>,
                   ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
            format!("{user} from {}", peer.ip())
        };
        web.protect(
            Router::new()
                .route("/debug/pprof/growth", get(who))
                .route("/metrics", get(who)),
        )
    }

    async fn call(router: &Router, path: &str, auth: Option<(&str, &str)>) -> (u16, String) {
        let mut req = axum::http::Request::get(path);
        if let Some((u, p)) = auth {
            req = req.header(header::AUTHORIZATION, basic(u, p));
        }
        let mut req = req.body(axum::body::Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 9], 4000))));
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn only_profiling_users_reach_the_profiler() {
        let router = profiling_router();
        let (status, body) = call(&router, "/metrics", Some(("prom", "p"))).await;
        assert_eq!((status, body.as_str()), (200, "prom from 192.0.2.9"));
        let (status, body) = call(&router, "/debug/pprof/growth?pid=1", Some(("prom", "p"))).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("user `prom` may not profile: list it under profiling_users"),
            "{body}"
        );
        let (status, body) = call(&router, "/debug/pprof/growth", Some(("oncall", "o"))).await;
        assert_eq!((status, body.as_str()), (200, "oncall from 192.0.2.9"));
        let (status, _) = call(&router, "/debug/pprof/growth", Some(("oncall", "bad"))).await;
        assert_eq!(status, 401);
        // Spellings of the path the prefix test does not see never reach the profiler either.
        for path in [
            "/debug/pprof",
            "//debug/pprof/growth",
            "/debug//pprof/growth",
            "/debug/pprof/%67rowth",
            "/DEBUG/pprof/growth",
            "/debug/pprof/growth/",
        ] {
            let (status, body) = call(&router, path, Some(("prom", "p"))).await;
            assert!(status == 403 || status == 404, "{path}: {status} {body}");
        }
    }

    #[tokio::test]
    async fn a_flooding_address_gets_429_with_retry_after() {
        let router = profiling_router();
        for _ in 0..AUTH_FAILURE_BURST {
            assert_eq!(call(&router, "/metrics", Some(("prom", "x"))).await.0, 401);
        }
        let mut req = axum::http::Request::get("/metrics")
            .header(header::AUTHORIZATION, basic("prom", "x"))
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 9], 4001))));
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = resp.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=AUTH_FAILURE_WINDOW.as_secs()).contains(&retry));
    }

    /// One HTTP/1.1 GET over TLS, trusting `ca`; returns the status line and the headers.
    async fn tls_get(
        addr: SocketAddr,
        ca: &str,
        path: &str,
        auth: Option<&str>,
    ) -> std::io::Result<String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let auth = auth
            .map(|a| {
                format!(
                    "Authorization: Basic {}\r\n",
                    base64::engine::general_purpose::STANDARD.encode(a)
                )
            })
            .unwrap_or_default();
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn serves_over_tls_behind_basic_auth_with_healthz_open() {
        let dir = Dir::new("serve");
        let ck = cert_pair(&dir, "server");
        let p = dir.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
                 basic_auth_users:\n  prom: {}\n",
                hash_of("s3cret")
            ),
        );
        let web = Web::load(&p).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/metrics", get(|| async { "up 1\n" }))
            .route("/healthz", get(|| async { "ok\n" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let web = web.clone();
            async move {
                serve(
                    listener,
                    router,
                    async {
                        let _ = stopped.await;
                    },
                    &web,
                )
                .await
            }
        });
        // A client that connects and never speaks must not block the others.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let ca = ck.cert.pem();
        let ok = tls_get(addr, &ca, "/metrics", Some("prom:s3cret"))
            .await
            .unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("up 1\n"),
            "{ok}"
        );
        let denied = tls_get(addr, &ca, "/metrics", Some("prom:nope"))
            .await
            .unwrap();
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        assert!(
            denied
                .to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"leakscope\""),
            "{denied}"
        );
        let none = tls_get(addr, &ca, "/metrics", None).await.unwrap();
        assert!(none.starts_with("HTTP/1.1 401"), "{none}");
        let health = tls_get(addr, &ca, "/healthz", None).await.unwrap();
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        // Plain HTTP on the TLS port gets no answer (the handshake fails), not the metrics.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
        assert!(!String::from_utf8_lossy(&buf).contains("up 1"));
        // A certificate from another issuer is refused by the client.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert!(
            tls_get(addr, &other.cert.pem(), "/healthz", None)
                .await
                .is_err()
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[test]
    fn a_rotated_certificate_is_picked_up() {
        let dir = Dir::new("rotate");
        cert_pair(&dir, "server");
        let resolver = ReloadingCert::new(
            Path::new("web.yml"),
            dir.0.join("server.crt"),
            dir.0.join("server.key"),
            provider(),
        )
        .unwrap();
        let first = resolver.current().cert[0].clone();
        let recheck = |r: &ReloadingCert| {
            // As if CERT_RECHECK had passed and the files had changed since the last look.
            let mut c = r.current.lock().unwrap();
            c.checked = Instant::now().checked_sub(CERT_RECHECK).unwrap();
            c.stamp = (None, None);
            drop(c);
            r.current().cert[0].clone()
        };
        assert_eq!(recheck(&resolver), first, "unchanged files, same pair");
        // Half a rotation (new cert, old key): the old pair stays.
        let next = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        dir.write("server.crt", &next.cert.pem());
        assert_eq!(recheck(&resolver), first, "a mismatched pair is not taken");
        dir.write("server.key", &next.signing_key.serialize_pem());
        assert_eq!(recheck(&resolver).as_ref(), next.cert.der().as_ref());
    }
}
