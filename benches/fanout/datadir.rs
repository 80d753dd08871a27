//! Where a run with `--data-dir` keeps its data: a fresh directory per run under one root on a
//! real disk (the benchmark's target directory unless told), removed when the run is done.

use std::path::{Path, PathBuf};

/// File systems that live in memory: an fsync there costs nothing, so a run on one would
/// measure memory with extra steps.
const IN_MEMORY: [&str; 2] = ["tmpfs", "ramfs"];

/// The directory under which each run makes its own data directory.
#[derive(Clone, Debug)]
pub struct DataRoot {
    pub path: PathBuf,
    /// Its file system's type (`ext4`, ...), from /proc/self/mountinfo; `None` if not found.
    pub filesystem: Option<String>,
}

impl DataRoot {
    /// `path`, or `fanout-data` in the benchmark's target directory; made if need be, and
    /// refused on a file system in memory.
    pub fn new(path: Option<PathBuf>) -> Result<Self, String> {
        let path = match path {
            Some(path) => path,
            None => target_dir()?.join("fanout-data"),
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let path = path
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
        let filesystem = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|mountinfo| filesystem_of(&mountinfo, &path));
        if let Some(fs) = filesystem.as_deref().filter(|fs| IN_MEMORY.contains(fs)) {
            return Err(format!(
                "{} is on {fs}, in memory: an fsync there costs nothing; give --disk-dir a \
                 directory on a real disk",
                path.display()
            ));
        }
        Ok(Self { path, filesystem })
    }

    /// A new, empty data directory for the run tagged `tag`.
    pub fn fresh(&self, tag: &str) -> Result<DataDir, String> {
        let path = self.path.join(tag);
        // Left by a run that was killed: not ours to keep.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(DataDir { path })
    }

    /// How the footer names it.
    pub fn describe(&self) -> String {
        format!(
            "{}/RUN ({}, fresh for each run)",
            self.path.display(),
            self.filesystem.as_deref().unwrap_or("file system unknown")
        )
    }
}

/// One run's data directory, removed when dropped (after the server using it is gone).
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The target directory the benchmark was built in: its binary is `TARGET/PROFILE/deps/fanout-*`.
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the benchmark: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("unexpected benchmark path {}", exe.display()))
}

/// The type of the file system `path` (absolute, symlinks resolved) is on, from the text of
/// /proc/self/mountinfo: that of the deepest mount point containing it (the last such line when
/// one is mounted over another).
pub fn filesystem_of(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split(' ').nth(4) else {
            continue;
        };
        let Some(fs) = after.split(' ').next() else {
            continue;
        };
        let mount_point = unescape(mount_point);
        if path.starts_with(&mount_point) {
            let depth = Path::new(&mount_point).components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, fs));
            }
        }
    }
    best.map(|(_, fs)| fs.to_owned())
}

/// Mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
