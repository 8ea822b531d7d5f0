//! The agent's end of the marker channel: a Unix datagram socket it binds and owns.
//!
//! - `SO_PASSCRED` is set before `bind()`, so every datagram arrives with the sender's pid
//!   from the kernel (`SCM_CREDENTIALS`, translated into the agent's pid namespace); a process
//!   cannot claim another's pid without `CAP_SYS_ADMIN`.
//! - The receive queue of an `AF_UNIX` datagram socket is bounded in datagrams by
//!   `net.unix.max_dgram_qlen` (default 10), read when the socket is created. The agent raises
//!   it for the moment it creates its socket and puts it back, so only its own socket gets the
//!   longer queue.
//! - Mode 0666 by default: any local user may send, which is safe because identity comes from
//!   the kernel and the agent bounds what each sender can make it keep. `--task-socket-mode
//!   0660 --task-socket-group G` restricts it to a group.

use std::{
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
            net::UnixDatagram,
        },
    },
    path::{Path, PathBuf},
};

pub const DEFAULT_PATH: &str = "/run/leakscope/tasks.sock";
const QLEN_SYSCTL: &str = "/proc/sys/net/unix/max_dgram_qlen";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create the task socket's directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another process is listening on {path} (another leakscope?)")]
    InUse { path: PathBuf },
    #[error("task socket path {path} is too long for a Unix socket (at most 107 bytes)")]
    PathTooLong { path: PathBuf },
    #[error("task socket {path}: {call} failed: {source}")]
    Sys {
        path: PathBuf,
        call: &'static str,
        source: io::Error,
    },
    #[error("unknown group {0:?} for the task socket")]
    NoSuchGroup(String),
}

#[derive(Clone, Debug)]
pub struct SocketOptions {
    pub path: PathBuf,
    /// Permission bits of the socket file.
    pub mode: u32,
    /// Group (name or gid) to own the socket file.
    pub group: Option<String>,
    /// Datagrams the receive queue holds; 0 keeps the system's `net.unix.max_dgram_qlen`.
    pub queue_len: u32,
}

impl SocketOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode: 0o666,
            group: None,
            queue_len: 0,
        }
    }
}

/// The sender of a datagram, as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What `recv` found, beside the bytes written into the caller's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    /// The datagram's real length (may exceed the buffer: see `truncated`).
    pub len: usize,
    pub truncated: bool,
    pub creds: Option<Credentials>,
    /// File descriptors or other control messages came with it (closed at once), or did
    /// not fit: no client of the protocol sends any.
    pub ancillary: bool,
}

pub struct TaskSocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Device and inode of the socket file we bound, so that we remove only our own.
    identity: Option<(u64, u64)>,
    /// The receive queue's length in datagrams, as set when the socket was created.
    pub queue_len: u32,
    pub mode: u32,
}

fn sys<'a>(path: &'a Path, call: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Sys {
        path: path.to_path_buf(),
        call,
        source,
    }
}

fn last_error(path: &Path, call: &'static str) -> SocketError {
    sys(path, call)(io::Error::last_os_error())
}

impl TaskSocket {
    pub fn bind(opts: &SocketOptions) -> Result<Self, SocketError> {
        let path = opts.path.as_path();
        let raw_path = path.as_os_str().as_bytes();
        // sun_path is 108 bytes, NUL included.
        if raw_path.is_empty() || raw_path.len() > 107 {
            return Err(SocketError::PathTooLong {
                path: path.to_path_buf(),
            });
        }
        let gid = opts.group.as_deref().map(resolve_group).transpose()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
            // Searchable by the workers that must reach the socket inside it.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
        remove_stale(path)?;

        let (fd, queue_len) = with_queue_len(opts.queue_len, || {
            // SAFETY: plain socket(2); the result is checked.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(last_error(path, "socket"));
            }
            // SAFETY: a fresh fd we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        });
        let fd = fd?;
        let on: libc::c_int = 1;
        // SAFETY: valid fd and option buffer of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_error(path, "setsockopt(SO_PASSCRED)"));
        }
        // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(raw_path) {
            *dst = *src as libc::c_char;
        }
        let len = (size_of::<libc::sa_family_t>() + raw_path.len() + 1) as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(last_error(path, "bind"));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode))
            .map_err(sys(path, "chmod"))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(sys(path, "chown"))?;
        }
        let identity = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        Ok(Self {
            sock: UnixDatagram::from(fd),
            path: path.to_path_buf(),
            identity,
            queue_len,
            mode: opts.mode,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives one datagram into `buf` (blocking unless `nonblocking`), with its sender's
    /// credentials. Descriptors passed with it are closed at once.
    pub fn recv(&self, buf: &mut [u8], nonblocking: bool) -> io::Result<Datagram> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for the credentials and one small extra message (u64s for alignment).
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; zeroed is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        let mut flags = libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
        if nonblocking {
            flags |= libc::MSG_DONTWAIT;
        }
        // SAFETY: msg points at valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = n as usize;
        let mut out = Datagram {
            len,
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0 || len > buf.len(),
            creds: None,
            ancillary: msg.msg_flags & libc::MSG_CTRUNC != 0,
        };
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
        // msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let payload = (*c).cmsg_len as usize - (data as usize - c as usize);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                        if payload >= size_of::<libc::ucred>() =>
                    {
                        let cred = data.cast::<libc::ucred>().read_unaligned();
                        out.creds = Some(Credentials {
                            pid: cred.pid as u32,
                            uid: cred.uid,
                            gid: cred.gid,
                        });
                    }
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        // Never keep a descriptor a stranger sent: close them all.
                        for i in 0..payload / size_of::<libc::c_int>() {
                            let fd = data.cast::<libc::c_int>().add(i).read_unaligned();
                            libc::close(fd);
                        }
                        out.ancillary = true;
                    }
                    _ => out.ancillary = true,
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(out)
    }
}

