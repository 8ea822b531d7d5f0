//! `leakscope report --agent URL --out incident.html`: one self-contained HTML page for an
//! incident ticket, from a running agent's API: the suspects with their memory history,
//! evidence, time to limit and growth flame graph; worker pools and their recycles; task
//! verdicts; recent OOM kills; the agent's health and the host's memory.
//!
//! Reading ([`gather`]) and drawing ([`page`], [`suspects`], [`sections`], [`chart`],
//! [`format`]) are apart: the page is a
//! pure function of what the agent said, tested without an agent.

pub mod chart;
#[cfg(test)]
mod fixtures;
pub mod format;
pub mod page;
pub mod sections;
pub mod suspects;

use std::{path::PathBuf, time::Duration};

use leakscope_api::{
    HistoryResponse, HostResponse, OomResponse, PoolsResponse, Process, ProcessesResponse,
    TasksResponse, paths,
};
use page::{Fetched, Flame, Incident, Suspect};

use crate::{
    client::{AgentClient, ClientError, ClientOptions},
    investigate::out_dir::{OutDir, OutDirError},
};

pub struct Options {
    pub client: ClientOptions,
    pub out: PathBuf,
    /// Seconds of growth profile per suspect the agent does not sample already; 0: none.
    pub profile_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Out(#[from] OutDirError),
}

/// Beyond a profile's own seconds, what the agent may take to symbolize and draw it.
const PROFILE_GRACE: Duration = Duration::from_secs(60);

pub async fn run(options: Options) -> Result<(), ReportError> {
    // The output first: a mistake there should not cost the wait for profiles.
    let (dir, name) = OutDir::containing(&options.out)?;
    let client = AgentClient::new(&options.client)?;
    let profile_timeout = options.client.timeout.max(PROFILE_GRACE);
    let incident = gather(&client, options.profile_seconds, profile_timeout).await?;
    let html = page::render(&incident);
    // Profiles go to profiling_users only: the page they are in is its owner's alone.
    dir.write_private(&name, html.as_bytes())?;
    let graphs = incident
        .suspects
        .iter()
        .filter(|s| matches!(s.flame, Flame::Svg(_)))
        .count();
    eprintln!(
        "leakscope: wrote {} (suspects: {}, flame graphs: {graphs}, {})",
        options.out.display(),
        incident.suspects.len(),
        format::bytes(html.len() as u64)
    );
    Ok(())
}

/// Reads what the report shows. Only an agent that cannot be reached, or that refuses the
/// process list, fails the report; any other part the agent cannot give is shown as missing,
/// with its reason.
pub async fn gather(
    client: &AgentClient,
    profile_seconds: u64,
    profile_timeout: Duration,
) -> Result<Incident, ClientError> {
    let health = match client.get_bytes("/healthz").await {
        Ok(body) => Ok(String::from_utf8_lossy(&body).into_owned()),
        Err(e) if e.is_not_running() => return Err(e),
        Err(e) => Err(e.to_string()),
    };
    let (processes, host, pools, tasks, oom) = tokio::join!(
        client.get_json::<ProcessesResponse>(paths::PROCESSES),
        client.get_json::<HostResponse>(paths::HOST),
        client.get_json::<PoolsResponse>(paths::POOLS),
        client.get_json::<TasksResponse>(paths::TASKS),
        client.get_json::<OomResponse>(paths::OOM),
    );
    let processes = processes?;
    let chosen = suspects::suspects(&processes.processes);
    let mut suspects = Vec::with_capacity(chosen.len());
    for (i, process) in chosen.into_iter().enumerate() {
        let history = fetched(
            client
                .get_json::<HistoryResponse>(&paths::process_history(process.pid))
                .await,
        );
        let flame = flame(client, process, profile_seconds, profile_timeout, i).await;
        suspects.push(Suspect {
            process: process.clone(),
            history,
            flame,
        });
    }
    Ok(Incident {
        agent: client.url().to_string(),
        generated: format::now_unix(),
        health,
        host: fetched(host),
        suspects,
        processes,
        pools: fetched(pools),
        tasks: fetched(tasks),
        oom: fetched(oom),
    })
}

fn fetched<T>(r: Result<T, ClientError>) -> Fetched<T> {
    r.map_err(|e| e.to_string())
}

/// The suspect's growth flame graph: at once when the agent samples it already
/// (`--auto-growth`), else a profile of `seconds`, one suspect at a time (the agent profiles
/// one request at a time).
async fn flame(
    client: &AgentClient,
    p: &Process,
    seconds: u64,
    timeout: Duration,
    index: usize,
) -> Flame {
    let path = if p.growth_sampled {
        format!("/debug/pprof/growth?pid={}&format=svg", p.pid)
    } else if seconds == 0 {
        return Flame::Missing(
            "the agent does not sample this process's growth (it does with --auto-growth), \
             and --profile-seconds 0 took no profile"
                .into(),
        );
    } else {
        eprintln!(
            "leakscope: profiling the growth of suspect {} (pid {}) for {seconds}s",
            index + 1,
            p.pid
        );
        format!(
            "/debug/pprof/growth?pid={}&seconds={seconds}&format=svg",
            p.pid
        )
    };
    match client
        .get_bytes_within(&path, timeout + Duration::from_secs(seconds))
        .await
    {
        Ok(svg) => Flame::Svg(svg.to_vec()),
        Err(e) => Flame::Missing(e.to_string()),
    }
}
