//! The device store: a handful of named blobs (device certificate, CA certificate, device
//! configuration) kept in one image that is persisted atomically.
//!
//! - Bounded: at most [`MAX_BLOBS`] blobs of at most [`MAX_BLOB_LEN`] bytes each, names of at
//!   most [`MAX_NAME_LEN`] characters, everything inside a fixed [`STORE_CAPACITY`]-byte image.
//! - Uploads are staged in RAM chunk by chunk and only replace the stored blob on a commit
//!   whose length and CRC-32 match: a power cut before the commit leaves the old blob.
//! - A commit persists the whole image through [`Persist::save`], which must be atomic: after
//!   a power cut the store holds the old image or the new one. [`FlashPersist`] provides that
//!   on raw flash with two banks (the new image goes to the idle bank, its header last).

use crate::crc::{crc32, crc32_update};

/// Longest blob name.
pub const MAX_NAME_LEN: usize = 32;
/// Largest blob.
pub const MAX_BLOB_LEN: usize = 4096;
/// Most blobs at once.
pub const MAX_BLOBS: usize = 8;
/// Size of the store image (entry headers included).
pub const STORE_CAPACITY: usize = 12 * 1024;
/// Magic at the start of a store image.
const IMAGE_MAGIC: &[u8; 4] = b"FWS1";
/// Bytes an entry needs besides its name and data: name length (1) and data length (2).
const ENTRY_OVERHEAD: usize = 3;

/// Why a store operation was refused. Nothing changed when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The name is empty, too long, or has characters outside `[A-Za-z0-9._-]` (or does not
    /// start with a letter or digit).
    BadName,
    /// No blob (or no upload in progress) by that name.
    NotFound,
    /// The blob would exceed [`MAX_BLOB_LEN`].
    TooLarge,
    /// The image has no room, or [`MAX_BLOBS`] are stored already.
    Full,
    /// A chunk's offset is not where the upload stands (the expected offset is inside).
    Offset(usize),
    /// The committed length or CRC-32 does not match the staged upload.
    Mismatch,
    /// A read past the end of the blob.
    Range,
    /// The persistent medium failed; the store was reloaded from it.
    Storage,
}

/// Persistent medium for the store image.
pub trait Persist {
    /// Loads the last saved image into `buf`; returns its length (0 if nothing was saved).
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StorageError>;
    /// Saves `image` atomically: after a power cut during the call, `load` returns either the
    /// previous image or this one.
    fn save(&mut self, image: &[u8]) -> Result<(), StorageError>;
}

/// A failure of the persistent medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageError;

/// Checks a blob name: 1..=[`MAX_NAME_LEN`] characters from `[A-Za-z0-9._-]`, the first a
/// letter or digit (so no hidden names, no `..`, no path separators).
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name[0].is_ascii_alphanumeric()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// One stored entry's position in the image.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    name: (usize, usize),
    data: (usize, usize),
    end: usize,
}

struct Staging {
    name: [u8; MAX_NAME_LEN],
    name_len: usize,
    data: [u8; MAX_BLOB_LEN],
    len: usize,
    active: bool,
}

/// The named-blob store over a [`Persist`] medium.
pub struct Store<P> {
    persist: P,
    image: [u8; STORE_CAPACITY],
    used: usize,
    staging: Staging,
}

impl<P: Persist> Store<P> {
    /// Opens the store: loads the image, or starts empty if there is none or it is invalid.
    pub fn open(persist: P) -> Self {
        let mut store = Store {
            persist,
            image: [0; STORE_CAPACITY],
            used: 0,
            staging: Staging {
                name: [0; MAX_NAME_LEN],
                name_len: 0,
                data: [0; MAX_BLOB_LEN],
                len: 0,
                active: false,
            },
        };
        store.reload();
        store
    }

    /// Drops RAM state (staged upload included) and reloads the image from the medium, as a
    /// reboot does.
    pub fn reload(&mut self) {
        self.staging.active = false;
        self.staging.len = 0;
        let loaded = self.persist.load(&mut self.image).unwrap_or(0);
        self.used = if loaded >= IMAGE_MAGIC.len()
            && self.image[..4] == *IMAGE_MAGIC
            && well_formed(&self.image[..loaded])
        {
            loaded
        } else {
            self.image[..4].copy_from_slice(IMAGE_MAGIC);
            IMAGE_MAGIC.len()
        };
    }

    /// The persistence medium (e.g. to inspect it in tests).
    pub fn persist(&self) -> &P {
        &self.persist
    }

