//! Which task each thread is running, for the samplers: TASK_THREADS (host tid -> task id),
//! which the agent writes at each begin and end marker, and TASK_NAMES (task id -> name).
//! The tasks feature writes through [`TaskMap`]; the stack reports read names through it.
//!
//! `leakscope investigate` is a separate process with its own object: it sees the agent's
//! tasks through the two maps the agent pins in [`PIN_DIR`], a root-only directory of bpffs,
//! and loads its programs on the pinned TASK_THREADS. Without a running agent (no pins) its
//! maps are its own and empty: no sample has a task, and nothing says otherwise is wrong.

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use monitor_common::stacks::{
    DEFAULT_MAX_TASK_NAMES, NO_TASK, TASK_NAME_BYTES, TASK_NAMES_MAP, TASK_THREADS_MAP, TaskName,
};

use super::{BpfError, Kernel};

/// Where the agent pins its task maps.
pub const PIN_DIR: &str = "/sys/fs/bpf/leakscope";
const BPF_FS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin file of each task map, by map name.
pub fn pins(dir: &Path) -> [(&'static str, PathBuf); 2] {
    [
        (TASK_THREADS_MAP, dir.join("task_threads")),
        (TASK_NAMES_MAP, dir.join("task_names")),
    ]
}

/// The agent's pins, removed when dropped (on every exit path that unwinds).
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for (_, path) in pins(&self.dir) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Makes [`PIN_DIR`] ready for the agent's pins: bpffs mounted at /sys/fs/bpf (mounted,
/// mode 0700, when nothing is there), the directory root's own and closed to others, and no
/// pins left by an agent that did not exit cleanly (their maps would be stale).
pub fn prepare_pins() -> Result<Pins, String> {
    if !is_bpffs(Path::new(BPF_FS)) {
        mount_bpffs().map_err(|e| format!("bpffs is not mounted at {BPF_FS} ({e})"))?;
    }
    let dir = PathBuf::from(PIN_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {PIN_DIR}: {e}")),
    }
    check_dir(&dir)?;
    for (_, path) in pins(&dir) {
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("removed a stale pin {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove the stale {}: {e}", path.display())),
        }
    }
    Ok(Pins { dir })
}

/// A running agent's pin directory, for `investigate`: present, with both pins, and safe
/// (root's, not a link, closed to others). None otherwise.
pub fn agent_pins() -> Option<PathBuf> {
    let dir = PathBuf::from(PIN_DIR);
    if let Err(e) = check_dir(&dir) {
        log::debug!("no task labels from an agent: {e}");
        return None;
    }
    pins(&dir)
        .iter()
        .all(|(_, p)| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file() && m.uid() == 0)
        })
        .then_some(dir)
}

/// The directory is a real directory (not a link to one), root's, and only root may enter
/// or write it: a pin there was put there by root.
fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} must belong to root with mode 0700 (uid {}, mode {:o})",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs() -> std::io::Result<()> {
    let target = CString::new(BPF_FS)?;
    let fstype = CString::new("bpf")?;
    let options = CString::new("mode=0700")?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Handles on the two task maps. Each client opens its own (by map id), so the tasks feature
/// and the reports need not share one.
pub struct TaskMap {
    threads: BpfHashMap<MapData, u32, u32>,
    names: BpfHashMap<MapData, u32, TaskName>,
    /// The writer's ids, name -> id; ids start at 1 ([`NO_TASK`] is 0).
    ids: HashMap<String, u32>,
    /// Names each uid brought in: one uid may fill a quarter of TASK_NAMES, so that it
    /// cannot leave other users' tasks without labels.
    per_uid: HashMap<u32, u32>,
    full_logged: bool,
}

/// The names one uid may bring in.
const UID_SHARE: u32 = DEFAULT_MAX_TASK_NAMES / 4;

impl TaskMap {
    pub fn open(kernel: &Kernel) -> Result<Self, BpfError> {
        Ok(Self {
            threads: kernel.map_handle(TASK_THREADS_MAP, BpfHashMap::try_from)?,
            names: kernel.map_handle(TASK_NAMES_MAP, BpfHashMap::try_from)?,
            ids: HashMap::new(),
            per_uid: HashMap::new(),
            full_logged: false,
        })
    }

    /// Thread `tid` (host pid namespace) of a process of `uid` runs `task` from now on.
    pub fn begin(&mut self, tid: u32, task: &str, uid: u32) {
        let Some(id) = self.id(task, uid) else {
            let _ = self.threads.remove(&tid);
            return;
        };
        if let Err(e) = self.threads.insert(tid, id, 0) {
            log::debug!("{TASK_THREADS_MAP}: tid {tid}: {e}");
        }
    }

    /// Thread `tid` runs no task any more.
    pub fn end(&mut self, tid: u32) {
        let _ = self.threads.remove(&tid);
    }

    /// The name of task id `id`, None for [`NO_TASK`] or an id no agent gave.
    pub fn name(&self, id: u32) -> Option<String> {
        if id == NO_TASK {
            return None;
        }
        let n = self.names.get(&id, 0).ok()?;
        let len = (n.len as usize).min(TASK_NAME_BYTES);
        Some(String::from_utf8_lossy(&n.name[..len]).into_owned())
    }

    /// The id of `task`, given and written to TASK_NAMES the first time; None once
    /// TASK_NAMES is full or `uid` brought in its share (those tasks' samples carry none).
    fn id(&mut self, task: &str, uid: u32) -> Option<u32> {
        if let Some(id) = self.ids.get(task) {
            return Some(*id);
        }
        let brought = self.per_uid.entry(uid).or_default();
        if *brought >= UID_SHARE {
            return None;
        }
        let id = u32::try_from(self.ids.len() + 1).ok()?;
        let mut name = TaskName {
            len: 0,
            name: [0; TASK_NAME_BYTES],
        };
        let bytes = &task.as_bytes()[..task.len().min(TASK_NAME_BYTES)];
        name.name[..bytes.len()].copy_from_slice(bytes);
        name.len = bytes.len() as u32;
        if let Err(e) = self.names.insert(id, name, 0) {
            if !self.full_logged {
                log::warn!(
                    "task names past the first {} carry no sample labels: {e}",
                    id - 1
                );
                self.full_logged = true;
            }
            return None;
        }
        self.ids.insert(task.to_owned(), id);
        *self.per_uid.entry(uid).or_default() += 1;
        Some(id)
    }
}

/// A second handle on a hash map of the object, opened by its id.
pub(super) fn reopen(map: &Map) -> Result<Map, MapError> {
    match map {
        Map::HashMap(data) => Ok(Map::HashMap(MapData::from_id(data.info()?.id())?)),
        Map::LruHashMap(data) => Ok(Map::LruHashMap(MapData::from_id(data.info()?.id())?)),
        _ => Err(MapError::InvalidName {
            name: "not a hash map".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn only_a_closed_directory_of_root_is_trusted_with_pins() {
        let base = std::env::temp_dir().join(format!("leakscope-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let dir = base.join("pins");
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let root = rustix::process::geteuid().is_root();
        assert_eq!(check_dir(&dir).is_ok(), root, "{:?}", check_dir(&dir));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o733)).unwrap();
        let open = check_dir(&dir).unwrap_err();
        assert!(open.contains("mode 0700"), "{open}");
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let linked = check_dir(&link).unwrap_err();
        assert!(linked.contains("not a directory"), "{linked}");
        assert!(check_dir(&base.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
