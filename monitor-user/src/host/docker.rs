//! Optional: the names behind Docker container ids found in cgroup paths, from the Docker
//! Engine API on its unix socket ([`SOCKET`]).
//!
//! Every [`REFRESH`] (and, at most every [`MIN_GAP`], when a process shows up in a Docker
//! container the cache does not know) the agent asks `GET /containers/json`: the running
//! containers with their names, images and labels. The socket is root's and everything it
//! says is treated as untrusted: the answer is read with a size bound ([`MAX_BODY`]) and a
//! time bound ([`REQUEST_TIMEOUT`]), ids must be 64 lowercase hex characters, strings lose
//! their control characters and are cut to [`MAX_VALUE`] bytes, and at most
//! [`MAX_CONTAINERS`] are kept (the rest counted as dropped).
//!
//! Without a socket or a daemon the names are simply absent; each list is counted by result
//! (`ok`, `no_socket`, `error`), and only a change of error is logged.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use crate::{
    error::chain,
    host::container::{ContainerInfo, Runtime},
};

/// Where the Docker Engine listens by default.
pub const SOCKET: &str = "/var/run/docker.sock";
/// How often the running containers are listed again.
pub const REFRESH: Duration = Duration::from_secs(10);
/// The shortest time between two lists, however many unknown containers show up.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// The whole request: connect, ask, read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A list of a few thousand containers is far below this.
pub const MAX_BODY: usize = 4 << 20;
/// Containers whose names are kept.
pub const MAX_CONTAINERS: usize = 4096;
/// Longest name, image or label value kept, in bytes.
pub const MAX_VALUE: usize = 128;
/// Unknown ids remembered so that they do not ask again before the next periodic list.
const MAX_PENDING: usize = 1024;
/// After this many failed lists in a row, names are no longer trusted to be current.
const MAX_STALE_ERRORS: u32 = 3;

pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no Docker daemon at {path}: {cause}")]
    NoSocket {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not a socket of root's (or the agent's own user): not asked")]
    NotRoots { path: PathBuf },
    #[error("cannot reach the Docker daemon at {path}: {cause}")]
    Connect {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("HTTP to the Docker daemon failed: {0}")]
    Http(String),
    #[error("the Docker daemon answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the Docker daemon's container list is not what was expected: {0}")]
    Json(serde_json::Error),
    #[error("the Docker daemon did not answer within {0:?}")]
    Timeout(Duration),
}

/// How one list ended, as `leakscope_docker_lookups_total{result}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Ok,
    NoSocket,
    Error,
}

impl Lookup {
    pub const ALL: [Lookup; 3] = [Lookup::Ok, Lookup::NoSocket, Lookup::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Ok => "ok",
            Lookup::NoSocket => "no_socket",
            Lookup::Error => "error",
        }
    }
}

impl DockerError {
    pub fn lookup(&self) -> Lookup {
        match self {
            DockerError::NoSocket { .. } => Lookup::NoSocket,
            _ => Lookup::Error,
        }
    }
}

/// A container's names, as its owner knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerName {
    /// The name without Docker's leading `/`.
    pub name: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    names: RwLock<HashMap<String, ContainerName>>,
    /// Ids asked for and not found since the last periodic list.
    pending: RwLock<HashSet<String>>,
    wake: tokio::sync::Notify,
    lookups: [AtomicU64; 3],
    dropped: AtomicU64,
}

/// Container id to names, shared between the refresh task and the exporters.
#[derive(Clone, Debug, Default)]
pub struct Containers(Arc<Inner>);

impl Containers {
    /// The names of container `id`, if the last list had it. An id it did not have asks for
    /// a new list (rate-limited by the refresh task), once until the next periodic list.
    pub fn get(&self, id: &str) -> Option<ContainerName> {
        let found = self
            .0
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        if found.is_none() {
            let mut pending = self
                .0
                .pending
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if pending.len() < MAX_PENDING && pending.insert(id.to_string()) {
                self.0.wake.notify_one();
            }
        }
        found
    }

