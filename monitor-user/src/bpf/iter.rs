//! The task iterator: every process's RSS read on demand, at no cost between reads.
//!
//! [`iter_layout`] finds what the kernel program needs (BTF offsets, `__per_cpu_offset` from
//! kallsyms, the number of possible CPUs); [`TaskIter`] runs the program and decodes its
//! output, one [`TaskRecord`] per thread-group leader with an address space.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    sync::Arc,
};

use aya::programs::Iter;
use btf_rs::{Backend, Btf};
use monitor_common::{
    ExitOffsets, IterLayout, MAX_ITER_CPUS, TASK_ITER_PROGRAM, TASK_ITER_TYPED_PROGRAM, TaskRecord,
};

use super::{BpfError, Kernel, btf};

/// Fault injection names for tests (`--break-probe`).
pub const BREAK_ITER: &str = "task_iter";
/// Refuses the typed-load program only: the walk then reads field by field with the helper.
pub const BREAK_ITER_TYPED: &str = "task_iter_typed";
pub const BREAK_PER_CPU: &str = "per_cpu_offset";
pub const BREAK_EXIT_RSS: &str = "exit_rss";

/// What the iterator and the exit program will read, and what they cannot.
pub struct IterSetup {
    pub layout: Result<IterLayout, String>,
    /// Why RSS is the batched `count` rather than the exact per-CPU sum, if it is.
    pub approximate: Option<String>,
    /// Why exit numbers are the last snapshot rather than read at exit, if they are.
    pub exit_snapshot: Option<String>,
}

/// The iterator as /healthz and the metrics list it, beside the probes.
pub fn status(result: &Result<TaskIter, BpfError>) -> super::probes::ProbeStatus {
    super::probes::ProbeStatus {
        name: BREAK_ITER,
        tracepoint: "iter/task".into(),
        attached: result.is_ok(),
        error: result.as_ref().err().map(ToString::to_string),
        fallback: "processes are found and their RSS read through /proc every interval \
                   (procfs; selected processes only, not kernel-exact)",
    }
}

/// The typed-load walk as /healthz and the metrics list it, beside the iterator: when the
/// kernel refuses it, the walk reads field by field instead (the same numbers, more CPU).
pub fn typed_status(iter: &TaskIter) -> super::probes::ProbeStatus {
    super::probes::ProbeStatus {
        name: BREAK_ITER_TYPED,
        tracepoint: "iter/task".into(),
        attached: iter.typed_refused.is_none(),
        error: iter.typed_refused.clone(),
        fallback: "the task iterator reads each field with bpf_probe_read_kernel: the same \
                   numbers, several times the CPU per walk",
    }
}

/// The most each kind's batched `count` can trail the exact sum: the kernel folds a CPU's
/// delta in once it reaches `percpu_counter_batch` pages (max(32, 2 * CPUs)).
pub fn count_error_bytes() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    32.max(2 * cpus) * cpus * page
}

/// Reads the iterator's layout from BTF at `btf_path`, /proc/kallsyms and sysfs.
/// `rss_events`: PROCS is the kernel's own table (`--rss-events`), which the exit program
/// keeps; otherwise the agent keeps it and the exit program does not look at it.
pub fn iter_layout(
    btf_path: &Path,
    exit: &Result<ExitOffsets, String>,
    break_probes: &[String],
    rss_events: bool,
) -> IterSetup {
    let broken = |name: &str| break_probes.iter().any(|b| b == name);
    let mut layout = match btf_offsets(btf_path) {
        Ok(l) => l,
        Err(e) => {
            return IterSetup {
                layout: Err(e.clone()),
                approximate: None,
                exit_snapshot: Some(format!("no kernel BTF ({e})")),
            };
        }
    };
    // `__per_cpu_offset` from kallsyms where it is listed, else through a per-CPU array.
    let per_cpu = if broken(BREAK_PER_CPU) {
        Err("fault injection".to_string())
    } else {
        let base = match per_cpu_offset() {
            Ok(addr) => Ok((addr, 0)),
            Err(why) if layout.array_pptrs != 0 => {
                log::debug!("{why}; CPUs are located through a per-CPU array");
                Ok((0, layout.array_pptrs))
            }
            Err(why) => Err(why),
        };
        base.and_then(|b| Ok((b, possible_cpus()?)))
    };
    let approximate = match per_cpu {
        Ok(((addr, pptrs), cpus)) if cpus <= MAX_ITER_CPUS => {
            layout.per_cpu_offset = addr;
            layout.array_pptrs = pptrs;
            layout.nr_cpus = cpus;
            None
        }
        Ok((_, cpus)) => Some(format!(
            "{cpus} possible CPUs, more than the {MAX_ITER_CPUS} the iterator sums"
        )),
        Err(e) => Some(e),
    };
    if approximate.is_some() {
        // The kernel program then reads `count` alone.
        layout.array_pptrs = 0;
        layout.nr_cpus = 0;
    }
    let exit_snapshot = if broken(BREAK_EXIT_RSS) {
        Some("fault injection".to_string())
    } else {
        match exit {
            Ok(o) if o.group_dead != u32::MAX => None,
            Ok(_) => Some("sched_process_exit has no group_dead (kernel before 6.16)".into()),
            Err(e) => Some(e.clone()),
        }
    };
    layout.exit_reads_mm = u32::from(exit_snapshot.is_none());
    layout.exit_skips_procs = u32::from(!rss_events);
    IterSetup {
        layout: Ok(layout),
        approximate,
        exit_snapshot,
    }
}

