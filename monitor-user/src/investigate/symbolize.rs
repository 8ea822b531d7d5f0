//! Raw user stacks to frames: module and file offset from the target's mappings, then names,
//! files and lines from each module's ELF symbols and DWARF (blazesym). What a module cannot
//! name stays `module+offset`, which `addr2line -e module` can resolve later.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use super::{
    maps_snapshot::{self, Mapping},
    report::Frame,
};

/// Frames of each stack, leaf first. `alive` says whether /proc/PID still has the target
/// (its files are then opened through it, which works inside containers).
pub fn symbolize(
    pid: u32,
    alive: bool,
    mappings: &[Mapping],
    stacks: &[Vec<u64>],
) -> Vec<Vec<Frame>> {
    // Past the leaf, each address is a return address: the call is the instruction before.
    let lookup = |depth: usize, ip: u64| if depth == 0 { ip } else { ip.saturating_sub(1) };
    let mut by_module: HashMap<usize, Vec<u64>> = HashMap::new();
    for stack in stacks {
        for (depth, &ip) in stack.iter().enumerate() {
            let addr = lookup(depth, ip);
            if let Some(i) = mapping_index(mappings, addr) {
                by_module
                    .entry(i)
                    .or_default()
                    .push(mappings[i].file_offset(addr));
            }
        }
    }
    let symbolizer = Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build();
    // (mapping index, file offset) -> frames for that address, innermost first.
    let mut named: HashMap<(usize, u64), Vec<Frame>> = HashMap::new();
    for (i, mut offsets) in by_module {
        offsets.sort_unstable();
        offsets.dedup();
        let m = &mappings[i];
        let resolved = module_path(pid, alive, m)
            .map(|path| symbolize_module(&symbolizer, &path, &offsets))
            .unwrap_or_default();
        for (k, offset) in offsets.iter().enumerate() {
            let frames = resolved.get(k).cloned().flatten().unwrap_or_default();
            named.insert((i, *offset), frames);
        }
    }
    stacks
        .iter()
        .map(|stack| {
            let mut frames = Vec::new();
            for (depth, &ip) in stack.iter().enumerate() {
                let addr = lookup(depth, ip);
                let Some(i) = mapping_index(mappings, addr) else {
                    frames.push(unmapped(ip));
                    continue;
                };
                let m = &mappings[i];
                let offset = m.file_offset(addr);
                let module = m.path.clone().unwrap_or_else(|| "[anon]".to_owned());
                match named.get(&(i, offset)) {
                    Some(found) if !found.is_empty() => {
                        frames.extend(found.iter().map(|f| Frame {
                            module: module.clone(),
                            offset,
                            address: ip,
                            ..f.clone()
                        }));
                    }
                    _ => frames.push(Frame {
                        function: None,
                        module,
                        offset,
                        address: ip,
                        file: None,
                        line: None,
                        inlined: false,
                        start_line: None,
                        python: false,
                    }),
                }
            }
            frames
        })
        .collect()
}

/// The file mapping holding `addr` (anonymous memory has no module to name it).
fn mapping_index(mappings: &[Mapping], addr: u64) -> Option<usize> {
    maps_snapshot::position(mappings, addr).filter(|&i| mappings[i].path.is_some())
}

/// A file to read the module from: the process's own view while it lives, else the host's
/// path (right unless the process ran in another mount namespace).
fn module_path(pid: u32, alive: bool, m: &Mapping) -> Option<PathBuf> {
    let path = m.path.as_deref()?;
    if path.starts_with('[') {
        return None;
    }
    if alive {
        let own = m.open_path(pid);
        if std::fs::metadata(&own).is_ok() {
            return Some(own);
        }
    }
    Some(PathBuf::from(path)).filter(|p| p.exists() && !m.deleted)
}

/// Frames for each offset (innermost inlined function first), None where unknown.
fn symbolize_module(
    symbolizer: &Symbolizer,
    path: &Path,
    offsets: &[u64],
) -> Vec<Option<Vec<Frame>>> {
    let source = Source::Elf(Elf::new(path));
    let results = match symbolizer.symbolize(&source, Input::FileOffset(offsets)) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("symbolizing {}: {e}", path.display());
            return vec![None; offsets.len()];
        }
    };
    results
        .into_iter()
        .map(|r| match r {
            Symbolized::Sym(sym) => {
                let code = |ci: Option<&blazesym::symbolize::CodeInfo<'_>>| {
                    ci.map(|c| (c.to_path().display().to_string(), c.line))
                };
                let frame = |name: &str, loc: Option<(String, Option<u32>)>, inlined| Frame {
                    function: Some(name.to_owned()),
                    module: String::new(),
                    offset: 0,
                    address: 0,
                    file: loc.as_ref().map(|(f, _)| f.clone()),
                    line: loc.and_then(|(_, l)| l),
                    inlined,
                    start_line: None,
                    python: false,
                };
                let mut frames: Vec<Frame> = sym
                    .inlined
                    .iter()
                    .rev()
                    .map(|f| frame(&f.name, code(f.code_info.as_ref()), true))
                    .collect();
                frames.push(frame(&sym.name, code(sym.code_info.as_deref()), false));
                Some(frames)
            }
            Symbolized::Unknown(_) => None,
        })
        .collect()
}

fn unmapped(ip: u64) -> Frame {
    Frame {
        function: None,
        module: "[unknown]".to_owned(),
        offset: ip,
        address: ip,
        file: None,
        line: None,
        inlined: false,
        start_line: None,
        python: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        marker_function_for_symbolization as *const () as usize as u64
    }

    #[test]
    fn own_function_is_named_with_its_module() {
        let pid = std::process::id();
        let maps = maps_snapshot::read(pid).unwrap();
        let ip = marker_function_for_symbolization();
        let frames = symbolize(pid, true, &maps, &[vec![ip]]);
        let f = frames[0].last().unwrap();
        let name = f.function.as_deref().unwrap_or_default();
        assert!(name.contains("marker_function_for_symbolization"), "{f:?}");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(Some(f.module.as_str()), exe.to_str());
        assert_eq!(f.address, ip);
    }

    #[test]
    fn addresses_outside_any_file_stay_raw() {
        let frames = symbolize(1, false, &[], &[vec![0x1234]]);
        assert_eq!(frames[0][0].module, "[unknown]");
        assert_eq!(frames[0][0].function, None);
    }
}
