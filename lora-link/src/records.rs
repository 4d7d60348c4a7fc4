//! Payload records: (MQTT topic, payload bytes), several per frame.
//!
//! Encoding of one record:
//!
//! ```text
//! topic byte T:  0x00..=0x7F  known topic, index T in the manifest's topic table
//!                0x81..=0xFF  inline topic of (T & 0x7F) bytes of UTF-8 follows
//!                0x80         reserved (rejected)
//! [inline topic bytes]
//! payload length (1 byte), payload bytes
//! ```
//!
//! A 16-byte reading on a known topic costs 18 bytes, so 28 bytes on air with the frame's
//! 10 bytes of overhead, against ~129 bytes for the old JWT/AES-CBC/base64 scheme (see
//! [`OLD_SCHEME_BYTES_FOR_16`]).

use std::collections::{BTreeMap, HashMap};

use manifests::link::MAX_TOPIC_LEN;

/// Bytes on air of a 16-byte reading with the old scheme (AES-CBC with a fixed IV inside a
/// JWT, base64, as described in DESIGN.md §1).
pub const OLD_SCHEME_BYTES_FOR_16: usize = 129;

/// One MQTT message carried over the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// MQTT topic, restored byte for byte.
    pub topic: String,
    /// MQTT payload, restored byte for byte.
    pub payload: Vec<u8>,
}

impl Record {
    /// A record from a topic and payload.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
        }
    }
}

/// Why records could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Topic empty or longer than 127 bytes (and not in the table).
    #[error("topic of {len} bytes cannot travel inline: expected 1..={MAX_TOPIC_LEN} bytes")]
    TopicLength {
        /// Its length.
        len: usize,
    },
    /// Payload longer than 255 bytes.
    #[error("payload of {len} bytes too long for one record (at most 255)")]
    PayloadTooLong {
        /// Its length.
        len: usize,
    },
    /// Input ended inside a record.
    #[error("record truncated at byte {offset}")]
    Truncated {
        /// Offset where more bytes were needed.
        offset: usize,
    },
    /// Topic index not in this node's table.
    #[error("topic index {index} is not in the manifest's topic table")]
    UnknownTopicIndex {
        /// The index.
        index: u8,
    },
    /// Reserved topic byte.
    #[error("reserved topic byte 0x80 at offset {offset}")]
    Reserved {
        /// Offset.
        offset: usize,
    },
    /// Inline topic is not UTF-8.
    #[error("inline topic at offset {offset} is not UTF-8")]
    TopicNotUtf8 {
        /// Offset.
        offset: usize,
    },
}

/// The fingerprint of a topic table: the first 4 bytes of SHA-256 over
/// `"lora-link topic table v1\n"` and one `"<index> <topic>\n"` line per entry in index order.
/// Its first byte travels in every frame and all 4 bytes are covered by the MIC (see
/// [`crate::frame`]), so a receiver whose table differs from the sender's never decodes a
/// frame with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableFingerprint(pub [u8; 4]);

impl TableFingerprint {
    /// The byte on air.
    pub fn on_air(self) -> u8 {
        self.0[0]
    }
    /// As 8 hex digits.
    pub fn hex(self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for TableFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The manifest's topic table: index <-> topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicTable {
    by_index: BTreeMap<u8, String>,
    by_topic: HashMap<String, u8>,
}

impl TopicTable {
    /// From (index, topic) pairs; indices above 127 and duplicates are ignored (the manifest
    /// loader already rejects them).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (u8, &'a str)>) -> Self {
        let mut t = Self::default();
        for (i, topic) in pairs {
            if i <= 0x7F && !t.by_index.contains_key(&i) && !t.by_topic.contains_key(topic) {
                t.by_index.insert(i, topic.to_string());
                t.by_topic.insert(topic.to_string(), i);
            }
        }
        t
    }