fn btf_offsets(path: &Path) -> Result<IterLayout, String> {
    if !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    let btf = Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|e| e.to_string())?;
    let at = |strukt: &str, member: &str| btf::offset_of(&btf, strukt, member);
    Ok(IterLayout {
        task_tgid: at("task_struct", "tgid")?,
        task_real_parent: at("task_struct", "real_parent")?,
        task_start_boottime: at("task_struct", "start_boottime")?,
        // The cgroup id is optional: without it selection reads /proc/PID/cgroup as before.
        task_cgroups: at("task_struct", "cgroups").unwrap_or(0),
        css_set_dfl_cgrp: at("css_set", "dfl_cgrp").unwrap_or(0),
        cgroup_kn: at("cgroup", "kn").unwrap_or(0),
        kernfs_node_id: at("kernfs_node", "id").unwrap_or(0),
        mm_hiwater_rss: at("mm_struct", "hiwater_rss").unwrap_or(0),
        counter_counters: at("percpu_counter", "counters")?,
        nr_cpus: 0,
        per_cpu_offset: 0,
        exit_reads_mm: 0,
        array_pptrs: at("bpf_array", "pptrs").unwrap_or(0),
        exit_skips_procs: 0,
        _pad: 0,
    })
}

/// The address of `__per_cpu_offset`; kallsyms shows zeros to those it hides addresses from.
fn per_cpu_offset() -> Result<u64, String> {
    let file = std::fs::File::open("/proc/kallsyms")
        .map_err(|e| format!("cannot read /proc/kallsyms: {e}"))?;
    let found = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| parse_kallsyms_line(&line, "__per_cpu_offset"));
    match found {
        Some(0) => Err("/proc/kallsyms hides addresses (kernel.kptr_restrict)".into()),
        Some(addr) => Ok(addr),
        None => Err("/proc/kallsyms has no __per_cpu_offset".into()),
    }
}

fn parse_kallsyms_line(line: &str, symbol: &str) -> Option<u64> {
    let mut parts = line.split_whitespace();
    let addr = parts.next()?;
    let _kind = parts.next()?;
    (parts.next()? == symbol)
        .then(|| u64::from_str_radix(addr, 16).ok())
        .flatten()
}

/// One more than the highest possible CPU: the kernel's per-CPU loops go that far.
fn possible_cpus() -> Result<u32, String> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| format!("cannot read /sys/devices/system/cpu/possible: {e}"))?;
    parse_cpu_list(&text).ok_or_else(|| format!("unexpected CPU list {text:?}"))
}

fn parse_cpu_list(text: &str) -> Option<u32> {
    let last = text.trim().split(',').next_back()?;
    let high = last.rsplit('-').next()?;
    high.parse::<u32>().ok().map(|h| h + 1)
}

/// The loaded iterator program; each [`TaskIter::run`] walks every task once.
pub struct TaskIter {
    kernel: Arc<Kernel>,
    program: &'static str,
    /// Why the typed-load program is not the one walking, if it is not.
    typed_refused: Option<String>,
}

impl Kernel {
    /// Loads the task iterator (the verifier runs now): the typed-load program where `typed`
    /// allows it and the kernel takes it, else the one that reads with the helper. `broken`
    /// simulates a kernel that refuses both, for tests.
    pub fn load_task_iter(
        self: &Arc<Self>,
        broken: bool,
        typed: Result<(), String>,
    ) -> Result<TaskIter, BpfError> {
        if broken {
            return Err(BpfError::Program {
                name: TASK_ITER_PROGRAM.into(),
                detail: "fault injection".into(),
            });
        }
        let btf = aya::Btf::from_sys_fs().map_err(|e| BpfError::Program {
            name: TASK_ITER_PROGRAM.into(),
            detail: e.to_string(),
        })?;
        let typed = typed.and_then(|()| {
            self.load_iter_program(TASK_ITER_TYPED_PROGRAM, &btf)
                .map_err(|e| e.to_string())
        });
        let (program, typed_refused) = match typed {
            Ok(()) => (TASK_ITER_TYPED_PROGRAM, None),
            Err(why) => {
                log::warn!(
                    "the typed task iterator was refused ({why}); loading the one that reads \
                     field by field"
                );
                self.load_iter_program(TASK_ITER_PROGRAM, &btf)?;
                (TASK_ITER_PROGRAM, Some(why))
            }
        };
        Ok(TaskIter {
            kernel: self.clone(),
            program,
            typed_refused,
        })
    }

