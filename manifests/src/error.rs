//! Load errors that say where (file, line, column, field) and what was expected.

use std::fmt;
use std::path::Path;

/// Where in an input a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File name (or blob name) as given by the caller.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted field path, when known (`broker.port`).
    pub field: Option<String>,
}

impl Location {
    /// A location naming only a field of a file.
    pub fn field(file: &str, field: &str) -> Self {
        Location {
            file: file.to_string(),
            line: None,
            column: None,
            field: Some(field.to_string()),
        }
    }

    /// A location from a byte offset into `text`.
    pub fn at_offset(file: &str, text: &str, offset: usize, field: Option<String>) -> Self {
        let offset = offset.min(text.len());
        let before = &text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        // Columns count characters, as editors do.
        let column = text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count())
            + 1;
        Location {
            file: file.to_string(),
            line: Some(line),
            column: Some(column),
            field,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong loading or rendering a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("{file}: not UTF-8 text")]
    NotUtf8 {
        /// The file.
        file: String,
    },
    /// TOML syntax or schema error.
    #[error("{at}: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's explanation.
        message: String,
    },
    /// A value parsed but breaks a rule.
    #[error("{at}: expected {expected}")]
    Invalid {
        /// Where.
        at: Location,
        /// What would have been accepted.
        expected: String,
    },
    /// An input or output exceeds its bound.
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Serialising failed (a bug, or a value TOML cannot hold).
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Parses TOML text into `T`, turning parser errors into [`Error::Syntax`] with line, column
/// and the full path of the field (`broker.port`), the serde message reworded for a person.
pub fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, Error> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let (at, message) = describe_toml_error(file, text, &e);
        Error::Syntax { at, message }
    })
}

/// The location (file, line, column, field path) and a reworded message of a toml error.
pub fn describe_toml_error(file: &str, text: &str, e: &toml::de::Error) -> (Location, String) {
    let message = e.message().trim();
    let at = match e.span() {
        Some(span) => {
            let field = field_of_error(text, span.start, message);
            Location::at_offset(file, text, span.start, field.map(|f| f.to_string()))
        }
        None => Location {
            file: file.to_string(),
            line: None,
            column: None,
            field: missing_field(message).map(str::to_string),
        },
    };
    (at, humanize(message))
}

/// The field a toml error at `offset` is about: the value or key there, plus the missing
/// field's name for "missing field" errors (whose span is the table's).
fn field_of_error(text: &str, offset: usize, message: &str) -> Option<FieldPath> {
    let path = SourceMap::new(text).path_at(offset).unwrap_or_default();
    let path = match missing_field(message) {
        Some(name) => path.key(name),
        None => path,
    };
    (!path.is_root()).then_some(path)
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
}

/// Rewords serde's "invalid type: string \"8883\", expected u16" as "expected an integer
/// 0..=65535, found a string \"8883\"": the expected kind first, in TOML's words.
fn humanize(message: &str) -> String {
    for (prefix, with_article) in [("invalid type: ", true), ("invalid value: ", false)] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            // serde writes `integer `70000``, `string "8883"`, `floating point `1.5``.
            let (kind, value) = match found.find(['`', '"']) {
                Some(i) => (found[..i].trim(), Some(found[i..].trim_matches('`'))),
                None => (found, None),
            };
            let found = match (with_article, value) {
                // A wrong value: the value says it all.
                (false, Some(v)) => v.to_string(),
                (false, None) => kind.to_string(),
                (true, _) => {
                    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                        "an"
                    } else {
                        "a"
                    };
                    match value {
                        Some(v) => format!("{article} {kind} {v}"),
                        None => format!("{article} {kind}"),
                    }
                }
            };
            return format!("expected {}, found {found}", toml_kind(expected));
        }
    }
    message.to_string()
}

/// A Rust/serde type name as a TOML user knows it.
fn toml_kind(expected: &str) -> String {
    let s = match expected {
        "u8" => "an integer 0..=255",
        "u16" => "an integer 0..=65535",
        "u32" => "an integer 0..=4294967295",
        "u64" | "usize" => "a non-negative integer",
        "i8" => "an integer -128..=127",
        "i16" => "an integer -32768..=32767",
        "i32" | "i64" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        "a boolean" | "a string" => expected,
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    s.to_string()
}

/// One step of a [`FieldPath`]: a key of a table or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key (`qos`).
    Key(String),
    /// An array index (`readings[1]`), 0-based.
    Index(usize),
}

/// The path of a value in a TOML document, as written in errors:
/// `profiles.climat.readings[1].topic` (keys that are not bare are quoted, as in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The document itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// A fixed dotted path of bare keys (`mqtt.qos`); `[n]` after a key is an index.
    pub fn parse(dotted: &str) -> Self {
        let mut p = Self::root();
        for part in dotted.split('.').filter(|s| !s.is_empty()) {
            let mut pieces = part.split('[');
            if let Some(k) = pieces.next().filter(|k| !k.is_empty()) {
                p = p.key(k);
            }
            for idx in pieces {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    p = p.index(i);
                }
            }
        }
        p
    }

    /// This path followed by a key.
    #[must_use]
    pub fn key(mut self, key: &str) -> Self {
        self.0.push(Segment::Key(key.to_string()));
        self
    }

    /// This path followed by an array index.
    #[must_use]
    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Segment::Index(index));
        self
    }

    /// This path followed by every step of `rest`.
    #[must_use]
    pub fn join(mut self, rest: &FieldPath) -> Self {
        self.0.extend(rest.0.iter().cloned());
        self
    }

    /// True for the document itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The steps.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where every key and value of a TOML document is written: built from toml's spanned parse
