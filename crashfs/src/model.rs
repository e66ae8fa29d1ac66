//! The volume in memory: what the processes see now, and what would be left
//! after a power cut. No FUSE here, so that the crash model is unit-tested on
//! its own; `fuse.rs` maps kernel requests onto these operations.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// An inode number. [`ROOT`] is the root directory.
pub type Ino = u64;
/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: Ino = 1;

/// An errno value (`libc::ENOENT`, ...).
pub type Errno = i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What `stat` reports.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// How many bytes were fsynced and how many were lost by a power cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// fsync/fdatasync calls on files.
    pub file_syncs: u64,
    /// fsync calls on directories.
    pub dir_syncs: u64,
    /// Bytes written by processes.
    pub bytes_written: u64,
    /// Power cuts so far.
    pub power_cuts: u64,
    /// Bytes of file data the last power cut reverted (written but not synced).
    pub bytes_lost_in_last_cut: u64,
    /// Namespace changes (create, unlink, rename, ...) the last power cut undid.
    pub names_lost_in_last_cut: u64,
}

struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// File content as processes see it.
    data: Vec<u8>,
    /// File content as of the last fsync of this file.
    durable: Vec<u8>,
    /// `data[..dirty_from] == durable[..dirty_from]`: only bytes from here
    /// on differ, so fsync and power cut copy only those.
    dirty_from: usize,
    /// Directory entries as processes see them.
    children: BTreeMap<OsString, Ino>,
    /// The directory this one is in (the root's is itself).
    parent: Ino,
    /// Open file handles.
    open: u32,
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32, parent: Ino) -> Self {
        let now = SystemTime::now();
        Self {
            kind,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            data: Vec::new(),
            durable: Vec::new(),
            dirty_from: 0,
            children: BTreeMap::new(),
            parent,
            open: 0,
        }
    }

    /// Bytes written since the last fsync (from `dirty_from` on).
    fn is_dirty(&self) -> bool {
        self.dirty_from < self.data.len() || self.data.len() != self.durable.len()
    }
}

/// The whole volume. Every operation takes effect at once for readers; what
/// survives a [`power_cut`](Volume::power_cut) is:
///
/// - a file's data (content and size) as of its last `fsync`/`fdatasync`;
/// - the namespace (which names exist, in which directory, naming which
///   file: create, mkdir, unlink, rmdir, rename) as of the last `fsync` of
///   any file or directory: the journal is committed as a whole, in order,
///   as ext4 and XFS do on fsync. A file whose name was committed but whose
///   data never was comes back empty.
///
/// Mode, owner and times are kept as they are now (nothing here depends on
/// them surviving).
pub struct Volume {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    /// Every directory's entries at the last commit.
    durable_names: HashMap<Ino, BTreeMap<OsString, Ino>>,
    names_dirty: u64,
    stats: Stats,
}

impl Default for Volume {
    fn default() -> Self {
        Self::new()
    }
}