    fn load_iter_program(&self, name: &'static str, btf: &aya::Btf) -> Result<(), BpfError> {
        let mut ebpf = self.lock();
        let iter: &mut Iter = ebpf
            .program_mut(name)
            .ok_or_else(|| BpfError::MissingProgram(name.into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| BpfError::Program {
                name: name.into(),
                detail: e.to_string(),
            })?;
        iter.load("task", btf).map_err(|e| BpfError::Verifier {
            name: name.into(),
            summary: super::verifier_summary(&e),
        })
    }
}

impl TaskIter {
    /// One walk over every task. The link lives only for the walk: nothing stays attached
    /// between runs.
    pub fn run(&self) -> Result<Vec<TaskRecord>, BpfError> {
        let failed = |detail: String| BpfError::Attach {
            program: self.program.into(),
            hook: "iter/task".into(),
            detail,
        };
        let mut file = {
            let mut ebpf = self.kernel.lock();
            let iter: &mut Iter = ebpf
                .program_mut(self.program)
                .ok_or_else(|| BpfError::MissingProgram(self.program.into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| failed(e.to_string()))?;
            let id = iter.attach().map_err(|e| failed(e.to_string()))?;
            let link = iter.take_link(id).map_err(|e| failed(e.to_string()))?;
            link.into_file().map_err(|e| failed(e.to_string()))?
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| failed(format!("reading the iterator: {e}")))?;
        Ok(decode(&bytes))
    }
}

/// The records in the iterator's output; a trailing partial record is ignored.
pub fn decode(bytes: &[u8]) -> Vec<TaskRecord> {
    bytes
        .chunks_exact(size_of::<TaskRecord>())
        // SAFETY: TaskRecord is plain old data of exactly this size; read_unaligned copies.
        .map(|chunk| unsafe { chunk.as_ptr().cast::<TaskRecord>().read_unaligned() })
        .collect()
}

#[cfg(test)]
mod tests {
    use monitor_common::{RSS_UNKNOWN, TASK_RSS_EXACT};

    use super::*;

    fn record(pid: u32, anon: i64) -> TaskRecord {
        TaskRecord {
            pid,
            ppid: 1,
            start_ns: 7,
            cgroup_id: 9,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            rss: [4096, anon, RSS_UNKNOWN, 0],
            peak_bytes: 4096 + anon as u64,
            flags: TASK_RSS_EXACT,
            _pad: 0,
        }
    }

    fn bytes_of(records: &[TaskRecord]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| {
                // SAFETY: a plain-old-data value viewed as its bytes.
                unsafe {
                    std::slice::from_raw_parts(
                        (r as *const TaskRecord).cast::<u8>(),
                        size_of::<TaskRecord>(),
                    )
                }
                .to_vec()
            })
            .collect()
    }

    #[test]
    fn records_decode_in_order_and_a_torn_tail_is_dropped() {
        let mut bytes = bytes_of(&[record(10, 1 << 20), record(11, 2 << 20)]);
        bytes.extend_from_slice(&[1, 2, 3]);
        let out = decode(&bytes);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].pid, out[0].rss[1]), (10, 1 << 20));
        assert_eq!((out[1].pid, out[1].rss[2]), (11, RSS_UNKNOWN));
        assert_eq!(out[1].flags, TASK_RSS_EXACT);
        assert!(decode(&[]).is_empty());
    }

    #[test]
    fn kallsyms_lines_and_cpu_lists_parse() {
        let line = "ffffffff83a1c5a0 R __per_cpu_offset";
        assert_eq!(
            parse_kallsyms_line(line, "__per_cpu_offset"),
            Some(0xffff_ffff_83a1_c5a0)
        );
        assert_eq!(parse_kallsyms_line(line, "__per_cpu_offset_x"), None);
        assert_eq!(parse_kallsyms_line("garbage", "__per_cpu_offset"), None);
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8-11\n"), Some(12));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn exit_numbers_fall_back_without_group_dead() {
        let path = Path::new(btf::VMLINUX);
        if !path.exists() {
            eprintln!("SKIPPED: no {} on this host", btf::VMLINUX);
            return;
        }
        let old = Ok(ExitOffsets {
            pid: 24,
            group_dead: u32::MAX,
        });
        let setup = iter_layout(path, &old, &[], false);
        assert!(setup.exit_snapshot.unwrap().contains("group_dead"));
        let l = setup.layout.unwrap();
        // The defaults: the agent, not the exit program, keeps PROCS.
        assert_eq!((l.exit_reads_mm, l.exit_skips_procs), (0, 1));
        let new = Ok(ExitOffsets {
            pid: 24,
            group_dead: 32,
        });
        let setup = iter_layout(path, &new, &[BREAK_PER_CPU.into()], true);
        assert!(setup.exit_snapshot.is_none());
        assert_eq!(setup.approximate.as_deref(), Some("fault injection"));
        let l = setup.layout.unwrap();
        assert_eq!((l.exit_reads_mm, l.nr_cpus, l.array_pptrs), (1, 0, 0));
        // --rss-events: the exit program keeps the kernel's table.
        assert_eq!(l.exit_skips_procs, 0);
        assert!(l.task_tgid > 0 && l.counter_counters > 0, "{l:?}");
    }
}
