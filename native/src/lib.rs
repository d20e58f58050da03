#![allow(unknown_lints, unexpected_cfgs)] // pyo3 0.22's create_exception! names a cfg this crate does not declare
//! jaco._native: the per-key pass over an etcd snapshot file, compiled.
//!
//! Every backup (on the node serving it), every restore and every drill reads the snapshot's
//! revision, its per-table counts and state digest, and a few records (identity, CA, audit
//! head) out of the bolt file. In Python that pass cost 6–8 µs per stored revision (issue 16:
//! 3–3.6× etcd's own tools at 10⁶ small keys); here it is the same walk, the same external
//! sort and the same digest, without the GIL held, on up to three threads (the walk, the sort
//! of the run before, and the digest's hashing: sort.rs, hashing.rs); the result is the one
//! pass's, byte for byte. jaco/archive/bolt.py and key_order.py stay
//! as the reference: tests/test_snapshot_file.py holds this module to them, on real snapshots and on
//! damaged ones, error message for error message.
//!
//! Only data is read, never executed; every length is checked before it is used; a panic (a
//! bug, never an input) comes back as RuntimeError, not as a crash of the process.

mod bolt;
mod hashing;
mod sort;
mod stream;

use std::collections::BTreeMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, TryLockError};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bolt::{damaged, Bolt, Error, Result};
use crate::sort::Sorter;
use crate::stream::Stream;

create_exception!(
    _native,
    SnapshotError,
    PyException,
    "The file is not a readable etcd snapshot."
);

const MAX_RUN_BYTES: usize = 1 << 30;

struct State {
    revision: u64,
    counts: BTreeMap<Vec<u8>, u64>,
    digest: String,
    wanted: Vec<(Vec<u8>, Vec<u8>)>,
}

fn scan(
    path: &Path,
    scratch: &Path,
    root: &[u8],
    alive: &[u8],
    wanted: &[Vec<u8>],
    run_bytes: usize,
) -> Result<State> {
    let bolt = Bolt::open(File::open(path).map_err(Error::Io)?)?;
    let mut sorter = Sorter::new(scratch, run_bytes.clamp(2, MAX_RUN_BYTES));
    let counted = |key: &[u8]| key.starts_with(root) && !key.starts_with(alive);
    let revision = bolt.revisions(counted, |key, record| sorter.add(key, record))?;
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut found = Vec::new();
    let mut held = Vec::new();
    let ((), sha) = hashing::pipelined(|feed| {
        sorter.finish(|key, record| {
            if std::str::from_utf8(key).is_err() {
                return damaged("the snapshot holds a key that is not UTF-8");
            }
            let value = bolt.value(record, &mut held)?;
            feed.update(&(key.len() as u32).to_be_bytes());
            feed.update(key);
            feed.update(&(value.len() as u64).to_be_bytes());
            feed.update(value);
            let rest = &key[root.len()..];
            let table = rest.split(|&b| b == b'/').next().unwrap_or(rest);
            match counts.get_mut(table) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(table.to_vec(), 1);
                }
            }
            if wanted.iter().any(|w| w.as_slice() == key) {
                found.push((key.to_vec(), value.to_vec()));
            }
            Ok(())
        })
    })?;
    let digest = sha.iter().map(|b| format!("{b:02x}")).collect();
    Ok(State {
        revision,
        counts,
        digest,
        wanted: found,
    })
}

type Scanned = (
    u64,
    Vec<(String, u64)>,
    String,
    Vec<(Py<PyBytes>, Py<PyBytes>)>,
);

/// An I/O error as Python's OSError with its errno (so ENOSPC is told from the rest, and
/// ENOENT is a FileNotFoundError); pyo3's own conversion keeps only the message.
fn os_error(error: std::io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(code) => {
            let text = error.to_string();
            let strerror = text.split(" (os error").next().unwrap_or(&text).to_owned();
            PyOSError::new_err((code, strerror))
        }
        None => error.into(),
    }
}

/// snapshot_state(path, scratch, root, alive, wanted, run_bytes) -> (revision, [(table,
/// count)], digest hex, [(key, value)] of the `wanted` keys present).
///
/// The records counted are the latest of every key under `root` but not under `alive`, in
/// key order; a sort larger than `run_bytes` spills to unnamed files in `scratch`.
/// Raises SnapshotError (the file is not a readable etcd snapshot, with the reason) or
/// OSError.
#[pyfunction]
#[pyo3(signature = (path, scratch, root, alive, wanted, run_bytes))]
fn snapshot_state(
    py: Python<'_>,
    path: PathBuf,
    scratch: PathBuf,
    root: Vec<u8>,
    alive: Vec<u8>,
    wanted: Vec<Vec<u8>>,
    run_bytes: usize,
) -> PyResult<Scanned> {
    let scanned_state = py.allow_threads(|| {
        std::panic::catch_unwind(|| scan(&path, &scratch, &root, &alive, &wanted, run_bytes))
    });
    let state = outcome(scanned_state)?;
    Ok(scanned(py, state.revision, state.counts, state.digest, state.wanted))
}

