//! A read-only bbolt reader for etcd snapshot files, the same walk as jaco/archive/bolt.py
//! (which stays as the reference the tests compare this with): pages read with pread and
//! bounds checks, every page visited at most once, memory bounded by one page plus what the
//! caller keeps. Errors carry the reference's messages, word for word.

use std::fs::File;
use std::os::unix::fs::FileExt;

pub const PEEK: usize = 4096;
pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
pub(crate) const PAGE_HEADER: usize = 16;
pub(crate) const META: usize = 64;
pub(crate) const ELEMENT: usize = 16;
pub(crate) const BRANCH: u16 = 0x01;
pub(crate) const LEAF: u16 = 0x02;
pub(crate) const BUCKET_LEAF: u32 = 0x01;
pub(crate) const REVISION_KEY: usize = 17;
pub(crate) const MAX_RECORD: u64 = 64 * 1024 * 1024;

pub enum Error {
    /// The file is not a readable etcd snapshot: the message says why.
    Snapshot(String),
    Io(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn damaged<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::Snapshot(message.into()))
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The pages a walk has visited, a bit for each page of the file: a tree that leads back to
/// a page it passed is refused, in memory bounded by the file's size (128 KiB for 4 GiB of
/// 4 KiB pages). A set of the visited pages' numbers grew with the store: 17 MiB of the
/// pass's peak at 10⁷ keys.
struct Visited(Vec<u64>);

impl Visited {
    fn new(pages: u64) -> Visited {
        Visited(vec![0; ((pages + 63) / 64) as usize])
    }

