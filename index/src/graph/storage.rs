//! Growable per-node storage that never moves what it holds, so that searches read it without a
//! lock while inserts add to it.
//!
//! Node `i`'s data lives in segment `k` (segment `k` holds `FIRST << k` nodes: 1024, 2048, 4096,
//! ...). A segment is allocated once, when the first node in it is reserved, and never moved or
//! freed before the store is dropped. Segments of zero-valid types are allocated zeroed, so the
//! pages of a segment's unused tail are never touched (nor counted in the resident memory).
//!
//! A graph's vectors may instead live in a [`MappedFile`]: segments mapped from a file on disk
//! that has no name, whose pages the page cache holds (and writes back, and lets go under
//! memory pressure) instead of the heap.

use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
use std::cell::UnsafeCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

const FIRST_BITS: u32 = 10;
/// Enough segments for every u32 node number.
const SEGMENTS: usize = 23;

/// The segment of node `i` and its place there.
#[inline]
fn locate(i: u32) -> (usize, usize) {
    let j = i as usize + (1 << FIRST_BITS);
    let k = (usize::BITS - 1 - j.leading_zeros() - FIRST_BITS) as usize;
    (k, j - (1 << (k as u32 + FIRST_BITS)))
}

fn segment_nodes(k: usize) -> usize {
    1 << (k as u32 + FIRST_BITS)
}

/// Types whose all-zero bit pattern is a valid value.
///
/// # Safety
/// Implement only for such types.
pub(crate) unsafe trait Zeroable {}
// SAFETY: atomics of integers are valid at zero (same representation as the integers).
unsafe impl Zeroable for AtomicU8 {}
unsafe impl Zeroable for AtomicU32 {}
unsafe impl Zeroable for AtomicU64 {}
// SAFETY: the null pointer.
unsafe impl<T> Zeroable for AtomicPtr<T> {}
// SAFETY: eight floats of value 0.0.
unsafe impl Zeroable for UnsafeCell<Lane> {}

/// An unlinked file in a folder, that segments are mapped from (shared, read-write): their
/// pages are the page cache's, not the heap's. It has no name from the moment it is made, so
/// nothing of it is left on disk when the process ends, however it ends.
pub(crate) struct MappedFile {
    file: File,
    /// Bytes mapped so far (whole pages): where the next segment begins in the file.
    len: Mutex<u64>,
}

impl MappedFile {
    pub fn create_in(dir: &Path) -> io::Result<MappedFile> {
        std::fs::create_dir_all(dir)?;
        // (`O_TMPFILE` where the file system has it: never a name; else a random name, removed
        // at once)
        let file = tempfile::tempfile_in(dir)?;
        Ok(MappedFile {
            file,
            len: Mutex::new(0),
        })
    }

