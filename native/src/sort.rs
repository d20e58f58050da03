//! The latest record of every key, in key order, from records in revision order, in bounded
//! memory: the external sort of jaco/archive/key_order.py. Records are gathered in a run (one
//! arena of bytes and a vector of entries) until it holds half of `run_bytes`; the run is then
//! handed to a second thread, which sorts it (of one key, the newest record last, the one kept)
//! and writes it to an unnamed scratch file (O_TMPFILE, mode 0600, gone when closed), while
//! the next run fills: the walk and the sort share the two cores instead of taking turns, and
//! at most two runs are held at once. At the end the runs are merged, the last one from
//! memory; of one key in several runs the newest run wins, and a deletion hides the key. A
//! store that fits in one run is never written out; a store of many runs merges them fan_in()
//! at a time as they come (Sorter::cascade), so the files open and the merge's buffers stay
//! bounded however large the store.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::bolt::{Error, Record, Result};

const O_TMPFILE: i32 = 0o20_200_000; // Linux: __O_TMPFILE | O_DIRECTORY
const ENTRY_BYTES: usize = 40; // an entry's own size in the run, counted with its bytes
const _: () = assert!(std::mem::size_of::<Entry>() <= ENTRY_BYTES);

#[derive(Clone, Copy)]
enum Held {
    Deleted,
    Inline(u32, u32),
    At(u64, u32),
    Value(u32, u32),
}

#[derive(Clone, Copy)]
struct Entry {
    key: (u32, u32),
    held: Held,
    seq: u32,  // the order records came in: of one key, the newest sorts last
    word: u64, // while sorting: eight of the key's bytes from the depth sorted at
    taken: u8, // how many of those eight the key has (fewer: it ends there)
}

impl Entry {
    /// The eight bytes sorted on at the current depth, and how many of them the key has.
    fn digit(&self) -> (u64, u8) {
        (self.word, self.taken)
    }
}

/// One run: its records' bytes and their entries, sorted once full.
#[derive(Default)]
struct Run {
    arena: Vec<u8>,
    entries: Vec<Entry>,
}

impl Run {
    fn held_bytes(&self) -> usize {
        self.arena.len() + self.entries.len() * ENTRY_BYTES
    }

    fn add(&mut self, key: &[u8], record: Record<'_>) {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        let mut copy = |bytes: &[u8]| {
            let at = self.arena.len() as u32;
            self.arena.extend_from_slice(bytes);
            (at, bytes.len() as u32)
        };
        let held = match record.lean() {
            Record::Deleted => Held::Deleted,
            Record::Inline(bytes) => {
                let (at, len) = copy(bytes);
                Held::Inline(at, len)
            }
            Record::Value(bytes) => {
                let (at, len) = copy(bytes);
                Held::Value(at, len)
            }
            Record::At(offset, size) => Held::At(offset, size),
        };
        let seq = self.entries.len() as u32;
        self.entries.push(Entry {
            key: (start, key.len() as u32),
            held,
            seq,
            word: 0,
            taken: 0,
        });
    }

    fn key(&self, entry: &Entry) -> &[u8] {
        &self.arena[entry.key.0 as usize..(entry.key.0 + entry.key.1) as usize]
    }

    fn record(&self, entry: &Entry) -> Record<'_> {
        match entry.held {
            Held::Deleted => Record::Deleted,
            Held::Inline(at, len) => Record::Inline(&self.arena[at as usize..(at + len) as usize]),
            Held::Value(at, len) => Record::Value(&self.arena[at as usize..(at + len) as usize]),
            Held::At(offset, size) => Record::At(offset, size),
        }
    }

    /// Sorts the entries by key, a key's records in the order they came. Keys are compared
    /// eight bytes at a time, as integers held in the entries (a most-significant-digit sort):
    /// the entries of one group share their first `depth` bytes and are ordered by the next
    /// eight, then the groups that tie are taken again eight bytes further. Keys under one
    /// root share long prefixes (`/jaco/v1/audit/events/0000…`): a comparison that went
    /// back to the arena for every pair spent most of the pass in memcmp.
    fn sort(&mut self) {
        let arena = &self.arena;
        let entries = &mut self.entries;
        let mut groups: Vec<(usize, usize, usize)> = vec![(0, entries.len(), 0)];
        while let Some((start, end, depth)) = groups.pop() {
            if end - start < 2 {
                continue; // none or one: in order
            }
            let group = &mut entries[start..end];
            for entry in group.iter_mut() {
                let key = &arena[entry.key.0 as usize..(entry.key.0 + entry.key.1) as usize];
                let rest = key.get(depth..).unwrap_or(&[]);
                let take = rest.len().min(8);
                let mut word = [0u8; 8];
                word[..take].copy_from_slice(&rest[..take]);
                entry.word = u64::from_be_bytes(word);
                entry.taken = take as u8;
            }
            let first = group[0].digit();
            if group.iter().all(|e| e.digit() == first) {
                if first.1 == 8 {
                    groups.push((start, end, depth + 8)); // all alike so far: look further
                } else {
                    group.sort_unstable_by_key(|e| e.seq); // one key: its records in order
                }
                continue;
            }
            group.sort_unstable_by_key(|e| (e.digit(), e.seq));
            let mut i = 0;
            while i < group.len() {
                let digit = group[i].digit();
                let j = i + group[i..].iter().take_while(|e| e.digit() == digit).count();
                if j - i > 1 && digit.1 == 8 {
                    groups.push((start + i, start + j, depth + 8));
                }
                i = j;
            }
        }
    }

    /// The sorted run's entries that are the latest of their key (of one key, the newest
    /// record sorts last: an entry followed by one of the same key is not).
    fn latest(&self) -> impl Iterator<Item = &Entry> + '_ {
        let entries = &self.entries;
        entries.iter().enumerate().filter_map(move |(i, entry)| {
            let superseded = entries
                .get(i + 1)
                .map_or(false, |next| self.key(next) == self.key(entry));
            (!superseded).then_some(entry)
        })
    }

    /// The sorted run, the latest record of each key only, to an unnamed file in `scratch`.
    fn write(&mut self, scratch: &Path) -> Result<File> {
        self.sort();
        let mut out = RunWriter::new(scratch)?;
        for entry in self.latest() {
            out.add(self.key(entry), self.record(entry))?;
        }
        let file = out.finish()?;
        self.arena.clear();
        self.entries.clear();
        Ok(file)
    }
}

