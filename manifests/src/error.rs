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
        let column = offset
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
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

/// Parses TOML text into `T`, turning parser errors into [`Error::Syntax`] with line and column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, Error> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let at = match e.span() {
            Some(span) => Location::at_offset(file, text, span.start, None),
            None => Location {
                file: file.to_string(),
                line: None,
                column: None,
                field: None,
            },
        };
        Error::Syntax {
            at,
            message: e.message().trim().to_string(),
        }
    })
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