    /// Give the file's range its blocks on disk (zero), so that writes through a mapping of it
    /// never find the disk full.
    #[cfg(target_os = "linux")]
    fn allocate(&self, offset: libc::off_t, size: libc::off_t) -> io::Result<()> {
        loop {
            // SAFETY: a valid descriptor, and a range of the file.
            match unsafe { libc::posix_fallocate(self.file.as_raw_fd(), offset, size) } {
                0 => return Ok(()),
                libc::EINTR => continue,
                // a file system without it: the range stays sparse (a full disk is then found
                // by a write through the mapping)
                libc::EOPNOTSUPP | libc::EINVAL => {
                    let end = u64::try_from(offset + size).map_err(io::Error::other)?;
                    return self.file.set_len(end);
                }
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn allocate(&self, offset: libc::off_t, size: libc::off_t) -> io::Result<()> {
        let end = u64::try_from(offset + size).map_err(io::Error::other)?;
        self.file.set_len(end)
    }

    /// `bytes` (rounded up to whole pages) more of the file, zero, their blocks allocated on
    /// disk (a full disk is an error here, not a fault at a later write through the mapping),
    /// mapped: answers where, and how many bytes.
    fn map(&self, bytes: usize) -> io::Result<(std::ptr::NonNull<u8>, usize)> {
        let page = page_size();
        let bytes = bytes.div_ceil(page) * page;
        let mut len = self.len.lock();
        let offset = libc::off_t::try_from(*len).map_err(io::Error::other)?;
        let size = libc::off_t::try_from(bytes).map_err(io::Error::other)?;
        offset
            .checked_add(size)
            .ok_or_else(|| io::Error::other("the file would pass off_t"))?;
        self.allocate(offset, size)?;
        // SAFETY: a new mapping of a range of the file that is allocated and that no other
        // mapping covers (the offset only grows); it is unmapped once, by its ZeroedSlice.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Searches read a vector here and there, never a run of them: without this, a fault on
        // a page the cache let go reads the pages around it too (the kernel's read-around, 128
        // KiB where the disk's read-ahead is that), evicting as much of what later searches
        // need; with the page cache squeezed below the file's size that turned each search's
        // few dozen faults into megabytes read, and searches collapsed (docs/benchmarks.md,
        // "Cold pages"). A read of every vector in order asks for the pages ahead of it
        // (`Vectors::will_need`). A hint: an error is ignored.
        // SAFETY: the range just mapped.
        unsafe { libc::madvise(p, bytes, libc::MADV_RANDOM) };
        *len += bytes as u64;
        std::ptr::NonNull::new(p as *mut u8)
            .map(|p| (p, bytes))
            .ok_or_else(|| io::Error::other("the mapping is at address 0"))
    }
}

/// The system's page size (at least 4 KiB): what mappings and advice are aligned to.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// What a [`ZeroedSlice`]'s values are in.
enum Block {
    /// Allocated with this layout.
    Heap(Layout),
    /// Mapped from a file: this many bytes (the file is kept open while they are).
    Mapped(usize, #[allow(dead_code)] Arc<MappedFile>),
}

/// `n` zeroed values of `T`, allocated without writing to them: through the allocator's
/// zeroed path with at most 16-byte alignment (`calloc`, which for large blocks maps fresh pages
/// and leaves them untouched, so a segment's unused tail never becomes resident; a stricter
/// alignment would make the allocator write zeros over all of it), aligned to `T` by hand inside
/// a block 32 bytes longer; or mapped from a [`MappedFile`] (page-aligned, zero until written).
pub(crate) struct ZeroedSlice<T> {
    base: std::ptr::NonNull<u8>,
    block: Block,
    values: *mut T,
    len: usize,
}

// SAFETY: owns its values like a Box<[T]>.
unsafe impl<T: Send> Send for ZeroedSlice<T> {}
unsafe impl<T: Sync> Sync for ZeroedSlice<T> {}

const SLACK: usize = 32;

impl<T: Zeroable> ZeroedSlice<T> {
    pub fn new(n: usize) -> ZeroedSlice<T> {
        assert!(
            std::mem::align_of::<T>() <= SLACK,
            "alignment above {SLACK}"
        );
        let bytes = std::mem::size_of::<T>()
            .checked_mul(n)
            .and_then(|b| b.checked_add(SLACK))
            .expect("segment size overflows");
        let layout = Layout::from_size_align(bytes, 16).expect("segment layout");
        // SAFETY: the layout's size is non-zero (at least SLACK).
        let base = unsafe { alloc_zeroed(layout) };
        let Some(base) = std::ptr::NonNull::new(base) else {
            handle_alloc_error(layout);
        };
        let offset = base.as_ptr().align_offset(std::mem::align_of::<T>());
        // SAFETY: offset < align ≤ SLACK, so the values lie within the block; the block is zeroed
        // and all-zero is a valid T (Zeroable).
        let values = unsafe { base.as_ptr().add(offset) } as *mut T;
        ZeroedSlice {
            base,
            block: Block::Heap(layout),
            values,
            len: n,
        }
    }

    /// `n` zeroed values of `T` mapped from `file`.
    pub fn mapped(n: usize, file: &Arc<MappedFile>) -> io::Result<ZeroedSlice<T>> {
        let bytes = std::mem::size_of::<T>()
            .checked_mul(n)
            .ok_or_else(|| io::Error::other("segment size overflows"))?;
        let (base, mapped) = file.map(bytes.max(1))?;
        // (page-aligned, so aligned for any T of the graph's; the file's new range reads zero,
        // and all-zero is a valid T)
        debug_assert_eq!(base.as_ptr().align_offset(std::mem::align_of::<T>()), 0);
        Ok(ZeroedSlice {
            base,
            block: Block::Mapped(mapped, file.clone()),
            values: base.as_ptr() as *mut T,
            len: n,
        })
    }

    /// Bytes it takes: on the heap (allocated), and mapped from a file.
    fn bytes(&self) -> (usize, usize) {
        match &self.block {
            Block::Heap(layout) => (layout.size(), 0),
            Block::Mapped(bytes, _) => (0, *bytes),
        }
    }
}

impl<T> ZeroedSlice<T> {
    /// Tell the kernel how the pages of values `from..to` of a mapped block will be read
    /// (`libc::MADV_*`); nothing for a block on the heap. A hint: an error is ignored.
    fn advise(&self, from: usize, to: usize, advice: libc::c_int) {
        if let Block::Mapped(bytes, _) = &self.block {
            let page = page_size();
            let size = std::mem::size_of::<T>();
            let start = (from * size).min(*bytes) / page * page;
            let end = (to * size).min(*bytes);
            if start < end {
                // SAFETY: a page-aligned range inside this slice's own mapping (the mapped values
                // begin at its base); advice changes no contents.
                unsafe {
                    libc::madvise(
                        self.base.as_ptr().add(start) as *mut libc::c_void,
                        end - start,
                        advice,
                    )
                };
            }
        }
    }
}

impl<T> std::ops::Deref for ZeroedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised, aligned values inside the block, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.values, self.len) }
    }
}

