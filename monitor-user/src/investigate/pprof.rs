//! The report as a pprof profile (`profile.proto` of github.com/google/pprof), gzip-compressed
//! as the format requires on disk, so `go tool pprof`, Pyroscope and Parca can open it.
//!
//! Layout choices a reader of the file may care about:
//! - One Mapping per distinct module. The process's real mapping bounds are not in the report,
//!   so a Mapping spans the lowest to the highest address seen in that module, with the file
//!   offset of the lowest: enough for pprof to re-symbolize with the binary when the report
//!   could not (`has_functions` is set only when every frame of the module had a name).
//! - Inlined frames share the Location of the frame they were inlined into, as extra Lines
//!   innermost first, as the format defines; a chain that crosses modules is split instead.
//! - Frames without a symbol get a Function named `module+0xoffset`, so pprof still shows
//!   where they are.
//! - `time_nanos` is when tracing started (now minus the traced duration), as the field means.

use std::{
    collections::HashMap,
    io::{Read, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message as _;

use super::report::{Frame, Mode, Report, StackRecord, basename};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every other string field is an index into this table; index 0 is always "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One per `Profile::sample_type`, in that order.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Innermost first: the last Line is the function the others were inlined into.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("decompressing the profile: {0}")]
    Gzip(std::io::Error),
    #[error("decoding the profile protobuf: {0}")]
    Proto(prost::DecodeError),
}

impl From<std::io::Error> for DecodeError {
    fn from(e: std::io::Error) -> Self {
        Self::Gzip(e)
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Proto(e)
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The report as a gzip-compressed pprof profile, ready to write to a `.pb.gz` file.
pub fn encode(report: &Report) -> Vec<u8> {
    let raw = profile(report, SystemTime::now()).encode_to_vec();
    // Compressing into memory cannot fail short of allocation failure; should it anyway,
    // the plain protobuf is still a profile every pprof reader accepts.
    gzip(&raw).unwrap_or(raw)
}

/// Reads a profile written by [`encode`] (or any pprof file, compressed or not).
pub fn decode(bytes: &[u8]) -> Result<Profile, DecodeError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(Profile::decode(bytes)?);
    }
    let mut raw = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut raw)?;
    Ok(Profile::decode(raw.as_slice())?)
}

fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Compression::default());
    encoder.write_all(raw)?;
    encoder.finish()
}

/// The profile for `report`, as if written at `now`.
fn profile(report: &Report, now: SystemTime) -> Profile {
    let mut builder = Builder::default();
    let (sample_types, default_type, period_type) = match report.mode {
        Mode::Alloc => (
            [("inuse_objects", "count"), ("inuse_space", "bytes")],
            "inuse_space",
            ("space", "bytes"),
        ),
        Mode::Growth => (
            [("growth_events", "count"), ("growth", "bytes")],
            "growth",
            ("faults", "count"),
        ),
    };
    let sample_type = sample_types
        .iter()
        .map(|&(kind, unit)| builder.value_type(kind, unit))
        .collect();
    let default_sample_type = builder.string(default_type);
    let period_type = Some(builder.value_type(period_type.0, period_type.1));
    let period = match report.mode {
        Mode::Growth => report.sample_period.map_or(0, i64::from),
        Mode::Alloc => 0,
    };

    builder.add_mappings(report);
    let sample = report
        .stacks
        .iter()
        .map(|stack| builder.sample(stack))
        .collect();

    let mut comments = vec![format!(
        "leakscope investigate {}: pid {} ({})",
        report.mode.as_str(),
        report.pid,
        report.comm
    )];
    comments.extend(report.notes.iter().cloned());
    let comment = comments
        .iter()
        .map(|comment| builder.string(comment))
        .collect();

    let started = now.checked_sub(report.duration).unwrap_or(now);
    let time_nanos = started.duration_since(UNIX_EPOCH).map_or(0, nanos);

    Profile {
        sample_type,
        sample,
        mapping: builder.mappings,
        location: builder.locations,
        function: builder.functions,
        string_table: builder.strings,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos: nanos(report.duration),
        period_type,
        period,
        comment,
        default_sample_type,
    }
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// pprof values are signed; a count past i64::MAX is not a real measurement, so clamp it.
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What the frames of one module say about it, gathered before its Mapping is written.
struct ModuleSummary {
    lowest: u64,
    lowest_offset: u64,
    highest: u64,
    all_named: bool,
    all_have_files: bool,
    all_have_lines: bool,
    any_inlined: bool,
}

impl ModuleSummary {
    fn new(frame: &Frame) -> Self {
        Self {
            lowest: frame.address,
            lowest_offset: frame.offset,
            highest: frame.address,
            all_named: frame.function.is_some(),
            all_have_files: frame.file.is_some(),
            all_have_lines: frame.line.is_some(),
            any_inlined: frame.inlined,
        }
    }

    fn add(&mut self, frame: &Frame) {
        if frame.address < self.lowest {
            self.lowest = frame.address;
            self.lowest_offset = frame.offset;
        }
        self.highest = self.highest.max(frame.address);
        self.all_named &= frame.function.is_some();
        self.all_have_files &= frame.file.is_some();
        self.all_have_lines &= frame.line.is_some();
        self.any_inlined |= frame.inlined;
    }
}

/// Identifies a Location: the same address reached through the same inline chain.
#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    mapping_id: u64,
    address: u64,
    lines: Vec<(u64, i64)>,
}

