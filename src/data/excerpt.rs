//! Reading data files within the limits, and turning one line of a data file into an excerpt
//! registered in the [`SourceMap`] so that a diagnostic can point at a field of it.

use super::MAX_FILE_BYTES;
use crate::diag::{Diagnostic, SourceMap, Span};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

/// Lines longer than this (bytes) are shown as a window around the offending field.
const MAX_EXCERPT: usize = 300;
/// Bytes shown on each side of the field in a windowed excerpt.
const WINDOW_SIDE: usize = 100;
/// Longest field shown in full under a caret.
const MAX_FOCUS: usize = 200;
/// How much of a line [`read_line_at`] reads.
const MAX_REREAD: u64 = 64 * 1024;

/// The label put on the source call in the `.train` file.
pub(crate) const DECLARED_HERE: &str = "data source declared here";

/// The name a data file is shown under.
pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads a whole data file, refusing directories and files larger than [`MAX_FILE_BYTES`]
/// (checked on the metadata before reading, and again while reading). Errors point at
/// `path_span`, the path string in the `.train` file.
pub(crate) fn read_file(path: &Path, path_span: Span) -> Result<Vec<u8>, Diagnostic> {
    let (file, len) = open_within_limit(path, path_span)?;
    let name = display(path);
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| cannot_read(&name, e, path_span))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(&name, bytes.len() as u64, path_span));
    }
    Ok(bytes)
}

/// [`read_file`] into 4-byte words (the last one zero-padded), with the file's length in
/// bytes: f32 data can then become values where it lies, without a second copy of a
/// large file.
pub(crate) fn read_file_words(path: &Path, path_span: Span) -> Result<(Vec<u32>, usize), Diagnostic> {
    let (mut file, len) = open_within_limit(path, path_span)?;
    let name = display(path);
    let len = len as usize;
    let mut words = vec![0u32; len.div_ceil(4)];
    file.read_exact(&mut bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..len]).map_err(|e| cannot_read(&name, e, path_span))?;
    // A file that grew after its size was read is read again the ordinary way (with the
    // limit checked while reading).
    if file.read(&mut [0u8; 1]).map_err(|e| cannot_read(&name, e, path_span))? != 0 {
        let bytes = read_file(path, path_span)?;
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        return Ok((words, bytes.len()));
    }
    Ok((words, len))
}

/// Opens a data file after refusing directories and files larger than [`MAX_FILE_BYTES`];
/// returns it with its size.
fn open_within_limit(path: &Path, path_span: Span) -> Result<(File, u64), Diagnostic> {
    let name = display(path);
    let meta = std::fs::metadata(path).map_err(|e| cannot_read(&name, e, path_span))?;
    if meta.is_dir() {
        return Err(Diagnostic::at(path_span, format!("`{name}` is a directory"), "expected a data file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(&name, meta.len(), path_span));
    }
    let file = File::open(path).map_err(|e| cannot_read(&name, e, path_span))?;
    Ok((file, meta.len()))
}

fn cannot_read(name: &str, e: std::io::Error, span: Span) -> Diagnostic {
    Diagnostic::at(span, format!("cannot read `{name}`: {e}"), "cannot read this file")
}

fn too_big(name: &str, len: u64, span: Span) -> Diagnostic {
    Diagnostic::at(span, format!("`{name}` is too large ({len} bytes)"), "file too large")
        .with_note(format!("data files are limited to {MAX_FILE_BYTES} bytes"))
}

/// Checks that a csv or jsonl file is non-empty UTF-8 text; returns the text without a
/// leading byte-order mark and the number of bytes skipped.
pub(crate) fn text_file<'a>(
    bytes: &'a [u8],
    path: &Path,
    path_span: Span,
    spec_span: Span,
    what: &str,
    sources: &mut SourceMap,
) -> Result<(&'a str, usize), Diagnostic> {
    let name = display(path);
    let bom = if bytes.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    if bytes[bom..].iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Diagnostic::at(path_span, format!("`{name}` is empty"), "empty file")
            .with_note(format!("a {what} source needs at least one row")));
    }
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(Diagnostic::at(path_span, format!("`{name}` is not a text file"), "not a text file")
            .with_note(format!("it contains a NUL byte at byte offset {pos}; a {what} file must be UTF-8 text")));
    }
    match std::str::from_utf8(&bytes[bom..]) {
        Ok(text) => Ok((text, bom)),
        Err(e) => {
            let bad = bom + e.valid_up_to();
            let bad_end = bad + e.error_len().unwrap_or(bytes.len() - bad).max(1);
            let (line_no, start, end) = line_around(bytes, bad);
            let span = excerpt(sources, &name, &bytes[start..end], line_no, (bad - start)..(bad_end.min(end) - start));
            Err(Diagnostic::at(span, format!("invalid UTF-8 in line {line_no} of `{name}`"), "not valid UTF-8")
                .with_label(spec_span, DECLARED_HERE)
                .with_note(format!("a {what} file must be UTF-8 text")))
        }
    }
}

/// The 1-based line number and the byte range (without the line end) of the line holding `at`.
pub(crate) fn line_around(bytes: &[u8], at: usize) -> (u64, usize, usize) {
    let at = at.min(bytes.len());
    let start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let end = bytes[at..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| at + p);
    let line = bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    (line, start, end)
}

