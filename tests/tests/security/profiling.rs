//! `/debug/pprof/growth`: a profile keeps a host-wide page-fault program attached and shows a
//! process's code paths. Off unless asked for; a client that walks away releases it; a local
//! user profiles only their own processes.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use integration_tests::{
    Agent, MemHog, Spawned, as_unprivileged, attached_tracepoints, kernel_tests_enabled,
    python_get, wait_for,
};

const FAULT_HOOK: &str = "page_fault_user";

fn sampled(agent: &Agent) -> f64 {
    agent
        .metrics()
        .value("leakscope_growth_sampled_processes", &[])
        .unwrap_or(-1.0)
}

fn fault_program_attached(agent: &Agent) -> bool {
    attached_tracepoints(agent.pid())
        .iter()
        .any(|t| t == FAULT_HOOK)
}

/// Sends a profile request and hangs up without reading the answer, as `curl -m1` does.
fn ask_and_disconnect(agent: &Agent, pid: u32, seconds: u32) {
    let mut conn = TcpStream::connect(agent.addr).expect("connect");
    write!(
        conn,
        "GET /debug/pprof/growth?pid={pid}&seconds={seconds} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    // The hold is taken once the handler runs: wait until the agent counts it.
    let held = wait_for(Duration::from_secs(10), || {
        (sampled(agent) >= 1.0).then_some(())
    });
    assert!(
        held.is_some(),
        "the request never held sampling:\n{}",
        agent.log()
    );
    drop(conn);
}

#[test]
fn a_profile_whose_client_disconnects_is_released() {
    if !kernel_tests_enabled("a_profile_whose_client_disconnects_is_released") {
        return;
    }
    let agent = Agent::start(&["--no-task-socket", "--enable-profiling"]);
    let hogs: Vec<MemHog> = (0..3).map(|_| MemHog::spawn(&[])).collect();
    assert!(
        !fault_program_attached(&agent),
        "attached before any profile"
    );
    // More disconnects than the kernel has target slots (64) would exhaust them if any hold
    // leaked; across three pids, so reused slots are not what keeps it working.
    for round in 0..70 {
        let pid = hogs[round % hogs.len()].pid;
        ask_and_disconnect(&agent, pid, 30);
        let released = wait_for(Duration::from_secs(10), || {
            (sampled(&agent) == 0.0 && !fault_program_attached(&agent)).then_some(())
        });
        assert!(
            released.is_some(),
            "round {round}: pid {pid} still sampled ({}) or the fault program still attached \
             ({:?}) after its client left:\n{}",
            sampled(&agent),
            attached_tracepoints(agent.pid()),
            agent.log()
        );
    }
    // Profiles still work afterwards: nothing was used up.
    let (status, text) = agent.get(&format!(
        "/debug/pprof/growth?pid={}&seconds=1&format=txt",
        hogs[0].pid
    ));
    assert_eq!(status, 200, "{text}");
    assert!(!fault_program_attached(&agent));
}

#[test]
fn profiles_in_flight_are_capped_and_counted() {
    if !kernel_tests_enabled("profiles_in_flight_are_capped_and_counted") {
        return;
    }
    let agent = Agent::start(&["--no-task-socket", "--enable-profiling"]);
    let hog = MemHog::spawn(&[]);
    // Nine at once: eight hold sampling for 20 s, the ninth is refused at once, whichever
    // it is.
    let mut conns: Vec<TcpStream> = (0..9)
        .map(|_| {
            let mut c = TcpStream::connect(agent.addr).unwrap();
            write!(
                c,
                "GET /debug/pprof/growth?pid={}&seconds=20 HTTP/1.1\r\nHost: x\r\n\r\n",
                hog.pid
            )
            .unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let answered = wait_for(Duration::from_secs(10), || {
        let answers: Vec<String> = conns
            .iter_mut()
            .filter_map(|c| {
                let mut buf = [0u8; 512];
                match c.read(&mut buf) {
                    Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    _ => None,
                }
            })
            .collect();
        (!answers.is_empty()).then_some(answers)
    })
    .unwrap_or_default();
    assert_eq!(answered.len(), 1, "{answered:?}\n{}", agent.log());
    assert!(answered[0].starts_with("HTTP/1.1 429"), "{}", answered[0]);
    assert!(
        answered[0].contains("already being taken"),
        "{}",
        answered[0]
    );
    // The gauge follows the agent's interval.
    let one = wait_for(Duration::from_secs(5), || {
        (sampled(&agent) == 1.0).then_some(())
    });
    assert!(
        one.is_some(),
        "one pid, however many requests: {}",
        sampled(&agent)
    );
    drop(conns);
    let released = wait_for(Duration::from_secs(10), || {
        (sampled(&agent) == 0.0 && !fault_program_attached(&agent)).then_some(())
    });
    assert!(released.is_some(), "{}", agent.log());
}

#[test]
fn profiling_is_off_unless_enabled() {
    if !kernel_tests_enabled("profiling_is_off_unless_enabled") {
        return;
    }
    let agent = Agent::start(&["--no-task-socket"]);
    let hog = MemHog::spawn(&[]);
    let (status, text) = agent.get(&format!("/debug/pprof/growth?pid={}&seconds=1", hog.pid));
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("--enable-profiling"), "{text}");
    assert!(!fault_program_attached(&agent));
    // The process API stays on loopback.
    let (status, _) = agent.get("/api/v1/processes");
    assert_eq!(status, 200);
}

/// `status body` of a GET made by the unprivileged user.
fn get_as_unprivileged(agent: &Agent, path: &str) -> (u16, String) {
    python_get(
        as_unprivileged("python3"),
        &format!("http://{}{path}", agent.addr),
    )
}

#[test]
fn a_local_user_profiles_only_their_own_processes() {
    if !kernel_tests_enabled("a_local_user_profiles_only_their_own_processes") {
        return;
    }
    let agent = Agent::start(&["--no-task-socket", "--enable-profiling"]);
    let roots = MemHog::spawn(&[]);
    let theirs = Spawned::new(as_unprivileged("sleep").arg("60"));
    let (status, text) = get_as_unprivileged(
        &agent,
        &format!("/debug/pprof/growth?pid={}&seconds=1&format=txt", roots.pid),
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("may not profile"), "{text}");
    assert!(!fault_program_attached(&agent), "refused, yet attached");

    let (status, text) = get_as_unprivileged(
        &agent,
        &format!(
            "/debug/pprof/growth?pid={}&seconds=1&format=txt",
            theirs.pid()
        ),
    );
    assert_eq!(status, 200, "{text}");
    // Root may profile anyone's.
    let (status, text) = agent.get(&format!(
        "/debug/pprof/growth?pid={}&seconds=1&format=txt",
        theirs.pid()
    ));
    assert_eq!(status, 200, "{text}");
}

#[test]
fn a_kernel_thread_is_refused_up_front() {
    if !kernel_tests_enabled("a_kernel_thread_is_refused_up_front") {
        return;
    }
    let agent = Agent::start(&["--no-task-socket", "--enable-profiling"]);
    // pid 2 is kthreadd.
    let (status, text) = agent.get("/debug/pprof/growth?pid=2&seconds=1");
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("kernel thread"), "{text}");
    assert!(!fault_program_attached(&agent));
}