/// What a pass found, as Python values.
fn scanned(
    py: Python<'_>,
    revision: u64,
    counts: BTreeMap<Vec<u8>, u64>,
    digest: String,
    wanted: Vec<(Vec<u8>, Vec<u8>)>,
) -> Scanned {
    let counts = counts
        .into_iter()
        .map(|(table, n)| (String::from_utf8_lossy(&table).into_owned(), n))
        .collect();
    let wanted = wanted
        .into_iter()
        .map(|(k, v)| {
            (
                PyBytes::new_bound(py, &k).unbind(),
                PyBytes::new_bound(py, &v).unbind(),
            )
        })
        .collect();
    (revision, counts, digest, wanted)
}

/// The pass of state digest version 2 over a snapshot's bytes as they arrive (stream.rs):
/// StreamPass(scratch, root, alive, wanted, run_bytes), then feed(bytes) for every piece in
/// order, then finish() -> what snapshot_state returns, or SnapshotError; abort() ends it
/// where it is, from any thread, also while another feeds (it waits for the feed). A finish
/// already running has the pass to itself: abort() does nothing to it, it ends on its own.
/// Each call runs without the GIL. A pass that failed (an I/O error of its sort, a panic) or
/// ended refuses any further call.
#[pyclass(module = "jaco._native")]
struct StreamPass {
    stream: Mutex<Option<Stream>>,
}

fn outcome<T>(result: std::thread::Result<crate::bolt::Result<T>>) -> PyResult<T> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Error::Snapshot(message))) => Err(SnapshotError::new_err(message)),
        Ok(Err(Error::Io(error))) => Err(os_error(error)),
        Err(_) => Err(PyRuntimeError::new_err("the snapshot reader failed (a bug)")),
    }
}

fn ended() -> PyErr {
    PyRuntimeError::new_err("this snapshot pass has ended")
}

impl StreamPass {
    fn lock(&self) -> MutexGuard<'_, Option<Stream>> {
        // A panic while it was held ended that pass (taken out below); the lock is still good.
        self.stream.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl StreamPass {
    #[new]
    #[pyo3(signature = (scratch, root, alive, wanted, run_bytes))]
    fn new(
        scratch: PathBuf,
        root: Vec<u8>,
        alive: Vec<u8>,
        wanted: Vec<Vec<u8>>,
        run_bytes: usize,
    ) -> StreamPass {
        let run_bytes = run_bytes.clamp(2, MAX_RUN_BYTES);
        let stream = Stream::new(&scratch, root, alive, wanted, run_bytes);
        StreamPass {
            stream: Mutex::new(Some(stream)),
        }
    }

    fn feed(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        py.allow_threads(|| {
            let mut held = self.lock();
            let stream = held.as_mut().ok_or_else(ended)?;
            let fed = std::panic::catch_unwind(AssertUnwindSafe(|| stream.feed(data)));
            let result = outcome(fed);
            if result.is_err() {
                *held = None;
            }
            result
        })
    }

    /// Whether the pass was taken by a finish or an abort (which end it: closing its runs,
    /// joining its thread, maybe still under way) or dropped by a failure. False while a feed
    /// holds the pass (it does not wait for it).
    #[getter]
    fn ended(&self) -> bool {
        match self.stream.try_lock() {
            Ok(held) => held.is_none(),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().is_none(),
            Err(TryLockError::WouldBlock) => false,
        }
    }

    fn abort(&self, py: Python<'_>) {
        py.allow_threads(|| {
            let stream = self.lock().take();
            drop(stream); // its sort's files closed (and so gone), its thread joined
        })
    }

    fn finish(&self, py: Python<'_>) -> PyResult<Scanned> {
        let state = py.allow_threads(|| {
            let stream = self.lock().take().ok_or_else(ended)?;
            outcome(std::panic::catch_unwind(AssertUnwindSafe(|| stream.finish())))
        })?;
        Ok(scanned(py, state.revision, state.counts, state.digest, state.wanted))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(snapshot_state, m)?)?;
    m.add_class::<StreamPass>()?;
    m.add("SnapshotError", m.py().get_type_bound::<SnapshotError>())?;
    Ok(())
}
