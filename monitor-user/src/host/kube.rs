//! Optional: the names behind the pod UIDs found in cgroup paths, from the Kubernetes API.
//!
//! Only inside a cluster: when `KUBERNETES_SERVICE_HOST`/`_PORT` are set, the pod's service
//! account token is mounted, and `NODE_NAME` says which node this is (the DaemonSet sets it
//! from `spec.nodeName`). Then the agent lists the pods of its own node (never the whole
//! cluster) every [`REFRESH`], read-only, with the token re-read each time because bound
//! tokens rotate. Outside a cluster nothing here runs and nothing is logged.
//!
//! Names are exported as `leakscope_pod_info{pod_uid, pod_namespace, pod_name} 1` for joins
//! on `pod_uid`, and in `/api/v1/processes`. The labels are not `namespace`/`pod`: the
//! Prometheus Operator sets those on every target (the agent's own pod), and a clash would
//! rename ours to `exported_*`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};

use crate::error::chain;

pub const TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// How often the node's pods are listed again.
pub const REFRESH: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A node runs at most a few hundred pods; a list far beyond this is not what we asked for.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the service account CA {path}: {detail}")]
    Ca { path: PathBuf, detail: String },
    #[error("cannot read the service account token {path}: {cause}")]
    Token {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("`{0}` is not a usable API server host")]
    Host(String),
    #[error("cannot reach the API server at {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("HTTP to the API server failed: {0}")]
    Http(String),
    #[error("the API server answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the API server's pod list is not what was expected: {0}")]
    Json(serde_json::Error),
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
}

/// A pod's name, as the API server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// Pod UID to name, shared between the refresh task and the exporters.
#[derive(Clone, Debug, Default)]
pub struct Pods(Arc<RwLock<HashMap<String, PodName>>>);

impl Pods {
    pub fn get(&self, uid: &str) -> Option<PodName> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .cloned()
    }

    pub fn replace(&self, pods: HashMap<String, PodName>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = pods;
    }
}

/// Where and how to ask the API server.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub host: String,
    pub port: u16,
    pub node: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

impl ApiConfig {
    /// The in-cluster configuration, or `None` outside a cluster (or without the node name,
    /// which would mean listing every pod of the cluster on every node).
    pub fn from_env() -> Option<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()?
            .parse()
            .ok()?;
        if !Path::new(TOKEN_FILE).is_file() {
            return None;
        }
        let Ok(node) = std::env::var("NODE_NAME") else {
            info!(
                "in a Kubernetes cluster but NODE_NAME is not set: pod names are not resolved \
                 (set it from spec.nodeName, as deploy/kubernetes/daemonset.yaml does)"
            );
            return None;
        };
        Some(Self {
            host,
            port,
            node,
            token_file: TOKEN_FILE.into(),
            ca_file: CA_FILE.into(),
        })
    }

    fn path(&self) -> String {
        format!(
            "/api/v1/pods?fieldSelector={}",
            percent_encode(&format!("spec.nodeName={}", self.node))
        )
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Meta,
}

#[derive(Deserialize)]
struct Meta {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
}

/// UID to name from the JSON of a `PodList`.
pub fn parse_pod_list(json: &[u8]) -> Result<HashMap<String, PodName>, serde_json::Error> {
    let list: PodList = serde_json::from_slice(json)?;
    Ok(list
        .items
        .into_iter()
        .map(|p| {
            (
                p.metadata.uid,
                PodName {
                    namespace: p.metadata.namespace,
                    name: p.metadata.name,
                },
            )
        })
        .collect())
}

