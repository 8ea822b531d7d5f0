//! Where the kernel puts what the programs read: tracepoint record fields (tracefs `format`
//! files) and struct members (BTF). Read once at start and handed to the object as globals,
//! so one object runs on many kernels. Each part is either known or carries why it is not,
//! and the probe that needs it is then off with that reason.

use std::path::{Path, PathBuf};

use monitor_common::{
    ExitOffsets, KernelLayout, MarkVictimOffsets, NewTaskOffsets, RssStatOffsets,
};

use super::{
    btf,
    tracefs::{self, Format, TracefsError},
};

pub struct Layout {
    /// The tracefs mount, or why there is none.
    pub tracefs: Result<PathBuf, String>,
    /// Struct members from BTF, for the raw-tracepoint programs and the stack walkers.
    pub btf: Result<KernelLayout, String>,
    pub rss: Result<RssStatOffsets, String>,
    pub newtask: Result<NewTaskOffsets, String>,
    pub exit: Result<ExitOffsets, String>,
    pub oom: Result<MarkVictimOffsets, String>,
    /// sched_process_exec is read through its raw arguments: only its presence matters.
    pub exec: Result<(), String>,
}

impl Layout {
    /// Mounts tracefs if it is not (the agent may), then reads every layout.
    pub fn read_mounting() -> Self {
        let mount = tracefs::ensure_mounted();
        Self::read(mount.as_deref().map_err(|e: &TracefsError| e.to_string()))
    }

    /// Reads every layout from the tracefs at `root` and the kernel's BTF.
    pub fn read(root: Result<&Path, String>) -> Self {
        let btf = btf::kernel_layout(Path::new(btf::VMLINUX)).map_err(|e| e.to_string());
        let Ok(root) = root else {
            let why = root.err().unwrap_or_default();
            return Self {
                tracefs: Err(why.clone()),
                btf,
                rss: Err(why.clone()),
                newtask: Err(why.clone()),
                exit: Err(why.clone()),
                oom: Err(why.clone()),
                exec: Err(why),
            };
        };
        Self {
            tracefs: Ok(root.to_path_buf()),
            btf,
            rss: rss(root),
            newtask: newtask(root),
            exit: exit(root),
            oom: oom(root),
            exec: format(root, "sched", "sched_process_exec").map(|_| ()),
        }
    }
}

fn format(root: &Path, category: &str, name: &str) -> Result<Format, String> {
    Format::read(root, category, name).map_err(|e| e.to_string())
}

fn offset(f: &Format, field: &str) -> Result<u32, String> {
    f.offset(field).map_err(|e| e.to_string())
}

fn rss(root: &Path) -> Result<RssStatOffsets, String> {
    let f = format(root, "kmem", "rss_stat")?;
    Ok(RssStatOffsets {
        mm_id: offset(&f, "mm_id")?,
        curr: offset(&f, "curr")?,
        member: offset(&f, "member")?,
        size: offset(&f, "size")?,
    })
}

fn newtask(root: &Path) -> Result<NewTaskOffsets, String> {
    let f = format(root, "task", "task_newtask")?;
    Ok(NewTaskOffsets {
        pid: offset(&f, "pid")?,
        comm: offset(&f, "comm")?,
        clone_flags: offset(&f, "clone_flags")?,
        _pad: 0,
    })
}

fn exit(root: &Path) -> Result<ExitOffsets, String> {
    let f = format(root, "sched", "sched_process_exit")?;
    Ok(ExitOffsets {
        pid: offset(&f, "pid")?,
        // Kernels before 6.16 have no group_dead: the program then treats every exit alike.
        group_dead: f.offset("group_dead").unwrap_or(u32::MAX),
    })
}

fn oom(root: &Path) -> Result<MarkVictimOffsets, String> {
    let f = format(root, "oom", "mark_victim")?;
    Ok(MarkVictimOffsets {
        pid: offset(&f, "pid")?,
        total_vm: offset(&f, "total_vm")?,
        anon_rss: offset(&f, "anon_rss")?,
        file_rss: offset(&f, "file_rss")?,
        shmem_rss: offset(&f, "shmem_rss")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tracefs_every_tracepoint_layout_says_why() {
        let layout = Layout::read(Err("tracefs is not mounted".into()));
        assert_eq!(layout.tracefs.unwrap_err(), "tracefs is not mounted");
        assert!(layout.rss.unwrap_err().contains("not mounted"));
        assert!(layout.exec.unwrap_err().contains("not mounted"));
    }
}
