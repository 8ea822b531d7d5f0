//! `investigate --out DIR`, which runs as root: reports go only into a directory that
//! leakscope created or that its user owns and alone can write, and every file is written
//! through a descriptor of that directory, so a symbolic link planted by another user can
//! neither redirect the directory nor a file in it. The path to it is walked one component at
//! a time, each opened relative to the last without following a link; a link on the way is
//! followed only where no other user could have placed or swapped it (see [`link_is_trusted`]),
//! so `/tmp/theirs/x` -> `/etc` cannot turn `--out /tmp/theirs/x/cron.d` into /etc/cron.d.
//!
//! `report --out FILE` writes one file wherever its user asks ([`OutDir::containing`]): the
//! directory is theirs to choose (reached by the same walk), and the file is written as a new
//! file renamed over the name, so a link planted at that name is replaced, never written
//! through.

use std::{
    fs::File,
    io::{self, Write as _},
    os::{fd::OwnedFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use rustix::{
    fs::{self as rfs, AtFlags, Mode, OFlags},
    io::Errno,
};

const WHAT_TO_DO: &str = "give a directory only you can write to, or a path that does not \
                          exist yet (leakscope then creates it, mode 0700)";

#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error("--out {dir}: {what}: {cause}")]
    Io {
        dir: String,
        what: String,
        cause: io::Error,
    },
    #[error(
        "refusing --out {dir}: it is a symbolic link, which leakscope does not follow; \
         {WHAT_TO_DO}"
    )]
    Symlink { dir: String },
    #[error(
        "refusing --out {dir}: it goes through the symbolic link {link} (owner uid {owner}) in a \
         directory that another user than uid {euid} could change, so they could redirect the \
         reports; give a path without it (the link points to {target})"
    )]
    UntrustedLink {
        dir: String,
        link: String,
        target: String,
        owner: u32,
        euid: u32,
    },
    #[error("refusing --out {dir}: it exists and is not a directory")]
    NotDirectory { dir: String },
    #[error(
        "refusing to write reports into {dir}: it is owned by uid {owner} (mode {mode:04o}), \
         not by uid {euid} that leakscope runs as, and its owner could redirect them; \
         {WHAT_TO_DO}"
    )]
    NotOwned {
        dir: String,
        owner: u32,
        mode: u32,
        euid: u32,
    },
    #[error(
        "refusing to write reports into {dir}: it is group- or world-writable (owner uid \
         {owner}, mode {mode:04o}), so another user could swap files in it; \
         `chmod go-w` it, or {WHAT_TO_DO}"
    )]
    Writable { dir: String, owner: u32, mode: u32 },
    #[error("--out {path}: give a file name, not a directory")]
    NotAFile { path: String },
}

/// An output directory that passed the checks, held open.
pub struct OutDir {
    fd: OwnedFd,
    shown: String,
}

impl OutDir {
    /// Opens `path` as a directory without following a symbolic link in its last component,
    /// creating it (mode 0700) when missing, and refuses it unless it belongs to this user
    /// and no one else can write into it.
    pub fn open(path: &Path) -> Result<Self, OutDirError> {
        // A trailing slash makes the kernel follow a symbolic link despite O_NOFOLLOW;
        // rebuilding from components drops it (and `.` components).
        let path: PathBuf = path.components().collect();
        let shown = path.display().to_string();
        let io_err = |what: &str, e: io::Error| OutDirError::Io {
            dir: shown.clone(),
            what: what.to_owned(),
            cause: e,
        };
        let fd = walk(&path, &shown, End::CreateNoLink)?;
        let st = rfs::fstat(&fd).map_err(|e| io_err("reading its owner", e.into()))?;
        let (owner, mode) = (st.st_uid, st.st_mode & 0o7777);
        let euid = rustix::process::geteuid().as_raw();
        if owner != euid {
            return Err(OutDirError::NotOwned {
                dir: shown,
                owner,
                mode,
                euid,
            });
        }
        if mode & 0o022 != 0 {
            return Err(OutDirError::Writable {
                dir: shown,
                owner,
                mode,
            });
        }
        Ok(Self { fd, shown })
    }

    /// The directory that is to hold `file`, and the file's name in it. Unlike
    /// [`OutDir::open`] it does not judge the directory's owner: this is for a file the user
    /// asked for by name, such as an incident report under /tmp. Links on the way to it are
    /// followed as [`OutDir::open`] follows them (never one another user could have placed),
    /// and [`OutDir::write`] never follows a link at the name.
    pub fn containing(file: &Path) -> Result<(Self, String), OutDirError> {
        let path = file.display().to_string();
        let not_a_file = || OutDirError::NotAFile { path: path.clone() };
        // `a/b/` names a directory; Path::file_name would quietly take `b`.
        if path.ends_with('/') {
            return Err(not_a_file());
        }
        let name = match file.file_name().and_then(|n| n.to_str()) {
            Some(n) if n != "." && n != ".." => n.to_string(),
            _ => return Err(not_a_file()),
        };
        let parent = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let shown = parent.display().to_string();
        let fd = walk(parent, &shown, End::Existing)?;
        if rfs::statat(&fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory)
        {
            return Err(not_a_file());
        }
        Ok((Self { fd, shown }, name))
    }