impl<T> Drop for ZeroedSlice<T> {
    fn drop(&mut self) {
        match &self.block {
            // SAFETY: the values need no drop beyond their memory (Zeroable types: atomics,
            // cells of floats); the block was allocated with this layout.
            Block::Heap(layout) => unsafe { std::alloc::dealloc(self.base.as_ptr(), *layout) },
            // SAFETY: the mapping made for this slice, of this length, unmapped once.
            Block::Mapped(bytes, _) => unsafe {
                libc::munmap(self.base.as_ptr() as *mut libc::c_void, *bytes);
            },
        }
    }
}

/// `stride` values of `T` per node, zero until written.
pub(crate) struct Segmented<T> {
    stride: usize,
    segments: [OnceLock<ZeroedSlice<T>>; SEGMENTS],
    /// Where segments are mapped from (none: they are on the heap).
    file: Option<Arc<MappedFile>>,
}

impl<T: Zeroable> Segmented<T> {
    pub fn zeroed(stride: usize) -> Segmented<T> {
        Segmented {
            stride,
            segments: std::array::from_fn(|_| OnceLock::new()),
            file: None,
        }
    }

    /// Segments mapped from `file`.
    pub fn mapped(stride: usize, file: Arc<MappedFile>) -> Segmented<T> {
        Segmented {
            file: Some(file),
            ..Segmented::zeroed(stride)
        }
    }

    /// Allocate the segment that holds node `i`, if it is not yet: a mapped one may fail (the
    /// disk is full, say), an allocation on the heap aborts when it fails.
    pub fn try_reserve(&self, i: u32) -> io::Result<()> {
        let (k, _) = locate(i);
        if self.segments[k].get().is_some() {
            return Ok(());
        }
        let n = segment_nodes(k) * self.stride;
        let segment = match &self.file {
            None => ZeroedSlice::new(n),
            Some(file) => ZeroedSlice::mapped(n, file).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "could not map {} bytes of vectors from a file: {e}",
                        n * std::mem::size_of::<T>()
                    ),
                )
            })?,
        };
        // (another thread may have made it meanwhile: this one is then dropped)
        let _ = self.segments[k].set(segment);
        Ok(())
    }

    /// [`Segmented::try_reserve`], for segments that were reserved already or are on the heap.
    ///
    /// # Panics
    /// When a mapped segment cannot be made: callers that map reserve with `try_reserve` first.
    pub fn reserve(&self, i: u32) {
        if let Err(e) = self.try_reserve(i) {
            panic!("{e}");
        }
    }

    /// Node `i`'s values; empty if its segment was never reserved.
    #[inline]
    pub fn get(&self, i: u32) -> &[T] {
        let (k, at) = locate(i);
        match self.segments[k].get() {
            Some(seg) => &seg[at * self.stride..(at + 1) * self.stride],
            None => &[],
        }
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Whether its segments are mapped from a file.
    pub fn is_mapped(&self) -> bool {
        self.file.is_some()
    }

    /// [`ZeroedSlice::advise`] for the pages of nodes `from..to` (those reserved), segment by
    /// segment.
    pub fn advise_nodes(&self, from: u32, to: u32, advice: libc::c_int) {
        let mut i = from;
        while i < to {
            let (k, at) = locate(i);
            let end = to.min(i.saturating_add((segment_nodes(k) - at) as u32));
            if let Some(seg) = self.segments[k].get() {
                let n = (end - i) as usize;
                seg.advise(at * self.stride, (at + n) * self.stride, advice);
            }
            i = end;
        }
    }

    /// Bytes allocated on the heap for the segments made so far.
    pub fn allocated_bytes(&self) -> usize {
        self.bytes().0
    }

    /// Bytes of the segments made so far: (on the heap, mapped from a file).
    pub fn bytes(&self) -> (usize, usize) {
        self.segments
            .iter()
            .filter_map(|s| s.get())
            .map(ZeroedSlice::bytes)
            .fold((0, 0), |(h, m), (a, b)| (h + a, m + b))
    }
}

