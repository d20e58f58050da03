//! The latest record of every key, in key order, from records in revision order, in bounded
//! memory: the external sort of jaco/archive/key_order.py. Records are gathered in a run (one
//! arena of bytes and a vector of entries) until about `run_bytes` are held; the run is then
//! sorted (stably: of one key, the newest record comes last and is the one kept) and written
//! to an unnamed scratch file (O_TMPFILE, mode 0600, gone when closed), and the next run
//! begins. At the end the runs are merged; of one key in several runs the newest run wins,
//! and a deletion hides the key. A store that fits in one run is never written out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::bolt::{Error, Record, Result};

const O_TMPFILE: i32 = 0o20_200_000; // Linux: __O_TMPFILE | O_DIRECTORY
const ENTRY_BYTES: usize = 32; // an entry's own size in the run, counted with its bytes

enum Held {
    Deleted,
    Inline(u32, u32),
    At(u64, u32),
}

struct Entry {
    key: (u32, u32),
    held: Held,
}

pub struct Sorter<'a> {
    scratch: &'a Path,
    run_bytes: usize,
    arena: Vec<u8>,
    entries: Vec<Entry>,
    runs: Vec<File>,
}

impl<'a> Sorter<'a> {
    pub fn new(scratch: &'a Path, run_bytes: usize) -> Sorter<'a> {
        Sorter {
            scratch,
            run_bytes,
            arena: Vec::new(),
            entries: Vec::new(),
            runs: Vec::new(),
        }
    }

    pub fn add(&mut self, key: Vec<u8>, record: Record) -> Result<()> {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(&key);
        let held = match record {
            Record::Deleted => Held::Deleted,
            Record::Inline(bytes) => {
                let at = self.arena.len() as u32;
                self.arena.extend_from_slice(&bytes);
                Held::Inline(at, bytes.len() as u32)
            }
            Record::At(offset, size) => Held::At(offset, size),
        };
        self.entries.push(Entry {
            key: (start, key.len() as u32),
            held,
        });
        if self.arena.len() + self.entries.len() * ENTRY_BYTES >= self.run_bytes {
            self.spill()?;
        }
        Ok(())
    }

    fn key(&self, entry: &Entry) -> &[u8] {
        &self.arena[entry.key.0 as usize..(entry.key.0 + entry.key.1) as usize]
    }

    /// Whether a newer record of the same key follows `entries[i]` in a sorted run (then that
    /// one is kept, not this).
    fn newer_follows(&self, entries: &[Entry], i: usize) -> bool {
        let key = self.key(&entries[i]);
        entries
            .get(i + 1)
            .map_or(false, |next| self.key(next) == key)
    }

    /// The run's entries sorted by key, stably (a key's newest record last).
    fn sorted(&mut self) -> Vec<Entry> {
        let mut entries = std::mem::take(&mut self.entries);
        let arena = &self.arena;
        entries.sort_by(|a, b| {
            arena[a.key.0 as usize..(a.key.0 + a.key.1) as usize]
                .cmp(&arena[b.key.0 as usize..(b.key.0 + b.key.1) as usize])
        });
        entries
    }

    fn spill(&mut self) -> Result<()> {
        let entries = self.sorted();
        let file = scratch_file(self.scratch).map_err(Error::Io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let io = |r: std::io::Result<()>| r.map_err(Error::Io);
        for (i, entry) in entries.iter().enumerate() {
            let key = self.key(entry);
            if self.newer_follows(&entries, i) {
                continue; // a newer record of this key follows
            }
            io(out.write_all(&(key.len() as u32).to_le_bytes()))?;
            io(out.write_all(key))?;
            match entry.held {
                Held::Deleted => io(out.write_all(&[0]))?,
                Held::Inline(at, len) => {
                    io(out.write_all(&[1]))?;
                    io(out.write_all(&len.to_le_bytes()))?;
                    io(out.write_all(&self.arena[at as usize..(at + len) as usize]))?;
                }
                Held::At(offset, size) => {
                    io(out.write_all(&[2]))?;
                    io(out.write_all(&offset.to_le_bytes()))?;
                    io(out.write_all(&size.to_le_bytes()))?;
                }
            }
        }
        let mut file = out.into_inner().map_err(|e| Error::Io(e.into_error()))?;
        io(file.seek(SeekFrom::Start(0)).map(|_| ()))?;
        self.runs.push(file);
        self.arena = Vec::new();
        Ok(())
    }

    /// Calls `each(key, record)` for every key whose latest record is not a deletion, in key
    /// order.
    pub fn finish(mut self, mut each: impl FnMut(&[u8], Record) -> Result<()>) -> Result<()> {
        if self.runs.is_empty() {
            let entries = self.sorted();
            for (i, entry) in entries.iter().enumerate() {
                let key = self.key(entry);
                if self.newer_follows(&entries, i) {
                    continue;
                }
                let record = match entry.held {
                    Held::Deleted => continue,
                    Held::Inline(at, len) => {
                        Record::Inline(self.arena[at as usize..(at + len) as usize].to_vec())
                    }
                    Held::At(offset, size) => Record::At(offset, size),
                };
                each(key, record)?;
            }
            return Ok(());
        }
        if !self.entries.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<RunReader> = std::mem::take(&mut self.runs)
            .into_iter()
            .map(|f| RunReader(BufReader::with_capacity(256 * 1024, f)))
            .collect();
        // (key, age): of one key, the newest run's entry pops last.
        let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
        let mut heads: Vec<Option<Record>> = Vec::with_capacity(readers.len());
        for (age, reader) in readers.iter_mut().enumerate() {
            heads.push(None);
            if let Some((key, record)) = reader.next()? {
                heads[age] = Some(record);
                heap.push(Reverse((key, age)));
            }
        }
        let mut last: Option<(Vec<u8>, Record)> = None;
        while let Some(Reverse((key, age))) = heap.pop() {
            let record = heads[age].take().expect("a head for every key in the heap");
            if let Some((next_key, next)) = readers[age].next()? {
                heads[age] = Some(next);
                heap.push(Reverse((next_key, age)));
            }
            if let Some((last_key, last_record)) = last.take() {
                if last_key != key && !matches!(last_record, Record::Deleted) {
                    each(&last_key, last_record)?;
                }
            }
            last = Some((key, record));
        }
        if let Some((key, record)) = last {
            if !matches!(record, Record::Deleted) {
                each(&key, record)?;
            }
        }
        Ok(())
    }
}

struct RunReader(BufReader<File>);

impl RunReader {
    fn next(&mut self) -> Result<Option<(Vec<u8>, Record)>> {
        let io = |e: std::io::Error| Error::Io(e);
        let mut word = [0u8; 4];
        match self.0.read_exact(&mut word) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let mut key = vec![0u8; u32::from_le_bytes(word) as usize];
        self.0.read_exact(&mut key).map_err(io)?;
        let mut tag = [0u8; 1];
        self.0.read_exact(&mut tag).map_err(io)?;
        let record = match tag[0] {
            0 => Record::Deleted,
            1 => {
                self.0.read_exact(&mut word).map_err(io)?;
                let mut bytes = vec![0u8; u32::from_le_bytes(word) as usize];
                self.0.read_exact(&mut bytes).map_err(io)?;
                Record::Inline(bytes)
            }
            _ => {
                let mut offset = [0u8; 8];
                self.0.read_exact(&mut offset).map_err(io)?;
                self.0.read_exact(&mut word).map_err(io)?;
                Record::At(u64::from_le_bytes(offset), u32::from_le_bytes(word))
            }
        };
        Ok(Some((key, record)))
    }
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