    /// The directory as given, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Writes `name` in full or not at all: into a new temporary file, synced, then renamed
    /// over `name`. A rename replaces whatever entry `name` is, a symbolic link included,
    /// and never writes through it.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), OutDirError> {
        self.write_with_mode(name, bytes, 0o644)
    }

    /// [`OutDir::write`], readable by its owner only: for a file that holds what only some
    /// users may see (profiles), written where others may look (/tmp).
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> Result<(), OutDirError> {
        self.write_with_mode(name, bytes, 0o600)
    }

    fn write_with_mode(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), OutDirError> {
        debug_assert!(!name.contains('/') && name != "." && name != "..", "{name}");
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let err = |what: &str, e: io::Error| OutDirError::Io {
            dir: self.shown.clone(),
            what: format!("{what} {name}"),
            cause: e,
        };
        let created = match self.create(&tmp, mode) {
            // Left by an earlier run that died (or planted: removing a link removes the link).
            Err(Errno::EXIST) => {
                let _ = rfs::unlinkat(&self.fd, &tmp, AtFlags::empty());
                self.create(&tmp, mode)
            }
            other => other,
        };
        let mut file =
            File::from(created.map_err(|e| err("creating a temporary file for", e.into()))?);
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| err("writing", e))
            .and_then(|()| {
                rfs::renameat(&self.fd, &tmp, &self.fd, name)
                    .map_err(|e| err("renaming the temporary file to", e.into()))
            });
        if written.is_err() {
            let _ = rfs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        }
        written
    }

    fn create(&self, tmp: &str, mode: u32) -> rustix::io::Result<OwnedFd> {
        rfs::openat(
            &self.fd,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
    }
}

/// Symbolic links followed on the way to an output directory, at most (the kernel's limit).
const MAX_LINKS: usize = 40;

/// How [`walk`] treats what it finds at the end of the path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// `investigate --out`: created when missing (0755 on the way, 0700 at the end), and
    /// never a link.
    CreateNoLink,
    /// The directory of `report --out FILE`: must exist; a link there is followed on the
    /// same terms as one on the way.
    Existing,
}

/// Opens the directory `path` names, from `/` or the working directory, one component at a
/// time: each is opened relative to the one before without following a link, and a link on
/// the way is followed only when [`link_is_trusted`].
fn walk(path: &Path, shown: &str, end: End) -> Result<OwnedFd, OutDirError> {
    use std::{collections::VecDeque, ffi::OsString, path::Component};
    let io_err = |what: String, e: Errno| OutDirError::Io {
        dir: shown.to_owned(),
        what,
        cause: e.into(),
    };
    let open_root = |abs: bool| {
        let start = if abs { "/" } else { "." };
        rfs::open(start, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err(format!("opening {start}"), e))
    };
    let steps = |p: &Path| -> VecDeque<Option<OsString>> {
        p.components()
            .filter_map(|c| match c {
                Component::RootDir => Some(None),
                Component::Normal(n) => Some(Some(n.to_owned())),
                Component::ParentDir => Some(Some("..".into())),
                Component::CurDir | Component::Prefix(_) => None,
            })
            .collect()
    };
    let euid = rustix::process::geteuid().as_raw();
    let mut todo = steps(path);
    let mut cur = open_root(false)?;
    // The path as walked so far, links resolved: for messages.
    let mut walked = PathBuf::new();
    let mut links = 0;
    let mut created = false;
    while let Some(step) = todo.pop_front() {
        let Some(name) = step else {
            cur = open_root(true)?;
            walked = PathBuf::from("/");
            continue;
        };
        let last = todo.is_empty();
        let here = walked.join(&name);
        match rfs::openat(
            &cur,
            name.as_os_str(),
            DIR_FLAGS | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => {
                cur = fd;
                walked = here;
                created = false;
            }
            Err(Errno::NOENT) if !created && end == End::CreateNoLink => {
                // Someone may create it first (EEXIST): it is then opened and judged like any
                // other existing directory.
                let mode = if last { 0o700 } else { 0o755 };
                match rfs::mkdirat(&cur, name.as_os_str(), Mode::from_raw_mode(mode)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(format!("creating {}", here.display()), e)),
                }
                created = true;
                todo.push_front(Some(name));
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let is_link = rfs::statat(&cur, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode).is_symlink());
                if !is_link && last {
                    return Err(OutDirError::NotDirectory {
                        dir: shown.to_owned(),
                    });
                }
                if !is_link {
                    return Err(io_err(format!("opening {}", here.display()), Errno::NOTDIR));
                }
                if last && end == End::CreateNoLink {
                    return Err(OutDirError::Symlink {
                        dir: shown.to_owned(),
                    });
                }
                let target = rfs::readlinkat(&cur, name.as_os_str(), Vec::new())
                    .map_err(|e| io_err(format!("reading the link {}", here.display()), e))?;
                let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
                let (trusted, owner) = link_is_trusted(&cur, name.as_os_str(), euid)
                    .map_err(|e| io_err(format!("checking the link {}", here.display()), e))?;
                if !trusted {
                    return Err(OutDirError::UntrustedLink {
                        dir: shown.to_owned(),
                        link: here.display().to_string(),
                        target: target.display().to_string(),
                        owner,
                        euid,
                    });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(io_err("following its links".into(), Errno::LOOP));
                }
                for step in steps(&target).into_iter().rev() {
                    todo.push_front(step);
                }
                created = false;
            }
            Err(e) => return Err(io_err(format!("opening {}", here.display()), e)),
        }
    }
    Ok(cur)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// Whether the link `name` in `dir` can be followed: only root or this user could have put it
