//! State digest version 2 in one pass over a snapshot's bytes as they arrive, with no copy of
//! them kept: docs/plans/scratchless-meta-pass.md. jaco/archive/bolt.py's `spanned_leaves`,
//! `key_bucket_root` and `key_records` (a walk of the page tree, read at random) are the
//! definition this pass is held to, refusal for refusal (tests/test_snapshot_file.py).
//!
//! The bytes come in file order (etcd streams bbolt's file as it lies, free pages included),
//! so a page's place in the tree is not known while it goes by, and a free page may even be
//! rewritten by a commit while it streams. So every page position whose header names it is
//! parsed as it completes, as a leaf or a branch, whatever it is: a leaf's records go into the
//! external sort as (key, revision, page, index) with the SHA-256 of their value (no value
//! bytes), its damage is noted, not raised; a branch's children are noted. At the end the two
//! walks of the reference run over these notes (the root tree to the key bucket, the key
//! tree), raising what a page they reach holds, and mark the key tree's leaves live. The merge
//! then takes, of each key, the record of the highest (revision, page, index) on a live page.
//! Memory: the window of bytes (the oldest page still incomplete, at most MAX_SPAN, plus one
//! fed piece); eleven bytes a page position (its kind, its first fault read either way, its
//! highest revision as a leaf) and a bit for each walk; an entry of a map for each branch,
//! whose children (8 bytes each) may hold no more than half the bytes received, and for each
//! leaf naming a `key` bucket (one in a real file); the sort's runs. At etcd's 4 KiB pages
//! that is well under 1 % of the snapshot, 24 MiB for a million pages
//! (tests/test_snapshot_memory.py). A hostile file of 512-byte pages: about 2 %, up to about
//! 9 % if every page is a leaf naming a `key` bucket, and its branches' children apart.
//! Parsing is bounded too (Stream::spend), checked as pages complete: a file within one
//! piece of that bound may be refused when fed in small pieces and read in large ones; real
//! files are far from it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::bolt::{
    damaged, key_value, newest_meta, page_size_ok, u16_at, u32_at, u64_at, Record, Result,
    BRANCH, BUCKET_LEAF, ELEMENT, LEAF, MAX_RECORD, META, PAGE_HEADER, REVISION_KEY,
};
use crate::hashing;
use crate::sort::Sorter;

/// The most a page and its overflow may span (jaco/archive/bolt.py's MAX_SPAN).
pub const MAX_SPAN: u64 = 16 * 1024 * 1024;
pub const V2_TAG: &[u8] = b"jaco state digest v2\n";
const PAST_END: &str = "the snapshot file is truncated (a page lies past its end)";
const LOOPS: &str = "the snapshot file's page tree is damaged (a page loops)";
const LARGER: &str = "the snapshot holds a record larger than etcd allows";
// How many times the bytes received a pass may parse (Stream::spend).
const OVERLAP: u64 = 8;

// What a page position turned out to be.
const ABSENT: u8 = 0; // not whole in the stream: past its end
const MISMATCH: u8 = 1; // its header names another page
const OTHER: u8 = 2; // neither leaf nor branch
const TOO_LARGE: u8 = 3; // a span over MAX_SPAN
const PENDING: u8 = 4; // a span not yet (at the end: never) whole
const LEAF_PAGE: u8 = 5;
const BRANCH_PAGE: u8 = 6;

// A record's payload in the sort: a deletion, the SHA-256 of its value, or (a wanted key) the
// value itself.
const DELETED: u8 = 0;
const HASHED: u8 = 1;
const VALUE: u8 = 2;

// A page's first fault, noted as a code (a byte a page, not a message: a hostile file may
// fault on every page) and said only if a walk reaches the page.
const NO_FAULT: u8 = 0;
const F_DAMAGED: u8 = 1;
const F_LARGER: u8 = 2;
const F_MALFORMED: u8 = 3;
const F_KEY_VALUE: u8 = 4;
const F_NOT_BUCKET: u8 = 5;
const F_INLINE: u8 = 6;