/// Eight floats, 32-byte aligned: a vector is a whole number of lanes, so every vector starts on
/// a 32-byte boundary and the distance kernels have no tail to handle.
#[repr(C, align(32))]
pub(crate) struct Lane([f32; 8]);

/// Node vectors, contiguous within a segment, each padded with zeros to whole lanes.
pub(crate) struct Vectors {
    dim: usize,
    lanes: Segmented<UnsafeCell<Lane>>,
}

// SAFETY: the cells are written only through `Vectors::write`, whose contract (one writer per
// node, and no reader of that node until it is published with release ordering) rules out data
// races; everything else is plain owned memory.
unsafe impl Sync for Vectors {}
unsafe impl Send for Vectors {}

impl Vectors {
    /// Vectors on the heap, or mapped from `file`.
    pub fn new(dim: usize, file: Option<Arc<MappedFile>>) -> Vectors {
        let stride = dim.div_ceil(8);
        Vectors {
            dim,
            lanes: match file {
                None => Segmented::zeroed(stride),
                Some(file) => Segmented::mapped(stride, file),
            },
        }
    }

    /// Bytes of the vectors (whole segments, padding included): (on the heap, mapped).
    pub fn bytes(&self) -> (usize, usize) {
        self.lanes.bytes()
    }

    /// Floats per stored vector (the dimension rounded up to whole lanes).
    pub fn padded_dim(&self) -> usize {
        self.lanes.stride() * 8
    }

    /// Whether the vectors are mapped from a file.
    pub fn is_mapped(&self) -> bool {
        self.lanes.is_mapped()
    }

    /// Ask the kernel to read the pages of nodes `from..to` now (`MADV_WILLNEED`), ahead of a
    /// read of them in order (the mapping is `MADV_RANDOM`: a fault reads its own page only).
    /// Nothing for vectors on the heap.
    pub fn will_need(&self, from: u32, to: u32) {
        if self.is_mapped() {
            self.lanes.advise_nodes(from, to, libc::MADV_WILLNEED);
        }
    }

    pub fn reserve(&self, i: u32) {
        self.lanes.reserve(i);
    }

    pub fn try_reserve(&self, i: u32) -> io::Result<()> {
        self.lanes.try_reserve(i)
    }

    /// Node `i`'s vector with its zero padding (empty if never reserved).
    ///
    /// Only for nodes that are published (their vector written and made visible with release
    /// ordering, which the caller observed with acquire ordering).
    #[inline]
    pub fn padded(&self, i: u32) -> &[f32] {
        let cells = self.lanes.get(i);
        // SAFETY: the lanes are contiguous `[f32; 8]`s (repr(C)), the pointer comes from the
        // whole slice of cells, and a published node's cells are not written again (see `write`).
        unsafe {
            std::slice::from_raw_parts(
                UnsafeCell::raw_get(cells.as_ptr()) as *const f32,
                cells.len() * 8,
            )
        }
    }

    /// Node `i`'s vector, without padding.
    #[inline]
    pub fn get(&self, i: u32) -> &[f32] {
        let v = self.padded(i);
        &v[..self.dim.min(v.len())]
    }

    /// Store node `i`'s vector (`dim` floats; the padding stays zero).
    ///
    /// # Safety
    /// Node `i` must be reserved, written by this caller only, once, and read by no one until
    /// the caller publishes it with release ordering (no other thread can know of it before).
    pub unsafe fn write(&self, i: u32, v: &[f32]) {
        let cells = self.lanes.get(i);
        assert!(
            v.len() == self.dim && cells.len() * 8 >= v.len(),
            "vector does not fit its node"
        );
        // SAFETY: in bounds (checked); the bytes are inside UnsafeCells, so writing through a
        // pointer derived from a shared reference is allowed; the caller guarantees that no
        // other access to these bytes happens meanwhile.
        unsafe {
            let dst = UnsafeCell::raw_get(cells.as_ptr()) as *mut f32;
            std::ptr::copy_nonoverlapping(v.as_ptr(), dst, v.len());
        }
    }

