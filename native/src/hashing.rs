//! SHA-256 on a second thread: the state digest hashes every record's bytes (a quarter of a
//! second per 10⁶ small keys), which the merge that produces them need not wait for. The
//! bytes go over in 1 MiB buffers, at most four of them in use, in the order they were fed.

use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};

use sha2::{Digest, Sha256};

const CHUNK: usize = 1 << 20;

/// What `pipelined`'s body feeds the digest through.
pub struct Feed {
    full: Option<SyncSender<Vec<u8>>>,
    empty: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Feed {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (CHUNK - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == CHUNK {
                self.send();
            }
        }
    }

    fn send(&mut self) {
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        if let Some(sender) = &self.full {
            // Fails only when the hashing thread is gone (a panic): its join says so.
            let _ = sender.send(full);
        }
    }

    fn close(&mut self) {
        if !self.buf.is_empty() {
            self.send();
        }
        self.full = None;
    }
}

/// Runs `body` with a Feed whose bytes are hashed on a second thread; returns what `body`
/// returned and the SHA-256 of everything fed, once all of it is hashed.
pub fn pipelined<T, E>(body: impl FnOnce(&mut Feed) -> Result<T, E>) -> Result<(T, [u8; 32]), E> {
    std::thread::scope(|scope| {
        let (full, to_hash) = sync_channel::<Vec<u8>>(2);
        let (give_back, empty) = channel::<Vec<u8>>();
        let hashing = scope.spawn(move || {
            let mut sha = Sha256::new();
            for mut buf in to_hash {
                sha.update(&buf);
                buf.clear();
                let _ = give_back.send(buf);
            }
            sha.finalize()
        });
        let mut feed = Feed {
            full: Some(full),
            empty,
            buf: Vec::with_capacity(CHUNK),
        };
        let outcome = body(&mut feed);
        feed.close();
        let digest = match hashing.join() {
            Ok(digest) => digest,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        outcome.map(|value| (value, digest.into()))
    })
}