    /// Marks page `id` (one within the file); false if it was marked before.
    fn first_visit(&mut self, id: u64) -> bool {
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let first = self.0[word] & bit == 0;
        self.0[word] |= bit;
        first
    }
}

pub(crate) fn page_size_ok(size: u64) -> bool {
    (512..=1 << 16).contains(&size) && size & (size - 1) == 0
}

pub(crate) fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &byte in data {
        h = (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// A stored KeyValue record: its bytes when at most PEEK long, else where it lies; or, once a
/// holder has parsed it, its value alone. Borrowed: the walk hands the page's own bytes to
/// the caller, which copies what it keeps.
#[derive(Clone, Copy)]
pub enum Record<'a> {
    Deleted,
    Inline(&'a [u8]),
    At(u64, u32),
    Value(&'a [u8]),
}

impl<'a> Record<'a> {
    /// The same record, as little as possible of it: an inline record that parses becomes
    /// its value (a record that does not stays whole, to be refused if it is the one read).
    pub fn lean(self) -> Record<'a> {
        match self {
            Record::Inline(raw) => match key_value(raw) {
                Ok((_, value)) => Record::Value(value),
                Err(_) => self,
            },
            record => record,
        }
    }
}

/// Of the two meta pages' 64 bytes, the valid one of the highest txid: (root page, pages);
/// refused when neither is valid, or when its pages do not fit in `size` bytes.
pub(crate) fn newest_meta(metas: [&[u8]; 2], page_size: u64, size: u64) -> Result<(u64, u64)> {
    let mut best: Option<(u64, u64, u64)> = None; // txid, root, pages
    for raw in metas {
        let (magic, version) = (u32_at(raw, 0), u32_at(raw, 4));
        let (root, pages, txid) = (u64_at(raw, 16), u64_at(raw, 40), u64_at(raw, 48));
        if magic != MAGIC || version != VERSION || fnv64a(&raw[..META - 8]) != u64_at(raw, 56) {
            continue;
        }
        if best.map_or(true, |b| txid > b.0) {
            best = Some((txid, root, pages));
        }
    }
    let (root, pages) = match best {
        Some((_, root, pages)) => (root, pages),
        None => return damaged("the snapshot file is not a bbolt database (no valid meta)"),
    };
    let needed = (pages as u128) * (page_size as u128);
    if needed > size as u128 {
        return damaged(format!(
            "the snapshot file is truncated: {size} bytes of {needed}"
        ));
    }
    Ok((root, pages))
}

pub struct Bolt {
    file: File,
    size: u64,
    page_size: u64,
    root: u64,
}

impl Bolt {
    pub fn open(file: File) -> Result<Bolt> {
        let size = file.metadata().map_err(Error::Io)?.len();
        let mut bolt = Bolt {
            file,
            size,
            page_size: 0,
            root: 0,
        };
        if size < 80 {
            return damaged("the snapshot file is too short to be an etcd snapshot");
        }
        let first = bolt.read(0, 80)?;
        let page_size = u32_at(&first, PAGE_HEADER + 8) as u64;
        if !page_size_ok(page_size) {
            return damaged("the snapshot file is not a bbolt database (bad page size)");
        }
        let first = bolt.read(PAGE_HEADER as u64, META)?;
        let second = bolt.read(page_size + PAGE_HEADER as u64, META)?;
        let (root, _) = newest_meta([&first, &second], page_size, size)?;
        bolt.page_size = page_size;
        bolt.root = root;
        Ok(bolt)
    }

    pub fn read(&self, offset: u64, size: usize) -> Result<Vec<u8>> {
        if offset
            .checked_add(size as u64)
            .map_or(true, |end| end > self.size)
        {
            return damaged("the snapshot file is truncated (a page lies past its end)");
        }
        let mut buf = vec![0u8; size];
        match self.file.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                damaged("the snapshot file is truncated")
            }
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// (offset, flags, element count, length, first page) of one page, visited once.
    fn page(&self, id: u64, seen: &mut Visited) -> Result<(u64, u16, usize, u64, Vec<u8>)> {
        if id < 2 {
            return damaged("the snapshot file's page tree is damaged (a page loops)");
        }
        let offset = match id.checked_mul(self.page_size) {
            Some(offset) if offset <= self.size.saturating_sub(self.page_size) => offset,
            _ => return damaged("the snapshot file is truncated (a page lies past its end)"),
        };
        if !seen.first_visit(id) {
            return damaged("the snapshot file's page tree is damaged (a page loops)");
        }
        let first = self.read(offset, self.page_size as usize)?;
        if u64_at(&first, 0) != id {
            return damaged(format!("the snapshot file's page {id} is damaged"));
        }
        let (flags, count, overflow) = (u16_at(&first, 8), u16_at(&first, 10), u32_at(&first, 12));
        Ok((
            offset,
            flags,
            count as usize,
            (overflow as u64 + 1) * self.page_size,
            first,
        ))
    }

    /// Calls `leaf(offset, count, first page)` for every leaf under `root`, in key order; an
    /// explicit stack, so a hostile file cannot make it recurse without bound.
    fn leaves(
        &self,
        root: u64,
        mut leaf: impl FnMut(u64, usize, Vec<u8>) -> Result<bool>,
    ) -> Result<()> {
        let mut seen = Visited::new(self.size / self.page_size);
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            let (offset, flags, count, length, first) = self.page(id, &mut seen)?;
            if flags & LEAF != 0 {
                if !leaf(offset, count, first)? {
                    return Ok(());
                }
                continue;
            }
            if flags & BRANCH == 0 {
                return damaged(format!("the snapshot file's page {id} is not a tree page"));
            }
            let page = if length == first.len() as u64 {
                first
            } else {
                self.read(offset, length as usize)?
            };
            let mut children = Vec::with_capacity(count);
            for i in 0..count {
                let at = PAGE_HEADER + i * ELEMENT;
                if (at + ELEMENT) as u64 > length {
                    return damaged(format!("the snapshot file's page {id} is damaged"));
                }
                children.push(u64_at(&page, at + 8));
            }
            stack.extend(children.into_iter().rev());
        }
        Ok(())
    }

    /// Calls `each(flags, key, value offset, value size, first `peek` bytes of the value)`
    /// for the elements of one leaf page.
    fn elements(
        &self,
        offset: u64,
        count: usize,
        mut head: Vec<u8>,
        peek: usize,
        mut each: impl FnMut(u32, &[u8], u64, u32, &[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let mut owned: Vec<u8>;
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            if at + ELEMENT > head.len() {
                head = self.read(offset, at + ELEMENT)?;
            }
            let (flags, pos, ksize, vsize) = (
                u32_at(&head, at),
                u32_at(&head, at + 4),
                u32_at(&head, at + 8),
                u32_at(&head, at + 12),
            );
            if ksize as u64 + vsize as u64 > MAX_RECORD {
                return damaged("the snapshot holds a record larger than etcd allows");
            }
            let start = at + pos as usize;
            let want = ksize as usize + (vsize as usize).min(peek);
            let data: &[u8] = if start + want <= head.len() {
                &head[start..start + want]
            } else {
                owned = self.read(offset + start as u64, want)?;
                &owned
            };
            let (key, value) = data.split_at(ksize as usize);
            if !each(
                flags,
                key,
                offset + (start + ksize as usize) as u64,
                vsize,
                value,
            )? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The root page of a top-level bucket (etcd never stores its big buckets inline).
    fn bucket_root(&self, name: &[u8]) -> Result<u64> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let mut found: Option<u64> = None;
        let mut error: Option<String> = None;
        self.leaves(self.root, |offset, count, head| {
            self.elements(offset, count, head, 16, |flags, key, _, vsize, value| {
                if key != name {
                    return Ok(true);
                }
                if flags & BUCKET_LEAF == 0 || vsize < 16 {
                    error = Some(format!("the snapshot's b'{shown}' is not a bucket"));
                } else if u64_at(value, 0) == 0 {
                    error = Some(format!("the snapshot's b'{shown}' bucket is inline"));
                } else {
                    found = Some(u64_at(value, 0));
                }
                Ok(false)
            })
        })?;
        if let Some(message) = error {
            return damaged(message);
        }
        match found {
            Some(root) => Ok(root),
            None => damaged(format!(
                "the snapshot has no b'{shown}' bucket (not an etcd store)"
            )),
        }
    }

    /// Every stored revision of the keys `keep` accepts, oldest first, passed to `each(key,
    /// record)`; returns the store revision over all keys.
    pub fn revisions(
        &self,
        keep: impl Fn(&[u8]) -> bool,
        mut each: impl FnMut(&[u8], Record<'_>) -> Result<()>,
    ) -> Result<u64> {
        let mut revision = 0u64;
        let root = self.bucket_root(b"key")?;
        self.leaves(root, |offset, count, head| {
            self.elements(
                offset,
                count,
                head,
                PEEK,
                |_, rev, value_at, vsize, peek| {
                    if !(rev.len() == REVISION_KEY || rev.len() == REVISION_KEY + 1)
                        || rev[8] != b'_'
                    {
                        return damaged("the snapshot's key bucket holds a malformed revision");
                    }
                    revision = revision.max(u64::from_be_bytes(rev[..8].try_into().unwrap()));
                    let parsed: Vec<u8>;
                    let key = match fast_key(peek) {
                        Some(key) => key,
                        None => {
                            let raw = self.read(value_at, vsize as usize)?;
                            parsed = key_value(&raw)?.0.to_vec();
                            &parsed
                        }
                    };
                    if !keep(key) {
                        return Ok(true);
                    }
                    let record = if rev.len() > REVISION_KEY {
                        Record::Deleted
                    } else if vsize as usize <= PEEK {
                        Record::Inline(peek)
                    } else {
                        Record::At(value_at, vsize)
                    };
                    each(key, record)?;
                    Ok(true)
                },
            )
        })?;
        Ok(revision)
    }

    /// The value of a KeyValue record: within the record's own bytes when it is inline, else
    /// read into `held`.
    pub fn value<'a>(&self, record: Record<'a>, held: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        match record {
            Record::Inline(raw) => Ok(key_value(raw)?.1),
            Record::At(offset, size) => {
                *held = self.read(offset, size as usize)?;
                let held: &'a [u8] = held;
                Ok(key_value(held)?.1)
            }
            Record::Value(value) => Ok(value),
            Record::Deleted => Ok(&[]),
        }
    }
}

/// The key of a KeyValue record when it comes first (field 1, as etcd writes it) and whole
/// within `peek`.
fn fast_key(peek: &[u8]) -> Option<&[u8]> {
    if peek.first() != Some(&0x0a) {
        return None;
    }
    let (mut length, mut shift, mut at) = (0u64, 0u32, 1usize);
    while at < peek.len() && shift < 35 {
        let byte = peek[at];
        length |= ((byte & 0x7f) as u64) << shift;
        at += 1;
        shift += 7;
        if byte & 0x80 == 0 {
            let end = at as u64 + length;
            return if end <= peek.len() as u64 {
                Some(&peek[at..end as usize])
            } else {
                None
            };
        }
    }
    None
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    varint_of(data, at, 10)
}

/// A base-128 varint of at most `most` bytes, as protobuf's parser (upb) reads it: bits past
/// the 64th dropped, an eleventh byte (a sixth for a tag) refused.
fn varint_of(data: &[u8], at: &mut usize, most: u32) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..most {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= ((byte & 0x7f) as u64).checked_shl(7 * i).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

// How deep groups may nest (upb's default depth limit).
const GROUP_DEPTH: usize = 100;

/// (key, value) of an mvccpb.KeyValue: fields 1 and 5, the last of each winning, every other
/// field skipped by its wire type, groups included (as protobuf's own parser does, which the
/// Python reference uses); anything that does not parse is damage.
pub(crate) fn key_value(data: &[u8]) -> Result<(&[u8], &[u8])> {
    let bad = || Error::Snapshot("the snapshot holds a damaged key-value record".into());
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut groups: Vec<u64> = Vec::new(); // the field numbers of the groups open
    let mut at = 0usize;
    while at < data.len() {
        let tag = varint_of(data, &mut at, 5).ok_or_else(bad)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 || field > (1 << 29) - 1 {
            return Err(bad());
        }
        match wire {
            0 => {
                varint(data, &mut at).ok_or_else(bad)?;
            }
            1 | 5 => {
                at += if wire == 1 { 8 } else { 4 };
                if at > data.len() {
                    return Err(bad());
                }
            }
            2 => {
                let length = varint(data, &mut at).ok_or_else(bad)?;
                let end = (at as u64)
                    .checked_add(length)
                    .filter(|&e| e <= data.len() as u64)
                    .ok_or_else(bad)?;
                let bytes = &data[at..end as usize];
                at = end as usize;
                match (field, groups.is_empty()) {
                    (1, true) => key = bytes,
                    (5, true) => value = bytes,
                    _ => {}
                }
            }
            3 => {
                if groups.len() == GROUP_DEPTH {
                    return Err(bad());
                }
                groups.push(field);
            }
            4 => {
                if groups.pop() != Some(field) {
                    return Err(bad());
                }
            }
            _ => return Err(bad()),
        }
    }
    if !groups.is_empty() {
        return Err(bad());
    }
    Ok((key, value))
}