    /// The table's fingerprint (see [`TableFingerprint`]).
    pub fn fingerprint(&self) -> TableFingerprint {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"lora-link topic table v1\n");
        for (i, t) in &self.by_index {
            h.update(format!("{i} {t}\n").as_bytes());
        }
        let d = h.finalize();
        TableFingerprint([d[0], d[1], d[2], d[3]])
    }

    /// The index of a topic.
    pub fn index_of(&self, topic: &str) -> Option<u8> {
        self.by_topic.get(topic).copied()
    }

    /// The topic of an index.
    pub fn topic(&self, index: u8) -> Option<&str> {
        self.by_index.get(&index).map(String::as_str)
    }

    /// Bytes a record takes on air (before encryption).
    pub fn encoded_len(&self, r: &Record) -> usize {
        let topic = if self.index_of(&r.topic).is_some() {
            1
        } else {
            1 + r.topic.len()
        };
        topic + 1 + r.payload.len()
    }

    /// Appends one record's encoding to `out`.
    pub fn encode(&self, r: &Record, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if r.payload.len() > 255 {
            return Err(RecordError::PayloadTooLong {
                len: r.payload.len(),
            });
        }
        match self.index_of(&r.topic) {
            Some(i) => out.push(i),
            None => {
                let len = r.topic.len();
                if len == 0 || len > MAX_TOPIC_LEN {
                    return Err(RecordError::TopicLength { len });
                }
                out.push(0x80 | len as u8);
                out.extend_from_slice(r.topic.as_bytes());
            }
        }
        out.push(r.payload.len() as u8);
        out.extend_from_slice(&r.payload);
        Ok(())
    }

    /// Decodes all records of a frame's plaintext. Never panics.
    pub fn decode(&self, mut bytes: &[u8]) -> Result<Vec<Record>, RecordError> {
        let total = bytes.len();
        let mut out = Vec::new();
        let off = |rest: &[u8]| total - rest.len();
        while let Some((&t, rest)) = bytes.split_first() {
            let topic = match t {
                0x00..=0x7F => self
                    .topic(t)
                    .ok_or(RecordError::UnknownTopicIndex { index: t })?
                    .to_string(),
                0x80 => return Err(RecordError::Reserved { offset: off(bytes) }),
                _ => {
                    let len = usize::from(t & 0x7F);
                    let name = rest
                        .get(..len)
                        .ok_or(RecordError::Truncated { offset: off(rest) })?;
                    let s = std::str::from_utf8(name)
                        .map_err(|_| RecordError::TopicNotUtf8 { offset: off(rest) })?
                        .to_string();
                    bytes = &rest[len..];
                    // `bytes` now starts at the length byte; re-slice below uniformly
                    let (&plen, prest) = bytes
                        .split_first()
                        .ok_or(RecordError::Truncated { offset: off(bytes) })?;
                    let payload = prest
                        .get(..usize::from(plen))
                        .ok_or(RecordError::Truncated { offset: off(prest) })?;
                    out.push(Record::new(s, payload));
                    bytes = &prest[usize::from(plen)..];
                    continue;
                }
            };
            let (&plen, prest) = rest
                .split_first()
                .ok_or(RecordError::Truncated { offset: off(rest) })?;
            let payload = prest
                .get(..usize::from(plen))
                .ok_or(RecordError::Truncated { offset: off(prest) })?;
            out.push(Record::new(topic, payload));
            bytes = &prest[usize::from(plen)..];
        }
        Ok(out)
    }

    /// Packs records from the front of `records` into one plaintext of at most `capacity`
    /// bytes. Returns the plaintext and how many records it holds (0 if the first one does
    /// not fit or cannot be encoded).
    pub fn pack<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
        capacity: usize,
    ) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut n = 0;
        for r in records {
            if out.len() + self.encoded_len(r) > capacity {
                break;
            }
            let before = out.len();
            if self.encode(r, &mut out).is_err() {
                out.truncate(before);
                break;
            }
            n += 1;
        }
        (out, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TopicTable {
        TopicTable::new([
            (0, "maison/salon/temperature"),
            (1, "maison/salon/humidite"),
        ])
    }

    #[test]
    fn known_and_inline_topics_round_trip() {
        let t = table();
        let recs = vec![
            Record::new("maison/salon/temperature", b"21.5".to_vec()),
            Record::new("jardin/pluie", vec![0, 255, 10, 13]),
            Record::new("maison/salon/humidite", Vec::new()),
        ];
        let mut buf = Vec::new();
        for r in &recs {
            t.encode(r, &mut buf).expect("encode");
        }
        assert_eq!(buf[0], 0);
        assert_eq!(
            buf.len(),
            recs.iter().map(|r| t.encoded_len(r)).sum::<usize>()
        );
        assert_eq!(t.decode(&buf).expect("decode"), recs);
    }

    #[test]
    fn a_16_byte_reading_costs_18_bytes() {
        let t = table();
        let r = Record::new("maison/salon/temperature", [b'x'; 16].to_vec());
        assert_eq!(t.encoded_len(&r), 18);
    }

    #[test]
    fn hostile_inputs() {
        let t = table();
        assert_eq!(
            t.decode(&[5, 0]),
            Err(RecordError::UnknownTopicIndex { index: 5 })
        );
        assert_eq!(t.decode(&[0x80]), Err(RecordError::Reserved { offset: 0 }));
        assert_eq!(
            t.decode(&[0, 3, 1]),
            Err(RecordError::Truncated { offset: 2 })
        );
        assert_eq!(
            t.decode(&[0x83, b'a']),
            Err(RecordError::Truncated { offset: 1 })
        );
        assert_eq!(
            t.decode(&[0x81, 0xff, 0]),
            Err(RecordError::TopicNotUtf8 { offset: 1 })
        );
        assert_eq!(t.decode(&[0]), Err(RecordError::Truncated { offset: 1 }));
        assert!(
            t.encode(&Record::new("", b"x".to_vec()), &mut Vec::new())
                .is_err()
        );
        assert!(
            t.encode(
                &Record::new("a".repeat(128), b"x".to_vec()),
                &mut Vec::new()
            )
            .is_err()
        );
    }
}
