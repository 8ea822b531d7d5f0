//! The agent's end of the marker channel: a Unix datagram socket it binds and owns.
//!
//! - `SO_PASSCRED` is set before `bind()`, so every datagram arrives with the sender's pid
//!   and uid from the kernel (`SCM_CREDENTIALS`, translated into the agent's namespaces); a
//!   process cannot claim another's pid without `CAP_SYS_ADMIN` over its pid namespace.
//! - The receive queue of an `AF_UNIX` datagram socket is bounded in datagrams by
//!   `net.unix.max_dgram_qlen` (default 10), read when the socket is created. The agent raises
//!   it for the moment it creates its socket and puts it back, so only its own socket gets the
//!   longer queue.
//! - Mode 0666 by default: any local user may send, which is safe because identity comes from
//!   the kernel and the agent bounds what each uid can make it do (`budget.rs`).
//!   `--task-socket-mode 0660 --task-socket-group G` restricts it to a group.
//!
//! The agent runs as root and the socket's directory may be in a place other users reach
//! (`/tmp` in tests, a host path mounted into containers), so it works through the directory,
//! never through its path again once it has checked it:
//! - the directory is opened with `O_DIRECTORY | O_NOFOLLOW` (a symlink planted in its place
//!   is refused, not followed) and must be owned by the agent's euid and writable by nobody
//!   else, unless sticky like `/tmp` (then others may add entries but not remove or rename
//!   the agent's). A group-writable directory is refused even for `--task-socket-group`: any
//!   member could replace the socket with their own. The directories above it are resolved
//!   as usual (`/var/run` is often a symlink): they can only change what the path names for
//!   workers, never what the agent creates, chmods or removes, which all go through the fd;
//! - the socket is bound at `/proc/self/fd/<dir>/<name>`, inside the directory checked;
//! - its mode and group are set through an `O_PATH` descriptor of the socket file, checked to
//!   be a socket first; a stale socket is removed, and the agent's own at exit, with
//!   `unlinkat` on the directory, after `fstatat` says it is the one expected.
//!
//! Receiving goes through nix's `recvmsg`, not rustix's: rustix's `UCred` holds the pid as a
//! non-zero type, but the kernel gives pid 0 for a sender outside the agent's pid namespace
//! (an agent in a container without the host's pid namespace). nix will not walk control
//! messages the kernel had to cut short (`MSG_CTRUNC`), and descriptors among them could then
//! not be closed; so the control buffer holds the most the kernel attaches to a datagram on
//! this socket: the credentials and `SCM_MAX_FD` descriptors.

use std::{
    io::{self, IoSliceMut},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, net::UnixDatagram},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags};
use rustix::{
    fs::{AtFlags, FileType, Mode, OFlags, Stat},
    io::Errno,
    net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType},
};

pub const DEFAULT_PATH: &str = "/run/leakscope/tasks.sock";
const QLEN_SYSCTL: &str = "/proc/sys/net/unix/max_dgram_qlen";
/// Mode of a directory the agent creates: workers (any user) must reach the socket in it.
const DIR_MODE: u32 = 0o755;
const STICKY: u32 = 0o1000;
/// Descriptors one datagram can carry (include/net/scm.h; unix(7)): `sendmsg` refuses more.
const SCM_MAX_FD: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create the task socket's directory {path}: {cause}")]
    Dir { path: PathBuf, cause: io::Error },
    #[error(
        "the task socket's directory {path} is a symbolic link or not a directory; refusing \
         to follow it"
    )]
    DirNotADirectory { path: PathBuf },
    #[error(
        "the task socket's directory {path} is owned by uid {owner}, not by the agent's uid \
         {euid}; refusing to use a directory another user controls (remove it, or choose \
         another --task-socket)"
    )]
    DirNotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "the task socket's directory {path} (mode {mode:04o}) is writable by group or others \
         and not sticky: anyone who can write there could replace the socket; refusing \
         (chmod go-w it, or choose another --task-socket)"
    )]
    DirWritable { path: PathBuf, mode: u32 },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another process is listening on {path} (another leakscope?)")]
    InUse { path: PathBuf },
    #[error(
        "task socket path {path} is too long for a Unix socket (at most 107 bytes, and 80 for \
         its file name) or has no file name"
    )]
    PathTooLong { path: PathBuf },
    #[error("task socket {path}: {call} failed: {cause}")]
    Sys {
        path: PathBuf,
        call: &'static str,
        cause: io::Error,
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
    /// 0 when the sender is outside the agent's pid namespace.
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

/// The socket file: its name in a directory held open, and its identity when bound.
#[derive(Clone)]
struct Entry {
    dir: Arc<OwnedFd>,
    name: PathBuf,
    /// Device and inode of the socket file we bound, so that we remove only our own.
    identity: (u64, u64),
}

pub struct TaskSocket {
    sock: UnixDatagram,
    path: PathBuf,
    entry: Entry,
    /// The receive queue's length in datagrams, as set when the socket was created.
    pub queue_len: u32,
    pub mode: u32,
}

fn sys<'a>(path: &'a Path, call: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Sys {
        path: path.to_path_buf(),
        call,
        cause: source,
    }
}

