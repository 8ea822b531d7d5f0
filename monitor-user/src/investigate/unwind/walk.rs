//! One process's unwinder: framehop with a module for each executable file mapping, fed the
//! registers and stack slice of a sample.

use std::{collections::BTreeMap, fs::File};

use framehop::{ExplicitModuleSectionInfo, Module, Unwinder as _};

use super::modules::{Bytes, ModuleCache};
use crate::investigate::maps_snapshot::Mapping;

#[cfg(target_arch = "aarch64")]
use framehop::aarch64::{
    CacheAarch64 as Cache, UnwindRegsAarch64 as Regs, UnwinderAarch64 as Native,
};
#[cfg(not(target_arch = "aarch64"))]
use framehop::x86_64::{CacheX86_64 as Cache, UnwindRegsX86_64 as Regs, UnwinderX86_64 as Native};

/// Frames kept per stack, as the kernel's own walk (perf_event_max_stack's default).
pub const MAX_FRAMES: usize = 127;

/// The registers a sample starts from (x86_64: lr unused; aarch64: fp is x29, lr x30).
#[derive(Clone, Copy, Debug)]
pub struct StartRegs {
    pub ip: u64,
    pub sp: u64,
    pub fp: u64,
    pub lr: u64,
}

/// How an unwind ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// The outermost frame was reached (its return address is undefined or null).
    Root,
    /// A read fell outside the copied slice, or the rules led nowhere: the rest is unknown.
    Cut,
    /// [`MAX_FRAMES`] reached.
    Deep,
}

pub struct Walk {
    /// The leaf's instruction pointer, then return addresses.
    pub ips: Vec<u64>,
    pub end: End,
}

pub struct Process {
    unwinder: Native<Bytes>,
    cache: Cache,
    /// Modules that could not be read, with why (for the report's notes).
    pub unreadable: Vec<String>,
}

impl Process {
    /// An unwinder for `pid` with one module per executable file in `mappings`.
    pub fn new(pid: u32, mappings: &[Mapping], modules: &mut ModuleCache) -> Self {
        let mut unwinder = Native::new();
        let mut unreadable = Vec::new();
        // Executable mappings by file; a file mapped executable twice is one module.
        let mut files: BTreeMap<&str, Vec<&Mapping>> = BTreeMap::new();
        for m in mappings.iter().filter(|m| m.executable) {
            if let Some(path) = m.path.as_deref().filter(|p| !p.starts_with('[')) {
                files.entry(path).or_default().push(m);
            }
        }
        for (path, maps) in files {
            let first = maps[0];
            let info = File::open(first.open_path(pid))
                .map_err(|e| e.to_string())
                .and_then(|f| modules.get(f));
            let info = match info {
                Ok(info) => info,
                Err(e) => {
                    unreadable.push(format!("{path}: {e}"));
                    continue;
                }
            };
            let Some(base) = info.base_avma(first.start, first.offset) else {
                unreadable.push(format!("{path}: no loadable segment"));
                continue;
            };
            let start = maps.iter().map(|m| m.start).min().unwrap_or(first.start);
            let end = maps.iter().map(|m| m.end).max().unwrap_or(first.end);
            let section = |s: &Option<(std::ops::Range<u64>, Bytes)>| s.clone().unzip();
            let (text_svma, text) = section(&info.text);
            let (eh_frame_svma, eh_frame) = section(&info.eh_frame);
            let (eh_frame_hdr_svma, eh_frame_hdr) = section(&info.eh_frame_hdr);
            let sections = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma,
                text,
                got_svma: info.got.clone(),
                eh_frame_svma,
                eh_frame,
                eh_frame_hdr_svma,
                eh_frame_hdr,
                debug_frame: info.debug_frame.clone(),
                ..Default::default()
            };
            unwinder.add_module(Module::new(path.to_owned(), start..end, base, sections));
        }
        Self {
            unwinder,
            cache: Cache::new(),
            unreadable,
        }
    }

    /// Unwinds a sample whose stack, from `regs.sp` upward, is `stack`.
    pub fn unwind(&mut self, regs: StartRegs, stack: &[u8]) -> Walk {
        let sp = regs.sp;
        // The target's bytes: only what was copied is read, anything else is "unreadable".
        let mut read = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        #[cfg(target_arch = "aarch64")]
        let start = Regs::new(regs.lr, regs.sp, regs.fp);
        #[cfg(not(target_arch = "aarch64"))]
        let start = Regs::new(regs.ip, regs.sp, regs.fp);
        let mut frames = self
            .unwinder
            .iter_frames(regs.ip, start, &mut self.cache, &mut read);
        let mut ips = Vec::new();
        let end = loop {
            if ips.len() >= MAX_FRAMES {
                break End::Deep;
            }
            match frames.next() {
                Ok(Some(frame)) => ips.push(frame.address()),
                Ok(None) | Err(framehop::Error::ReturnAddressIsNull) => break End::Root,
                Err(_) => break End::Cut,
            }
        };
        Walk { ips, end }
    }
}

