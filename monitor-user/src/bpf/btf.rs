//! Kernel struct layouts from BTF (`/sys/kernel/btf/vmlinux`), handed to the kernel programs
//! at load time in place of hard-coded offsets.

use std::path::Path;

use btf_rs::{Backend, Btf, Type};
use monitor_common::KernelLayout;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF is not available at {VMLINUX} ({0}); the tracefs variant is used")]
    Unavailable(String),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {0}")]
    Parse(String),
}

/// Byte offset and type of a member, found through anonymous structs and unions.
struct Found {
    offset: u32,
    type_id_holder: btf_rs::Member,
}

fn struct_named(btf: &Btf, name: &str) -> Result<btf_rs::Struct, BtfError> {
    btf.resolve_types_by_name(name)
        .map_err(|_| BtfError::NoStruct(name.into()))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct(name.into()))
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<Found> {
    for m in &s.members {
        let bits = base_bits + m.bit_offset();
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Some(Found {
                offset: bits / 8,
                type_id_holder: m.clone(),
            });
        }
        if name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(found) = find_member(btf, &inner, member, bits)
        {
            return Some(found);
        }
    }
    None
}

fn member(btf: &Btf, strukt: &str, member: &str) -> Result<Found, BtfError> {
    let s = struct_named(btf, strukt)?;
    find_member(btf, &s, member, 0).ok_or_else(|| BtfError::NoMember {
        strukt: strukt.into(),
        member: member.into(),
    })
}

/// `offsetof(strukt, member)`, through anonymous structs and unions.
pub fn offset_of(btf: &Btf, strukt: &str, member_name: &str) -> Result<u32, String> {
    member(btf, strukt, member_name)
        .map(|m| m.offset)
        .map_err(|e| e.to_string())
}

pub fn kernel_layout(path: &Path) -> Result<KernelLayout, BtfError> {
    if !path.exists() {
        return Err(BtfError::Unavailable("no such file".into()));
    }
    // Mapped rather than read: the agent's peak memory is otherwise set by this one parse.
    let btf = Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|e| BtfError::Unavailable(e.to_string()))?;
    let task_mm = member(&btf, "task_struct", "mm")?.offset;
    let rss = member(&btf, "mm_struct", "rss_stat")?;
    // `struct percpu_counter rss_stat[NR_MM_COUNTERS]`: the stride is the element's size.
    let element = match btf.resolve_chained_type(&rss.type_id_holder) {
        Ok(Type::Array(a)) => a,
        _ => return Err(BtfError::Parse("mm_struct.rss_stat is not an array".into())),
    };
    let counter_size = match btf.resolve_chained_type(&element) {
        Ok(Type::Struct(s)) => s.size() as u32,
        _ => {
            return Err(BtfError::Parse(
                "rss_stat is not an array of structs".into(),
            ));
        }
    };
    let counter_count = member(&btf, "percpu_counter", "count")?.offset;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(KernelLayout {
        task_mm,
        mm_rss_stat: rss.offset,
        counter_size,
        counter_count,
        page_shift: page.trailing_zeros(),
        task_exit_code: member(&btf, "task_struct", "exit_code").map_or(0, |m| m.offset),
        // Optional: without it brk calls are not accounted per thread.
        mm_brk: member(&btf, "mm_struct", "brk").map_or(0, |m| m.offset),
        task_pid: member(&btf, "task_struct", "pid").map_or(0, |m| m.offset),
        task_comm: member(&btf, "task_struct", "comm").map_or(0, |m| m.offset),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_a_plausible_layout() {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            eprintln!("SKIPPED: no {VMLINUX} on this host");
            return;
        }
        let l = kernel_layout(path).unwrap();
        assert!(l.task_mm > 0 && l.task_mm < 8192, "{l:?}");
        assert!(l.mm_rss_stat > 0 && l.mm_rss_stat < 8192, "{l:?}");
        assert!(l.counter_size >= 16 && l.counter_size <= 64, "{l:?}");
        assert!(l.counter_count < l.counter_size, "{l:?}");
        assert_eq!(l.page_shift, 12);
        assert!(l.task_exit_code > 0 && l.task_exit_code < 16384, "{l:?}");
        assert!(l.knows_new_tasks(), "{l:?}");
        assert_ne!(l.task_pid, l.task_comm, "{l:?}");
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let e = kernel_layout(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("tracefs variant"), "{e}");
    }
}
