//! The arena's free space: a best-fit allocator of page-aligned extents, with neighbours
//! merged as they are freed.
//!
//! It is the daemon's alone (its memory, not the shared mapping): a worker that crashes, or
//! writes where it should not, cannot corrupt what is free and what is taken.
//!
//! **Invariant** (checked by [`Extents::check`] in the tests): free extents never overlap,
//! never touch (touching ones are merged), lie inside the arena, and `free_bytes` is their sum;
//! `by_len` holds exactly the extents of `by_off`.

use std::collections::{BTreeMap, BTreeSet};

/// Extents are multiples of a page: a mapping's protection, a hole punched and a page fault
/// are all per page.
pub const PAGE: u64 = 4096;

/// Rounds up to a whole number of pages (at least one; saturating: a size from the network
/// may be absurd).
pub fn pages(len: u64) -> u64 {
    len.div_ceil(PAGE).max(1).saturating_mul(PAGE)
}

/// Free space of an arena of `size` bytes.
#[derive(Debug)]
pub struct Extents {
    size: u64,
    /// Free extents by offset: offset → length.
    by_off: BTreeMap<u64, u64>,
    /// The same, by (length, offset): the smallest that fits, lowest first.
    by_len: BTreeSet<(u64, u64)>,
    free_bytes: u64,
}

impl Extents {
    /// An arena of `size` bytes (rounded down to pages), all free.
    pub fn new(size: u64) -> Extents {
        let size = size / PAGE * PAGE;
        let mut e = Extents { size, by_off: BTreeMap::new(), by_len: BTreeSet::new(), free_bytes: 0 };
        if size > 0 {
            e.insert(0, size);
        }
        e
    }

    fn insert(&mut self, off: u64, len: u64) {
        self.by_off.insert(off, len);
        self.by_len.insert((len, off));
        self.free_bytes += len;
    }

    fn remove(&mut self, off: u64, len: u64) {
        self.by_off.remove(&off);
        self.by_len.remove(&(len, off));
        self.free_bytes -= len;
    }

