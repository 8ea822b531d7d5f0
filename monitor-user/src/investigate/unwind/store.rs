//! Unwound samples, aggregated: stacks interned, growth summed per (key, stack) as the kernel
//! does per stack id, and the stack of each page-fault and allocation sample kept by its id
//! so the pages still held and the blocks still outstanding at the end find it.
//!
//! Everything is bounded; what does not fit is counted and keeps its frame-pointer stack.

use std::collections::{BTreeSet, HashMap};

use monitor_common::stacks::{
    GrowthKey, GrowthSource, GrowthValue, UNWIND_ALLOC, UNWIND_GROWTH, UnwindSample,
};

use super::walk::{End, MAX_FRAMES, Walk, join};

/// Distinct unwound stacks kept.
const MAX_STACKS: usize = 65_536;
/// Sample ids remembered (pages and blocks): as many as the kernel's tables of sampled pages
/// and outstanding blocks hold by default.
const MAX_SAMPLES: usize = 1 << 20;
/// Growth rows (key and stack).
const MAX_GROWTH_ROWS: usize = 65_536;
/// Module errors kept for the report.
const MAX_UNREADABLE: usize = 16;

/// What a sample record says besides its stack.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub sample_id: u64,
    pub kind: u32,
    pub key: GrowthKey,
    pub bytes: u64,
}

impl Sample {
    pub fn of(s: &UnwindSample) -> Self {
        Self {
            sample_id: s.sample_id,
            kind: s.kind,
            key: s.key,
            bytes: s.bytes,
        }
    }
}

/// An unwound stack, before the frame-pointer frames are joined on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Unwound {
    pub ips: Vec<u64>,
    pub end: End,
    /// The kernel's frame-pointer stack id, kept when the unwind was cut: the frames to
    /// continue with. -1 otherwise.
    pub fp_stack: i32,
}

impl Unwound {
    pub fn new(walk: Walk, stack_id: i32) -> Self {
        let fp_stack = if walk.end == End::Cut { stack_id } else { -1 };
        Self {
            ips: walk.ips,
            end: walk.end,
            fp_stack,
        }
    }

    /// The unwinder gave up on the sample: its frame-pointer stack stands.
    pub fn failed(stack_id: i32) -> Self {
        Self {
            ips: Vec::new(),
            end: End::Cut,
            fp_stack: stack_id,
        }
    }
}

#[derive(Default)]
pub struct Store {
    stacks: Vec<Unwound>,
    index: HashMap<Unwound, u32>,
    /// Sample id -> (pid, stack index).
    samples: HashMap<u64, (u32, u32)>,
    growth: HashMap<(GrowthKey, u32), GrowthValue>,
    /// Samples received and unwound.
    pub received: u64,
    /// Samples whose unwind was cut before the outermost frame.
    pub cut: u64,
    /// Samples not kept: a table above was full.
    pub overflow: u64,
    unreadable: BTreeSet<String>,
}