/// Interns strings, mappings, functions and locations, handing out the ids pprof wants
/// (strings from 0 with "" first, everything else from 1).
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<String, u64>,
    functions: Vec<Function>,
    function_ids: HashMap<(String, Option<String>), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<LocationKey, u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
        }
    }
}

impl Builder {
    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = signed(self.strings.len() as u64);
        self.strings.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    /// One Mapping per module, the main executable first: pprof takes mapping[0] as the
    /// profiled binary when it names the profile.
    fn add_mappings(&mut self, report: &Report) {
        let mut order: Vec<&str> = Vec::new();
        let mut summaries: HashMap<&str, ModuleSummary> = HashMap::new();
        for frame in report.stacks.iter().flat_map(|stack| &stack.frames) {
            match summaries.get_mut(frame.module.as_str()) {
                Some(summary) => summary.add(frame),
                None => {
                    order.push(&frame.module);
                    summaries.insert(&frame.module, ModuleSummary::new(frame));
                }
            }
        }
        if let Some(main) = order.iter().position(|module| is_executable(module)) {
            let executable = order.remove(main);
            order.insert(0, executable);
        }
        for module in order {
            let summary = &summaries[module];
            let mapping = Mapping {
                id: self.mappings.len() as u64 + 1,
                memory_start: summary.lowest,
                memory_limit: summary.highest.saturating_add(1),
                file_offset: summary.lowest_offset,
                filename: self.string(module),
                build_id: 0,
                has_functions: summary.all_named,
                has_filenames: summary.all_have_files,
                has_line_numbers: summary.all_have_lines,
                has_inline_frames: summary.any_inlined,
            };
            self.mapping_ids.insert(module.to_string(), mapping.id);
            self.mappings.push(mapping);
        }
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = frame.display_name();
        let key = (name, frame.file.clone());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let name = self.string(&key.0);
        let filename = key.1.as_deref().map_or(0, |file| self.string(file));
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name,
            // Only the demangled name is known; pprof falls back to it either way.
            system_name: name,
            filename,
            start_line: frame.start_line.map_or(0, i64::from),
        });
        self.function_ids.insert(key, id);
        id
    }

    /// A Location for `group`: inlined frames innermost first, ending with the frame they were
    /// inlined into, whose address the Location takes.
    fn location(&mut self, group: &[&Frame]) -> u64 {
        let Some(physical) = group.last() else {
            return 0;
        };
        let lines: Vec<(u64, i64)> = group
            .iter()
            .map(|frame| (self.function(frame), frame.line.map_or(0, i64::from)))
            .collect();
        let key = LocationKey {
            mapping_id: self.mapping_ids.get(&physical.module).copied().unwrap_or(0),
            address: physical.address,
            lines,
        };
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id: key.mapping_id,
            address: key.address,
            line: key
                .lines
                .iter()
                .map(|&(function_id, line)| Line {
                    function_id,
                    line,
                    column: 0,
                })
                .collect(),
            is_folded: false,
        });
        self.location_ids.insert(key, id);
        id
    }

    fn sample(&mut self, stack: &StackRecord) -> Sample {
        let location_id = inline_groups(&stack.frames)
            .iter()
            .map(|group| self.location(group))
            .collect();
        let source_key = self.string("source");
        let source = self.string(stack.source.as_str());
        let mut label = vec![Label {
            key: source_key,
            str: source,
            num: 0,
            num_unit: 0,
        }];
        // The task its thread ran (task markers): `go tool pprof -tagfocus task=NAME`.
        if let Some(task) = &stack.task {
            label.push(Label {
                key: self.string("task"),
                str: self.string(task),
                num: 0,
                num_unit: 0,
            });
        }
        Sample {
            location_id,
            value: vec![signed(stack.count), signed(stack.bytes)],
            label,
        }
    }
}

