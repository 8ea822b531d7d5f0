//! Endpoint hygiene with the real agent: TLS and basic auth from an exporter-toolkit web
//! config (a certificate and a bcrypt hash made here), `/healthz` open for kubelet probes,
//! web config mistakes refused at start, and container/pod labels from real cgroup paths.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, Metrics, Spawned, agent_bin, free_port, kernel_tests_enabled, wait_for,
};

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("leakscope-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create a scratch directory");
        Self(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write a scratch file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as server.crt/server.key.
fn certificate(dir: &TempDir) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("generate a certificate");
    dir.write("server.crt", &ck.cert.pem());
    dir.write("server.key", &ck.signing_key.serialize_pem());
    ck.cert.pem()
}

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";

/// bcrypt at the lowest cost keeps the test fast; the agent handles any cost the same way.
fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// The agent started with `--web-config-file`, stopped when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    scheme: &'static str,
    client: ureq::Agent,
    log: PathBuf,
}

impl Served {
    fn start(config: &Path, ca_pem: Option<&str>, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!("leakscope-endpoint-{}.log", addr.port()));
        let child = Command::new(agent_bin())
            .args(["run", "--listen", &addr.to_string(), "--interval", "200ms"])
            .arg("--web-config-file")
            .arg(config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("start the agent");
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = ca_pem {
            let cert = ureq::tls::Certificate::from_pem(pem.as_bytes()).expect("CA PEM");
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
        }
        let client = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .tls_config(tls.build())
            .build()
            .new_agent();
        let mut served = Self {
            child,
            addr,
            scheme: if ca_pem.is_some() { "https" } else { "http" },
            client,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("agent exited at start ({status}):\n{}", served.log());
            }
            if served.get("/healthz", None).is_ok() {
                return served;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not serve within 30 s:\n{}",
                served.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET with optional basic auth: (status, WWW-Authenticate, body).
    fn get(
        &self,
        path: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<(u16, Option<String>, String), ureq::Error> {
        let url = format!("{}://{}{path}", self.scheme, self.addr);
        let mut req = self.client.get(&url);
        if let Some((u, p)) = auth {
            req = req.header("Authorization", basic(u, p));
        }
        let mut resp = req.call()?;
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status().as_u16();
        Ok((status, challenge, resp.body_mut().read_to_string()?))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        integration_tests::stop(&mut self.child);
    }
}

fn basic(user: &str, password: &str) -> String {
    // RFC 7617 by hand: the tests crate has no base64 dependency and needs only this.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[test]
fn basic_auth_header_encoding() {
    assert_eq!(
        basic("Aladdin", "open sesame"),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    assert_eq!(basic("a", "b"), "Basic YTpi");
    assert_eq!(basic("ab", "c"), "Basic YWI6Yw==");
}

#[test]
fn metrics_over_tls_only_with_the_right_password() {
    if !kernel_tests_enabled("metrics_over_tls_only_with_the_right_password") {
        return;
    }
    let dir = TempDir::new("tls");
    let ca = certificate(&dir);
    // Relative paths: resolved against the config file's directory, as exporter-toolkit does.
    let config = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  {USER}: '{}'\n",
            bcrypt_hash(PASSWORD)
        ),
    );
    let agent = Served::start(&config, Some(&ca), &[]);

    let (status, _, body) = agent.get("/metrics", Some((USER, PASSWORD))).unwrap();
    assert_eq!(status, 200, "{body}");
    let m = Metrics::parse(&body);
    assert_eq!(m.value("leakscope_build_info", &[]), Some(1.0), "{body}");
    let (status, _, body) = agent
        .get("/api/v1/processes", Some((USER, PASSWORD)))
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"processes\""), "{body}");

    for (what, auth) in [
        ("no credentials", None),
        ("a wrong password", Some((USER, "wrong"))),
        ("an unknown user", Some(("admin", PASSWORD))),
    ] {
        for path in ["/metrics", "/api/v1/processes", "/"] {
            let (status, challenge, body) = agent.get(path, auth).unwrap();
            assert_eq!(status, 401, "{path} with {what}: {body}");
            assert_eq!(
                challenge.as_deref(),
                Some("Basic realm=\"leakscope\", charset=\"UTF-8\""),
                "{path} with {what}"
            );
            assert!(!body.contains("leakscope_"), "{path} leaked data: {body}");
        }
    }
    // Kubelet probes carry no credentials: /healthz answers them.
    let (status, _, body) = agent.get("/healthz", None).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ok") || body.starts_with("degraded"),
        "{body}"
    );