    /// Where node `i`'s vector starts (for prefetching only).
    #[inline]
    pub fn as_ptr(&self, i: u32) -> *const f32 {
        self.lanes.get(i).as_ptr() as *const f32
    }
}

/// Thirty-two bytes, 32-byte aligned: a node's codes are whole blocks of these.
#[repr(C, align(32))]
pub(crate) struct CodeLane([u8; 32]);

// SAFETY: thirty-two zero bytes.
unsafe impl Zeroable for UnsafeCell<CodeLane> {}

/// Node vectors quantised to int8, for a graph walk that reads a quarter of the bytes: per
/// node a first block with the scale (and the vector's squared length, for euclidean
/// distances), then the codes, `round(x / scale)` with `scale = max |x| / 127`, padded with
/// zeros to whole blocks.
pub(crate) struct Codes {
    dim: usize,
    lanes: Segmented<UnsafeCell<CodeLane>>,
}

// SAFETY: as for `Vectors`: the cells are written only through `Codes::write`, under the same
// contract.
unsafe impl Sync for Codes {}
unsafe impl Send for Codes {}

/// A node's quantised vector.
pub(crate) struct Code<'a> {
    pub scale: f32,
    /// The original vector's squared length.
    pub sq_norm: f32,
    /// The codes, zero-padded to whole blocks.
    pub codes: &'a [i8],
}