type Spilling = JoinHandle<Result<(File, Run)>>;

pub struct Sorter {
    scratch: PathBuf,
    run_bytes: usize,
    run: Run,
    spilling: Option<Spilling>,
    runs: Vec<(File, u32)>, // spilled runs, the oldest first, each with its level (below)
    fan_in: usize,
}

/// How many runs a merge reads at once: half the files this process may open (its soft
/// RLIMIT_NOFILE), within 16-512; 512 where it may open 1024, as most do.
fn fan_in() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    let soft = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => 1024,
    };
    (soft / 2).clamp(16, 512) as usize
}

/// The spill thread's outcome; its panic (a bug) carried on in this thread.
fn joined(handle: Spilling) -> Result<(File, Run)> {
    match handle.join() {
        Ok(outcome) => outcome,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Sorter {
    /// A sorter holding at most `run_bytes` (two runs of half that: one filling, one written).
    pub fn new(scratch: &Path, run_bytes: usize) -> Sorter {
        Sorter {
            scratch: scratch.to_path_buf(),
            run_bytes: (run_bytes / 2).max(1),
            run: Run::default(),
            spilling: None,
            runs: Vec::new(),
            fan_in: fan_in(),
        }
    }

    pub fn add(&mut self, key: &[u8], record: Record<'_>) -> Result<()> {
        self.run.add(key, record);
        if self.run.held_bytes() >= self.run_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Waits for the run being written, if any; returns its emptied buffers for reuse.
    fn settle(&mut self) -> Result<Option<Run>> {
        match self.spilling.take() {
            Some(handle) => {
                let (file, emptied) = joined(handle)?;
                self.runs.push((file, 0));
                self.cascade()?;
                Ok(Some(emptied))
            }
            None => Ok(None),
        }
    }

    /// Whenever the newest fan_in runs are of one level, merges them into one run of the next
    /// level (the newest record of each key, deletions kept: an older run may hold the key).
    /// Levels never rise from the oldest run to the newest, so fewer than fan_in runs of each
    /// level stay open: a store of any size opens a bounded number of files, and each record
    /// is rewritten once per level. A store of 10⁷ small keys spills about 400 runs of
    /// RUN_BYTES / 2 and is never merged early where the process may open 1024 files; with
    /// 256 at a time its pass took 8.8-9.1 s, not 6.2-6.7 s.
    fn cascade(&mut self) -> Result<()> {
        while self.runs.len() >= self.fan_in {
            let group = self.runs.len() - self.fan_in;
            let level = self.runs[group].1;
            if self.runs[group..].iter().any(|run| run.1 != level) {
                break;
            }
            let mut sources = readers(self.runs.drain(group..), self.run_bytes);
            let mut out = RunWriter::new(&self.scratch)?;
            merge(&mut sources, |key, record| out.add(&key, record.record()))?;
            self.runs.push((out.finish()?, level + 1));
        }
        Ok(())
    }

    /// Hands the full run to a thread that sorts and writes it; the next run reuses the
    /// buffers of the one written before.
    fn spill(&mut self) -> Result<()> {
        let next = self.settle()?.unwrap_or_default();
        let mut full = std::mem::replace(&mut self.run, next);
        let scratch = self.scratch.clone();
        self.spilling = Some(std::thread::spawn(move || {
            let file = full.write(&scratch)?;
            Ok((file, full))
        }));
        Ok(())
    }

    /// Calls `each(key, record)` for every key whose latest record is not a deletion, in key
    /// order.
    pub fn finish(mut self, mut each: impl FnMut(&[u8], Record<'_>) -> Result<()>) -> Result<()> {
        self.settle()?;
        let mut last_run = std::mem::take(&mut self.run);
        last_run.sort();
        if self.runs.is_empty() {
            for entry in last_run.latest() {
                match last_run.record(entry) {
                    Record::Deleted => continue,
                    record => each(last_run.key(entry), record)?,
                }
            }
            return Ok(());
        }
        let mut sources = readers(std::mem::take(&mut self.runs).into_iter(), self.run_bytes);
        sources.push(Source::Memory(&last_run, Box::new(last_run.latest()))); // the newest run
        merge(&mut sources, |key, record| match record {
            Owned::Deleted => Ok(()),
            record => each(&key, record.record()),
        })
    }
}

/// Readers of spilled runs for a merge, their buffers sharing one run's budget (within
/// 16-256 KiB each): a merge holds no more than the walk did, however many runs it reads.
fn readers<'r>(
    runs: impl ExactSizeIterator<Item = (File, u32)>,
    run_bytes: usize,
) -> Vec<Source<'r>> {
    let buffer = (run_bytes / runs.len().max(1)).clamp(16 * 1024, 256 * 1024);
    runs.map(|(file, _)| Source::Spilled(BufReader::with_capacity(buffer, file)))
        .collect()
}

/// Calls `each(key, record)` with the newest record of every key of `sources` (the oldest run
/// first), deletions included, in key order.
fn merge(
    sources: &mut [Source<'_>],
    mut each: impl FnMut(Vec<u8>, Owned) -> Result<()>,
) -> Result<()> {
    // (key, age): of one key, the newest run's entry pops last.
    let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
    let mut heads: Vec<Option<Owned>> = Vec::with_capacity(sources.len());
    for (age, source) in sources.iter_mut().enumerate() {
        heads.push(None);
        if let Some((key, record)) = source.next()? {
            heads[age] = Some(record);
            heap.push(Reverse((key, age)));
        }
    }
    let mut last: Option<(Vec<u8>, Owned)> = None;
    while let Some(Reverse((key, age))) = heap.pop() {
        let record = heads[age].take().expect("a head for every key in the heap");
        if let Some((next_key, next)) = sources[age].next()? {
            heads[age] = Some(next);
            heap.push(Reverse((next_key, age)));
        }
        if let Some((last_key, last_record)) = last.take() {
            if last_key != key {
                each(last_key, last_record)?;
            }
        }
        last = Some((key, record));
    }
    match last {
        Some((key, record)) => each(key, record),
        None => Ok(()),
    }
}

/// A sorted run being written to an unnamed scratch file, in the format read_entry reads.
struct RunWriter {
    out: BufWriter<File>,
}

impl RunWriter {
    fn new(scratch: &Path) -> Result<RunWriter> {
        let file = scratch_file(scratch).map_err(Error::Io)?;
        Ok(RunWriter {
            out: BufWriter::with_capacity(1 << 20, file),
        })
    }

    fn add(&mut self, key: &[u8], record: Record<'_>) -> Result<()> {
        let out = &mut self.out;
        let io = |r: std::io::Result<()>| r.map_err(Error::Io);
        io(out.write_all(&(key.len() as u32).to_le_bytes()))?;
        io(out.write_all(key))?;
        let mut bytes = |tag: u8, bytes: &[u8]| -> Result<()> {
            io(out.write_all(&[tag]))?;
            io(out.write_all(&(bytes.len() as u32).to_le_bytes()))?;
            io(out.write_all(bytes))
        };
        match record {
            Record::Deleted => io(out.write_all(&[0])),
            Record::Inline(raw) => bytes(1, raw),
            Record::Value(value) => bytes(3, value),
            Record::At(offset, size) => {
                io(out.write_all(&[2]))?;
                io(out.write_all(&offset.to_le_bytes()))?;
                io(out.write_all(&size.to_le_bytes()))
            }
        }
    }

    /// The written run, rewound for reading.
    fn finish(self) -> Result<File> {
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::Io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        Ok(file)
    }
}

impl Drop for Sorter {
    /// A pass that ends early (a damaged file, an error) still waits for the run being
    /// written: no thread outlives the call that started it.
    fn drop(&mut self) {
        if let Some(handle) = self.spilling.take() {
            let _ = handle.join();
        }
    }
}

/// A record as read back from a spilled run.
enum Owned {
    Deleted,
    Inline(Vec<u8>),
    At(u64, u32),
    Value(Vec<u8>),
}

impl Owned {
    fn record(&self) -> Record<'_> {
        match self {
            Owned::Deleted => Record::Deleted,
            Owned::Inline(bytes) => Record::Inline(bytes),
            Owned::At(offset, size) => Record::At(*offset, *size),
            Owned::Value(bytes) => Record::Value(bytes),
        }
    }
}

/// One sorted run of the merge: a spilled file, or the last run, still in memory (with its
/// latest entries still to come).
enum Source<'r> {
    Spilled(BufReader<File>),
    Memory(&'r Run, Box<dyn Iterator<Item = &'r Entry> + 'r>),
}

impl Source<'_> {
    fn next(&mut self) -> Result<Option<(Vec<u8>, Owned)>> {
        match self {
            Source::Spilled(reader) => read_entry(reader),
            Source::Memory(run, latest) => Ok(latest.next().map(|entry| {
                let record = match run.record(entry) {
                    Record::Deleted => Owned::Deleted,
                    Record::Inline(bytes) => Owned::Inline(bytes.to_vec()),
                    Record::At(offset, size) => Owned::At(offset, size),
                    Record::Value(bytes) => Owned::Value(bytes.to_vec()),
                };
                (run.key(entry).to_vec(), record)
            })),
        }
    }
}

fn read_entry(reader: &mut BufReader<File>) -> Result<Option<(Vec<u8>, Owned)>> {
    let io = |e: std::io::Error| Error::Io(e);
    let mut word = [0u8; 4];
    match reader.read_exact(&mut word) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    let mut key = vec![0u8; u32::from_le_bytes(word) as usize];
    reader.read_exact(&mut key).map_err(io)?;
    let mut tag = [0u8; 1];
    reader.read_exact(&mut tag).map_err(io)?;
    let record = match tag[0] {
        0 => Owned::Deleted,
        1 | 3 => {
            reader.read_exact(&mut word).map_err(io)?;
            let mut bytes = vec![0u8; u32::from_le_bytes(word) as usize];
            reader.read_exact(&mut bytes).map_err(io)?;
            if tag[0] == 1 {
                Owned::Inline(bytes)
            } else {
                Owned::Value(bytes)
            }
        }
        _ => {
            let mut offset = [0u8; 8];
            reader.read_exact(&mut offset).map_err(io)?;
            reader.read_exact(&mut word).map_err(io)?;
            Owned::At(u64::from_le_bytes(offset), u32::from_le_bytes(word))
        }
    };
    Ok(Some((key, record)))
}

/// An unnamed file in `dir` (O_TMPFILE, 0600); where the filesystem has no O_TMPFILE, a
/// named one, removed at once.
fn scratch_file(dir: &Path) -> std::io::Result<File> {
    let unnamed = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(O_TMPFILE)
        .open(dir);
    match unnamed {
        Ok(file) => Ok(file),
        Err(_) => {
            for n in 0..100u32 {
                let path = dir.join(format!(".jaco-sort-{}-{n}", std::process::id()));
                match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(file) => {
                        std::fs::remove_file(&path)?;
                        return Ok(file);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "no free scratch name",
            ))
        }
    }
}