/// tree, so a field is found inside its own table (`[profiles.b]`'s `qos`, not the first `qos`
/// of the file), in inline tables, arrays of tables and dotted keys alike.
pub struct SourceMap {
    entries: Vec<Entry>,
}

struct Entry {
    path: FieldPath,
    /// The key as written (for an array element: the element).
    key: std::ops::Range<usize>,
    /// The value (for a `[table]`: its header).
    value: std::ops::Range<usize>,
}

impl SourceMap {
    /// Indexes `text`; a document that does not parse gives an empty map.
    pub fn new(text: &str) -> Self {
        use toml::de::{DeTable, DeValue};
        let mut entries = Vec::new();
        let Ok(root) = DeTable::parse(text) else {
            return Self { entries };
        };
        // Iterative: a hostile file nests deeper than the stack would allow.
        let mut stack: Vec<(FieldPath, &DeValue<'_>)> = Vec::new();
        index_table(&mut stack, &mut entries, &FieldPath::root(), root.get_ref());
        while let Some((base, v)) = stack.pop() {
            match v {
                DeValue::Table(t) => index_table(&mut stack, &mut entries, &base, t),
                DeValue::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        let path = base.clone().index(i);
                        entries.push(Entry {
                            path: path.clone(),
                            key: v.span(),
                            value: v.span(),
                        });
                        stack.push((path, v.get_ref()));
                    }
                }
                _ => {}
            }
        }
        Self { entries }
    }

    /// Byte offset where `path` is written (its key), or where its nearest written ancestor
    /// is (a missing `readings` points at its `[profiles.NAME]` header).
    pub fn offset_of(&self, path: &FieldPath) -> Option<usize> {
        let segs = path.segments();
        (1..=segs.len()).rev().find_map(|n| {
            self.entries
                .iter()
                .find(|e| e.path.segments() == &segs[..n])
                .map(|e| e.key.start)
        })
    }

    /// The path of the innermost key or value written at `offset`.
    pub fn path_at(&self, offset: usize) -> Option<FieldPath> {
        self.entries
            .iter()
            .flat_map(|e| [(&e.key, e), (&e.value, e)])
            .filter(|(r, _)| r.start <= offset && offset < r.end.max(r.start + 1))
            .min_by_key(|(r, e)| (r.len(), std::cmp::Reverse(e.path.segments().len())))
            .map(|(_, e)| e.path.clone())
    }
}

fn index_table<'a, 'i>(
    stack: &mut Vec<(FieldPath, &'a toml::de::DeValue<'i>)>,
    entries: &mut Vec<Entry>,
    base: &FieldPath,
    table: &'a toml::de::DeTable<'i>,
) {
    for (k, v) in table.iter() {
        let path = base.clone().key(k.get_ref());
        entries.push(Entry {
            path: path.clone(),
            key: k.span(),
            value: v.span(),
        });
        stack.push((path, v.get_ref()));
    }
}

/// The location of `path` in `text`: the line of its key within its own table, else of its
/// nearest written ancestor, else the field alone.
pub fn locate(file: &str, text: &str, path: &FieldPath) -> Location {
    match SourceMap::new(text).offset_of(path) {
        Some(off) => Location::at_offset(file, text, off, Some(path.to_string())),
        None => Location::field(file, &path.to_string()),
    }
}

/// Reads a UTF-8 text file with a bounded size.
pub fn read_text(path: &Path, max: usize) -> Result<String, Error> {
    let file = path.display().to_string();
    // A regular file only (a FIFO would hang the reader, /dev/zero exhaust memory).
    let bytes = safe_fs::read_limited(path, max as u64).map_err(|source| Error::Read {
        file: file.clone(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| Error::NotUtf8 { file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_reworded_in_tomls_terms() {
        assert_eq!(
            humanize("invalid type: string \"8883\", expected u16"),
            "expected an integer 0..=65535, found a string \"8883\""
        );
        assert_eq!(
            humanize("invalid type: integer `3`, expected a string"),
            "expected a string, found an integer 3"
        );
        assert_eq!(
            humanize("invalid type: string \"a\", expected a sequence"),
            "expected an array, found a string \"a\""
        );
        assert_eq!(
            humanize("invalid value: integer `300`, expected u8"),
            "expected an integer 0..=255, found 300"
        );
        assert_eq!(
            humanize("invalid type: floating point `1.5`, expected u8"),
            "expected an integer 0..=255, found a floating point 1.5"
        );
        assert_eq!(humanize("missing field `qos`"), "missing field `qos`");
    }

    #[test]
    fn field_paths_quote_keys_that_are_not_bare() {
        let p = FieldPath::root()
            .key("profiles")
            .key("a.b")
            .key("readings")
            .index(1)
            .key("topic");
        assert_eq!(p.to_string(), "profiles.\"a.b\".readings[1].topic");
        assert_eq!(
            FieldPath::parse("peers[1].address"),
            FieldPath::root().key("peers").index(1).key("address")
        );
    }

    #[test]
    fn site_and_gateway_manifests_from_devices_or_huge_files_are_clear_errors() {
        let d = tempfile::tempdir().expect("dir");
        let big = d.path().join("site.toml");
        std::fs::File::create(&big)
            .and_then(|f| f.set_len(100 << 20))
            .expect("100 MB");
        for (p, what) in [
            (Path::new("/dev/zero"), "character device"),
            (Path::new("/dev/urandom"), "character device"),
            (big.as_path(), "104857600 bytes"),
        ] {
            let e = crate::site::Site::load(p).expect_err("refused");
            assert!(e.to_string().contains(what), "{e}");
            let e = crate::gateway::GatewayManifest::load(p).expect_err("refused");
            assert!(e.to_string().contains(what), "{e}");
        }
    }
}