/// there or can swap it, because they alone can write `dir`, or because `dir` is sticky (as
/// /tmp) and the link is theirs. Returns the link's owner too, for the message.
fn link_is_trusted(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    euid: u32,
) -> rustix::io::Result<(bool, u32)> {
    let ours = |uid: u32| uid == 0 || uid == euid;
    let d = rfs::fstat(dir)?;
    let l = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let closed = ours(d.st_uid) && d.st_mode & 0o022 == 0;
    let sticky = d.st_mode & 0o1000 != 0;
    Ok((closed || (sticky && ours(l.st_uid)), l.st_uid))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    use super::*;

    /// A fresh directory of this test's own, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("leakscope-outdir-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_missing_directory_is_created_0700_and_files_replace_links() {
        let scratch = Scratch::new("create");
        let victim = scratch.0.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let dir = scratch.0.join("a/b/out");
        let out = OutDir::open(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        symlink(&victim, dir.join("report.json")).unwrap();
        out.write("report.json", b"{}").unwrap();
        let written = std::fs::symlink_metadata(dir.join("report.json")).unwrap();
        assert!(written.file_type().is_file());
        assert_eq!(std::fs::read(dir.join("report.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["report.json"]);
    }

    #[test]
    fn a_symlink_is_refused_even_with_a_trailing_slash() {
        let scratch = Scratch::new("symlink");
        let real = scratch.0.join("real");
        std::fs::create_dir(&real).unwrap();
        let link = scratch.0.join("link");
        symlink(&real, &link).unwrap();
        for given in [link.clone(), PathBuf::from(format!("{}/", link.display()))] {
            let e = OutDir::open(&given).err().expect("a symlink was accepted");
            assert!(matches!(e, OutDirError::Symlink { .. }), "{e}");
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        let file = scratch.0.join("file");
        std::fs::write(&file, "").unwrap();
        let e = OutDir::open(&file).err().unwrap();
        assert!(matches!(e, OutDirError::NotDirectory { .. }), "{e}");
    }

    /// Whether a test that gives files to another user can run: root only (CI runs as root,
    /// where not being root is a failure).
    fn can_chown() -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root && std::env::var("CI").as_deref() == Ok("true") {
            panic!("under CI=true this test must run as root (it chowns files)");
        }
        root
    }

    const NOBODY: u32 = 65534;

    fn chown_nofollow(path: &Path, uid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    }

    #[test]
    fn a_link_on_the_way_is_followed_only_where_no_other_user_could_place_it() {
        if !can_chown() {
            return;
        }
        let scratch = Scratch::new("links");
        let target = scratch.0.join("target");
        std::fs::create_dir(&target).unwrap();
        // In a directory only root can write: followed, the reports land in the target.
        symlink(&target, scratch.0.join("ours")).unwrap();
        OutDir::open(&scratch.0.join("ours/out")).unwrap();
        assert!(target.join("out").is_dir());

        // Another user's directory, and their link in it to a root-owned one.
        let theirs = scratch.0.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chown_nofollow(&theirs, NOBODY);
        symlink(&target, theirs.join("x")).unwrap();
        chown_nofollow(&theirs.join("x"), NOBODY);
        let e = OutDir::open(&theirs.join("x/planted"))
            .err()
            .expect("a link another user controls was followed");
        assert!(
            matches!(e, OutDirError::UntrustedLink { owner, .. } if owner == NOBODY),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&theirs.join("x").display().to_string())
                && text.contains(&target.display().to_string()),
            "{text}"
        );
        assert!(!target.join("planted").exists());

        // A sticky directory others can write to, as /tmp: root's link is followed, another
        // user's is not.
        let sticky = scratch.0.join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        symlink(&target, sticky.join("root-link")).unwrap();
        OutDir::open(&sticky.join("root-link/by-root")).unwrap();
        assert!(target.join("by-root").is_dir());
        symlink(&target, sticky.join("their-link")).unwrap();
        chown_nofollow(&sticky.join("their-link"), NOBODY);
        let e = OutDir::open(&sticky.join("their-link/by-them"))
            .err()
            .expect("followed");
        assert!(matches!(e, OutDirError::UntrustedLink { .. }), "{e}");
        assert!(!target.join("by-them").exists());
    }

    #[test]
    fn a_named_file_is_not_written_through_another_users_link_on_the_way() {
        if !can_chown() {
            return;
        }
        let scratch = Scratch::new("containing-link");
        let target = scratch.0.join("target");
        std::fs::create_dir(&target).unwrap();
        let theirs = scratch.0.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chown_nofollow(&theirs, NOBODY);
        symlink(&target, theirs.join("x")).unwrap();
        chown_nofollow(&theirs.join("x"), NOBODY);
        let e = OutDir::containing(&theirs.join("x/incident.html"))
            .err()
            .expect("a link another user controls was followed");
        assert!(matches!(e, OutDirError::UntrustedLink { .. }), "{e}");
        // The user's own choice of a link stands where no one else could have placed it.
        symlink(&target, scratch.0.join("ours")).unwrap();
        let (dir, name) = OutDir::containing(&scratch.0.join("ours/incident.html")).unwrap();
        dir.write(&name, b"<html>").unwrap();
        assert_eq!(
            std::fs::read(target.join("incident.html")).unwrap(),
            b"<html>"
        );
    }

    #[test]
    fn missing_directories_on_the_way_are_created_and_dot_dot_is_walked() {
        let scratch = Scratch::new("parents");
        let dir = scratch.0.join("a/b/../c/out");
        OutDir::open(&dir).unwrap();
        let made = scratch.0.join("a/c/out");
        assert_eq!(std::fs::metadata(&made).unwrap().mode() & 0o7777, 0o700);
        assert!(scratch.0.join("a/b").is_dir());
    }

    #[test]
    fn a_directory_others_can_write_is_refused_with_its_mode() {
        let scratch = Scratch::new("writable");
        for mode in [0o770, 0o757, 0o1777] {
            std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = OutDir::open(&scratch.0).err().expect("accepted");
            let text = e.to_string();
            assert!(
                matches!(e, OutDirError::Writable { mode: m, .. } if m == mode),
                "{e}"
            );
            assert!(
                text.contains(&format!("mode {mode:04o}"))
                    && text.contains(&scratch.0.display().to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_named_file_anywhere_replaces_a_planted_link_and_never_writes_through_it() {
        let scratch = Scratch::new("containing");
        // A directory others may write to, as /tmp is: allowed here, the user chose it.
        std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let victim = scratch.0.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let file = scratch.0.join("incident.html");
        symlink(&victim, &file).unwrap();
        let (dir, name) = OutDir::containing(&file).unwrap();
        assert_eq!(name, "incident.html");
        dir.write(&name, b"<html>").unwrap();
        assert!(
            std::fs::symlink_metadata(&file)
                .unwrap()
                .file_type()
                .is_file()
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"<html>");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");

        for not_a_file in [scratch.0.clone(), scratch.0.join("x/"), PathBuf::from("..")] {
            let e = OutDir::containing(&not_a_file).err().expect("accepted");
            assert!(matches!(e, OutDirError::NotAFile { .. }), "{e}");
        }
        let e = OutDir::containing(&scratch.0.join("missing/incident.html"))
            .err()
            .expect("accepted");
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    #[test]
    fn a_stale_temporary_file_does_not_block_a_write() {
        let scratch = Scratch::new("stale");
        let out = OutDir::open(&scratch.0).unwrap();
        let stale = scratch
            .0
            .join(format!(".growth.txt.{}.tmp", std::process::id()));
        std::fs::write(&stale, "old").unwrap();
        out.write("growth.txt", b"new").unwrap();
        assert_eq!(std::fs::read(scratch.0.join("growth.txt")).unwrap(), b"new");
        assert!(!stale.exists());
    }
}