/// `v` quantised into `out` (as long as `v`; the rest of `out` is left alone): returns the
/// scale, `max |x| / 127` (1 for a zero vector), so that `x ≈ scale · code`.
pub(crate) fn quantize(v: &[f32], out: &mut [i8]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    // (a zero vector, or one so small that the scale would underflow to zero: codes of zero)
    let scale = max / 127.0;
    let scale = if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    };
    for (c, x) in out.iter_mut().zip(v) {
        // (the clamp also keeps a rounding at the edge inside i8)
        *c = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

impl Codes {
    pub fn new(dim: usize) -> Codes {
        Codes {
            dim,
            lanes: Segmented::zeroed(1 + dim.div_ceil(32)),
        }
    }

    /// Bytes allocated for the codes (whole segments, padding included).
    pub fn allocated_bytes(&self) -> usize {
        self.lanes.allocated_bytes()
    }

    /// Codes per node (the dimension rounded up to whole blocks).
    pub fn padded_dim(&self) -> usize {
        (self.lanes.stride() - 1) * 32
    }

    /// Bytes per node, the scale's block included.
    pub fn node_bytes(&self) -> usize {
        self.lanes.stride() * 32
    }

    pub fn reserve(&self, i: u32) {
        self.lanes.reserve(i);
    }

    /// Node `i`'s codes (scale 0 and no codes if never reserved).
    ///
    /// Only for nodes that are published, as for `Vectors::padded`.
    #[inline]
    pub fn get(&self, i: u32) -> Code<'_> {
        let cells = self.lanes.get(i);
        if cells.is_empty() {
            return Code {
                scale: 0.0,
                sq_norm: 0.0,
                codes: &[],
            };
        }
        // SAFETY: the blocks are contiguous `[u8; 32]`s (repr(C)) taken from the whole slice of
        // cells, and a published node's cells are not written again (see `write`); i8 and u8
        // have the same layout, and the first block's first 8 bytes are two f32s (any bits are
        // a valid f32).
        unsafe {
            let base = UnsafeCell::raw_get(cells.as_ptr()) as *const u8;
            let head = std::slice::from_raw_parts(base, 8);
            Code {
                scale: f32::from_le_bytes([head[0], head[1], head[2], head[3]]),
                sq_norm: f32::from_le_bytes([head[4], head[5], head[6], head[7]]),
                codes: std::slice::from_raw_parts(base.add(32) as *const i8, self.padded_dim()),
            }
        }
    }

    /// Quantise and store node `i`'s vector (`dim` floats; the padding stays zero).
    ///
    /// # Safety
    /// As `Vectors::write`: node `i` must be reserved, written by this caller only, once, and
    /// read by no one until the caller publishes it with release ordering.
    pub unsafe fn write(&self, i: u32, v: &[f32]) {
        let cells = self.lanes.get(i);
        assert!(
            v.len() == self.dim && (cells.len().saturating_sub(1)) * 32 >= v.len(),
            "vector does not fit its node"
        );
        let sq_norm: f32 = v.iter().map(|x| x * x).sum();
        // SAFETY: in bounds (checked: the head block, then `dim` codes within the rest); the
        // bytes are inside UnsafeCells, so writing through a pointer derived from a shared
        // reference is allowed, and the caller guarantees that no other access happens
        // meanwhile (so the one mutable slice made here aliases nothing); i8 and u8 have the
        // same layout.
        unsafe {
            let base = UnsafeCell::raw_get(cells.as_ptr()) as *mut u8;
            let codes = std::slice::from_raw_parts_mut(base.add(32) as *mut i8, v.len());
            let scale = quantize(v, codes);
            let mut head = [0u8; 8];
            head[..4].copy_from_slice(&scale.to_le_bytes());
            head[4..].copy_from_slice(&sq_norm.to_le_bytes());
            std::ptr::copy_nonoverlapping(head.as_ptr(), base, head.len());
        }
    }

    /// Where node `i`'s block starts (for prefetching only).
    #[inline]
    pub fn as_ptr(&self, i: u32) -> *const u8 {
        self.lanes.get(i).as_ptr() as *const u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn segments_cover_every_node_once() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1023), (0, 1023));
        assert_eq!(locate(1024), (1, 0));
        assert_eq!(locate(3071), (1, 2047));
        assert_eq!(locate(3072), (2, 0));
        assert_eq!(locate(u32::MAX).0, SEGMENTS - 1);
        let mut seen = 0usize;
        let mut last = (0usize, 0usize);
        for i in 1..200_000u32 {
            let (k, at) = locate(i);
            assert!(at < segment_nodes(k));
            assert!(k == last.0 && at == last.1 + 1 || k == last.0 + 1 && at == 0);
            last = (k, at);
            seen += 1;
        }
        assert_eq!(seen, 199_999);
    }

    #[test]
    fn values_stay_put_as_segments_are_added() {
        let s: Segmented<AtomicU32> = Segmented::zeroed(3);
        assert!(s.get(5).is_empty());
        for i in 0..5000u32 {
            s.reserve(i);
            s.get(i)[2].store(i, Ordering::Relaxed);
        }
        let first = s.get(10).as_ptr();
        s.reserve(100_000);
        assert_eq!(first, s.get(10).as_ptr(), "a segment moved");
        assert!(
            (0..5000u32).all(|i| s.get(i)[2].load(Ordering::Relaxed) == i
                && s.get(i)[0].load(Ordering::Relaxed) == 0)
        );
    }

    /// The kernel's flags of the mapping that holds `p` (`/proc/self/smaps`: `rr` read at
    /// random, `sr` in order).
    fn vm_flags(p: *const f32) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, to)) = range.split_once('-') {
                    if let (Ok(from), Ok(to)) = (
                        usize::from_str_radix(from, 16),
                        usize::from_str_radix(to, 16),
                    ) {
                        inside = (from..to).contains(&(p as usize));
                        continue;
                    }
                }
            }
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                if inside {
                    return flags.split_whitespace().map(String::from).collect();
                }
            }
        }
        panic!("no mapping holds {p:?}")
    }

    #[test]
    fn vectors_mapped_from_a_file_hold_what_was_written_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(MappedFile::create_in(dir.path()).unwrap());
        let v = Vectors::new(13, Some(file.clone()));
        assert!(v.get(0).is_empty());
        let n = 3100u32; // three segments: 1,024, 2,048, and the third's first nodes
        for i in 0..n {
            v.try_reserve(i).unwrap();
            let x: Vec<f32> = (0..13).map(|j| (i * 13 + j) as f32 * 0.5).collect();
            // SAFETY: single-threaded test; each node written once before it is read.
            unsafe { v.write(i, &x) };
        }
        // page-aligned segments, 16 floats a node (13 padded to whole lanes)
        assert_eq!(v.as_ptr(0) as usize % 4096, 0);
        assert_eq!(v.padded_dim(), 16);
        for i in 0..n {
            let x = v.padded(i);
            assert_eq!(x.len(), 16);
            assert!(
                (0..13).all(|j| x[j as usize] == (i * 13 + j) as f32 * 0.5),
                "node {i}"
            );
            assert!(x[13..].iter().all(|&p| p == 0.0), "padding of node {i}");
        }
        let (heap, mapped) = v.bytes();
        assert_eq!((heap, mapped), (0, (1024 + 2048 + 4096) * 16 * 4));
        // read at random (no read-around) unless told otherwise, every segment
        for i in [0, 1024, 3072] {
            assert!(vm_flags(v.as_ptr(i)).contains(&"rr".into()), "node {i}");
        }
        // asked for ahead of a read in order, across segments and past the nodes there are:
        // the pages come in (async: waited for), and the flags stay as they were
        let (fd, bytes) = (file.file.as_raw_fd(), mapped);
        file.file.sync_all().unwrap();
        // SAFETY: the vectors' own mapping; dropping its pages leaves the file as it is.
        unsafe {
            libc::madvise(
                v.as_ptr(0) as *mut libc::c_void,
                1024 * 64,
                libc::MADV_DONTNEED,
            )
        };
        unsafe { libc::posix_fadvise(fd, 0, bytes as libc::off_t, libc::POSIX_FADV_DONTNEED) };
        let resident = |i: u32| {
            let mut vec = [0u8; 1];
            // SAFETY: one page of the mapping, one byte out.
            unsafe { libc::mincore(v.as_ptr(i) as *mut libc::c_void, 4096, vec.as_mut_ptr()) };
            vec[0] & 1 == 1
        };
        let evicted = !resident(0);
        v.will_need(0, 4000);
        if evicted {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !resident(0) {
                assert!(std::time::Instant::now() < deadline, "not read ahead");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert!(vm_flags(v.as_ptr(3072)).contains(&"rr".into()));
        assert!((0..13).all(|j| v.padded(3000)[j as usize] == (3000 * 13 + j) as f32 * 0.5));
        // the file holds the segments back to back, and has no name in its folder
        assert_eq!(file.file.metadata().unwrap().len(), mapped as u64);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(v);
        drop(file);
    }

    #[test]
    fn quantised_codes_hold_each_value_within_half_a_step() {
        let c = Codes::new(50);
        assert_eq!(c.padded_dim(), 64);
        assert_eq!(c.node_bytes(), 96);
        for i in 0..3000u32 {
            c.reserve(i);
            let x: Vec<f32> = (0..50)
                .map(|j| ((i * 50 + j) as f32 * 0.731).sin() * (1.0 + i as f32))
                .collect();
            // SAFETY: single-threaded test; each node written once before it is read.
            unsafe { c.write(i, &x) };
            let code = c.get(i);
            assert_eq!(c.as_ptr(i) as usize % 32, 0);
            assert_eq!(code.codes.len(), 64);
            assert!(code.codes[50..].iter().all(|&b| b == 0), "padding");
            let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((code.scale - max / 127.0).abs() <= 1e-6 * max);
            for (v, &q) in x.iter().zip(code.codes) {
                assert!((v - code.scale * q as f32).abs() <= 0.5 * code.scale * 1.0001);
            }
            let sq: f32 = x.iter().map(|v| v * v).sum();
            assert!((code.sq_norm - sq).abs() <= 1e-5 * sq);
        }
        // a zero vector, or one whose scale would underflow: scale 1, all codes zero
        for tiny in [0.0, 1e-44] {
            let mut out = [5i8; 4];
            assert_eq!(quantize(&[tiny, 0.0, -tiny, 0.0], &mut out), 1.0);
            assert_eq!(out, [0; 4]);
        }
    }

    #[test]
    fn vectors_are_aligned_and_padded_with_zeros() {
        let v = Vectors::new(50, None);
        assert_eq!(v.padded_dim(), 56);
        for i in 0..3000u32 {
            v.reserve(i);
            let x: Vec<f32> = (0..50).map(|j| (i * 100 + j) as f32).collect();
            // SAFETY: single-threaded test; each node written once before it is read.
            unsafe { v.write(i, &x) };
        }
        for i in [0u32, 1, 1023, 1024, 2999] {
            assert_eq!(v.as_ptr(i) as usize % 32, 0);
            assert_eq!(v.get(i).len(), 50);
            assert_eq!(v.get(i)[49], (i * 100 + 49) as f32);
            assert!(v.padded(i)[50..].iter().all(|&x| x == 0.0));
        }
    }
}