/// Registers `line` (one line of a data file, or one record; its line end is dropped) as an
/// excerpt starting at line `line_no` and returns the span of `focus` (byte offsets into
/// `line`) in it. Invalid UTF-8 is replaced; a long line is cut to a window around `focus`.
pub(crate) fn excerpt(sources: &mut SourceMap, name: &str, line: &[u8], line_no: u64, focus: Range<usize>) -> Span {
    let mut line = line;
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    let fs = focus.start.min(line.len());
    let fe = focus.end.clamp(fs, line.len());
    let (text, mut fs, mut fe) = lossy_with_offsets(line, fs, fe);
    let mut shown = text.as_str();
    let mut prefix = "";
    let mut suffix = "";
    if text.len() > MAX_EXCERPT {
        if fe - fs > MAX_FOCUS {
            fe = floor_char(&text, fs + MAX_FOCUS);
        }
        let ws = floor_char(&text, fs.saturating_sub(WINDOW_SIDE));
        let we = ceil_char(&text, (fe + WINDOW_SIDE).min(text.len()));
        shown = &text[ws..we];
        if ws > 0 {
            prefix = "…";
        }
        if we < text.len() {
            suffix = "…";
        }
        fs = fs - ws + prefix.len();
        fe = fe - ws + prefix.len();
    }
    let body = format!("{prefix}{shown}{suffix}\n");
    let id = sources.add_excerpt(name, body, line_no.max(1) as usize);
    Span::new(id, fs, fe)
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// `String::from_utf8_lossy` that also maps two byte offsets of the input into the output.
fn lossy_with_offsets(bytes: &[u8], a: usize, b: usize) -> (String, usize, usize) {
    let mut out = String::with_capacity(bytes.len());
    let (mut na, mut nb) = (None, None);
    let mut pos = 0;
    let map = |orig: usize, pos: usize, new: usize, len: usize, invalid: bool, slot: &mut Option<usize>| {
        if slot.is_none() && orig < pos + len {
            *slot = Some(if invalid { new } else { new + (orig - pos) });
        }
    };
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        map(a, pos, out.len(), valid.len(), false, &mut na);
        map(b, pos, out.len(), valid.len(), false, &mut nb);
        out.push_str(valid);
        pos += valid.len();
        let invalid = chunk.invalid();
        if !invalid.is_empty() {
            map(a, pos, out.len(), invalid.len(), true, &mut na);
            // An end inside an invalid sequence covers the whole replacement character.
            if nb.is_none() && b > pos && b < pos + invalid.len() {
                nb = Some(out.len() + '\u{FFFD}'.len_utf8());
            }
            map(b, pos, out.len(), invalid.len(), true, &mut nb);
            out.push('\u{FFFD}');
            pos += invalid.len();
        }
    }
    let a2 = na.unwrap_or(out.len());
    let b2 = nb.unwrap_or(out.len()).max(a2);
    (out, a2, b2)
}

/// Reads the line starting at byte `byte` of `path` (at most 64 KiB of it), without its line
/// end. `None` when the file cannot be read.
pub(crate) fn read_line_at(path: &Path, byte: u64) -> Option<Vec<u8>> {
    let mut file = File::open(path).ok()?;
    file.seek(SeekFrom::Start(byte)).ok()?;
    let mut buf = Vec::new();
    file.take(MAX_REREAD).read_to_end(&mut buf).ok()?;
    if let Some(p) = buf.iter().position(|&b| b == b'\n') {
        buf.truncate(p);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Some(buf)
}

/// Byte ranges of the raw fields of one csv record (quotes included), splitting on commas
/// outside double quotes.
pub(crate) fn csv_field_ranges(record: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, &b) in record.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(start..i);
                start = i + 1;
            }
            _ => {}
        }
    }
    let mut end = record.len();
    while end > start && matches!(record[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    out.push(start..end);
    out
}

/// A short, quoted rendering of a field value for messages.
pub(crate) fn quote(value: &str) -> String {
    let mut s: String = value.chars().take(40).collect();
    if s.len() < value.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// `a, b, c` from a list of names, capped at `max` (then `… and N more`).
pub(crate) fn name_list<S: AsRef<str>>(names: &[S], max: usize) -> String {
    let mut s: Vec<String> = names.iter().take(max).map(|n| format!("\"{}\"", n.as_ref())).collect();
    if names.len() > max {
        s.push(format!("… and {} more", names.len() - max));
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_offsets_follow_replacements() {
        let bytes = b"ab\xff\xfecd";
        let (s, a, b) = lossy_with_offsets(bytes, 2, 3);
        assert_eq!(s, "ab\u{FFFD}\u{FFFD}cd");
        assert_eq!(&s[a..b], "\u{FFFD}");
        let (_, a, b) = lossy_with_offsets(bytes, 4, 6);
        assert_eq!(&s[a..b], "cd");
    }

    #[test]
    fn long_lines_are_windowed() {
        let mut line = "1,".repeat(400);
        line.push_str("abc");
        let mut map = SourceMap::new();
        let at = line.len() - 3;
        let span = excerpt(&mut map, "f.csv", line.as_bytes(), 7, at..line.len());
        assert_eq!(&map.text(span.file)[span.start..span.end], "abc");
        assert!(map.text(span.file).len() < 250);
        assert_eq!(map.line_col(span.file, span.start).0, 7);
    }

    #[test]
    fn csv_ranges_respect_quotes() {
        let r = csv_field_ranges(b"a,\"b,c\",d\r\n");
        assert_eq!(r, vec![0..1, 2..7, 8..9]);
    }
}