fn fault<T>(code: u8, page: u64) -> Result<T> {
    damaged(match code {
        F_LARGER => LARGER.to_string(),
        F_MALFORMED => "the snapshot's key bucket holds a malformed revision".into(),
        F_KEY_VALUE => "the snapshot holds a damaged key-value record".into(),
        F_NOT_BUCKET => "the snapshot's b'key' is not a bucket".into(),
        F_INLINE => "the snapshot's b'key' bucket is inline".into(),
        _ => format!("the snapshot file's page {page} is damaged"),
    })
}

/// What a leaf, read as a leaf of the root tree, says of the key bucket.
enum RootView {
    Found(u64),
    Refused(u8),
}

pub struct State {
    pub revision: u64,
    pub counts: BTreeMap<Vec<u8>, u64>,
    pub digest: String,
    pub wanted: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct Stream {
    root: Vec<u8>,
    alive: Vec<u8>,
    wanted: Vec<Vec<u8>>,
    sorter: Sorter,
    received: u64,
    head: Vec<u8>,                // the file's first 80 bytes
    metas: [Option<Vec<u8>>; 2],  // the two meta pages' 64 bytes
    page_size: u64,               // 0 until known; stays 0 when bad
    next_page: u64,               // the next position to classify
    buf: Vec<u8>,                 // the window: bytes from buf_start on
    buf_start: u64,
    pending: BinaryHeap<Reverse<(u64, u64, u16, u16)>>, // (span end, page, flags, count)
    pending_starts: BTreeSet<u64>,
    kinds: Vec<u8>,
    key_faults: Vec<u8>,  // per page position: its first fault as a key-bucket leaf
    root_faults: Vec<u8>, // per page position: its first fault as a root-tree leaf
    key_roots: HashMap<u64, u64>, // leaves naming the key bucket: its root page
    max_rev: Vec<u64>, // per page position: the highest revision its records hold as a leaf
    children: HashMap<u64, Vec<u64>>,
    held: u64, // bytes the children hold (bounded: a hostile file could name millions)
    bad_branch: HashSet<u64>,
    parsed: u64,
    overlapping: bool,
}

/// A key in the sort's order, made one with what follows it: 0x00 escaped as 0x00 0xff, then
/// 0x00 0x00, so that no key's bytes run into the next field and keys keep their byte order.
fn composite(key: &[u8], revision: &[u8], page: u64, index: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + REVISION_KEY + 10);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(revision);
    out.extend_from_slice(&page.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// (key, page) of a composite.
fn split_composite(composite: &[u8]) -> (Vec<u8>, u64) {
    let mut key = Vec::with_capacity(composite.len());
    let mut at = 0;
    while at + 1 < composite.len() {
        let b = composite[at];
        if b == 0 {
            if composite[at + 1] == 0 {
                break;
            }
            at += 1; // the escape's 0xff
        }
        key.push(b);
        at += 1;
    }
    let page_at = at + 2 + REVISION_KEY;
    (key, u64::from_be_bytes(composite[page_at..page_at + 8].try_into().unwrap()))
}

impl Stream {
    pub fn new(
        scratch: &Path,
        root: Vec<u8>,
        alive: Vec<u8>,
        wanted: Vec<Vec<u8>>,
        run_bytes: usize,
    ) -> Stream {
        Stream {
            root,
            alive,
            wanted,
            sorter: Sorter::new(scratch, run_bytes),
            received: 0,
            head: Vec::new(),
            metas: [None, None],
            page_size: 0,
            next_page: 0,
            buf: Vec::new(),
            buf_start: 0,
            pending: BinaryHeap::new(),
            pending_starts: BTreeSet::new(),
            kinds: Vec::new(),
            key_faults: Vec::new(),
            root_faults: Vec::new(),
            key_roots: HashMap::new(),
            max_rev: Vec::new(),
            children: HashMap::new(),
            held: 0,
            bad_branch: HashSet::new(),
            parsed: 0,
            overlapping: false,
        }
    }

    fn bytes(&self, from: u64, to: u64) -> &[u8] {
        &self.buf[(from - self.buf_start) as usize..(to - self.buf_start) as usize]
    }

    /// The next bytes of the stream. Fails only on the sort's I/O (a full scratch disk): the
    /// file's damage is noted, and raised by `finish` if the walks reach it.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.received += data.len() as u64;
        if self.head.len() < 80 {
            let take = (80 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            if self.head.len() == 80 {
                let size = u32_at(&self.head, PAGE_HEADER + 8) as u64;
                if page_size_ok(size) {
                    self.page_size = size;
                }
            }
        }
        let dead = self.head.len() == 80 && self.page_size == 0;
        if dead || self.overlapping {
            return Ok(()); // refused at the end; nothing more to keep
        }
        self.buf.extend_from_slice(data);
        if self.page_size == 0 {
            return Ok(());
        }
        let ps = self.page_size;
        while (self.next_page + 1) * ps <= self.received {
            let p = self.next_page;
            self.next_page += 1;
            self.classify(p);
        }
        self.parse_complete()?;
        if self.overlapping {
            self.buf = Vec::new();
            return Ok(());
        }
        let mut keep = self.next_page * ps;
        if let Some(&oldest) = self.pending_starts.iter().next() {
            keep = keep.min(oldest * ps);
        }
        let drop = keep.saturating_sub(self.buf_start) as usize;
        if drop > 0 && drop >= self.buf.len() / 2 {
            self.buf.drain(..drop);
            self.buf_start += drop as u64;
        }
        Ok(())
    }

    fn classify(&mut self, p: u64) {
        let ps = self.page_size;
        let at = p * ps;
        self.key_faults.push(NO_FAULT);
        self.root_faults.push(NO_FAULT);
        self.max_rev.push(0);
        if p < 2 {
            self.kinds.push(ABSENT);
            let from = at + PAGE_HEADER as u64;
            let meta = self.bytes(from, from + META as u64).to_vec();
            self.metas[p as usize] = Some(meta);
            return;
        }
        let header = self.bytes(at, at + PAGE_HEADER as u64);
        let (id, flags) = (u64_at(header, 0), u16_at(header, 8));
        let (count, overflow) = (u16_at(header, 10), u32_at(header, 12));
        let span = (overflow as u64 + 1) * ps;
        let kind = if id != p {
            MISMATCH
        } else if flags & (LEAF | BRANCH) == 0 {
            OTHER
        } else if span > MAX_SPAN {
            TOO_LARGE
        } else {
            self.pending.push(Reverse((at + span, p, flags, count)));
            self.pending_starts.insert(p);
            PENDING
        };
        self.kinds.push(kind);
    }

    /// Parses every page whose span is whole.
    fn parse_complete(&mut self) -> Result<()> {
        while let Some(&Reverse((end, p, flags, count))) = self.pending.peek() {
            if end > self.received {
                break;
            }
            self.pending.pop();
            self.pending_starts.remove(&p);
            if !self.spend(end - p * self.page_size) {
                return Ok(());
            }
            if flags & LEAF != 0 {
                self.kinds[p as usize] = LEAF_PAGE;
                self.parse_leaf(p, p * self.page_size, end, count as usize)?;
            } else {
                self.kinds[p as usize] = BRANCH_PAGE;
                let page = self.bytes(p * self.page_size, end);
                let count = count as usize;
                let children: Option<Vec<u64>> = if PAGE_HEADER + count * ELEMENT > page.len() {
                    None
                } else {
                    Some(
                        (0..count)
                            .map(|i| u64_at(page, PAGE_HEADER + i * ELEMENT + 8))
                            .collect(),
                    )
                };
                match children {
                    Some(children) => {
                        // A real file's branches hold 8 bytes a child in 16 or more of page:
                        // past half the bytes received, pages overlap as no real file's do.
                        self.held += 8 * children.len() as u64 + 64;
                        if self.held > self.received / 2 + MAX_SPAN {
                            self.overlapping = true;
                            return Ok(());
                        }
                        self.children.insert(p, children);
                    }
                    None => {
                        self.bad_branch.insert(p);
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts `bytes` of parsing against the budget: a page's span, a record's bytes. Past
    /// OVERLAP times the bytes received (plus two spans), the pass stops: a real file's pages
    /// and records are parsed once each, with stale ones over the same bytes now and then,
    /// while a hostile one could make every position claim a 16 MiB span, or every element of
    /// a page the same 16 MiB record, and so cost terabytes of parsing for a few megabytes.
    fn spend(&mut self, bytes: u64) -> bool {
        self.parsed += bytes;
        if self.parsed > OVERLAP * self.received + 2 * MAX_SPAN {
            self.overlapping = true;
        }
        !self.overlapping
    }

    /// A leaf read two ways: as the root tree's (does it name the key bucket?) and as the
    /// key bucket's (its records), each stopping at its first fault, in the reference's order.
    fn parse_leaf(&mut self, p: u64, from: u64, to: u64, count: usize) -> Result<()> {
        let start = (from - self.buf_start) as usize;
        let end = (to - self.buf_start) as usize;
        let page = std::mem::take(&mut self.buf);
        let outcome = self.leaf_records(p, &page[start..end], count);
        let view = root_view(&page[start..end], count);
        self.buf = page;
        match view {
            Some(RootView::Found(root)) => {
                self.key_roots.insert(p, root);
            }
            Some(RootView::Refused(code)) => self.root_faults[p as usize] = code,
            None => {}
        }
        outcome
    }

    fn leaf_records(&mut self, p: u64, page: &[u8], count: usize) -> Result<()> {
        let mut revision = 0u64;
        let mut fault = NO_FAULT;
        for index in 0..count {
            let at = PAGE_HEADER + index * ELEMENT;
            if at + ELEMENT > page.len() {
                fault = F_DAMAGED;
                break;
            }
            let (pos, ksize, vsize) = (
                u32_at(page, at + 4) as u64,
                u32_at(page, at + 8) as u64,
                u32_at(page, at + 12) as u64,
            );
            if ksize + vsize > MAX_RECORD {
                fault = F_LARGER;
                break;
            }
            if at as u64 + pos + ksize + vsize > page.len() as u64 {
                fault = F_DAMAGED;
                break;
            }
            // Within the page: these fit in usize.
            let (start, ksize, vsize) = (at + pos as usize, ksize as usize, vsize as usize);
            if !self.spend((ksize + vsize) as u64) {
                break;
            }
            let stored = &page[start..start + ksize];
            if !(ksize == REVISION_KEY || ksize == REVISION_KEY + 1) || stored[8] != b'_' {
                fault = F_MALFORMED;
                break;
            }
            revision = revision.max(u64::from_be_bytes(stored[..8].try_into().unwrap()));
            let (key, value) = match key_value(&page[start + ksize..start + ksize + vsize]) {
                Ok(kv) => kv,
                Err(_) => {
                    fault = F_KEY_VALUE;
                    break;
                }
            };
            if !key.starts_with(&self.root) || key.starts_with(&self.alive) {
                continue;
            }
            let mut payload = Vec::with_capacity(33);
            if ksize > REVISION_KEY {
                payload.push(DELETED);
            } else if self.wanted.iter().any(|w| w.as_slice() == key) {
                payload.push(VALUE);
                payload.extend_from_slice(value);
            } else {
                payload.push(HASHED);
                payload.extend_from_slice(&Sha256::digest(value));
            }
            let sorted = composite(key, &stored[..REVISION_KEY], p, index as u16);
            self.sorter.add(&sorted, Record::Value(&payload))?;
        }
        self.max_rev[p as usize] = revision;
        self.key_faults[p as usize] = fault;
        Ok(())
    }

    /// The kind of page `id` as a walk reaches it, or the walk's refusal.
    fn reach(&self, id: u64, seen: &mut Pages) -> Result<u8> {
        let at = usize::try_from(id).unwrap_or(usize::MAX);
        if id < 2 || seen.contains(at) {
            return damaged(LOOPS);
        }
        seen.insert(at);
        let kind = self.kinds.get(at).copied().unwrap_or(ABSENT);
        match kind {
            ABSENT | PENDING => damaged(PAST_END),
            MISMATCH | TOO_LARGE => damaged(format!("the snapshot file's page {id} is damaged")),
            OTHER => damaged(format!("the snapshot file's page {id} is not a tree page")),
            _ => {
                if kind == BRANCH_PAGE && self.bad_branch.contains(&id) {
                    return damaged(format!("the snapshot file's page {id} is damaged"));
                }
                Ok(kind)
            }
        }
    }

    fn children_of(&self, id: u64, stack: &mut Vec<u64>) {
        if let Some(children) = self.children.get(&id) {
            stack.extend(children.iter().rev());
        }
    }

    /// The meta the reference's BoltFile chooses: (root page, pages).
    fn meta(&self) -> Result<(u64, u64)> {
        let size = self.received;
        if size < 80 {
            return damaged("the snapshot file is too short to be an etcd snapshot");
        }
        let ps = self.page_size;
        if ps == 0 {
            return damaged("the snapshot file is not a bbolt database (bad page size)");
        }
        let mut raws: Vec<Vec<u8>> = Vec::with_capacity(2);
        for page in 0..2u64 {
            let at = page * ps + PAGE_HEADER as u64;
            raws.push(match &self.metas[page as usize] {
                Some(raw) => raw.clone(),
                None if at + META as u64 <= size => self.bytes(at, at + META as u64).to_vec(),
                None => return damaged(PAST_END),
            });
        }
        newest_meta([&raws[0], &raws[1]], ps, size)
    }

    /// Revision, counts, digest and wanted records of what was fed, or the first refusal a
    /// walk of the page tree meets (meta, root tree, key tree, then keys not UTF-8).
    pub fn finish(self) -> Result<State> {
        let (root, _) = self.meta()?;
        if self.overlapping {
            return damaged("the snapshot file's pages overlap as no bbolt file's do");
        }
        let mut seen = Pages::new(self.kinds.len());
        let mut stack = vec![root];
        let mut key_root: Option<u64> = None;
        while let Some(id) = stack.pop() {
            if self.reach(id, &mut seen)? == BRANCH_PAGE {
                self.children_of(id, &mut stack);
                continue;
            }
            let code = self.root_faults[id as usize]; // reached: a position of the file
            if code != NO_FAULT {
                return fault(code, id);
            }
            if let Some(found) = self.key_roots.get(&id) {
                key_root = Some(*found);
                break;
            }
        }
        let key_root = match key_root {
            Some(found) => found,
            None => return damaged("the snapshot has no b'key' bucket (not an etcd store)"),
        };
        let mut seen = Pages::new(self.kinds.len());
        let mut live = Pages::new(self.kinds.len());
        let mut revision = 0u64;
        let mut stack = vec![key_root];
        while let Some(id) = stack.pop() {
            if self.reach(id, &mut seen)? == BRANCH_PAGE {
                self.children_of(id, &mut stack);
                continue;
            }
            let code = self.key_faults[id as usize];
            if code != NO_FAULT {
                return fault(code, id);
            }
            live.insert(id as usize);
            revision = revision.max(self.max_rev[id as usize]);
        }
        let Stream {
            root: prefix,
            sorter,
            ..
        } = self;
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut found = Vec::new();
        let ((), sha) = hashing::pipelined(|feed| {
            feed.update(V2_TAG);
            let mut current: Option<(Vec<u8>, Option<Vec<u8>>)> = None;
            let mut emit = |key: Vec<u8>, latest: Option<Vec<u8>>| -> Result<()> {
                let payload = match latest {
                    Some(payload) if payload[0] != DELETED => payload,
                    _ => return Ok(()),
                };
                if std::str::from_utf8(&key).is_err() {
                    return damaged("the snapshot holds a key that is not UTF-8");
                }
                let hash: [u8; 32] = if payload[0] == VALUE {
                    found.push((key.clone(), payload[1..].to_vec()));
                    Sha256::digest(&payload[1..]).into()
                } else {
                    payload[1..33].try_into().unwrap()
                };
                feed.update(&(key.len() as u32).to_be_bytes());
                feed.update(&key);
                feed.update(&hash);
                let rest = &key[prefix.len()..];
                let table = rest.split(|&b| b == b'/').next().unwrap_or(rest);
                match counts.get_mut(table) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(table.to_vec(), 1);
                    }
                }
                Ok(())
            };
            sorter.finish(|sorted, record| {
                let payload = match record {
                    Record::Value(payload) => payload,
                    _ => return damaged("the snapshot reader's sort lost a record (a bug)"),
                };
                let (key, page) = split_composite(sorted);
                let same = current.as_ref().map_or(false, |(k, _)| *k == key);
                if !same {
                    if let Some((done, latest)) = current.take() {
                        emit(done, latest)?;
                    }
                    current = Some((key, None));
                }
                if usize::try_from(page).map_or(false, |page| live.contains(page)) {
                    if let Some((_, latest)) = current.as_mut() {
                        *latest = Some(payload.to_vec());
                    }
                }
                Ok(())
            })?;
            match current.take() {
                Some((done, latest)) => emit(done, latest),
                None => Ok(()),
            }
        })?;
        Ok(State {
            revision,
            counts,
            digest: sha.iter().map(|b| format!("{b:02x}")).collect(),
            wanted: found,
        })
    }
}

/// A set of page positions of the file, a bit each: what a walk has reached (a million pages
/// of a 4 GiB store in 128 KiB, where a hash set took tens of MiB).
struct Pages(Vec<u64>);

impl Pages {
    fn new(pages: usize) -> Pages {
        Pages(vec![0; (pages + 63) / 64])
    }

    /// Positions past the file are never in the set (adding one does nothing).
    fn contains(&self, page: usize) -> bool {
        self.0.get(page / 64).map_or(false, |word| word & (1 << (page % 64)) != 0)
    }

    fn insert(&mut self, page: usize) {
        if let Some(word) = self.0.get_mut(page / 64) {
            *word |= 1 << (page % 64);
        }
    }
}

/// A leaf read as the root tree's, element by element, to the first fault or the first
/// element named `key` (None: neither).
fn root_view(page: &[u8], count: usize) -> Option<RootView> {
    for index in 0..count {
        let at = PAGE_HEADER + index * ELEMENT;
        if at + ELEMENT > page.len() {
            return Some(RootView::Refused(F_DAMAGED));
        }
        let (flags, pos) = (u32_at(page, at), u32_at(page, at + 4) as u64);
        let (ksize, vsize) = (u32_at(page, at + 8) as u64, u32_at(page, at + 12) as u64);
        if ksize + vsize > MAX_RECORD {
            return Some(RootView::Refused(F_LARGER));
        }
        if at as u64 + pos + ksize > page.len() as u64 {
            return Some(RootView::Refused(F_DAMAGED));
        }
        let start = at + pos as usize;
        let end = start + ksize as usize;
        if &page[start..end] != b"key" {
            continue;
        }
        if end as u64 + vsize.min(16) > page.len() as u64 {
            return Some(RootView::Refused(F_DAMAGED));
        }
        if flags & BUCKET_LEAF == 0 || vsize < 16 {
            return Some(RootView::Refused(F_NOT_BUCKET));
        }
        return Some(match u64_at(page, end) {
            0 => RootView::Refused(F_INLINE),
            root => RootView::Found(root),
        });
    }
    None
}
