//! A code object's name, file and lines, read from the target's memory: `co_qualname` and
//! `co_filename` (str objects), `co_firstlineno`, and `co_linetable` (3.11's location table,
//! CPython's Objects/locations.md), which maps an instruction to its line.

use super::{layout::Layout, memory::Memory};

/// Longest string and line table read: a bound on what a corrupt object can make us read
/// and on the cache's memory (a table cut short gives no line past its end; real ones are a
/// few hundred bytes).
const MAX_STRING_CHARS: u64 = 1024;
const MAX_LINETABLE_BYTES: u64 = 32 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    linetable: Vec<u8>,
}

impl Code {
    pub fn read(mem: &Memory, layout: &Layout, code: u64) -> std::io::Result<Self> {
        let field = |offset: u64| mem.read_u64(code + offset);
        Ok(Self {
            qualname: read_str(mem, layout, field(layout.code_qualname)?)?,
            filename: read_str(mem, layout, field(layout.code_filename)?)?,
            first_line: mem.read_u32(code + layout.code_firstlineno)?,
            linetable: read_bytes(mem, layout, field(layout.code_linetable)?)?,
        })
    }

    /// The line of the instruction `prev_instr` points at (None when the table has no line
    /// for it), `prev_instr` being a pointer into the code at `code`.
    pub fn line_at(&self, layout: &Layout, code: u64, prev_instr: u64) -> Option<u32> {
        let start = code + layout.code_adaptive;
        // Before the first instruction: a frame that has not started yet.
        let unit = prev_instr.checked_sub(start).map_or(0, |bytes| bytes / 2);
        line_for(&self.linetable, self.first_line, unit)
    }
}

/// The line of code unit `unit` in a 3.11 location table. Each entry starts with a byte
/// `1ccccnnn`: code `c`, covering `n + 1` code units; what follows depends on the code.
pub fn line_for(table: &[u8], first_line: u32, unit: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut at: u64 = 0;
    let mut i = 0;
    while i < table.len() {
        let head = table[i];
        if head & 0x80 == 0 {
            return None;
        }
        i += 1;
        let code = (head >> 3) & 0xf;
        let units = u64::from(head & 7) + 1;
        let mut this_line = Some(line);
        match code {
            // No location.
            15 => this_line = None,
            // Long form: line delta, end line delta, column, end column.
            14 => {
                line += signed_varint(table, &mut i)?;
                this_line = Some(line);
                for _ in 0..3 {
                    varint(table, &mut i)?;
                }
            }
            // No column: line delta only.
            13 => {
                line += signed_varint(table, &mut i)?;
                this_line = Some(line);
            }
            // One-line forms: the line delta is in the code, then two column bytes.
            10..=12 => {
                line += i64::from(code - 10);
                this_line = Some(line);
                i += 2;
            }
            // Short forms: same line, one column byte.
            _ => i += 1,
        }
        if unit < at + units {
            return this_line.and_then(|l| u32::try_from(l).ok());
        }
        at += units;
    }
    None
}

fn varint(table: &[u8], i: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let b = *table.get(*i)?;
        *i += 1;
        value |= u64::from(b & 0x3f) << shift;
        if b & 0x40 == 0 {
            return Some(value);
        }
        shift += 6;
        if shift > 60 {
            return None;
        }
    }
}

fn signed_varint(table: &[u8], i: &mut usize) -> Option<i64> {
    let v = varint(table, i)?;
    Some(if v & 1 == 1 {
        -((v >> 1) as i64)
    } else {
        (v >> 1) as i64
    })
}

/// A compact `str`: ASCII after `PyASCIIObject`, else Latin-1, UCS-2 or UCS-4 after
/// `PyCompactUnicodeObject` (the kind says which).
fn read_str(mem: &Memory, layout: &Layout, object: u64) -> std::io::Result<String> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    if object == 0 {
        return Err(invalid("no string object"));
    }
    let length = mem.read_u64(object + layout.unicode_length)?;
    let state = mem.read_u32(object + layout.unicode_state)?;
    let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1, state >> 6 & 1);
    if compact == 0 {
        return Err(invalid("not a compact string"));
    }
    let chars = length.min(MAX_STRING_CHARS);
    if ascii == 1 {
        let bytes = mem.read(object + layout.ascii_header, chars as usize)?;
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    let width = match kind {
        1 | 2 | 4 => u64::from(kind),
        _ => return Err(invalid("unknown string kind")),
    };
    let bytes = mem.read(object + layout.compact_header, (chars * width) as usize)?;
    Ok(bytes
        .chunks_exact(width as usize)
        .map(|c| {
            let mut v = [0u8; 4];
            v[..c.len()].copy_from_slice(c);
            char::from_u32(u32::from_ne_bytes(v)).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect())
}

fn read_bytes(mem: &Memory, layout: &Layout, object: u64) -> std::io::Result<Vec<u8>> {
    let size = mem.read_u64(object + layout.var_size)?;
    mem.read(
        object + layout.bytes_data,
        size.min(MAX_LINETABLE_BYTES) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_table_gives_each_code_unit_its_line() {
        // def f():          first line 10
        //   RESUME          short form, same line (10), 1 unit
        //   x = 1           one-line form, +1 (11), 2 units
        //   y = 2           no-column form, delta +2 (13), 3 units
        //   (no location)   1 unit
        //   return          long form, delta -1 (12), 2 units
        let table = [
            0x80, // code 0 (short form), 1 unit
            0x00,
            0x80 | 11 << 3 | 1, // +1, 2 units
            4,
            9,
            0x80 | 13 << 3 | 2, // delta +2 (svarint 4), 3 units
            4,
            0x80 | 15 << 3,     // no location, 1 unit
            0x80 | 14 << 3 | 1, // long: delta -1 (svarint 3), end delta 0, cols
            3,
            0,
            1,
            5,
        ];
        let lines: Vec<Option<u32>> = (0..10).map(|u| line_for(&table, 10, u)).collect();
        assert_eq!(
            lines,
            [
                Some(10),
                Some(11),
                Some(11),
                Some(13),
                Some(13),
                Some(13),
                None,
                Some(12),
                Some(12),
                None
            ]
        );
    }

    #[test]
    fn a_long_varint_and_a_truncated_table_end_without_a_line() {
        // Line delta 100 (svarint 200 = 0b11_001000: low six bits 8 with continuation, then 3).
        let table = [0x80 | 13 << 3, 0x40 | 8, 3];
        assert_eq!(line_for(&table, 1, 0), Some(101));
        assert_eq!(line_for(&table[..2], 1, 0), None);
        assert_eq!(line_for(&[0x05], 1, 0), None);
    }
}
