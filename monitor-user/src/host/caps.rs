//! Which capabilities the agent holds, so a missing one is named rather than guessed at.

use crate::host::proc::{self, ProcError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "mount tracefs when it is absent; stands in for CAP_BPF/CAP_PERFMON on old kernels",
};
pub const CAP_SYS_PTRACE: Capability = Capability {
    name: "CAP_SYS_PTRACE",
    bit: 19,
    why: "read /proc/<pid>/{status,cgroup,cmdline} of processes owned by other users",
};
pub const CAP_DAC_READ_SEARCH: Capability = Capability {
    name: "CAP_DAC_READ_SEARCH",
    bit: 2,
    why: "read /proc and cgroup files owned by other users",
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    why: "attach tracepoints and uprobes (perf_event_open)",
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    why: "load BPF programs and create maps",
};

/// Capabilities the agent cannot run without (CAP_SYS_ADMIN covers both on any kernel).
pub const REQUIRED: [Capability; 2] = [CAP_BPF, CAP_PERFMON];
/// Capabilities whose absence degrades the agent.
pub const OPTIONAL: [Capability; 3] = [CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSet(u64);

impl CapSet {
    /// The effective set of this process.
    pub fn current() -> Result<Self, ProcError> {
        proc::own_effective_caps().map(Self)
    }

    pub fn has(self, cap: Capability) -> bool {
        self.0 & (1 << cap.bit) != 0
    }

    /// Required capabilities that are missing; CAP_SYS_ADMIN satisfies them all.
    pub fn missing_required(self) -> Vec<Capability> {
        if self.has(CAP_SYS_ADMIN) {
            return Vec::new();
        }
        REQUIRED.into_iter().filter(|c| !self.has(*c)).collect()
    }

    pub fn missing_optional(self) -> Vec<Capability> {
        OPTIONAL.into_iter().filter(|c| !self.has(*c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        let caps = CapSet(0x0000_01ff_ffff_ffff);
        assert!(caps.missing_required().is_empty());
        assert!(caps.missing_optional().is_empty());
    }

    #[test]
    fn bpf_without_perfmon_names_perfmon() {
        let caps = CapSet(1 << CAP_BPF.bit);
        let missing: Vec<_> = caps.missing_required().iter().map(|c| c.name).collect();
        assert_eq!(missing, ["CAP_PERFMON"]);
    }

    #[test]
    fn sys_admin_stands_in() {
        assert!(CapSet(1 << CAP_SYS_ADMIN.bit).missing_required().is_empty());
    }

    #[test]
    fn unprivileged_misses_both() {
        assert_eq!(CapSet(0).missing_required().len(), 2);
    }

    #[test]
    fn the_agent_reads_its_own_set() {
        // capget(2) asks the kernel directly, without /proc.
        let kernel = rustix::thread::capabilities(None).unwrap().effective.bits();
        assert_eq!(CapSet::current().unwrap(), CapSet(kernel));
    }
}
