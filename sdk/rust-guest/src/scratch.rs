//! Where the host puts the values it returns (header values, properties, the configuration).
//!
//! The ABI returns data by calling the module's `proxy_on_memory_allocate` and writing into
//! what it gets. The upstream SDKs answer with their heap (`malloc`), so every value read is an
//! allocation and a free in the guest. Values a callback reads are needed only until it
//! returns, so here they go into a bump arena that is emptied when the next callback starts:
//! an allocation is a pointer increment, and the arena's memory is reused request after
//! request.

use std::cell::RefCell;

/// The first chunk's size: a request's header values fit in it.
const CHUNK: usize = 4096;
/// Every allocation is aligned to this (the host may return serialized pairs, read as `u32`s).
const ALIGN: usize = 8;

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// Chunks never move or shrink while a callback runs, so the values handed out stay valid
/// until [`reset`]; a value larger than what is left gets a chunk of its own.
struct Scratch {
    chunks: Vec<Box<[u64]>>,
    /// Bytes used in the last chunk.
    used: usize,
}

impl Scratch {
    const fn new() -> Scratch {
        Scratch {
            chunks: Vec::new(),
            used: 0,
        }
    }

    fn allocate(&mut self, size: usize) -> *mut u8 {
        let size = size.max(1).next_multiple_of(ALIGN);
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.len() * ALIGN - self.used >= size);
        if !fits {
            let words = size.max(CHUNK) / ALIGN;
            self.chunks.push(vec![0u64; words].into_boxed_slice());
            self.used = 0;
        }
        let Some(chunk) = self.chunks.last_mut() else {
            return std::ptr::null_mut();
        };
        // SAFETY: `used + size` is within the chunk (checked above, or a fresh chunk of at
        // least `size` bytes).
        let at = unsafe { chunk.as_mut_ptr().cast::<u8>().add(self.used) };
        self.used += size;
        at
    }

    /// Forgets every value. Several chunks (a callback read more than the first held) become
    /// one of their total size, so the next callbacks need no new chunk.
    fn reset(&mut self) {
        if self.chunks.len() > 1 {
            let words = self.chunks.iter().map(|chunk| chunk.len()).sum();
            self.chunks.clear();
            self.chunks.push(vec![0u64; words].into_boxed_slice());
        }
        self.used = 0;
    }
}

/// `proxy_on_memory_allocate`: room for `size` bytes until the next callback starts.
pub fn allocate(size: usize) -> *mut u8 {
    SCRATCH.with(|scratch| scratch.borrow_mut().allocate(size))
}

/// Called when a callback starts: nothing from an earlier callback is referenced any more
/// (values borrow from their callback's [`crate::Request`]).
pub(crate) fn reset() {
    SCRATCH.with(|scratch| scratch.borrow_mut().reset());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_put_until_reset_and_chunks_merge() {
        let mut scratch = Scratch::new();
        let first = scratch.allocate(10);
        // SAFETY: 10 bytes were allocated at `first`.
        unsafe { first.write_bytes(7, 10) };
        let big = scratch.allocate(3 * CHUNK);
        assert!(!big.is_null());
        assert_eq!(scratch.chunks.len(), 2);
        // SAFETY: still allocated: chunks do not move when another is added.
        assert_eq!(unsafe { *first.add(9) }, 7);
        assert_eq!(first as usize % ALIGN, 0);
        scratch.reset();
        assert_eq!(scratch.chunks.len(), 1);
        assert_eq!(scratch.chunks[0].len() * ALIGN, 4 * CHUNK);
        let again = scratch.allocate(3 * CHUNK);
        assert_eq!(scratch.chunks.len(), 1, "the merged chunk holds it");
        assert!(!again.is_null());
    }
}
