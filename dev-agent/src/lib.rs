//! One way to run the agent under test or benchmark: `leakscope run` on a free loopback port
//! (or a given address), its stderr in a log file, ready once `/healthz` answers, stopped with
//! SIGTERM and then killed. xtask and the integration tests both start it through [`Launch`],
//! so they wait for it, report its failures and stop it the same way.
//!
//! Dev-only: the agent itself never depends on this crate.

mod launch;
mod running;
mod stop;

pub use launch::{Launch, StartError, free_port};
pub use running::Agent;
pub use stop::{Stopped, stop};