impl Drop for TaskSocket {
    fn drop(&mut self) {
        remove_if_ours(&self.path, self.identity);
    }
}

/// Removes the socket file when dropped, if it is still the one bound (not a successor's):
/// the listener thread that owns the socket never returns, so the agent holds this instead.
pub struct SocketFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl TaskSocket {
    pub fn file(&self) -> SocketFile {
        SocketFile {
            path: self.path.clone(),
            identity: self.identity,
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        remove_if_ours(&self.path, self.identity);
    }
}

fn remove_if_ours(path: &Path, identity: Option<(u64, u64)>) {
    let now = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if now.is_some() && now == identity {
        let _ = std::fs::remove_file(path);
    }
}

/// A socket file left by an agent that is gone is removed; a live one is an error, and so is
/// anything that is not a socket.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let probe = UnixDatagram::unbound().map_err(sys(path, "socket"))?;
    match probe.connect(path) {
        Ok(()) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(_) => std::fs::remove_file(path).map_err(sys(path, "unlink")),
    }
}

fn resolve_group(group: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name =
        std::ffi::CString::new(group).map_err(|_| SocketError::NoSuchGroup(group.to_string()))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf's length is passed.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(SocketError::NoSuchGroup(group.to_string()));
    }
    Ok(grp.gr_gid)
}

/// Runs `create` with `net.unix.max_dgram_qlen` raised to `want` (when higher than the
/// system's), then puts the sysctl back. Returns what `create` returned and the queue length
/// the socket got.
fn with_queue_len<T>(want: u32, create: impl FnOnce() -> T) -> (T, u32) {
    let current: Option<u32> = std::fs::read_to_string(QLEN_SYSCTL)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let Some(current) = current else {
        // No such sysctl visible (unusual): the kernel default.
        return (create(), 10);
    };
    if want <= current {
        return (create(), current);
    }
    if let Err(e) = std::fs::write(QLEN_SYSCTL, want.to_string()) {
        log::warn!(
            "cannot raise net.unix.max_dgram_qlen to {want} for the task socket ({e}); its \
             queue holds {current} datagrams, and bursts beyond that are dropped by senders"
        );
        return (create(), current);
    }
    let out = create();
    if let Err(e) = std::fs::write(QLEN_SYSCTL, current.to_string()) {
        log::warn!("cannot restore net.unix.max_dgram_qlen to {current}: {e}");
    }
    (out, want)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    pub fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leakscope-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn binds_creates_the_directory_and_sets_the_mode() {
        let dir = temp_dir("sock-mode");
        let path = dir.join("sub/tasks.sock");
        let mut opts = SocketOptions::new(&path);
        opts.mode = 0o660;
        let s = TaskSocket::bind(&opts).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert!(s.queue_len >= 1);
        drop(s);
        assert!(!path.exists(), "removed on drop");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_live_socket_is_not_stolen_but_a_stale_one_is_replaced() {
        let dir = temp_dir("sock-stale");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tasks.sock");
        let first = TaskSocket::bind(&SocketOptions::new(&path)).unwrap();
        let err = TaskSocket::bind(&SocketOptions::new(&path)).err().unwrap();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        drop(first);
        // A socket file nobody listens on any more.
        let stale = UnixDatagram::bind(dir.join("stale.sock")).unwrap();
        drop(stale);
        let s = TaskSocket::bind(&SocketOptions::new(dir.join("stale.sock"))).unwrap();
        assert!(s.path().exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn anything_else_at_the_path_is_left_alone() {
        let dir = temp_dir("sock-file");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tasks.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = TaskSocket::bind(&SocketOptions::new(&path)).err().unwrap();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        let long = dir.join("x".repeat(120));
        assert!(matches!(
            TaskSocket::bind(&SocketOptions::new(long)),
            Err(SocketError::PathTooLong { .. })
        ));
        let mut opts = SocketOptions::new(dir.join("g.sock"));
        opts.group = Some("no-such-group-leakscope".into());
        assert!(matches!(
            TaskSocket::bind(&opts),
            Err(SocketError::NoSuchGroup(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn credentials_come_from_the_kernel() {
        let dir = temp_dir("sock-creds");
        let path = dir.join("tasks.sock");
        let s = TaskSocket::bind(&SocketOptions::new(&path)).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"LS1 begin t", &path).unwrap();
        let mut buf = [0u8; 513];
        let d = s.recv(&mut buf, true).unwrap();
        assert_eq!(&buf[..d.len], b"LS1 begin t");
        let c = d.creds.expect("SO_PASSCRED gives credentials");
        assert_eq!(c.pid, std::process::id());
        // SAFETY: no preconditions.
        assert_eq!(c.uid, unsafe { libc::geteuid() });
        assert!(!d.truncated && !d.ancillary);
        // Oversized: seen as such, never cut into something valid.
        client.send_to(&[b'x'; 600], &path).unwrap();
        let d = s.recv(&mut buf, true).unwrap();
        assert!(d.truncated);
        assert_eq!(d.len, 600);
        let e = s.recv(&mut buf, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let _ = std::fs::remove_dir_all(dir);
    }
}