    fn entries(&self) -> Entries<'_> {
        Entries {
            image: &self.image[..self.used],
            pos: IMAGE_MAGIC.len(),
        }
    }

    fn find(&self, name: &[u8]) -> Option<Entry> {
        self.entries()
            .find(|e| &self.image[e.name.0..e.name.1] == name)
    }

    /// Number of stored blobs.
    pub fn count(&self) -> usize {
        self.entries().count()
    }

    /// Free bytes in the image (a new blob also needs its name plus 3 bytes).
    pub fn free(&self) -> usize {
        STORE_CAPACITY - self.used
    }

    /// Calls `f(name, len)` for each stored blob, in storage order.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], usize)) {
        for e in self.entries() {
            f(&self.image[e.name.0..e.name.1], e.data.1 - e.data.0);
        }
    }

    /// The whole blob `name`, borrowed from the image.
    pub fn blob(&self, name: &[u8]) -> Option<&[u8]> {
        self.find(name).map(|e| &self.image[e.data.0..e.data.1])
    }

    /// Copies bytes of `name` from `offset` into `out`; returns how many (0 at the end).
    pub fn read(&self, name: &[u8], offset: usize, out: &mut [u8]) -> Result<usize, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName);
        }
        let data = self.blob(name).ok_or(StoreError::NotFound)?;
        if offset > data.len() {
            return Err(StoreError::Range);
        }
        let n = out.len().min(data.len() - offset);
        out[..n].copy_from_slice(&data[offset..offset + n]);
        Ok(n)
    }

    /// Stages a chunk of an upload. Offset 0 starts (or restarts) the upload of `name`;
    /// later chunks must continue exactly where the upload stands.
    pub fn put_chunk(
        &mut self,
        name: &[u8],
        offset: usize,
        chunk: &[u8],
    ) -> Result<usize, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName);
        }
        let st = &mut self.staging;
        let same = st.active && st.name[..st.name_len] == *name;
        let at = if offset == 0 {
            0
        } else if same {
            st.len
        } else {
            return Err(StoreError::Offset(0));
        };
        if offset != at {
            return Err(StoreError::Offset(at));
        }
        let end = offset
            .checked_add(chunk.len())
            .ok_or(StoreError::TooLarge)?;
        if end > MAX_BLOB_LEN {
            return Err(StoreError::TooLarge);
        }
        if offset == 0 {
            st.name[..name.len()].copy_from_slice(name);
            st.name_len = name.len();
            st.active = true;
        }
        st.data[offset..end].copy_from_slice(chunk);
        st.len = end;
        Ok(end)
    }

    /// Forgets a staged upload, if any.
    pub fn abort(&mut self) {
        self.staging.active = false;
        self.staging.len = 0;
    }

    /// Commits the staged upload of `name` if it is `len` bytes with CRC-32 `crc`: replaces
    /// (or creates) the blob and persists the image atomically.
    pub fn commit(&mut self, name: &[u8], len: usize, crc: u32) -> Result<(), StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName);
        }
        let st = &self.staging;
        if !st.active || st.name[..st.name_len] != *name {
            return Err(StoreError::NotFound);
        }
        if st.len != len || crc32(&st.data[..st.len]) != crc {
            return Err(StoreError::Mismatch);
        }
        let old = self.find(name);
        let old_size = old.map_or(0, |e| e.end - e.start);
        let new_size = ENTRY_OVERHEAD + name.len() + len;
        if self.used - old_size + new_size > STORE_CAPACITY
            || (old.is_none() && self.count() >= MAX_BLOBS)
        {
            return Err(StoreError::Full);
        }
        if let Some(e) = old {
            self.remove_entry(e);
        }
        let at = self.used;
        self.image[at] = name.len() as u8;
        self.image[at + 1..at + 1 + name.len()].copy_from_slice(name);
        let d = at + 1 + name.len();
        self.image[d..d + 2].copy_from_slice(&(len as u16).to_le_bytes());
        self.image[d + 2..d + 2 + len].copy_from_slice(&self.staging.data[..len]);
        self.used = d + 2 + len;
        self.abort();
        self.save()
    }

    /// Deletes blob `name` and persists the image.
    pub fn delete(&mut self, name: &[u8]) -> Result<(), StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName);
        }
        let e = self.find(name).ok_or(StoreError::NotFound)?;
        self.remove_entry(e);
        self.save()
    }

    fn remove_entry(&mut self, e: Entry) {
        self.image.copy_within(e.end..self.used, e.start);
        self.used -= e.end - e.start;
    }

    fn save(&mut self) -> Result<(), StoreError> {
        match self.persist.save(&self.image[..self.used]) {
            Ok(()) => Ok(()),
            Err(StorageError) => {
                // RAM must not claim what the medium does not hold.
                self.reload();
                Err(StoreError::Storage)
            }
        }
    }
}

struct Entries<'a> {
    image: &'a [u8],
    pos: usize,
}

impl Iterator for Entries<'_> {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        let e = parse_entry(self.image, self.pos)?;
        self.pos = e.end;
        Some(e)
    }
}

fn parse_entry(image: &[u8], start: usize) -> Option<Entry> {
    let name_len = usize::from(*image.get(start)?);
    let name = (start + 1, start + 1 + name_len);
    let len_at = name.1;
    let len_bytes = image.get(len_at..len_at + 2)?;
    let len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
    let data = (len_at + 2, len_at + 2 + len);
    if data.1 > image.len() {
        return None;
    }
    Some(Entry {
        start,
        name,
        data,
        end: data.1,
    })
}