    /// Replaces the names with `list`'s, keeping at most [`MAX_CONTAINERS`]; the rest are
    /// counted as dropped.
    pub fn replace(&self, list: Vec<(String, ContainerName)>) {
        let mut names = HashMap::with_capacity(list.len().min(MAX_CONTAINERS));
        let mut dropped = 0u64;
        for (id, name) in list {
            if names.len() < MAX_CONTAINERS || names.contains_key(&id) {
                names.insert(id, name);
            } else {
                dropped += 1;
            }
        }
        self.0.dropped.fetch_add(dropped, Ordering::Relaxed);
        *self.0.names.write().unwrap_or_else(PoisonError::into_inner) = names;
    }

    pub fn clear(&self) {
        self.0
            .names
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub fn len(&self) -> usize {
        self.0
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn count(&self, result: Lookup) {
        self.0.lookups[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Lists made so far that ended with `result`.
    pub fn lookups(&self, result: Lookup) -> u64 {
        self.0.lookups[result as usize].load(Ordering::Relaxed)
    }

    /// Containers left out of lists because the cache was full (each list counts its own).
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// The id of a Docker container (the only ones the Docker daemon can name) from what the
/// cgroup path says.
pub fn container_id(info: &ContainerInfo) -> Option<&str> {
    (info.runtime == Runtime::Docker)
        .then_some(info.container_id.as_deref())
        .flatten()
}

#[derive(Deserialize)]
struct Summary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Option<Vec<String>>,
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// `s` without control characters, cut to at most [`MAX_VALUE`] bytes on a character boundary.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_VALUE));
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_VALUE {
            break;
        }
        out.push(c);
    }
    out
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The container's own name: Docker lists it with a leading `/`, and linked containers
/// (legacy links) add `/<other>/<alias>` names, which are not its own.
fn own_name(names: &[String]) -> String {
    let stripped = |n: &String| n.strip_prefix('/').unwrap_or(n).to_string();
    names
        .iter()
        .map(stripped)
        .find(|n| !n.contains('/'))
        .or_else(|| names.first().map(stripped))
        .map(|n| clean(&n))
        .unwrap_or_default()
}

/// Id and names of each container in the JSON of `GET /containers/json`; entries whose id is
/// not a container id are skipped.
pub fn parse_container_list(
    json: &[u8],
) -> Result<Vec<(String, ContainerName)>, serde_json::Error> {
    let list: Vec<Summary> = serde_json::from_slice(json)?;
    Ok(list
        .into_iter()
        .filter(|c| is_container_id(&c.id))
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            let label = |key: &str| labels.get(key).map(|v| clean(v)).filter(|v| !v.is_empty());
            let name = ContainerName {
                name: own_name(c.names.as_deref().unwrap_or_default()),
                image: clean(c.image.as_deref().unwrap_or_default()),
                compose_project: label(COMPOSE_PROJECT),
                compose_service: label(COMPOSE_SERVICE),
            };
            (c.id, name)
        })
        .collect())
}

/// The daemon's socket must be a socket owned by root (or by the agent's own user, as in
/// tests): one anybody else made is not asked.
fn check_owner(socket: &Path) -> Result<(), DockerError> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    let meta = match std::fs::metadata(socket) {
        Ok(meta) => meta,
        Err(cause) if cause.kind() == std::io::ErrorKind::NotFound => {
            return Err(DockerError::NoSocket {
                path: socket.to_path_buf(),
                cause,
            });
        }
        Err(cause) => {
            return Err(DockerError::Connect {
                path: socket.to_path_buf(),
                cause,
            });
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.file_type().is_socket() || (meta.uid() != 0 && meta.uid() != euid) {
        return Err(DockerError::NotRoots {
            path: socket.to_path_buf(),
        });
    }
    Ok(())
}

/// One list of the running containers from the daemon at `socket`.
pub async fn list_containers(socket: &Path) -> Result<Vec<(String, ContainerName)>, DockerError> {
    tokio::time::timeout(REQUEST_TIMEOUT, list_inner(socket))
        .await
        .map_err(|_| DockerError::Timeout(REQUEST_TIMEOUT))?
}

async fn list_inner(socket: &Path) -> Result<Vec<(String, ContainerName)>, DockerError> {
    check_owner(socket)?;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|cause| match cause.kind() {
            // No socket file, or one nobody listens on: the daemon is not running.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                DockerError::NoSocket {
                    path: socket.to_path_buf(),
                    cause,
                }
            }
            _ => DockerError::Connect {
                path: socket.to_path_buf(),
                cause,
            },
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DockerError::Http(chain(&e).to_string()))?;
    // Drives the connection; it ends when the response is read and `sender` dropped.
    let driver = tokio::spawn(conn);
    let request = Request::get("/containers/json")
        .header(header::HOST, "docker")
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("leakscope/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| DockerError::Http(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| DockerError::Http(chain(&e).to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| DockerError::Http(chain(&*e).to_string()))?
            .to_bytes();
        if !status.is_success() {
            let text = clean(&String::from_utf8_lossy(&body));
            return Err(DockerError::Status { status, body: text });
        }
        parse_container_list(&body).map_err(DockerError::Json)
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

/// Keeps `containers` current until the task is dropped. A daemon that is gone takes the
/// names with it; a failed list keeps the previous names for a few lists more.
pub async fn run(socket: PathBuf, containers: Containers) {
    let mut last_error: Option<String> = None;
    let mut errors_in_a_row = 0u32;
    let mut ever_ok = false;
    let mut next_periodic = Instant::now();
    let mut last_list: Option<Instant> = None;
    loop {
        let periodic = Instant::now() >= next_periodic;
        if !periodic {
            tokio::select! {
                () = tokio::time::sleep_until(next_periodic.into()) => {}
                () = containers.0.wake.notified() => {}
            }
        }
        // Bounded rate: never two lists closer than MIN_GAP.
        if let Some(at) = last_list
            && at.elapsed() < MIN_GAP
        {
            tokio::time::sleep_until((at + MIN_GAP).into()).await;
        }
        let periodic = Instant::now() >= next_periodic;
        if periodic {
            next_periodic = Instant::now() + REFRESH;
        }
        last_list = Some(Instant::now());
        let result = list_containers(&socket).await;
        match result {
            Ok(found) => {
                containers.count(Lookup::Ok);
                ever_ok = true;
                if last_error.take().is_some() || (containers.is_empty() && !found.is_empty()) {
                    info!(
                        "container names from the Docker daemon at {}: {} running",
                        socket.display(),
                        found.len()
                    );
                }
                errors_in_a_row = 0;
                containers.replace(found);
            }
            Err(e) => {
                containers.count(e.lookup());
                errors_in_a_row += 1;
                if e.lookup() == Lookup::NoSocket || errors_in_a_row >= MAX_STALE_ERRORS {
                    containers.clear();
                }
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    // A host without Docker is the usual case: quiet unless a daemon was
                    // there before.
                    if e.lookup() == Lookup::NoSocket && !ever_ok {
                        debug!("Docker container names not resolved: {text}");
                    } else if e.lookup() == Lookup::NoSocket {
                        info!("Docker container names not resolved: {text}");
                    } else {
                        warn!("Docker container names not resolved: {text}");
                    }
                    last_error = Some(text);
                }
            }
        }
        // Ids still unknown ask again only after the next periodic list.
        if periodic {
            containers
                .0
                .pending
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID1: &str = "3f4e1c8a9b2d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn list_json() -> String {
        format!(
            r#"[
              {{"Id":"{ID1}","Names":["/shop-worker-1"],"Image":"shop/worker:1.2",
                "ImageID":"sha256:abc","Command":"sh -c","Created":1700000000,
                "Labels":{{"com.docker.compose.project":"shop",
                          "com.docker.compose.service":"worker","other":"x"}},
                "State":"running","Status":"Up 3 minutes"}},
              {{"Id":"{ID2}","Names":["/web/db","/db"],"Image":"postgres","Labels":null}},
              {{"Id":"not-an-id","Names":["/x"],"Image":"y","Labels":{{}}}}
            ]"#
        )
    }

    #[test]
    fn container_lists_are_parsed() {
        let list = parse_container_list(list_json().as_bytes()).unwrap();
        assert_eq!(list.len(), 2, "ids that are not container ids are skipped");
        assert_eq!(
            list[0],
            (
                ID1.to_string(),
                ContainerName {
                    name: "shop-worker-1".into(),
                    image: "shop/worker:1.2".into(),
                    compose_project: Some("shop".into()),
                    compose_service: Some("worker".into()),
                }
            )
        );
        // A link's name is not the container's own; no labels is no Compose names.
        assert_eq!(list[1].1.name, "db");
        assert_eq!(list[1].1.compose_project, None);
        assert!(parse_container_list(b"[]").unwrap().is_empty());
        assert!(parse_container_list(b"{\"message\":\"x\"}").is_err());
        assert!(parse_container_list(b"[{\"Names\":[]}]").is_err());
    }

    #[test]
    fn untrusted_strings_are_bounded_and_lose_control_characters() {
        assert_eq!(clean("a\nb\x1b[31mc\u{7f}"), "ab[31mc");
        let long = "é".repeat(100);
        let cut = clean(&long);
        assert!(cut.len() <= MAX_VALUE && cut.len() == 128, "{}", cut.len());
        assert!(cut.chars().all(|c| c == 'é'));
        let json = format!(
            r#"[{{"Id":"{ID1}","Names":["/{}"],"Image":"i\u0000m",
                 "Labels":{{"com.docker.compose.project":"\u0007","com.docker.compose.service":"{}"}}}}]"#,
            "n".repeat(1000),
            "s".repeat(300)
        );
        let list = parse_container_list(json.as_bytes()).unwrap();
        let name = &list[0].1;
        assert_eq!(name.name.len(), MAX_VALUE);
        assert_eq!(name.image, "im");
        assert_eq!(name.compose_project, None, "empty once cleaned");
        assert_eq!(
            name.compose_service.as_deref().map(str::len),
            Some(MAX_VALUE)
        );
    }

    #[test]
    fn the_cache_is_bounded_and_counts_what_it_drops() {
        let containers = Containers::default();
        let list: Vec<_> = (0..MAX_CONTAINERS + 5)
            .map(|i| (format!("{i:064x}"), ContainerName::default()))
            .collect();
        containers.replace(list);
        assert_eq!(containers.len(), MAX_CONTAINERS);
        assert_eq!(containers.dropped(), 5);
        containers.replace(vec![(ID1.into(), ContainerName::default())]);
        assert_eq!(containers.len(), 1);
        assert!(containers.get(ID1).is_some());
        assert!(containers.get(ID2).is_none());
        assert!(containers.0.pending.read().unwrap().contains(ID2));
        containers.clear();
        assert!(containers.is_empty());
    }

    #[tokio::test]
    async fn a_missing_socket_is_no_socket() {
        let path = std::env::temp_dir().join(format!("leakscope-no-docker-{}", std::process::id()));
        let e = list_containers(&path).await.unwrap_err();
        assert_eq!(e.lookup(), Lookup::NoSocket, "{e}");
        // A file that is not a socket is not asked.
        std::fs::write(&path, "").unwrap();
        let e = list_containers(&path).await.unwrap_err();
        assert!(matches!(e, DockerError::NotRoots { .. }), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    /// A fake daemon on a unix socket: the real client, the real parser, and the size bound.
    #[tokio::test]
    async fn lists_containers_from_a_daemon_on_a_unix_socket() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let dir = std::env::temp_dir().join(format!("leakscope-docker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let body = list_json();
        let huge = format!("[{}]", " ".repeat(MAX_BODY + 1));
        let server = tokio::spawn(async move {
            for answer in [body, huge] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 4096];
                let n = s.read(&mut req).await.unwrap();
                let req = String::from_utf8_lossy(&req[..n]).to_string();
                assert!(
                    req.starts_with("GET /containers/json HTTP/1.1\r\n"),
                    "{req}"
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    answer.len()
                );
                s.write_all(head.as_bytes()).await.unwrap();
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let list = list_containers(&path).await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].1.compose_service.as_deref(), Some("worker"));
        let e = list_containers(&path).await.unwrap_err();
        assert_eq!(e.lookup(), Lookup::Error, "{e}");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