/// `dwarf` continued with the frames of the kernel's frame-pointer walk (`fp`, leaf first)
/// that lie beyond it: the two are joined at the outermost return address they share. None
/// when they share none past the leaf (the frame-pointer walk went astray).
///
/// A recursive function repeats its return address, so the n-th occurrence in `dwarf` is
/// matched with the n-th in `fp` (the walk skips only frames without a frame pointer, which
/// a frame holding that return address is not when it appears in both).
pub fn join(dwarf: &[u64], fp: &[u64]) -> Option<Vec<u64>> {
    for k in (1..dwarf.len()).rev() {
        let ra = dwarf[k];
        let nth = dwarf[1..=k].iter().filter(|&&ip| ip == ra).count();
        let at = fp
            .iter()
            .enumerate()
            .skip(1)
            .filter(|&(_, &ip)| ip == ra)
            .nth(nth - 1)
            .map(|(j, _)| j);
        if let Some(j) = at {
            let mut joined = dwarf[..=k].to_vec();
            joined.extend(fp.iter().skip(j + 1).take(MAX_FRAMES.saturating_sub(k + 1)));
            return Some(joined);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::investigate::{maps_snapshot, symbolize};

    /// This thread's registers and the top of its stack, as the kernel program copies them.
    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    fn capture_own_stack() -> (StartRegs, Vec<u8>) {
        let (ip, sp, fp): (u64, u64, u64);
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {fp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                fp = out(reg) fp,
            );
        }
        let maps = maps_snapshot::read(std::process::id()).unwrap();
        let stack = maps_snapshot::find(&maps, sp).expect("the stack is mapped");
        let len = (stack.end - sp).min(monitor_common::stacks::UNWIND_STACK_BYTES as u64);
        // SAFETY: [sp, sp + len) lies in this thread's stack mapping, which outlives the copy.
        let bytes = unsafe { std::slice::from_raw_parts(sp as *const u8, len as usize) }.to_vec();
        let regs = StartRegs { ip, sp, fp, lr: 0 };
        (regs, std::hint::black_box(bytes))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    fn outer_marker_for_unwinding() -> (StartRegs, Vec<u8>) {
        std::hint::black_box(capture_own_stack())
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_copy_of_this_threads_stack_unwinds_through_its_callers() {
        let (regs, stack) = outer_marker_for_unwinding();
        let pid = std::process::id();
        let maps = maps_snapshot::read(pid).unwrap();
        let mut process = Process::new(pid, &maps, &mut ModuleCache::default());
        let walk = process.unwind(regs, &stack);
        assert!(walk.ips.len() >= 3, "{:x?} ({:?})", walk.ips, walk.end);
        let frames = symbolize::symbolize(pid, true, &maps, std::slice::from_ref(&walk.ips));
        let names: Vec<String> = frames[0]
            .iter()
            .filter(|f| !f.inlined)
            .filter_map(|f| f.function.clone())
            .collect();
        let at = |marker: &str| names.iter().position(|n| n.contains(marker));
        let (leaf, outer, test) = (
            at("capture_own_stack"),
            at("outer_marker_for_unwinding"),
            at("a_copy_of_this_threads_stack_unwinds_through_its_callers"),
        );
        assert!(
            leaf.is_some() && leaf < outer && outer < test,
            "callers out of order: {names:?}"
        );
    }

    #[test]
    fn garbage_for_a_stack_ends_the_unwind_without_a_panic() {
        let pid = std::process::id();
        let maps = maps_snapshot::read(pid).unwrap();
        let mut process = Process::new(pid, &maps, &mut ModuleCache::default());
        let ip = garbage_for_a_stack_ends_the_unwind_without_a_panic as *const () as usize as u64;
        let mut noise = 0x9e37_79b9_7f4a_7c15u64;
        let stack: Vec<u8> = (0..4096)
            .map(|_| {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                noise as u8
            })
            .collect();
        let regs = StartRegs {
            ip,
            sp: 0x7000_0000,
            fp: 0x7000_0010,
            lr: 0,
        };
        let walk = process.unwind(regs, &stack);
        assert!(walk.ips.len() <= MAX_FRAMES);
        assert_eq!(walk.ips[0], ip);
    }

    #[test]
    fn frame_pointer_frames_continue_where_they_meet_the_unwound_ones() {
        // Unwound: leaf, a, b; the frame-pointer walk skipped `a` but has b, c, d.
        let dwarf = [0x10, 0xa0, 0xb0];
        let fp = [0x10, 0xb0, 0xc0, 0xd0];
        assert_eq!(join(&dwarf, &fp), Some(vec![0x10, 0xa0, 0xb0, 0xc0, 0xd0]));
        // Nothing in common past the leaf: no join.
        assert_eq!(join(&dwarf, &[0x10, 0x99]), None);
        // The meeting point is the outermost common frame.
        assert_eq!(
            join(&[0x10, 0xa0, 0xb0], &[0x11, 0xa0, 0xb0, 0xe0]),
            Some(vec![0x10, 0xa0, 0xb0, 0xe0])
        );
        // Recursion: the copy held two of the four recursive frames; the walk has all four
        // (but not the leaf's caller) and continues with main.
        let dwarf = [0x10, 0xa0, 0xcc, 0xcc];
        let fp = [0x10, 0xcc, 0xcc, 0xcc, 0xcc, 0xdd, 0xee];
        assert_eq!(
            join(&dwarf, &fp),
            Some(vec![0x10, 0xa0, 0xcc, 0xcc, 0xcc, 0xcc, 0xdd, 0xee])
        );
    }
}