    // Plain HTTP on the TLS port gets nothing.
    let plain = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    assert!(
        plain
            .get(&format!("http://{}/metrics", agent.addr))
            .call()
            .is_err()
    );
    // A client that does not trust the certificate refuses it (the webpki roots only).
    let untrusting = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    assert!(
        untrusting
            .get(&format!("https://{}/healthz", agent.addr))
            .call()
            .is_err()
    );
    // Many scrapes with the same credentials: bcrypt is not paid for each.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, _, _) = agent.get("/healthz", Some((USER, PASSWORD))).unwrap();
        assert_eq!(status, 200);
        let (status, _, _) = agent.get("/api/v1/oom", Some((USER, PASSWORD))).unwrap();
        assert_eq!(status, 200);
    }
    eprintln!("40 authenticated requests in {:?}", started.elapsed());
    assert!(
        agent.log().contains("serving on https://"),
        "{}",
        agent.log()
    );
}

#[test]
fn basic_auth_alone_over_plain_http() {
    if !kernel_tests_enabled("basic_auth_alone_over_plain_http") {
        return;
    }
    let dir = TempDir::new("auth");
    let config = dir.write(
        "web.yml",
        &format!("basic_auth_users:\n  {USER}: '{}'\n", bcrypt_hash(PASSWORD)),
    );
    let agent = Served::start(&config, None, &[]);
    assert_eq!(agent.get("/metrics", None).unwrap().0, 401);
    assert_eq!(agent.get("/metrics", Some((USER, "nope"))).unwrap().0, 401);
    let (status, _, body) = agent.get("/metrics", Some((USER, PASSWORD))).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("leakscope_build_info"));
    assert!(
        agent
            .log()
            .contains("basic auth without TLS sends passwords in clear text"),
        "{}",
        agent.log()
    );
}

/// Runs the agent with a web config that must be refused; returns what it printed.
fn refused(config: &Path) -> String {
    let err = std::env::temp_dir().join(format!(
        "leakscope-refused-{}-{}.log",
        std::process::id(),
        config
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    let mut child = Command::new(agent_bin())
        .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--web-config-file")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run the agent");
    // A config wrongly accepted would leave the agent serving: never wait for ever.
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&err);
    assert!(
        status.is_some_and(|s| !s.success()),
        "agent accepted {} ({status:?}):\n{stderr}",
        config.display()
    );
    stderr
}

/// No privilege needed: the web config is checked before anything else.
#[test]
fn web_config_mistakes_are_refused_at_start_with_the_reason() {
    let dir = TempDir::new("badweb");
    certificate(&dir);
    dir.write("garbage.pem", "not a certificate\n");
    let hash = bcrypt_hash(PASSWORD);
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "missing.yml",
            String::new(),
            &["cannot read the web config file", "missing.yml"],
        ),
        (
            "yaml.yml",
            "tls_server_config: [cert_file: a\n".into(),
            &["yaml.yml", "line"],
        ),
        (
            "unknown.yml",
            format!("basic_auth_users:\n  {USER}: '{hash}'\nbasic_auth_user: {{}}\n"),
            &["unknown field `basic_auth_user`"],
        ),
        (
            "nested-unknown.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  certfile: x\n"
                .into(),
            &["unknown field `certfile`"],
        ),
        (
            "no-cert.yml",
            "tls_server_config:\n  cert_file: absent.crt\n  key_file: server.key\n".into(),
            &["tls_server_config.cert_file", "absent.crt"],
        ),
        (
            "bad-cert.yml",
            "tls_server_config:\n  cert_file: garbage.pem\n  key_file: server.key\n".into(),
            &["tls_server_config.cert_file", "garbage.pem", "no PEM"],
        ),
        (
            "bad-key.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: garbage.pem\n".into(),
            &["tls_server_config.key_file", "no PEM private key"],
        ),
        (
            "plain-password.yml",
            format!("basic_auth_users:\n  {USER}: {PASSWORD}\n"),
            &["basic_auth_users.prometheus is not a bcrypt hash"],
        ),
        (
            "empty.yml",
            "# nothing\n".into(),
            &["neither tls_server_config nor basic_auth_users"],
        ),
    ];
    for (name, text, expected) in cases {
        let path = if text.is_empty() {
            dir.0.join(name)
        } else {
            dir.write(name, &text)
        };
        let stderr = refused(&path);
        for e in expected {
            assert!(stderr.contains(e), "{name}: expected {e:?} in:\n{stderr}");
        }
        assert!(
            !stderr.contains("panicked"),
            "{name}: a panic is not an error message:\n{stderr}"
        );
    }
}

