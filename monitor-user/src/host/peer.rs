//! Who is on the other end of a loopback connection. A TCP peer on this host's loopback is a
//! local process, and the kernel's socket table says which uid opened its socket, so the
//! agent can apply the rule ptrace applies: a user may look inside their own processes, root
//! inside any.

use std::{net::SocketAddr, os::unix::fs::MetadataExt as _};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0} is not a loopback peer")]
    NotLoopback(SocketAddr),
    #[error("the socket of loopback peer {0} is not in /proc/net/tcp (it closed?)")]
    NotFound(SocketAddr),
    #[error("reading the socket table: {0}")]
    Table(String),
}

/// The uid that owns the client socket at `peer`, a loopback address. Blocking: it reads the
/// socket table.
pub fn loopback_uid(peer: SocketAddr) -> Result<u32, PeerError> {
    let peer = canonical(peer);
    if !peer.ip().is_loopback() {
        return Err(PeerError::NotLoopback(peer));
    }
    let table = match peer {
        SocketAddr::V4(_) => procfs::net::tcp(),
        SocketAddr::V6(_) => procfs::net::tcp6(),
    }
    .map_err(|e| PeerError::Table(e.to_string()))?;
    // The peer's own socket has the peer's address as its local end; the agent's accepted
    // socket has it as the remote end and belongs to root, so it must not match.
    table
        .iter()
        .find(|e| canonical(e.local_address) == peer)
        .map(|e| e.uid)
        .ok_or(PeerError::NotFound(peer))
}

/// An IPv4 client of an IPv6 listener shows as `::ffff:a.b.c.d`; its socket is in the IPv4
/// table.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The uid that owns `/proc/PID`: the process's effective uid, or root for a process that is
/// not dumpable (setuid programs, or one that asked) — exactly who may ptrace it.
pub fn process_owner(pid: u32) -> std::io::Result<u32> {
    std::fs::metadata(format!("/proc/{pid}")).map(|m| m.uid())
}

/// Whether `uid` may see inside `owner`'s processes.
pub fn may_inspect(uid: u32, owner: u32) -> bool {
    uid == 0 || uid == owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_as_the_peer_of_its_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(loopback_uid(peer).unwrap(), me);
    }

    #[test]
    fn network_peers_and_unknown_sockets_are_refused() {
        let remote: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        assert!(matches!(
            loopback_uid(remote),
            Err(PeerError::NotLoopback(_))
        ));
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        assert!(matches!(
            loopback_uid(mapped),
            Err(PeerError::NotLoopback(_))
        ));
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(loopback_uid(nobody), Err(PeerError::NotFound(_))));
    }

    #[test]
    fn root_sees_all_and_users_their_own() {
        assert!(may_inspect(0, 1000));
        assert!(may_inspect(1000, 1000));
        assert!(!may_inspect(1000, 0));
        assert!(!may_inspect(1000, 1001));
    }
}
