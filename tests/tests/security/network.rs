//! A peer on the network, for real: a network namespace of the test's own, joined to the
//! host by a veth pair with link-local addresses. Traffic never leaves this machine.

use std::{net::SocketAddr, process::Command};

use integration_tests::{
    Agent, MemHog, attached_tracepoints, free_port, kernel_tests_enabled, python_get,
};

const HOST_ADDR: &str = "169.254.77.1";
const PEER_ADDR: &str = "169.254.77.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with one address, `PEER_ADDR`, that reaches the host at `HOST_ADDR`.
struct PeerNamespace {
    name: String,
}

impl PeerNamespace {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let name = format!("ls-peer-{id}");
        let (host_if, peer_if) = (format!("lsh{id}"), format!("lsp{id}"));
        // A namespace left by a killed earlier run.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{HOST_ADDR}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ns.exec_ip(&["addr", "add", &format!("{PEER_ADDR}/30"), "dev", &peer_if]);
        ns.exec_ip(&["link", "set", &peer_if, "up"]);
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec_ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// `status body` of a GET from inside the namespace.
    fn get(&self, url: &str) -> (u16, String) {
        let mut launcher = Command::new("ip");
        launcher.args(["netns", "exec", &self.name, "python3"]);
        python_get(launcher, url)
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn a_network_peer_gets_metrics_but_neither_the_process_api_nor_profiles() {
    if !kernel_tests_enabled("a_network_peer_gets_metrics_but_neither_the_process_api_nor_profiles")
    {
        return;
    }
    let ns = PeerNamespace::new();
    let port = free_port();
    let listen: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    // Profiling on, no credentials: what an operator who only wanted local profiles runs.
    let agent = Agent::start_listening(listen, &["--no-task-socket", "--enable-profiling"]);
    let hog = MemHog::spawn(&[]);
    let base = format!("http://{HOST_ADDR}:{port}");

    let (status, body) = ns.get(&format!("{base}/metrics"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("leakscope_"), "{body}");
    assert_eq!(ns.get(&format!("{base}/healthz")).0, 200);

    let (status, body) = ns.get(&format!("{base}/api/v1/processes"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--expose-api"), "{body}");

    let (status, body) = ns.get(&format!(
        "{base}/debug/pprof/growth?pid={}&seconds=1",
        hog.pid
    ));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("profiling_users"), "{body}");
    assert!(
        !attached_tracepoints(agent.pid()).contains(&"page_fault_user".to_string()),
        "a refused profile attached the fault program"
    );

    // The same agent still serves both on loopback.
    assert_eq!(agent.get("/api/v1/processes").0, 200);
    let (status, text) = agent.get(&format!(
        "/debug/pprof/growth?pid={}&seconds=1&format=txt",
        hog.pid
    ));
    assert_eq!(status, 200, "{text}");
}

#[test]
fn expose_api_serves_the_process_api_to_the_network() {
    if !kernel_tests_enabled("expose_api_serves_the_process_api_to_the_network") {
        return;
    }
    let ns = PeerNamespace::new();
    let port = free_port();
    let listen: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let agent = Agent::start_listening(listen, &["--no-task-socket", "--expose-api"]);
    let (status, body) = ns.get(&format!("http://{HOST_ADDR}:{port}/api/v1/processes"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"processes\""), "{body}");
    assert!(
        agent.log().contains("--expose-api without basic auth"),
        "{}",
        agent.log()
    );
}