impl Store {
    pub fn add(&mut self, sample: &Sample, unwound: Unwound) {
        self.received += 1;
        if unwound.end != End::Root {
            self.cut += 1;
        }
        let Some(index) = self.intern(unwound) else {
            self.overflow += 1;
            return;
        };
        let pid = sample.key.tgid;
        let remember = match sample.kind {
            UNWIND_GROWTH => {
                // The stack replaces the frame-pointer fields; every other field groups.
                let key = GrowthKey {
                    stack_id: 0,
                    return_hint: 0,
                    ..sample.key
                };
                let full = self.growth.len() >= MAX_GROWTH_ROWS;
                match self.growth.get_mut(&(key, index)) {
                    Some(v) => {
                        v.events += 1;
                        v.bytes += sample.bytes;
                    }
                    None if full => self.overflow += 1,
                    None => {
                        let fresh = GrowthValue {
                            events: 1,
                            bytes: sample.bytes,
                        };
                        self.growth.insert((key, index), fresh);
                    }
                }
                GrowthSource::from_u32(sample.key.source) == Some(GrowthSource::PageFault)
            }
            UNWIND_ALLOC => true,
            _ => false,
        };
        if remember {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.insert(sample.sample_id, (pid, index));
            } else {
                self.overflow += 1;
            }
        }
    }

    fn intern(&mut self, unwound: Unwound) -> Option<u32> {
        if let Some(&i) = self.index.get(&unwound) {
            return Some(i);
        }
        if self.stacks.len() >= MAX_STACKS {
            return None;
        }
        let i = self.stacks.len() as u32;
        self.stacks.push(unwound.clone());
        self.index.insert(unwound, i);
        Some(i)
    }

    pub fn note_unreadable(&mut self, modules: impl Iterator<Item = String>) {
        for m in modules {
            if self.unreadable.len() >= MAX_UNREADABLE {
                break;
            }
            self.unreadable.insert(m);
        }
    }

    /// Modules whose unwind information could not be read (they unwind by frame pointers).
    pub fn unreadable(&self) -> impl Iterator<Item = &String> {
        self.unreadable.iter()
    }

    /// The stack index of a page-fault or allocation sample.
    pub fn sample(&self, sample_id: u64) -> Option<u32> {
        (sample_id != 0)
            .then(|| self.samples.get(&sample_id).map(|&(_, i)| i))
            .flatten()
    }

    /// Growth of `pid` by key (frame-pointer fields zeroed) and stack index.
    pub fn growth(&self, pid: u32) -> Vec<(GrowthKey, u32, GrowthValue)> {
        self.growth
            .iter()
            .filter(|((k, _), _)| k.tgid == pid)
            .map(|(&(k, i), &v)| (k, i, v))
            .collect()
    }

    /// The instruction pointers of stack `index`, leaf first, with the frame-pointer frames
    /// beyond a cut joined on (`fp_stack` reads the kernel's stack map); true when the stack
    /// stops short of its outermost frame.
    pub fn frames(
        &self,
        index: u32,
        fp_stack: impl Fn(i32) -> Option<Vec<u64>>,
    ) -> (Vec<u64>, bool) {
        let Some(u) = self.stacks.get(index as usize) else {
            return (Vec::new(), true);
        };
        match u.end {
            End::Root => (u.ips.clone(), false),
            End::Deep => (u.ips.clone(), true),
            End::Cut => {
                let fp = fp_stack(u.fp_stack).unwrap_or_default();
                if u.ips.is_empty() {
                    return (fp, true);
                }
                match join(&u.ips, &fp) {
                    // At the cap, either walk may have stopped short of the root.
                    Some(joined) => {
                        let capped = joined.len() >= MAX_FRAMES || fp.len() >= MAX_FRAMES;
                        (joined, capped)
                    }
                    None => (u.ips.clone(), true),
                }
            }
        }
    }

    /// Forgets `pid`'s rows and samples (stacks stay interned until [`Store::clear`]).
    pub fn remove(&mut self, pid: u32) {
        self.growth.retain(|(k, _), _| k.tgid != pid);
        self.samples.retain(|_, (p, _)| *p != pid);
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64, source: GrowthSource, bytes: u64) -> Sample {
        Sample {
            sample_id: id,
            kind: UNWIND_GROWTH,
            key: GrowthKey {
                tgid: 7,
                stack_id: id as i32,
                source: source as u32,
                task: 0,
                return_hint: 0,
                py_stack: 0,
            },
            bytes,
        }
    }

    fn root(ips: &[u64]) -> Unwound {
        Unwound {
            ips: ips.to_vec(),
            end: End::Root,
            fp_stack: -1,
        }
    }

    #[test]
    fn samples_with_the_same_unwound_stack_add_up_whatever_their_stack_ids() {
        let mut s = Store::default();
        s.add(&sample(1, GrowthSource::PageFault, 4096), root(&[1, 2, 3]));
        s.add(&sample(2, GrowthSource::PageFault, 4096), root(&[1, 2, 3]));
        s.add(&sample(3, GrowthSource::Mmap, 100), root(&[1, 2, 3]));
        s.add(&sample(4, GrowthSource::PageFault, 4096), root(&[1, 9]));
        let mut rows = s.growth(7);
        rows.sort_by_key(|(k, i, _)| (k.source, *i));
        let summary: Vec<_> = rows
            .iter()
            .map(|(k, i, v)| (k.source, *i, v.events, v.bytes))
            .collect();
        assert_eq!(
            summary,
            vec![(0, 0, 2, 8192), (0, 1, 1, 4096), (1, 0, 1, 100)]
        );
        assert_eq!(s.sample(1), s.sample(2));
        assert_eq!(
            s.sample(3),
            None,
            "address space added is not a page to look up"
        );
        assert_eq!(s.sample(0), None);
        assert!(s.growth(8).is_empty());
        s.remove(7);
        assert!(s.growth(7).is_empty() && s.sample(1).is_none());
    }

    #[test]
    fn a_cut_stack_is_joined_to_its_frame_pointer_frames_or_marked_truncated() {
        let mut s = Store::default();
        let cut = |ips: &[u64]| Unwound {
            ips: ips.to_vec(),
            end: End::Cut,
            fp_stack: 5,
        };
        s.add(
            &sample(1, GrowthSource::PageFault, 1),
            cut(&[0x10, 0xa0, 0xb0]),
        );
        s.add(&sample(2, GrowthSource::PageFault, 1), cut(&[0x10, 0xa1]));
        let fp = |id: i32| (id == 5).then(|| vec![0x10, 0xb0, 0xc0]);
        let one = s.sample(1).unwrap();
        assert_eq!(s.frames(one, fp), (vec![0x10, 0xa0, 0xb0, 0xc0], false));
        let two = s.sample(2).unwrap();
        assert_eq!(s.frames(two, fp), (vec![0x10, 0xa1], true));
    }
}