fn errno<'a>(path: &'a Path, call: &'static str) -> impl FnOnce(Errno) -> SocketError + 'a {
    move |e| sys(path, call)(e.into())
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn identity(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// `/proc/self/fd/<fd>/<name>`: `name` inside the directory `fd` holds open, wherever that
/// directory is now.
fn in_dir(dir: &OwnedFd, name: &Path) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

/// Opens the socket's directory, creating it (0755) when missing, and checks that only the
/// agent (or, in a sticky directory, nobody but each entry's owner) can change what is in it.
fn open_dir(path: &Path) -> Result<OwnedFd, SocketError> {
    let dir_err = |source: io::Error| SocketError::Dir {
        path: path.to_path_buf(),
        cause: source,
    };
    let created = match std::fs::create_dir(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(parent).map_err(dir_err)?;
            match std::fs::create_dir(path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(dir_err(e)),
            }
        }
        Err(e) => return Err(dir_err(e)),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return Err(SocketError::DirNotADirectory {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(errno(path, "open")(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(errno(path, "fstat"))?;
    let euid = euid();
    if st.st_uid != euid {
        return Err(SocketError::DirNotOwned {
            path: path.to_path_buf(),
            owner: st.st_uid,
            euid,
        });
    }
    let mut mode = st.st_mode & 0o7777;
    if created {
        // Made by us just now (checked above: it is ours), whatever the umask.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(DIR_MODE)).map_err(errno(path, "fchmod"))?;
        mode = DIR_MODE;
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Err(SocketError::DirWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(fd)
}

impl TaskSocket {
    pub fn bind(opts: &SocketOptions) -> Result<Self, SocketError> {
        let path = opts.path.as_path();
        let too_long = || SocketError::PathTooLong {
            path: path.to_path_buf(),
        };
        // Workers bind nothing, they send to this path: sun_path is 108 bytes, NUL included.
        // The agent binds through /proc/self/fd/N/, which leaves room for 80 bytes of name.
        let name = path.file_name().map(Path::new).ok_or_else(too_long)?;
        let raw_path = path.as_os_str().as_bytes();
        if raw_path.len() > 107 || name.as_os_str().len() > 80 {
            return Err(too_long());
        }
        let gid = opts.group.as_deref().map(resolve_group).transpose()?;
        let dir_path = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = Arc::new(open_dir(dir_path)?);
        remove_stale(&dir, name, path)?;

        let (fd, queue_len) = with_queue_len(opts.queue_len, || {
            rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::DGRAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .map_err(errno(path, "socket"))
        });
        let fd = fd?;
        rustix::net::sockopt::set_socket_passcred(&fd, true)
            .map_err(errno(path, "setsockopt(SO_PASSCRED)"))?;
        let addr =
            SocketAddrUnix::new(in_dir(&dir, name).as_os_str()).map_err(errno(path, "bind"))?;
        rustix::net::bind(&fd, &addr).map_err(errno(path, "bind"))?;

        // The socket file, through a descriptor of its own: nothing another user does to the
        // name between these calls can make them act on another file.
        let file = rustix::fs::openat(
            dir.as_fd(),
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(path, "open"))?;
        let st = rustix::fs::fstat(&file).map_err(errno(path, "fstat"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        let entry = Entry {
            dir,
            name: name.to_path_buf(),
            identity: identity(&st),
        };
        // Bound: from here on a failure removes the file again (Entry's owner drops it).
        let sock = Self {
            sock: UnixDatagram::from(fd),
            path: path.to_path_buf(),
            entry,
            queue_len,
            mode: opts.mode,
        };
        // O_PATH descriptors take no fchmod; the /proc link reaches the same inode.
        rustix::fs::chmod(
            Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())),
            Mode::from_raw_mode(opts.mode),
        )
        .map_err(errno(path, "chmod"))?;
        if let Some(gid) = gid {
            let gid = rustix::fs::Gid::from_raw(gid);
            rustix::fs::chownat(&file, "", None, Some(gid), AtFlags::EMPTY_PATH)
                .map_err(errno(path, "chown"))?;
        }
        Ok(sock)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives one datagram into `buf` (blocking unless `nonblocking`), with its sender's
    /// credentials. Descriptors passed with it are closed at once.
    pub fn recv(&self, buf: &mut [u8], nonblocking: bool) -> io::Result<Datagram> {
        let room = buf.len();
        let mut iov = [IoSliceMut::new(buf)];
        let mut control = nix::cmsg_space!(libc::ucred, [RawFd; SCM_MAX_FD]);
        // MSG_TRUNC: the datagram's real length, so an oversized one is seen as such.
        let mut flags = MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC;
        if nonblocking {
            flags |= MsgFlags::MSG_DONTWAIT;
        }
        let msg = nix::sys::socket::recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            flags,
        )?;
        let mut out = Datagram {
            len: msg.bytes,
            truncated: msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.bytes > room,
            creds: None,
            ancillary: false,
        };
        // Err only for MSG_CTRUNC, which the buffer's size rules out (see the module's notes).
        let Ok(cmsgs) = msg.cmsgs() else {
            out.ancillary = true;
            return Ok(out);
        };
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => {
                    out.creds = Some(Credentials {
                        pid: cred.pid() as u32,
                        uid: cred.uid(),
                        gid: cred.gid(),
                    });
                }
                ControlMessageOwned::ScmRights(fds) => {
                    // Never keep a descriptor a stranger sent: close them all.
                    for fd in fds {
                        // SAFETY: the kernel installed `fd` in this process for this datagram
                        // alone; nothing else holds it.
                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                    out.ancillary = true;
                }
                _ => out.ancillary = true,
            }
        }
        Ok(out)
    }
}

impl Drop for TaskSocket {
    fn drop(&mut self) {
        remove_if_ours(&self.entry);
    }
}

/// Removes the socket file when dropped, if it is still the one bound (not a successor's):
/// the listener thread that owns the socket never returns, so the agent holds this instead.
pub struct SocketFile {
    entry: Entry,
}

impl TaskSocket {
    pub fn file(&self) -> SocketFile {
        SocketFile {
            entry: self.entry.clone(),
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        remove_if_ours(&self.entry);
    }
}

fn remove_if_ours(entry: &Entry) {
    let now = rustix::fs::statat(entry.dir.as_fd(), &entry.name, AtFlags::SYMLINK_NOFOLLOW);
    if now.is_ok_and(|st| identity(&st) == entry.identity) {
        let _ = rustix::fs::unlinkat(entry.dir.as_fd(), &entry.name, AtFlags::empty());
    }
}

/// A socket file left by an agent that is gone is removed; a live one is an error, and so is
/// anything that is not a socket.
fn remove_stale(dir: &OwnedFd, name: &Path, path: &Path) -> Result<(), SocketError> {
    let st = match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(errno(path, "fstatat")(e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let probe = UnixDatagram::unbound().map_err(sys(path, "socket"))?;
    if probe.connect(in_dir(dir, name)).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_path_buf(),
        });
    }
    // Only the socket looked at: in a sticky directory its owner could have swapped it since.
    let now = rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno(path, "fstatat"))?;
    if identity(&now) != identity(&st) {
        return Err(SocketError::InUse {
            path: path.to_path_buf(),
        });
    }
    rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()).map_err(errno(path, "unlink"))
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
    use std::os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::UnixDatagram,
    };

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
        let made = std::fs::metadata(dir.join("sub")).unwrap();
        assert_eq!(made.permissions().mode() & 0o7777, 0o755);
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

    fn chown(path: &Path, uid: u32) {
        std::os::unix::fs::chown(path, Some(uid), None).unwrap();
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn is_root() -> bool {
        euid() == 0
    }

    #[test]
    fn a_directory_another_user_owns_or_may_write_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root to give a directory away");
            return;
        }
        let dir = temp_dir("sock-owner");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tasks.sock");
        chown(&dir, 65534);
        let err = TaskSocket::bind(&SocketOptions::new(&path)).err().unwrap();
        assert!(
            matches!(err, SocketError::DirNotOwned { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        chown(&dir, 0);
        for mode in [0o777, 0o775, 0o757] {
            set_mode(&dir, mode);
            let err = TaskSocket::bind(&SocketOptions::new(&path)).err().unwrap();
            assert!(
                matches!(err, SocketError::DirWritable { .. }),
                "{mode:o}: {err}"
            );
        }
        assert!(!path.exists(), "nothing was bound");
        // Sticky like /tmp: others cannot remove or rename the agent's entry.
        set_mode(&dir, 0o1777);
        let s = TaskSocket::bind(&SocketOptions::new(&path)).unwrap();
        assert!(s.path().exists());
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_symlink_in_place_of_the_directory_is_not_followed() {
        let base = temp_dir("sock-link");
        let target = base.join("target");
        std::fs::create_dir_all(&target).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = TaskSocket::bind(&SocketOptions::new(link.join("tasks.sock")))
            .err()
            .unwrap();
        assert!(matches!(err, SocketError::DirNotADirectory { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "nothing made there"
        );
        // A file in place of the directory is no better.
        std::fs::write(base.join("file"), "").unwrap();
        let err = TaskSocket::bind(&SocketOptions::new(base.join("file/tasks.sock")))
            .err()
            .unwrap();
        assert!(matches!(err, SocketError::DirNotADirectory { .. }), "{err}");
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn the_socket_file_is_removed_only_if_it_is_still_ours() {
        let dir = temp_dir("sock-ours");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tasks.sock");
        let s = TaskSocket::bind(&SocketOptions::new(&path)).unwrap();
        let file = s.file();
        // Someone replaced it (an operator, a successor): not ours to remove.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "successor").unwrap();
        drop(file);
        drop(s);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "successor");
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

    #[test]
    fn the_most_descriptors_a_datagram_can_carry_are_all_closed() {
        use std::io::{IoSlice, Read as _};

        use nix::sys::socket::{ControlMessage, sendmsg};

        let dir = temp_dir("sock-fds");
        let path = dir.join("tasks.sock");
        let s = TaskSocket::bind(&SocketOptions::new(&path)).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&path).unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        rustix::fs::fcntl_setfl(&reader, OFlags::NONBLOCK).unwrap();
        let send = |n: usize| {
            let fds = vec![writer.as_raw_fd(); n];
            sendmsg::<()>(
                client.as_raw_fd(),
                &[IoSlice::new(b"LS1 begin t")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
        };
        assert_eq!(
            send(SCM_MAX_FD + 1),
            Err(nix::errno::Errno::EINVAL),
            "the kernel's limit is SCM_MAX_FD"
        );
        send(SCM_MAX_FD).unwrap();
        drop(writer);
        let mut buf = [0u8; 513];
        let d = s.recv(&mut buf, true).unwrap();
        assert!(d.ancillary);
        assert!(
            d.creds.is_some(),
            "the credentials came beside them: nothing was cut short"
        );
        // The pipe reads as ended only once every copy of its write end is closed.
        assert_eq!(reader.read(&mut [0u8; 1]).unwrap(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
