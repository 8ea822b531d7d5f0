//! The host's memory (`/proc/meminfo`) and name, for `/api/v1/host`. `/proc/meminfo` is not
//! namespaced: an agent in a container with the host's `/proc` reads the host's.

use leakscope_api::{HostMemory, HostResponse};
use procfs::Current as _;

#[derive(Debug, thiserror::Error)]
#[error("cannot read /proc/meminfo: {0}")]
pub struct MeminfoError(String);

pub fn read() -> Result<HostResponse, MeminfoError> {
    let m = procfs::Meminfo::current().map_err(|e| MeminfoError(e.to_string()))?;
    // The name is for people reading a report; a host without one is still described.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(HostResponse {
        hostname,
        memory: HostMemory {
            total_bytes: m.mem_total,
            free_bytes: m.mem_free,
            available_bytes: m.mem_available,
            cached_bytes: m.cached.saturating_add(m.buffers),
            swap_total_bytes: m.swap_total,
            swap_free_bytes: m.swap_free,
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_hosts_memory_is_read_in_bytes() {
        let h = super::read().unwrap();
        let m = &h.memory;
        // Bytes, not the kB /proc/meminfo writes: no machine that runs this has under 64 MiB.
        assert!(m.total_bytes > 64 << 20, "{m:?}");
        assert!(m.free_bytes <= m.total_bytes, "{m:?}");
        let available = m.available_bytes.expect("kernels since 3.14 estimate it");
        assert!(available <= m.total_bytes && available > 0, "{m:?}");
        assert!(m.swap_free_bytes <= m.swap_total_bytes, "{m:?}");
    }
}
