//! A cheap, shareable view into file contents (a memory map or an owned buffer), so tensors can
//! point at their data without copying it.

use std::fmt;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use crate::FormatError;

#[derive(Clone)]
pub struct Bytes {
    owner: Arc<Owner>,
    range: Range<usize>,
}

enum Owner {
    Map(memmap2::Mmap),
    Vec(Vec<u8>),
}

impl Owner {
    fn as_slice(&self) -> &[u8] {
        match self {
            Owner::Map(map) => map,
            Owner::Vec(v) => v,
        }
    }
}

impl Bytes {
    /// Maps the file read-only. The map stays valid while any `Bytes` cut from it lives.
    pub fn map_file(path: &Path) -> Result<Bytes, FormatError> {
        let io = |source| FormatError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(FormatError::IsADirectory(path.to_path_buf()));
        }
        if meta.len() == 0 {
            // mmap of an empty file fails on Linux; an empty buffer says the same thing.
            return Ok(Bytes::from_vec(Vec::new()));
        }
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the model file
        // not being truncated or rewritten while it is in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let len = map.len();
        Ok(Bytes { owner: Arc::new(Owner::Map(map)), range: 0..len })
    }

    pub fn from_vec(data: Vec<u8>) -> Bytes {
        let len = data.len();
        Bytes { owner: Arc::new(Owner::Vec(data)), range: 0..len }
    }

    /// A sub-range of this view. The range must lie inside it (callers check against `len`).
    pub fn slice(&self, range: Range<usize>) -> Bytes {
        assert!(range.start <= range.end && range.end <= self.len(), "Bytes::slice out of range");
        Bytes {
            owner: self.owner.clone(),
            range: self.range.start + range.start..self.range.start + range.end,
        }
    }

    /// Tells the kernel that these bytes will not be read again soon (a tensor that was copied
    /// into another layout), so their pages stop counting towards the process's resident memory.
    /// The data stays valid: a later read brings the pages back from the file. Only whole pages
    /// inside the range are released; owned buffers are left alone.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Owner::Map(map) = &*self.owner {
            const PAGE: usize = 4096;
            let start = self.range.start.next_multiple_of(PAGE);
            let end = self.range.end / PAGE * PAGE;
            if start < end {
                // SAFETY: the map is a shared, read-only file mapping: MADV_DONTNEED only drops
                // its page-table entries and the next access faults the same file contents back
                // in, so the bytes seen through any borrow never change. (The danger memmap2
                // warns of, losing data, applies to private or anonymous mappings.)
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.owner.as_slice()[self.range.clone()]
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let path = std::env::temp_dir().join(format!("baimo-release-{}.bin", std::process::id()));
        let content: Vec<u8> = (0..5 * 4096 + 123).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let map = Bytes::map_file(&path).unwrap();
        let part = map.slice(1000..4 * 4096 + 77);
        let before = part.to_vec();
        part.release_pages();
        assert_eq!(&part[..], &before[..]);
        assert_eq!(&map[..], &content[..]);
        Bytes::from_vec(content.clone()).release_pages();
        std::fs::remove_file(&path).unwrap();
    }
}