    /// Takes `len` bytes (rounded up to pages) from the smallest free extent that holds them
    /// (best fit keeps large extents whole for large objects), at its start. `None`: no free
    /// extent is large enough, though the free bytes may add up to more.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = pages(len);
        let &(flen, off) = self.by_len.range((len, 0)..).next()?;
        self.remove(off, flen);
        if flen > len {
            self.insert(off + len, flen - len);
        }
        Some(off)
    }

    /// Gives back `len` bytes (rounded up to pages) at `off`, merged with free neighbours.
    /// An extent that is not wholly inside the arena, or overlaps free space, is ignored
    /// (returns false): a bug elsewhere must not corrupt the free list.
    pub fn free(&mut self, off: u64, len: u64) -> bool {
        let len = pages(len);
        if !off.is_multiple_of(PAGE) || off.checked_add(len).is_none_or(|end| end > self.size) {
            return false;
        }
        let before = self.by_off.range(..=off).next_back().map(|(o, l)| (*o, *l));
        let after = self.by_off.range(off..).next().map(|(o, l)| (*o, *l));
        if before.is_some_and(|(o, l)| o + l > off) || after.is_some_and(|(o, _)| o < off + len) {
            return false;
        }
        let (mut start, mut end) = (off, off + len);
        if let Some((o, l)) = before.filter(|(o, l)| o + l == off) {
            self.remove(o, l);
            start = o;
        }
        if let Some((o, l)) = after.filter(|(o, _)| *o == off + len) {
            self.remove(o, l);
            end = o + l;
        }
        self.insert(start, end - start);
        true
    }

    /// Bytes free in all.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// The largest free extent: the largest object the arena can take now.
    pub fn largest(&self) -> u64 {
        self.by_len.iter().next_back().map(|(l, _)| *l).unwrap_or(0)
    }

    /// Number of free extents (1 when nothing is fragmented).
    pub fn count(&self) -> usize {
        self.by_off.len()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The free extents, by offset.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_off.iter().map(|(o, l)| (*o, *l))
    }

    /// Asserts the invariant (tests).
    pub fn check(&self) {
        let mut sum = 0;
        let mut last_end = None;
        for (&off, &len) in &self.by_off {
            assert!(len > 0 && off.is_multiple_of(PAGE) && len.is_multiple_of(PAGE), "aligned, non-empty: {off}+{len}");
            assert!(off + len <= self.size, "inside the arena");
            if let Some(e) = last_end {
                assert!(off > e, "no overlap, and touching extents merged: {off} after {e}");
            }
            assert!(self.by_len.contains(&(len, off)), "indexed by length");
            last_end = Some(off + len);
            sum += len;
        }
        assert_eq!(self.by_len.len(), self.by_off.len());
        assert_eq!(sum, self.free_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_and_merging() {
        let mut e = Extents::new(100 * PAGE);
        let a = e.alloc(10 * PAGE).unwrap();
        let b = e.alloc(1).unwrap();
        let c = e.alloc(20 * PAGE).unwrap();
        assert_eq!((a, b, c), (0, 10 * PAGE, 11 * PAGE));
        e.check();
        assert!(e.free(a, 10 * PAGE));
        // Best fit: a one-page object takes the start of the 10-page hole, not the tail.
        assert_eq!(e.alloc(PAGE), Some(0));
        assert!(e.free(0, PAGE));
        assert!(e.free(c, 20 * PAGE));
        assert_eq!(e.count(), 2, "the hole before b and the tail after it");
        assert!(e.free(b, 1));
        assert_eq!((e.count(), e.free_bytes(), e.largest()), (1, 100 * PAGE, 100 * PAGE));
        e.check();
    }

    #[test]
    fn fragmented_space_refuses_what_no_extent_holds() {
        let mut e = Extents::new(8 * PAGE);
        let offs: Vec<u64> = (0..8).map(|_| e.alloc(PAGE).unwrap()).collect();
        for o in offs.iter().step_by(2) {
            e.free(*o, PAGE);
        }
        assert_eq!((e.free_bytes(), e.largest()), (4 * PAGE, PAGE));
        assert_eq!(e.alloc(2 * PAGE), None, "4 pages free, none two together");
        e.check();
    }

    #[test]
    fn bad_frees_are_ignored() {
        let mut e = Extents::new(8 * PAGE);
        let a = e.alloc(2 * PAGE).unwrap();
        assert!(!e.free(a + 1, PAGE), "unaligned");
        assert!(!e.free(7 * PAGE, 2 * PAGE), "past the end");
        assert!(!e.free(u64::MAX - PAGE + 1, PAGE), "overflowing");
        assert_eq!(e.alloc(u64::MAX), None, "absurd sizes are refused, not overflowed");
        assert!(!e.free(2 * PAGE, PAGE), "already free");
        assert!(e.free(a, 2 * PAGE));
        assert!(!e.free(a, PAGE), "twice");
        e.check();
        assert_eq!(e.free_bytes(), 8 * PAGE);
    }

    #[test]
    fn random_alloc_free_keeps_the_invariant() {
        // A small deterministic generator: the same sequence every run.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut e = Extents::new(1024 * PAGE);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..20_000 {
            if live.is_empty() || rnd() % 3 != 0 {
                let len = (rnd() % 64 + 1) * PAGE - rnd() % PAGE;
                if let Some(o) = e.alloc(len) {
                    for &(lo, ll) in &live {
                        assert!(o + pages(len) <= lo || lo + pages(ll) <= o, "no two live extents overlap");
                    }
                    live.push((o, len));
                }
            } else {
                let i = (rnd() as usize) % live.len();
                let (o, l) = live.swap_remove(i);
                assert!(e.free(o, l));
            }
        }
        e.check();
        for (o, l) in live.drain(..) {
            assert!(e.free(o, l));
        }
        assert_eq!((e.count(), e.free_bytes()), (1, 1024 * PAGE));
    }
}