impl Volume {
    /// An empty volume: a root directory, mode 0755, owned by root.
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(Kind::Dir, 0o755, 0, 0, ROOT));
        let mut durable_names = HashMap::new();
        durable_names.insert(ROOT, BTreeMap::new());
        Self {
            nodes,
            next_ino: ROOT + 1,
            durable_names,
            names_dirty: 0,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn node(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&Node, Errno> {
        let node = self.node(ino)?;
        if node.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(node)
    }

    fn nlink(&self, ino: Ino, node: &Node) -> u32 {
        match node.kind {
            Kind::Dir => {
                2 + node
                    .children
                    .values()
                    .filter(|c| self.nodes.get(c).is_some_and(|n| n.kind == Kind::Dir))
                    .count() as u32
            }
            Kind::File => self
                .nodes
                .values()
                .map(|n| n.children.values().filter(|c| **c == ino).count() as u32)
                .sum(),
        }
    }

    pub fn attr(&self, ino: Ino) -> Result<Attr, Errno> {
        let node = self.node(ino)?;
        Ok(Attr {
            ino,
            kind: node.kind,
            size: match node.kind {
                Kind::File => node.data.len() as u64,
                Kind::Dir => 4096,
            },
            perm: node.perm,
            // Files are never hard-linked here: one name, or none once unlinked.
            nlink: match node.kind {
                Kind::Dir => self.nlink(ino, node),
                Kind::File => u32::from(self.is_named(ino)),
            },
            uid: node.uid,
            gid: node.gid,
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
        })
    }

    fn is_named(&self, ino: Ino) -> bool {
        self.nodes
            .get(&ino)
            .and_then(|n| self.nodes.get(&n.parent))
            .is_some_and(|p| p.children.values().any(|c| *c == ino))
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.dir(parent)?
            .children
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Entries of a directory, `.` and `..` first.
    pub fn entries(&self, dir: Ino) -> Result<Vec<(Ino, Kind, OsString)>, Errno> {
        let node = self.dir(dir)?;
        let mut out = vec![
            (dir, Kind::Dir, OsString::from(".")),
            (node.parent, Kind::Dir, OsString::from("..")),
        ];
        for (name, ino) in &node.children {
            out.push((*ino, self.node(*ino)?.kind, name.clone()));
        }
        Ok(out)
    }

    /// Creates a file or directory named `name` in `parent`.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, Errno> {
        check_name(name)?;
        if self.dir(parent)?.children.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes
            .insert(ino, Node::new(kind, perm, uid, gid, parent));
        let dir = self.node_mut(parent)?;
        dir.children.insert(name.to_owned(), ino);
        dir.mtime = SystemTime::now();
        self.names_dirty += 1;
        Ok(ino)
    }

    /// Removes the name of a file (`unlink`) or of an empty directory (`rmdir`).
    pub fn remove(&mut self, parent: Ino, name: &OsStr, kind: Kind) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (kind, node.kind) {
            (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
            (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
            (Kind::Dir, Kind::Dir) if !node.children.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let dir = self.node_mut(parent)?;
        dir.children.remove(name);
        dir.mtime = SystemTime::now();
        self.names_dirty += 1;
        self.collect_garbage();
        Ok(())
    }

    /// `rename(2)`: replaces an existing target (a file, or an empty
    /// directory) unless `no_replace`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        check_name(new_name)?;
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let kind = self.node(ino)?.kind;
        if kind == Kind::Dir {
            // A directory cannot move into itself or below itself.
            let mut at = new_parent;
            loop {
                if at == ino {
                    return Err(libc::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.node(at)?.parent;
            }
        }
        if let Ok(existing) = self.lookup(new_parent, new_name) {
            if existing == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            let target = self.node(existing)?;
            match (kind, target.kind) {
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !target.children.is_empty() => {
                    return Err(libc::ENOTEMPTY);
                }
                _ => {}
            }
        }
        let now = SystemTime::now();
        let from = self.node_mut(parent)?;
        from.children.remove(name);
        from.mtime = now;
        let to = self.node_mut(new_parent)?;
        to.children.insert(new_name.to_owned(), ino);
        to.mtime = now;
        let node = self.node_mut(ino)?;
        node.parent = new_parent;
        node.ctime = now;
        self.names_dirty += 1;
        self.collect_garbage();
        Ok(())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let node = self.node(ino)?;
        if node.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(node.data.len());
        let end = start.saturating_add(size as usize).min(node.data.len());
        Ok(&node.data[start..end])
    }

    /// Writes `bytes` at `offset` (at the end when `append`); returns the
    /// offset written at.
    pub fn write(
        &mut self,
        ino: Ino,
        offset: u64,
        bytes: &[u8],
        append: bool,
    ) -> Result<u64, Errno> {
        let node = self.node_mut(ino)?;
        if node.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let start = if append {
            node.data.len()
        } else {
            usize::try_from(offset).map_err(|_| libc::EFBIG)?
        };
        let end = start.checked_add(bytes.len()).ok_or(libc::EFBIG)?;
        let old_len = node.data.len();
        if end > node.data.len() {
            node.data.resize(end, 0);
        }
        node.data[start..end].copy_from_slice(bytes);
        node.dirty_from = node.dirty_from.min(start).min(old_len);
        let now = SystemTime::now();
        node.mtime = now;
        node.ctime = now;
        self.stats.bytes_written += bytes.len() as u64;
        Ok(start as u64)
    }

    /// `truncate`/`ftruncate`: cuts or zero-extends the file.
    pub fn set_size(&mut self, ino: Ino, size: u64) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        if node.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let size = usize::try_from(size).map_err(|_| libc::EFBIG)?;
        node.dirty_from = node.dirty_from.min(size).min(node.data.len());
        node.data.resize(size, 0);
        let now = SystemTime::now();
        node.mtime = now;
        node.ctime = now;
        Ok(())
    }

    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        node.perm = perm;
        node.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_owner(&mut self, ino: Ino, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        if let Some(uid) = uid {
            node.uid = uid;
        }
        if let Some(gid) = gid {
            node.gid = gid;
        }
        node.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_times(
        &mut self,
        ino: Ino,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        if let Some(t) = atime {
            node.atime = t;
        }
        if let Some(t) = mtime {
            node.mtime = t;
        }
        Ok(())
    }

    pub fn opened(&mut self, ino: Ino) -> Result<(), Errno> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    /// The last handle of a file that has no name any more frees it.
    pub fn released(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
        }
        self.collect_garbage();
    }

    /// `fsync`/`fdatasync` of a file: its data becomes durable, and so does
    /// the whole namespace (a journal commit).
    pub fn sync_file(&mut self, ino: Ino) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        if node.kind == Kind::File {
            let from = node.dirty_from.min(node.data.len()).min(node.durable.len());
            node.durable.truncate(from);
            node.durable.extend_from_slice(&node.data[from..]);
            node.dirty_from = node.data.len();
        }
        self.stats.file_syncs += 1;
        self.commit_names();
        Ok(())
    }

    /// `fsync` of a directory: the namespace becomes durable.
    pub fn sync_dir(&mut self, ino: Ino) -> Result<(), Errno> {
        self.dir(ino)?;
        self.stats.dir_syncs += 1;
        self.commit_names();
        Ok(())
    }

    /// `syncfs`/`sync`: everything becomes durable.
    pub fn sync_all(&mut self) {
        let inos: Vec<Ino> = self.nodes.keys().copied().collect();
        for ino in inos {
            let _ = self.sync_file(ino);
        }
    }

    fn commit_names(&mut self) {
        if self.names_dirty == 0 {
            return;
        }
        self.durable_names = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::Dir)
            .map(|(ino, n)| (*ino, n.children.clone()))
            .collect();
        self.names_dirty = 0;
        self.collect_garbage();
    }

    /// Frees files and directories that are neither reachable now, nor in the
    /// committed namespace, nor open.
    fn collect_garbage(&mut self) {
        let mut keep = std::collections::HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(node) = self.nodes.get(&ino) {
                stack.extend(node.children.values().copied());
            }
            if let Some(names) = self.durable_names.get(&ino) {
                stack.extend(names.values().copied());
            }
        }
        self.nodes
            .retain(|ino, node| keep.contains(ino) || node.open > 0);
    }

    /// The power goes out: every file's data goes back to its last fsync,
    /// the namespace to its last commit; open handles are gone. Returns what
    /// was lost.
    pub fn power_cut(&mut self) -> Stats {
        let mut bytes_lost = 0u64;
        for node in self.nodes.values_mut() {
            node.open = 0;
            if node.kind == Kind::File && node.is_dirty() {
                let from = node.dirty_from.min(node.data.len()).min(node.durable.len());
                bytes_lost += (node.data.len() - from) as u64;
                node.data.truncate(from);
                node.data.extend_from_slice(&node.durable[from..]);
            }
            node.dirty_from = node.data.len();
        }
        let names_lost = self.names_dirty;
        for (ino, names) in &self.durable_names {
            if let Some(node) = self.nodes.get_mut(ino) {
                node.children = names.clone();
            }
        }
        // Parents follow the committed names.
        let links: Vec<(Ino, Ino)> = self
            .durable_names
            .iter()
            .flat_map(|(dir, names)| names.values().map(move |child| (*child, *dir)))
            .collect();
        for (child, dir) in links {
            if let Some(node) = self.nodes.get_mut(&child) {
                node.parent = dir;
            }
        }
        self.names_dirty = 0;
        // What was created after the last commit is unreachable now.
        self.collect_garbage();
        self.stats.power_cuts += 1;
        self.stats.bytes_lost_in_last_cut = bytes_lost;
        self.stats.names_lost_in_last_cut = names_lost;
        self.stats
    }

    /// Bytes held (current and durable copies).
    pub fn bytes_held(&self) -> usize {
        self.nodes
            .values()
            .map(|n| n.data.capacity() + n.durable.capacity())
            .sum()
    }
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    let bytes = name.as_encoded_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    if bytes.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(v: &mut Volume, parent: Ino, n: &str) -> Ino {
        v.create(parent, name(n), Kind::File, 0o644, 0, 0).unwrap()
    }

    fn content(v: &Volume, ino: Ino) -> Vec<u8> {
        v.read(ino, 0, u32::MAX).unwrap().to_vec()
    }

    #[test]
    fn synced_data_survives_a_power_cut_and_unsynced_data_does_not() {
        let mut v = Volume::new();
        let f = file(&mut v, ROOT, "log");
        v.write(f, 0, b"hello ", false).unwrap();
        v.sync_file(f).unwrap();
        v.write(f, 0, b"world", true).unwrap();
        assert_eq!(content(&v, f), b"hello world");

        let stats = v.power_cut();
        assert_eq!(content(&v, f), b"hello ");
        assert_eq!(stats.bytes_lost_in_last_cut, 5);
        assert_eq!(v.lookup(ROOT, name("log")), Ok(f));
    }

    #[test]
    fn an_overwrite_in_the_middle_is_reverted_to_the_synced_bytes() {
        let mut v = Volume::new();
        let f = file(&mut v, ROOT, "block");
        v.write(f, 0, b"aaaaaaaaaa", false).unwrap();
        v.sync_file(f).unwrap();
        v.write(f, 3, b"XYZ", false).unwrap();
        v.write(f, 10, b"tail", false).unwrap();
        v.power_cut();
        assert_eq!(content(&v, f), b"aaaaaaaaaa");
        // And a second round after the cut starts from the synced state.
        v.write(f, 8, b"BB", false).unwrap();
        v.sync_file(f).unwrap();
        v.power_cut();
        assert_eq!(content(&v, f), b"aaaaaaaaBB");
    }

    #[test]
    fn a_truncate_is_undone_unless_synced() {
        let mut v = Volume::new();
        let f = file(&mut v, ROOT, "f");
        v.write(f, 0, b"0123456789", false).unwrap();
        v.sync_file(f).unwrap();
        v.set_size(f, 4).unwrap();
        v.write(f, 4, b"ab", false).unwrap();
        assert_eq!(content(&v, f), b"0123ab");
        v.power_cut();
        assert_eq!(content(&v, f), b"0123456789");

        v.set_size(f, 2).unwrap();
        v.sync_file(f).unwrap();
        v.power_cut();
        assert_eq!(content(&v, f), b"01");
    }

    #[test]
    fn fdatasync_of_one_file_leaves_another_files_data_volatile() {
        let mut v = Volume::new();
        let a = file(&mut v, ROOT, "a");
        let b = file(&mut v, ROOT, "b");
        v.write(a, 0, b"AAA", false).unwrap();
        v.write(b, 0, b"BBB", false).unwrap();
        v.sync_file(a).unwrap();
        v.power_cut();
        assert_eq!(content(&v, a), b"AAA");
        // b's name was committed with a's fsync, its data was not.
        assert_eq!(v.lookup(ROOT, name("b")), Ok(b));
        assert_eq!(content(&v, b), b"");
    }

    #[test]
    fn a_file_created_after_the_last_commit_disappears() {
        let mut v = Volume::new();
        let a = file(&mut v, ROOT, "a");
        v.sync_dir(ROOT).unwrap();
        let d = v.create(ROOT, name("dir"), Kind::Dir, 0o755, 0, 0).unwrap();
        let b = file(&mut v, d, "b");
        v.write(b, 0, b"x", false).unwrap();
        let stats = v.power_cut();
        assert_eq!(stats.names_lost_in_last_cut, 2);
        assert_eq!(v.lookup(ROOT, name("a")), Ok(a));
        assert_eq!(v.lookup(ROOT, name("dir")), Err(libc::ENOENT));
        assert!(v.attr(b).is_err(), "uncommitted file freed");
        assert_eq!(v.entries(ROOT).unwrap().len(), 3);
    }

    #[test]
    fn an_uncommitted_unlink_comes_back_with_its_synced_data() {
        let mut v = Volume::new();
        let f = file(&mut v, ROOT, "old");
        v.write(f, 0, b"kept", false).unwrap();
        v.sync_file(f).unwrap();
        v.remove(ROOT, name("old"), Kind::File).unwrap();
        assert_eq!(v.lookup(ROOT, name("old")), Err(libc::ENOENT));
        v.power_cut();
        assert_eq!(v.lookup(ROOT, name("old")), Ok(f));
        assert_eq!(content(&v, f), b"kept");

        // Committed by another file's fsync: gone for good.
        v.remove(ROOT, name("old"), Kind::File).unwrap();
        let g = file(&mut v, ROOT, "other");
        v.sync_file(g).unwrap();
        v.power_cut();
        assert_eq!(v.lookup(ROOT, name("old")), Err(libc::ENOENT));
        assert!(v.attr(f).is_err());
    }

    #[test]
    fn rename_over_a_file_is_atomic_and_durable_only_once_committed() {
        let mut v = Volume::new();
        let manifest = file(&mut v, ROOT, "manifest");
        v.write(manifest, 0, b"v1", false).unwrap();
        v.sync_file(manifest).unwrap();

        // The usual temp-file dance: write, fsync, rename, no dir fsync.
        let tmp = file(&mut v, ROOT, "manifest.tmp");
        v.write(tmp, 0, b"v2", false).unwrap();
        v.sync_file(tmp).unwrap();
        v.rename(ROOT, name("manifest.tmp"), ROOT, name("manifest"), false)
            .unwrap();
        assert_eq!(
            content(&v, v.lookup(ROOT, name("manifest")).unwrap()),
            b"v2"
        );
        v.power_cut();
        // The rename was not committed: the old file is back, and so is the
        // temp file (its creation was committed by its own fsync).
        assert_eq!(v.lookup(ROOT, name("manifest")), Ok(manifest));
        assert_eq!(content(&v, manifest), b"v1");
        assert_eq!(v.lookup(ROOT, name("manifest.tmp")), Ok(tmp));

        v.rename(ROOT, name("manifest.tmp"), ROOT, name("manifest"), false)
            .unwrap();
        v.sync_dir(ROOT).unwrap();
        v.power_cut();
        assert_eq!(v.lookup(ROOT, name("manifest")), Ok(tmp));
        assert_eq!(content(&v, tmp), b"v2");
        assert_eq!(v.lookup(ROOT, name("manifest.tmp")), Err(libc::ENOENT));
        assert!(v.attr(manifest).is_err(), "replaced file freed");
    }

    #[test]
    fn rename_without_fsync_of_the_data_gives_an_empty_file() {
        let mut v = Volume::new();
        let tmp = file(&mut v, ROOT, "tmp");
        v.write(tmp, 0, b"never synced", false).unwrap();
        v.rename(ROOT, name("tmp"), ROOT, name("final"), false)
            .unwrap();
        v.sync_dir(ROOT).unwrap();
        v.power_cut();
        assert_eq!(v.lookup(ROOT, name("final")), Ok(tmp));
        assert_eq!(content(&v, tmp), b"");
    }

    #[test]
    fn an_open_unlinked_file_stays_readable_until_released() {
        let mut v = Volume::new();
        let f = file(&mut v, ROOT, "f");
        v.opened(f).unwrap();
        v.write(f, 0, b"data", false).unwrap();
        v.remove(ROOT, name("f"), Kind::File).unwrap();
        v.sync_dir(ROOT).unwrap();
        assert_eq!(content(&v, f), b"data");
        assert_eq!(v.attr(f).unwrap().nlink, 0);
        v.released(f);
        assert!(v.attr(f).is_err());
    }

    #[test]
    fn namespace_rules_match_posix() {
        let mut v = Volume::new();
        let d = v.create(ROOT, name("d"), Kind::Dir, 0o755, 0, 0).unwrap();
        let f = file(&mut v, d, "f");
        assert_eq!(
            v.create(d, name("f"), Kind::File, 0o644, 0, 0),
            Err(libc::EEXIST)
        );
        assert_eq!(v.remove(ROOT, name("d"), Kind::Dir), Err(libc::ENOTEMPTY));
        assert_eq!(v.remove(ROOT, name("d"), Kind::File), Err(libc::EISDIR));
        assert_eq!(v.remove(d, name("f"), Kind::Dir), Err(libc::ENOTDIR));
        assert_eq!(
            v.rename(ROOT, name("d"), d, name("sub"), false),
            Err(libc::EINVAL)
        );
        let g = file(&mut v, ROOT, "g");
        assert_eq!(
            v.rename(ROOT, name("g"), d, name("f"), true),
            Err(libc::EEXIST)
        );
        v.rename(ROOT, name("g"), d, name("f"), false).unwrap();
        assert_eq!(v.lookup(d, name("f")), Ok(g));
        assert!(v.attr(f).is_err(), "replaced and never committed: freed");
        assert_eq!(v.attr(d).unwrap().nlink, 2);
        assert_eq!(v.attr(ROOT).unwrap().nlink, 3);
        assert_eq!(
            v.create(ROOT, name("a/b"), Kind::File, 0, 0, 0),
            Err(libc::EINVAL)
        );
    }

    #[test]
    fn sync_all_makes_everything_durable() {
        let mut v = Volume::new();
        let f = file(&mut v, ROOT, "f");
        v.write(f, 0, b"abc", false).unwrap();
        v.sync_all();
        let stats = v.power_cut();
        assert_eq!(stats.bytes_lost_in_last_cut, 0);
        assert_eq!(content(&v, f), b"abc");
    }

    #[test]
    fn appends_land_at_the_end_whatever_the_offset() {
        let mut v = Volume::new();
        let f = file(&mut v, ROOT, "aof");
        v.write(f, 0, b"one ", true).unwrap();
        assert_eq!(v.write(f, 0, b"two", true), Ok(4));
        assert_eq!(content(&v, f), b"one two");
    }
}
