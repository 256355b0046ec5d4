//! The graph on disk: one file, read back without rebuilding anything.
//!
//! Layout (little-endian): magic `SHOALHG1`; metric (u32), dimension (u32), m (u32), nodes
//! (u32), entry (u64: `level << 32 | slot`, or all ones when empty); per node its id (u64), flags
//! (u8) and level (u8); every vector (dimension × f32); every bottom-layer link block
//! (`2m + 1` × u32); the upper-layer blocks of the nodes that have levels (`level × (m + 1)` ×
//! u32); a CRC-32 of all of the above. Whatever does not check out (magic, parameters, sizes,
//! links to nodes that do not exist, the checksum, trailing bytes) is an error, never a panic.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::Ordering::*;

use super::{unpack, Graph, GraphParams, Metric, DELETED, MAX_LEVEL, NO_ENTRY, READY};

const MAGIC: &[u8; 8] = b"SHOALHG1";

#[derive(Debug, thiserror::Error)]
pub(crate) enum DumpError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}")]
    Invalid(String),
    /// The graph's vectors found no room (a full disk for a mapped file): nothing is wrong
    /// with the dump.
    #[error("no room for the vectors: {0}")]
    Room(io::Error),
}

fn invalid(msg: impl Into<String>) -> DumpError {
    DumpError::Invalid(msg.into())
}

/// A writer or reader that keeps a CRC-32 of the bytes through it.
struct Checked<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Checked<T> {
    fn new(inner: T) -> Checked<T> {
        Checked {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }

    fn sum(&self) -> u32 {
        self.crc.clone().finalize()
    }
}

impl<W: Write> Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn metric_code(m: Metric) -> u32 {
    match m {
        Metric::Cosine => 0,
        Metric::Euclidean => 1,
    }
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

impl Graph {
    /// Write the graph. No insert may run meanwhile (the shard holds its writer lock).
    pub fn write_to(&self, out: impl Write) -> Result<(), DumpError> {
        let mut w = Checked::new(BufWriter::new(out));
        let len = self.len() as u32;
        let p = &self.params;
        w.write_all(MAGIC)?;
        for x in [metric_code(p.metric), p.dim as u32, p.m as u32, len] {
            w.write_all(&x.to_le_bytes())?;
        }
        w.write_all(&self.entry.load(Acquire).to_le_bytes())?;
        for s in 0..len {
            w.write_all(&self.id(s).to_le_bytes())?;
            w.write_all(&[self.flags(s), self.level(s) as u8])?;
        }
        for s in 0..len {
            self.read_ahead(s, len);
            for x in self.vector(s) {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        let write_links = |w: &mut Checked<_>, links: &[std::sync::atomic::AtomicU32]| {
            links
                .iter()
                .try_for_each(|l| w.write_all(&l.load(Acquire).to_le_bytes()))
        };
        for s in 0..len {
            write_links(&mut w, self.links0.get(s))?;
        }
        for s in 0..len {
            write_links(&mut w, self.upper_links(s))?;
        }
        let sum = w.sum();
        w.inner.write_all(&sum.to_le_bytes())?;
        w.inner.flush()?;
        Ok(())
    }

    /// Read a graph written by [`Graph::write_to`] with the same parameters, its vectors mapped
    /// from `file` where one is given. `size` is the input's length in bytes: a header claiming
    /// more nodes than fit is refused before anything is allocated for them.
    pub fn read_from(
        params: GraphParams,
        file: Option<std::sync::Arc<super::MappedFile>>,
        input: impl Read,
        size: u64,
    ) -> Result<Graph, DumpError> {
        let mut r = Checked::new(BufReader::new(input));
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a shoal graph file"));
        }
        let (metric, dim, m, len) = (
            read_u32(&mut r)?,
            read_u32(&mut r)? as usize,
            read_u32(&mut r)? as usize,
            read_u32(&mut r)?,
        );
        let graph = Graph::new_in(params, file);
        let p = graph.params;
        if metric != metric_code(p.metric) || dim != p.dim || m != p.m {
            return Err(invalid(format!(
                "made with metric {metric}, dimension {dim}, m {m}: the shard has {:?}, {}, {}",
                p.metric, p.dim, p.m
            )));
        }
        let entry = read_u64(&mut r)?;
        let per_node = 8 + 2 + 4 * dim as u64 + 4 * (2 * m as u64 + 1);
        if 32 + len as u64 * per_node + 4 > size {
            return Err(invalid(format!("{len} nodes do not fit in {size} bytes")));
        }
        graph.make_room(len as usize).map_err(DumpError::Room)?;
        graph.reserve(len as usize);
        let mut levels = Vec::with_capacity(len as usize);
        for s in 0..len {
            let id = read_u64(&mut r)?;
            let flags = read_u8(&mut r)?;
            let level = read_u8(&mut r)? as usize;
            if flags & !(READY | DELETED) != 0 || flags & READY == 0 || level > MAX_LEVEL {
                return Err(invalid(format!("node {s}: flags {flags}, level {level}")));
            }
            graph.ids.get(s)[0].store(id, Relaxed);
            graph.flags.get(s)[0].store(flags, Relaxed);
            if flags & DELETED != 0 {
                graph.deleted.fetch_add(1, Relaxed);
            }
            if level > 0 {
                graph.set_upper(s, level);
            }
            levels.push(level);
        }
        if entry == NO_ENTRY {
            if len != 0 {
                return Err(invalid("nodes but no entry node"));
            }
        } else {
            let (slot, level) = unpack(entry);
            if slot >= len || levels[slot as usize] != level {
                return Err(invalid(format!(
                    "entry node {slot} at level {level} does not exist"
                )));
            }
        }
        let mut v = vec![0f32; dim];
        let mut bytes = vec![0u8; dim * 4];
        for s in 0..len {
            r.read_exact(&mut bytes)?;
            for (x, b) in v.iter_mut().zip(bytes.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            // SAFETY: the graph is not shared yet; each node is written once.
            unsafe { graph.write_vector(s, &v) };
        }
        let read_links = |r: &mut Checked<_>, s: u32, links: &[std::sync::atomic::AtomicU32]| {
            for l in links {
                l.store(read_u32(r)?, Relaxed);
            }
            let cap = links.len() - 1;
            let count = links[0].load(Relaxed) as usize;
            if count > cap || links[1..=count].iter().any(|l| l.load(Relaxed) >= len) {
                return Err(invalid(format!("node {s}: links out of range")));
            }
            Ok::<(), DumpError>(())
        };
        for s in 0..len {
            read_links(&mut r, s, graph.links0.get(s))?;
        }
        for s in 0..len {
            for level in graph.upper_links(s).chunks(m + 1) {
                read_links(&mut r, s, level)?;
            }
        }
        let sum = r.sum();
        if read_u32(&mut r.inner)? != sum {
            return Err(invalid("checksum mismatch"));
        }
        if r.inner.read(&mut [0u8; 1])? != 0 {
            return Err(invalid("trailing bytes"));
        }
        graph.entry.store(entry, Release);
        Ok(graph)
    }
}
