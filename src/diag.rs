//! Located diagnostics, rendered like rustc's.
//!
//! Everything that came from a file carries a [`Span`] into a [`SourceMap`]. The `.train`
//! file is registered whole; for a data file only the offending line is registered (with its
//! true line number), so a bad row in a large CSV is shown with a caret under the bad field
//! without keeping the whole file as text.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel};
use codespan_reporting::files::{Error as FilesError, Files};
use codespan_reporting::term;
use std::ops::Range;

/// Index of a file in a [`SourceMap`].
pub type FileId = usize;

/// A byte range in one registered file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span { file, start, end }
    }

    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span { file: self.file, start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

struct SourceFile {
    name: String,
    text: String,
    line_starts: Vec<usize>,
    /// Line number (1-based) of the first line of `text` in the real file.
    first_line: usize,
}

/// The files diagnostics can point into.
#[derive(Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    /// Registers a whole file.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.add_excerpt(name, text, 1)
    }

    /// Registers an excerpt of a file that starts at line `first_line` (1-based).
    pub fn add_excerpt(&mut self, name: impl Into<String>, text: impl Into<String>, first_line: usize) -> FileId {
        let text = text.into();
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        self.files.push(SourceFile { name: name.into(), text, line_starts, first_line });
        self.files.len() - 1
    }

    pub fn text(&self, file: FileId) -> &str {
        &self.files[file].text
    }

    pub fn name(&self, file: FileId) -> &str {
        &self.files[file].name
    }

    /// 1-based (line, column) of a byte offset; the column counts characters.
    pub fn line_col(&self, file: FileId, offset: usize) -> (usize, usize) {
        let f = &self.files[file];
        let line = f.line_starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let start = f.line_starts[line];
        let end = offset.min(f.text.len());
        let col = f.text.get(start..end).map_or(end - start, |s| s.chars().count()) + 1;
        (line + f.first_line, col)
    }

    fn get(&self, id: FileId) -> Result<&SourceFile, FilesError> {
        self.files.get(id).ok_or(FilesError::FileMissing)
    }
}

impl<'a> Files<'a> for SourceMap {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, FilesError> {
        Ok(&self.get(id)?.name)
    }

    fn source(&'a self, id: FileId) -> Result<&'a str, FilesError> {
        Ok(&self.get(id)?.text)
    }

    fn line_index(&'a self, id: FileId, byte_index: usize) -> Result<usize, FilesError> {
        let f = self.get(id)?;
        Ok(f.line_starts.partition_point(|&s| s <= byte_index).saturating_sub(1))
    }

    fn line_number(&'a self, id: FileId, line_index: usize) -> Result<usize, FilesError> {
        Ok(self.get(id)?.first_line + line_index)
    }

    fn line_range(&'a self, id: FileId, line_index: usize) -> Result<Range<usize>, FilesError> {
        let f = self.get(id)?;
        let start = *f
            .line_starts
            .get(line_index)
            .ok_or(FilesError::LineTooLarge { given: line_index, max: f.line_starts.len() - 1 })?;
        let end = f.line_starts.get(line_index + 1).copied().unwrap_or(f.text.len());
        Ok(start..end)
    }
}

/// One user-facing error (or warning), located where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// The primary location and what to say under the caret.
    pub primary: Option<(Span, String)>,
    /// Secondary locations.
    pub labels: Vec<(Span, String)>,
    /// `= note:` lines; "expected …" goes here when it does not fit under the caret.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            primary: None,
            labels: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(message) }
    }

    /// An error at `span` with `label` under the caret.
    pub fn at(span: Span, message: impl Into<String>, label: impl Into<String>) -> Diagnostic {
        Diagnostic::error(message).with_primary(span, label)
    }

    pub fn with_primary(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.primary = Some((span, label.into()));
        self
    }

    pub fn with_label(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.labels.push((span, label.into()));
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Renders the diagnostic as plain text (no colour), the form golden tests compare.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut cs = match self.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        }
        .with_message(&self.message);
        let mut labels = Vec::new();
        if let Some((span, text)) = &self.primary {
            labels.push(CsLabel::primary(span.file, span.start..span.end).with_message(text));
        }
        for (span, text) in &self.labels {
            labels.push(CsLabel::secondary(span.file, span.start..span.end).with_message(text));
        }
        cs = cs.with_labels(labels).with_notes(self.notes.clone());
        let config = term::Config { chars: term::Chars::ascii(), ..term::Config::default() };
        match term::emit_into_string(&config, sources, &cs) {
            Ok(text) => text,
            // A span outside its file is a bug of ours; still say what the user needs.
            Err(_) => format!("error: {}\n", self.message),
        }
    }
}

/// A list of diagnostics collected by a pass that keeps going after the first error.
pub type Diagnostics = Vec<Diagnostic>;

/// Renders every diagnostic, each followed by a blank line as rustc does.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.render(sources));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_col_and_caret() {
        let mut map = SourceMap::new();
        let f = map.add("a.train", "model {\n  x = foo(1)\n}\n");
        let d = Diagnostic::at(Span::new(f, 14, 17), "unknown function `foo`", "not defined");
        let text = d.render(&map);
        assert!(text.contains("a.train:2:7"), "{text}");
        assert!(text.contains("^^^ not defined"), "{text}");
    }

    #[test]
    fn excerpt_keeps_real_line_numbers() {
        let mut map = SourceMap::new();
        let f = map.add_excerpt("d.csv", "1,2,x\n", 41);
        let d = Diagnostic::at(Span::new(f, 4, 5), "not a number", "expected a number");
        let text = d.render(&map);
        assert!(text.contains("d.csv:41:5"), "{text}");
        assert_eq!(map.line_col(f, 4), (41, 5));
    }
}