/// A memory cgroup laid out as a kubelet (cgroupfs driver) and CRI-O would, under a scratch
/// parent, removed when dropped.
struct PodCgroup {
    dirs: Vec<PathBuf>,
}

const POD_UID: &str = "1b3e5f7a-9c2d-4e6f-8a0b-c1d2e3f4a5b6";
const CONTAINER_ID: &str = "4c5d1e2f3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678ab";

impl PodCgroup {
    fn create() -> Self {
        let root = integration_tests::memory_cgroup_root()
            .map(|(root, _)| root)
            .expect("no memory cgroup hierarchy on this host");
        let mut dirs = Vec::new();
        let mut dir = root.join(format!("leakscope-test-{}", std::process::id()));
        for part in [
            "kubepods".to_string(),
            "burstable".to_string(),
            format!("pod{POD_UID}"),
            format!("crio-{CONTAINER_ID}"),
        ] {
            dirs.push(dir.clone());
            dir = dir.join(part);
        }
        dirs.push(dir);
        for d in &dirs {
            let _ = std::fs::create_dir(d);
        }
        Self { dirs }
    }

    fn add(&self, pid: u32) {
        let leaf = self.dirs.last().unwrap();
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", leaf.display()));
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn container_and_pod_labels_come_from_the_cgroup_path() {
    if !kernel_tests_enabled("container_and_pod_labels_come_from_the_cgroup_path") {
        return;
    }
    let agent = Agent::start(&["--match", r"cmdline=^sleep 3\.1415"]);
    let cgroup = PodCgroup::create();
    let in_pod = Spawned::new(Command::new("sleep").arg("3.14159e3"));
    // Moved at once: the agent reads the cgroup when it first looks at a process, 0.5 s in.
    cgroup.add(in_pod.pid());
    let on_host = Spawned::new(Command::new("sleep").arg("3.14158e3"));

    let p = wait_for(Duration::from_secs(10), || {
        agent
            .process(in_pod.pid())
            .filter(|p| !p["pod_uid"].is_null())
    })
    .unwrap_or_else(|| {
        panic!(
            "no pod for {}: {:?}\n{}",
            in_pod.pid(),
            agent.process(in_pod.pid()),
            agent.log()
        )
    });
    assert_eq!(p["pod_uid"], POD_UID, "{p}");
    assert_eq!(p["container_id"], CONTAINER_ID, "{p}");
    assert_eq!(p["runtime"], "crio", "{p}");
    assert_eq!(p["qos"], "burstable", "{p}");

    let host = wait_for(Duration::from_secs(10), || agent.process(on_host.pid()))
        .expect("host process tracked");
    assert!(
        host["pod_uid"].is_null() && host["container_id"].is_null(),
        "{host}"
    );
    assert_eq!(host["runtime"], "unknown", "{host}");

    let m = agent.metrics();
    let (pod_pid, host_pid) = (in_pod.pid().to_string(), on_host.pid().to_string());
    let pod_series = m.find("leakscope_process_rss_bytes", &[("pid", &pod_pid)]);
    assert_eq!(pod_series.len(), 4, "{}", m.text);
    for s in pod_series {
        assert_eq!(s.labels["container_id"], CONTAINER_ID);
        assert_eq!(s.labels["pod_uid"], POD_UID);
    }
    for s in m.find("leakscope_process_rss_bytes", &[("pid", &host_pid)]) {
        assert_eq!(s.labels["container_id"], "");
        assert_eq!(s.labels["pod_uid"], "");
    }
    drop(in_pod);
}
