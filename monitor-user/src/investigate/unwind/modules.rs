//! The unwind information of the target's modules: `.eh_frame`, `.eh_frame_hdr`,
//! `.debug_frame` and `.text`, read with `object` from the file the process maps (through
//! /proc/PID/map_files, so containers and deleted files work), cached by the (device, inode)
//! of the file actually opened.
//!
//! The files are the target's, so hostile: they are only read, through a file descriptor
//! opened read-only; sections are bounded in size; a module that cannot be read is an error
//! for that module only, remembered so it is not retried on every sample.

use std::{collections::HashMap, fs::File, ops::Range, os::unix::fs::MetadataExt as _, sync::Arc};

use object::{
    Endianness, Object as _, ObjectSection as _,
    read::{ReadCache, elf::ElfFile64, elf::ProgramHeader as _},
};

/// Modules remembered at once; past it the cache starts over (a host with more distinct
/// libraries than this in its targets pays for re-reading them).
const MAX_MODULES: usize = 512;
/// Larger sections are left out (their module then unwinds by frame pointers): bounds the
/// memory a hostile file can make the agent allocate.
const MAX_SECTION_BYTES: u64 = 64 << 20;
/// Section bytes held by the cache at once; past it the cache starts over.
const MAX_CACHED_BYTES: usize = 512 << 20;

/// Section bytes, shared between the processes that map the same file.
pub type Bytes = Arc<[u8]>;

/// What framehop needs of one ELF file, and where its loadable segments sit.
#[derive(Debug, Default)]
pub struct ModuleInfo {
    /// PT_LOAD segments: file offset, virtual address, size in the file.
    loads: Vec<(u64, u64, u64)>,
    pub text: Option<(Range<u64>, Bytes)>,
    pub eh_frame: Option<(Range<u64>, Bytes)>,
    pub eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    pub debug_frame: Option<Bytes>,
    pub got: Option<Range<u64>>,
}

impl ModuleInfo {
    /// Bytes of section data held.
    fn bytes(&self) -> usize {
        let len = |s: &Option<(Range<u64>, Bytes)>| s.as_ref().map_or(0, |(_, d)| d.len());
        len(&self.text)
            + len(&self.eh_frame)
            + len(&self.eh_frame_hdr)
            + self.debug_frame.as_ref().map_or(0, |d| d.len())
    }

    /// Reads `file`'s segments and unwind sections.
    pub fn read(file: File) -> Result<Self, String> {
        let cache = ReadCache::new(file);
        let elf = ElfFile64::<Endianness, _>::parse(&cache).map_err(|e| e.to_string())?;
        let endian = elf.endian();
        let loads = elf
            .elf_program_headers()
            .iter()
            .filter(|h| h.p_type(endian) == object::elf::PT_LOAD)
            .map(|h| (h.p_offset(endian), h.p_vaddr(endian), h.p_filesz(endian)))
            .collect();
        let section = |name: &str| {
            let s = elf.section_by_name(name)?;
            if s.size() > MAX_SECTION_BYTES {
                log::debug!("{name}: {} bytes, over the limit", s.size());
                return None;
            }
            let data = s.data().ok()?;
            let range = s.address()..s.address().checked_add(s.size())?;
            Some((range, Bytes::from(data)))
        };
        let info = Self {
            loads,
            text: section(".text"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame").map(|(_, d)| d),
            got: elf
                .section_by_name(".got")
                .and_then(|s| Some(s.address()..s.address().checked_add(s.size())?)),
        };
        if info.eh_frame.is_none() && info.debug_frame.is_none() {
            return Err("no .eh_frame or .debug_frame".to_owned());
        }
        Ok(info)
    }

    /// The module's load bias: where its virtual address 0 lies in the process, given one
    /// mapping of it (start address and file offset).
    pub fn base_avma(&self, start: u64, file_offset: u64) -> Option<u64> {
        // A mapping starts at its segment's page-aligned offset. Segments can share a page
        // (a read-only one ending where the code begins), so the exact start is matched
        // first, containment only after.
        let page = |off: u64| off & !0xfff;
        let &(p_offset, p_vaddr, _) = self
            .loads
            .iter()
            .find(|(off, _, _)| page(*off) == file_offset)
            .or_else(|| {
                self.loads.iter().find(|(off, _, size)| {
                    (page(*off)..off.saturating_add(*size)).contains(&file_offset)
                })
            })?;
        let svma = file_offset.wrapping_add(p_vaddr).wrapping_sub(p_offset);
        Some(start.wrapping_sub(svma))
    }
}

/// Modules by the (device, inode) of the opened file; failures are remembered too.
#[derive(Default)]
pub struct ModuleCache {
    entries: HashMap<(u64, u64), Result<Arc<ModuleInfo>, String>>,
    bytes: usize,
}

impl ModuleCache {
    /// The module in `file` (opened read-only by the caller).
    pub fn get(&mut self, file: File) -> Result<Arc<ModuleInfo>, String> {
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".to_owned());
        }
        let key = (meta.dev(), meta.ino());
        if let Some(found) = self.entries.get(&key) {
            return found.clone();
        }
        let read = ModuleInfo::read(file).map(Arc::new);
        let size = read.as_ref().map_or(0, |m| m.bytes());
        if self.entries.len() >= MAX_MODULES || self.bytes + size > MAX_CACHED_BYTES {
            // Processes' unwinders keep what they hold; only sharing is lost.
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.insert(key, read.clone());
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_call_frame_information_and_a_load_bias() {
        let exe = File::open("/proc/self/exe").unwrap();
        let info = ModuleInfo::read(exe).unwrap();
        assert!(info.eh_frame.is_some() && info.text.is_some());
        // The mapping that holds this function places the module where its symbols are.
        let maps = crate::investigate::maps_snapshot::read(std::process::id()).unwrap();
        let here = this_test_binary_has_call_frame_information_and_a_load_bias as *const () as usize
            as u64;
        let m = crate::investigate::maps_snapshot::find(&maps, here).unwrap();
        let base = info.base_avma(m.start, m.offset).unwrap();
        let text = &info.text.as_ref().unwrap().0;
        assert!(
            text.contains(&(here - base)),
            "{here:#x} - {base:#x} in {text:x?}"
        );
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error_for_that_module_only() {
        let mut cache = ModuleCache::default();
        let mut path = std::env::temp_dir();
        path.push(format!("leakscope-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"\x7fELF\x02\x01\x01garbage that is not an ELF file").unwrap();
        let e = cache.get(File::open(&path).unwrap()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(!e.is_empty());
        let exe = File::open("/proc/self/exe").unwrap();
        assert!(cache.get(exe).is_ok());
    }
}