/// A loaded image is used only if every entry parses, has a valid name and size, and the
/// entries exactly fill it.
fn well_formed(image: &[u8]) -> bool {
    let mut pos = IMAGE_MAGIC.len();
    let mut n = 0;
    while pos < image.len() {
        let Some(e) = parse_entry(image, pos) else {
            return false;
        };
        if !valid_name(&image[e.name.0..e.name.1]) || e.data.1 - e.data.0 > MAX_BLOB_LEN {
            return false;
        }
        n += 1;
        pos = e.end;
    }
    n <= MAX_BLOBS
}

/// Raw flash with two equal banks, erased to 0xFF.
pub trait Flash {
    /// Size of one bank in bytes.
    fn bank_len(&self) -> usize;
    /// Reads from bank `bank` (0 or 1) at `offset`.
    fn read(&mut self, bank: u8, offset: usize, buf: &mut [u8]) -> Result<(), StorageError>;
    /// Erases bank `bank`.
    fn erase(&mut self, bank: u8) -> Result<(), StorageError>;
    /// Programs bytes into an erased area of bank `bank`.
    fn write(&mut self, bank: u8, offset: usize, data: &[u8]) -> Result<(), StorageError>;
}

/// Bank header: magic, sequence number, image length, CRC-32 of the image; 16 bytes.
const BANK_MAGIC: &[u8; 4] = b"FWB1";
const BANK_HEADER: usize = 16;
/// A valid bank header: sequence number, image length, CRC-32.
type BankHeader = (u32, usize, u32);

/// Atomic persistence on two flash banks: a save writes the image into the bank not in use,
/// then its header (sequence number + 1, length, CRC-32) last. Loading takes the valid bank
/// with the higher sequence number, so a save cut short leaves the previous image in force.
pub struct FlashPersist<F> {
    flash: F,
    current: Option<(u8, u32)>,
}

impl<F: Flash> FlashPersist<F> {
    /// Wraps the flash.
    pub fn new(flash: F) -> Self {
        FlashPersist {
            flash,
            current: None,
        }
    }

    /// The flash.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The flash, e.g. to cut its power in a test.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    fn header(&mut self, bank: u8) -> Option<BankHeader> {
        let mut h = [0u8; BANK_HEADER];
        self.flash.read(bank, 0, &mut h).ok()?;
        if h[..4] != *BANK_MAGIC {
            return None;
        }
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let len = usize::try_from(word(8)).ok()?;
        if len > self.flash.bank_len().saturating_sub(BANK_HEADER) {
            return None;
        }
        Some((word(4), len, word(12)))
    }

    fn load_bank(&mut self, bank: u8, len: usize, crc: u32, buf: &mut [u8]) -> bool {
        if len > buf.len() {
            return false;
        }
        let mut c = 0;
        let mut pos = 0;
        // Read in pieces so a huge bank never needs a huge buffer.
        while pos < len {
            let n = (len - pos).min(256);
            if self
                .flash
                .read(bank, BANK_HEADER + pos, &mut buf[pos..pos + n])
                .is_err()
            {
                return false;
            }
            c = crc32_update(c, &buf[pos..pos + n]);
            pos += n;
        }
        c == crc
    }
}

impl<F: Flash> Persist for FlashPersist<F> {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        let a = self.header(0);
        let b = self.header(1);
        // Newer first (wrapping comparison of sequence numbers).
        let mut order: [(u8, Option<BankHeader>); 2] = [(0, a), (1, b)];
        if let (Some(x), Some(y)) = (a, b) {
            if y.0.wrapping_sub(x.0) as i32 > 0 {
                order.swap(0, 1);
            }
        } else if a.is_none() {
            order.swap(0, 1);
        }
        for (bank, h) in order {
            if let Some((seq, len, crc)) = h
                && self.load_bank(bank, len, crc, buf)
            {
                self.current = Some((bank, seq));
                return Ok(len);
            }
        }
        self.current = None;
        Ok(0)
    }

    fn save(&mut self, image: &[u8]) -> Result<(), StorageError> {
        if image.len() + BANK_HEADER > self.flash.bank_len() {
            return Err(StorageError);
        }
        let (bank, seq) = match self.current {
            Some((b, s)) => (1 - b, s.wrapping_add(1)),
            None => (0, 1),
        };
        self.flash.erase(bank)?;
        self.flash.write(bank, BANK_HEADER, image)?;
        let mut h = [0u8; BANK_HEADER];
        h[..4].copy_from_slice(BANK_MAGIC);
        h[4..8].copy_from_slice(&seq.to_le_bytes());
        h[8..12].copy_from_slice(&(image.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&crc32(image).to_le_bytes());
        self.flash.write(bank, 0, &h)?;
        self.current = Some((bank, seq));
        Ok(())
    }
}