fn connector(ca_file: &Path) -> Result<TlsConnector, KubeError> {
    let ca_err = |detail: String| KubeError::Ca {
        path: ca_file.to_path_buf(),
        detail,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| ca_err(e.to_string()))? {
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
            .map_err(|e| KubeError::Http(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One list of this node's pods.
pub async fn list_pods(cfg: &ApiConfig) -> Result<HashMap<String, PodName>, KubeError> {
    tokio::time::timeout(REQUEST_TIMEOUT, list_pods_inner(cfg))
        .await
        .map_err(|_| KubeError::Timeout(REQUEST_TIMEOUT))?
}

async fn list_pods_inner(cfg: &ApiConfig) -> Result<HashMap<String, PodName>, KubeError> {
    // Both re-read each time: the kubelet rotates bound tokens (and may rotate the CA).
    let connector = connector(&cfg.ca_file)?;
    let token = std::fs::read_to_string(&cfg.token_file).map_err(|source| KubeError::Token {
        path: cfg.token_file.clone(),
        cause: source,
    })?;
    let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
    let server_name =
        ServerName::try_from(host.to_string()).map_err(|_| KubeError::Host(cfg.host.clone()))?;
    let authority = if host.contains(':') {
        format!("[{host}]:{}", cfg.port)
    } else {
        format!("{host}:{}", cfg.port)
    };
    let tcp = tokio::net::TcpStream::connect((host, cfg.port))
        .await
        .map_err(|source| KubeError::Connect {
            addr: authority.clone(),
            cause: source,
        })?;
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|source| KubeError::Connect {
            addr: authority.clone(),
            cause: source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| KubeError::Http(chain(&e).to_string()))?;
    // Drives the connection; it ends when the response is read and `sender` dropped.
    let driver = tokio::spawn(conn);
    let request = Request::get(cfg.path())
        .header(header::HOST, &authority)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("leakscope/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| KubeError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| KubeError::Http(chain(&e).to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| KubeError::Http(chain(&*e).to_string()))?
        .to_bytes();
    drop(sender);
    driver.abort();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(KubeError::Status {
            status,
            body: text.chars().take(300).collect(),
        });
    }
    parse_pod_list(&body).map_err(KubeError::Json)
}

/// Keeps `pods` current until the task is dropped. A failed list keeps the previous names
/// (pods come and go slowly) and is logged once per distinct error, not every minute.
pub async fn run(cfg: ApiConfig, pods: Pods) {
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match list_pods(&cfg).await {
            Ok(found) => {
                if last_error.take().is_some() || pods.0.read().map_or(true, |p| p.is_empty()) {
                    info!(
                        "pod names from the Kubernetes API: {} pods on node {}",
                        found.len(),
                        cfg.node
                    );
                }
                pods.replace(found);
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!("pod names not resolved: {text}");
                    last_error = Some(text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::{Router, extract::Query, http::HeaderMap, routing::get};

    use super::*;

    const POD_LIST: &str = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},
        "items":[
          {"metadata":{"name":"web-7d4b9","namespace":"shop","uid":"1b3e5f7a-9c2d-4e6f-8a0b-c1d2e3f4a5b6"},
           "spec":{"nodeName":"node-a"},"status":{"phase":"Running"}},
          {"metadata":{"name":"kube-proxy-x","namespace":"kube-system","uid":"8e6c1b6a0d3ef4e1e54df1a4b5d8f1c3"}}
        ]}"#;

    #[test]
    fn pod_lists_are_parsed() {
        let pods = parse_pod_list(POD_LIST.as_bytes()).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(
            pods["1b3e5f7a-9c2d-4e6f-8a0b-c1d2e3f4a5b6"],
            PodName {
                namespace: "shop".into(),
                name: "web-7d4b9".into()
            }
        );
        assert!(parse_pod_list(b"{\"items\":[{\"metadata\":{}}]}").is_err());
        assert!(parse_pod_list(b"{}").unwrap().is_empty());
    }

    #[test]
    fn only_this_nodes_pods_are_asked_for() {
        let cfg = ApiConfig {
            host: "10.96.0.1".into(),
            port: 443,
            node: "node-a.example".into(),
            token_file: TOKEN_FILE.into(),
            ca_file: CA_FILE.into(),
        };
        assert_eq!(
            cfg.path(),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a.example"
        );
    }

    #[test]
    fn outside_a_cluster_nothing_is_configured() {
        // The test host has no service account token mounted.
        if !Path::new(TOKEN_FILE).exists() {
            assert!(ApiConfig::from_env().is_none());
        }
    }

    /// A fake API server over real TLS (the agent's own web.rs serving), checked for the
    /// token and the node selector.
    #[tokio::test]
    async fn lists_pods_from_an_api_server() {
        let dir = std::env::temp_dir().join(format!("leakscope-kube-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("token"), "secret-token\n").unwrap();
        let web_yml = dir.join("web.yml");
        std::fs::write(
            &web_yml,
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n",
        )
        .unwrap();
        let web = crate::http::web::Web::load(&web_yml).unwrap();
        let router = Router::new().route(
            "/api/v1/pods",
            get(
                |headers: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if auth != Some("Bearer secret-token") {
                        return (StatusCode::UNAUTHORIZED, "no".to_string());
                    }
                    if q.get("fieldSelector").map(String::as_str) != Some("spec.nodeName=node-a") {
                        return (StatusCode::BAD_REQUEST, format!("{q:?}"));
                    }
                    (StatusCode::OK, POD_LIST.to_string())
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let _ = crate::http::web::serve(listener, router, std::future::pending(), &web).await;
        });
        let mut cfg = ApiConfig {
            host: "127.0.0.1".into(),
            port,
            node: "node-a".into(),
            token_file: dir.join("token"),
            ca_file: dir.join("tls.crt"),
        };
        let pods = list_pods(&cfg).await.unwrap();
        assert_eq!(
            pods["8e6c1b6a0d3ef4e1e54df1a4b5d8f1c3"].name,
            "kube-proxy-x"
        );

        cfg.node = "node-b".into();
        let e = list_pods(&cfg).await.unwrap_err().to_string();
        assert!(e.contains("400"), "{e}");
        std::fs::write(dir.join("token"), "stale").unwrap();
        let e = list_pods(&cfg).await.unwrap_err().to_string();
        assert!(e.contains("401"), "{e}");
        cfg.ca_file = dir.join("token");
        let e = list_pods(&cfg).await.unwrap_err().to_string();
        assert!(e.contains("service account CA"), "{e}");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