/// Splits leaf-first frames into the frames of one machine address each: a run of inlined
/// frames plus the frame they were inlined into. A run never crosses modules, since a
/// Location belongs to one mapping.
fn inline_groups(frames: &[Frame]) -> Vec<Vec<&Frame>> {
    let mut groups = Vec::new();
    let mut group: Vec<&Frame> = Vec::new();
    for frame in frames {
        if group
            .first()
            .is_some_and(|first| first.module != frame.module)
        {
            groups.push(std::mem::take(&mut group));
        }
        group.push(frame);
        if !frame.inlined {
            groups.push(std::mem::take(&mut group));
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// Same rule pprof uses to pick the main binary: a real file that is not a shared library.
fn is_executable(module: &str) -> bool {
    let name = basename(module);
    !name.is_empty() && !name.starts_with('[') && !name.contains(".so")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::report::{Source, test_support::*};
    use super::*;

    const EXE: &str = "/opt/app/bin/server";
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    fn string(profile: &Profile, index: i64) -> &str {
        &profile.string_table[usize::try_from(index).unwrap()]
    }

    fn sample_types(profile: &Profile) -> Vec<(&str, &str)> {
        profile
            .sample_type
            .iter()
            .map(|value_type| {
                (
                    string(profile, value_type.r#type),
                    string(profile, value_type.unit),
                )
            })
            .collect()
    }

    /// Function names of a sample's locations, leaf first, inline chains flattened.
    fn sample_functions<'a>(profile: &'a Profile, sample: &Sample) -> Vec<&'a str> {
        sample
            .location_id
            .iter()
            .flat_map(|id| {
                let location = profile.location.iter().find(|l| l.id == *id).unwrap();
                location.line.iter().map(|line| {
                    let function = profile
                        .function
                        .iter()
                        .find(|f| f.id == line.function_id)
                        .unwrap();
                    string(profile, function.name)
                })
            })
            .collect()
    }

    fn growth_report() -> Report {
        let mut inlined = frame_at("hash_grow", EXE, 0x5555_5555_6010, "/src/hash.h", 7);
        inlined.inlined = true;
        let mut report = report(
            Mode::Growth,
            vec![
                record(
                    vec![
                        libc("malloc", 0x7fff_0000_2000),
                        inlined,
                        frame_at("cache_insert", EXE, 0x5555_5555_6010, "/src/cache.c", 42),
                        frame("main", EXE, 0x5555_5555_7000),
                    ],
                    Source::PageFault,
                    4 << 20,
                    64,
                ),
                record(
                    vec![
                        stripped("/opt/app/libplugin.so", 0x7fff_2000_1189, 0x1189),
                        frame("main", EXE, 0x5555_5555_7000),
                    ],
                    Source::Mmap,
                    8192,
                    2,
                ),
            ],
        );
        report.notes.push("3 samples lost".to_string());
        report.rank();
        report
    }

    #[test]
    fn output_is_gzip() {
        let bytes = encode(&growth_report());
        assert_eq!(bytes[..2], GZIP_MAGIC);
    }

    #[test]
    fn round_trip_keeps_values_and_stacks_leaf_first() {
        let report = growth_report();
        let profile = decode(&encode(&report)).unwrap();
        assert_eq!(profile.string_table[0], "");
        assert_eq!(profile.sample.len(), 2);
        for (sample, stack) in profile.sample.iter().zip(&report.stacks) {
            assert_eq!(sample.value, [stack.count as i64, stack.bytes as i64]);
        }
        assert_eq!(
            sample_functions(&profile, &profile.sample[0]),
            ["malloc", "hash_grow", "cache_insert", "main"]
        );
        assert_eq!(
            sample_functions(&profile, &profile.sample[1]),
            ["libplugin.so+0x1189", "main"]
        );
        // The shared `main` frame is one Location, referenced from both samples.
        assert_eq!(
            profile.sample[0].location_id.last(),
            profile.sample[1].location_id.last()
        );
    }

    #[test]
    fn python_frames_carry_file_start_line_and_line() {
        let report = report(
            Mode::Growth,
            vec![record(
                vec![
                    libc("malloc", 0x7fff_0000_2000),
                    python("keep_document", "/app/jobs.py", 15, 16),
                    python("handle_job", "/app/jobs.py", 20, 23),
                ],
                Source::PageFault,
                4096,
                1,
            )],
        );
        let profile = decode(&encode(&report)).unwrap();
        assert_eq!(
            sample_functions(&profile, &profile.sample[0]),
            ["malloc", "keep_document", "handle_job"]
        );
        let function = profile
            .function
            .iter()
            .find(|f| string(&profile, f.name) == "keep_document")
            .unwrap();
        assert_eq!(string(&profile, function.filename), "/app/jobs.py");
        assert_eq!(function.start_line, 15);
        let line = profile
            .location
            .iter()
            .flat_map(|l| &l.line)
            .find(|l| l.function_id == function.id)
            .unwrap();
        assert_eq!(line.line, 16);
    }

    #[test]
    fn inlined_frames_share_a_location_innermost_first() {
        let profile = decode(&encode(&growth_report())).unwrap();
        let second = profile.sample[0].location_id[1];
        let location = profile.location.iter().find(|l| l.id == second).unwrap();
        assert_eq!(location.address, 0x5555_5555_6010);
        let lines: Vec<i64> = location.line.iter().map(|line| line.line).collect();
        assert_eq!(lines, [7, 42]);
        assert_eq!(profile.sample[0].location_id.len(), 3);
    }

    #[test]
    fn ids_refer_to_existing_entries() {
        let profile = decode(&encode(&growth_report())).unwrap();
        let mappings: HashSet<u64> = profile.mapping.iter().map(|m| m.id).collect();
        let functions: HashSet<u64> = profile.function.iter().map(|f| f.id).collect();
        let locations: HashSet<u64> = profile.location.iter().map(|l| l.id).collect();
        assert_eq!(mappings.len(), profile.mapping.len());
        assert_eq!(functions.len(), profile.function.len());
        assert_eq!(locations.len(), profile.location.len());
        assert!(!mappings.contains(&0) && !functions.contains(&0) && !locations.contains(&0));
        for location in &profile.location {
            assert!(mappings.contains(&location.mapping_id), "{location:?}");
            for line in &location.line {
                assert!(functions.contains(&line.function_id), "{line:?}");
            }
        }
        for sample in &profile.sample {
            for id in &sample.location_id {
                assert!(locations.contains(id));
            }
        }
        for function in &profile.function {
            assert!(usize::try_from(function.name).unwrap() < profile.string_table.len());
        }
    }

    #[test]
    fn mappings_are_per_module_with_main_binary_first() {
        let profile = decode(&encode(&growth_report())).unwrap();
        let files: Vec<&str> = profile
            .mapping
            .iter()
            .map(|mapping| string(&profile, mapping.filename))
            .collect();
        assert_eq!(files, [EXE, LIBC, "/opt/app/libplugin.so"]);
        let exe = &profile.mapping[0];
        assert!(exe.has_functions && exe.has_inline_frames);
        assert!(!exe.has_filenames, "main has no file");
        assert_eq!(exe.memory_start, 0x5555_5555_6010);
        assert_eq!(exe.memory_limit, 0x5555_5555_7001);
        let plugin = &profile.mapping[2];
        assert!(!plugin.has_functions && !plugin.has_line_numbers);
        assert_eq!(plugin.file_offset, 0x1189);
    }

    #[test]
    fn growth_profile_metadata() {
        let report = growth_report();
        let profile = decode(&encode(&report)).unwrap();
        assert_eq!(
            sample_types(&profile),
            [("growth_events", "count"), ("growth", "bytes")]
        );
        assert_eq!(string(&profile, profile.default_sample_type), "growth");
        let period_type = profile.period_type.as_ref().unwrap();
        assert_eq!(string(&profile, period_type.r#type), "faults");
        assert_eq!(string(&profile, period_type.unit), "count");
        assert_eq!(profile.period, 16);
        assert_eq!(profile.duration_nanos, 30_000_000_000);
        assert!(profile.time_nanos > 0);
        let comments: Vec<&str> = profile
            .comment
            .iter()
            .map(|&c| string(&profile, c))
            .collect();
        assert_eq!(
            comments,
            [
                "leakscope investigate growth: pid 4242 (leak_paths)",
                "3 samples lost"
            ]
        );
        let labels: Vec<(&str, &str)> = profile
            .sample
            .iter()
            .flat_map(|sample| &sample.label)
            .map(|label| (string(&profile, label.key), string(&profile, label.str)))
            .collect();
        assert_eq!(labels, [("source", "page_fault"), ("source", "mmap")]);
    }

    #[test]
    fn a_sample_with_a_task_is_labelled_with_it() {
        let mut with_task = record(vec![frame("main", "/app", 0x1000)], Source::PageFault, 8, 1);
        with_task.task = Some("jobs.ingest".to_owned());
        let without = record(vec![frame("main", "/app", 0x2000)], Source::Mmap, 4, 1);
        let profile = decode(&encode(&report(Mode::Growth, vec![with_task, without]))).unwrap();
        let labels: Vec<Vec<(&str, &str)>> = profile
            .sample
            .iter()
            .map(|sample| {
                sample
                    .label
                    .iter()
                    .map(|l| (string(&profile, l.key), string(&profile, l.str)))
                    .collect()
            })
            .collect();
        assert_eq!(
            labels,
            [
                vec![("source", "page_fault"), ("task", "jobs.ingest")],
                vec![("source", "mmap")],
            ]
        );
    }

    #[test]
    fn alloc_profile_uses_heap_names() {
        let stack = record(
            vec![
                libc("malloc", 0x7fff_0000_2000),
                frame("keep", EXE, 0x5555_5555_6000),
            ],
            Source::Alloc,
            4096,
            4,
        );
        let profile = decode(&encode(&report(Mode::Alloc, vec![stack]))).unwrap();
        assert_eq!(
            sample_types(&profile),
            [("inuse_objects", "count"), ("inuse_space", "bytes")]
        );
        assert_eq!(string(&profile, profile.default_sample_type), "inuse_space");
        let period_type = profile.period_type.as_ref().unwrap();
        assert_eq!(string(&profile, period_type.r#type), "space");
        assert_eq!(string(&profile, period_type.unit), "bytes");
        assert_eq!(profile.period, 0);
        assert_eq!(profile.sample[0].value, [4, 4096]);
    }

    #[test]
    fn empty_report_is_a_valid_profile() {
        let profile = decode(&encode(&report(Mode::Alloc, Vec::new()))).unwrap();
        assert!(profile.sample.is_empty());
        assert_eq!(profile.string_table[0], "");
        assert_eq!(profile.sample_type.len(), 2);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(matches!(
            decode(&[0x1f, 0x8b, 0, 1, 2]),
            Err(DecodeError::Gzip(_))
        ));
    }
}
