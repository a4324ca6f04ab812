//! A power cut for tests: an in-memory FUSE filesystem (the `fuser` crate,
//! mounted by root without libfuse) that remembers, besides what each file
//! and directory holds now, what was last made durable: a file's contents
//! at its last `fsync`/`fdatasync`, a directory's entries at its last
//! `fsync` of the directory. [`PowerCutFs::cut`] then keeps only that, as a
//! disk would after the power failed: file data not synced is gone, and so
//! is a file (even a synced one) whose directory entry was never synced.
//! SIGKILL cannot show a missing sync (the page cache survives the
//! process); this can.
//!
//! The model is strict POSIX: nothing is durable without its sync. Writes go
//! straight to this process (no writeback cache), and the filesystem is
//! unmounted before a cut and mounted again after it, so that the kernel
//! caches nothing from before the cut. Mounting needs root and /dev/fuse;
//! without them [`PowerCutFs::mount`] returns `None` so that the test skips
//! (under `CI=true` it fails).

use std::{
    collections::{BTreeMap, HashMap},
    ffi::{OsStr, OsString},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
/// Nothing cached by the kernel: every lookup and attribute comes from here.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

/// A file's bytes as pages (a journal preallocated with `set_len` stays
/// sparse); clones share pages until one is written.
#[derive(Clone, Default)]
struct Data {
    size: u64,
    pages: BTreeMap<u64, Arc<Vec<u8>>>,
}

impl Data {
    fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let end = (offset + len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (page, within) = (at / PAGE, at % PAGE);
            let take = (PAGE - within).min(end - at);
            match self.pages.get(&page) {
                Some(bytes) => out.extend_from_slice(&bytes[within as usize..(within + take) as usize]),
                None => out.resize(out.len() + take as usize, 0),
            }
            at += take;
        }
        out
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (page, within) = (at / PAGE, at % PAGE);
            let take = ((PAGE - within) as usize).min(rest.len());
            let bytes = Arc::make_mut(self.pages.entry(page).or_insert_with(|| Arc::new(vec![0; PAGE as usize])));
            bytes[within as usize..within as usize + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            at += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
    }

    fn truncate(&mut self, size: u64) {
        if size < self.size {
            let last = size / PAGE;
            self.pages.retain(|&page, _| page <= last);
            if let Some(bytes) = self.pages.get_mut(&last) {
                Arc::make_mut(bytes)[(size % PAGE) as usize..].fill(0);
            }
        }
        self.size = size;
    }
}

enum Body {
    File { now: Data, synced: Data },
    Dir { now: BTreeMap<OsString, u64>, synced: BTreeMap<OsString, u64> },
}

struct Node {
    mode: u16,
    body: Body,
}

struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
}

impl State {
    fn new() -> Self {
        let root = Node { mode: 0o700, body: Body::Dir { now: BTreeMap::new(), synced: BTreeMap::new() } };
        Self { nodes: HashMap::from([(ROOT, root)]), next: ROOT + 1 }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.body {
            Body::File { now, .. } => (FileType::RegularFile, now.size, 1),
            Body::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: node.mode,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn entries(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&ino).map(|node| &mut node.body) {
            Some(Body::Dir { now, .. }) => Ok(now),
            Some(Body::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn data(&mut self, ino: u64) -> Result<&mut Data, Errno> {
        match self.nodes.get_mut(&ino).map(|node| &mut node.body) {
            Some(Body::File { now, .. }) => Ok(now),
            Some(Body::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<FileAttr, Errno> {
        let ino = self.next;
        let entries = self.entries(parent)?;
        if entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.next += 1;
        self.nodes.insert(ino, node);
        Ok(self.attr(ino).expect("just added"))
    }

    /// Keeps what was synced: from the root, each directory's synced entries
    /// and each file's synced data; everything else is lost.
    fn cut(&mut self) {
        let mut kept = HashMap::new();
        let mut pending = vec![ROOT];
        while let Some(ino) = pending.pop() {
            let Some(node) = self.nodes.remove(&ino) else { continue };
            let body = match node.body {
                Body::File { synced, .. } => Body::File { now: synced.clone(), synced },
                Body::Dir { synced, .. } => {
                    pending.extend(synced.values().copied());
                    Body::Dir { now: synced.clone(), synced }
                }
            };
            kept.insert(ino, Node { mode: node.mode, body });
        }
        self.nodes = kept;
    }
}

struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        match state.entries(parent.0).map(|entries| entries.get(name).copied()) {
            Ok(Some(ino)) => reply.entry(&TTL, &state.attr(ino).expect("an entry's node"), Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(error) => reply.error(error),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        if let Some(size) = size {
            match state.data(ino.0) {
                Ok(data) => data.truncate(size),
                Err(error) => return reply.error(error),
            }
        }
        if let (Some(mode), Some(node)) = (mode, state.nodes.get_mut(&ino.0)) {
            node.mode = (mode & 0o7777) as u16;
        }
        match state.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let node = Node {
            mode: (mode & !umask & 0o7777) as u16,
            body: Body::Dir { now: BTreeMap::new(), synced: BTreeMap::new() },
        };
        match self.state().add(parent.0, name, node) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(error) => reply.error(error),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let node = Node {
            mode: (mode & !umask & 0o7777) as u16,
            body: Body::File { now: Data::default(), synced: Data::default() },
        };
        match self.state().add(parent.0, name, node) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(error) => reply.error(error),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().data(ino.0) {
            Ok(data) => reply.data(&data.read(offset, u64::from(size))),
            Err(error) => reply.error(error),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().data(ino.0) {
            Ok(data) => {
                data.write(offset, bytes);
                reply.written(bytes.len() as u32);
            }
            Err(error) => reply.error(error),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    /// `fsync` and `fdatasync` alike: the file's contents (and size) become durable.
    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        match state.nodes.get_mut(&ino.0).map(|node| &mut node.body) {
            Some(Body::File { now, synced }) => {
                *synced = now.clone();
                reply.ok();
            }
            Some(Body::Dir { now, synced }) => {
                *synced = now.clone();
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut state = self.state();
        let listing: Vec<(u64, OsString)> = match state.entries(ino.0) {
            Ok(entries) => entries.iter().map(|(name, &child)| (child, name.clone())).collect(),
            Err(error) => return reply.error(error),
        };
        let mut all = vec![(ino.0, OsString::from(".")), (ino.0, OsString::from(".."))];
        all.extend(listing);
        for (index, (child, name)) in all.into_iter().enumerate().skip(offset as usize) {
            let kind = match state.nodes.get(&child).map(|node| &node.body) {
                Some(Body::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), index as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    /// The directory's entries (creations, removals, renames) become durable.
    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        match state.nodes.get_mut(&ino.0).map(|node| &mut node.body) {
            Some(Body::Dir { now, synced }) => {
                *synced = now.clone();
                reply.ok();
            }
            _ => reply.error(Errno::ENOTDIR),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().entries(parent.0).map(|entries| entries.remove(name)) {
            Ok(Some(_)) => reply.ok(),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(error) => reply.error(error),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let Ok(Some(ino)) = state.entries(parent.0).map(|entries| entries.get(name).copied()) else {
            return reply.error(Errno::ENOENT);
        };
        if state.entries(ino).is_ok_and(|entries| !entries.is_empty()) {
            return reply.error(Errno::ENOTEMPTY);
        }
        if let Ok(entries) = state.entries(parent.0) {
            entries.remove(name);
        }
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let Ok(Some(ino)) = state.entries(parent.0).map(|entries| entries.remove(name)) else {
            return reply.error(Errno::ENOENT);
        };
        match state.entries(newparent.0) {
            Ok(entries) => {
                entries.insert(newname.to_owned(), ino);
                reply.ok();
            }
            Err(error) => reply.error(error),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, PAGE as u32, 255, PAGE as u32);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// The filesystem and, while mounted, its session.
pub struct PowerCutFs {
    path: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
}

impl PowerCutFs {
    /// Mounts an empty filesystem over `path` (created if missing).
    pub fn mount(path: &Path) -> Option<Self> {
        let uid = std::fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX);
        if uid != 0 || !Path::new("/dev/fuse").exists() {
            super::tmpfs::skip_or_fail("the power-cut filesystem needs root and /dev/fuse (CI runs as root)");
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let mut filesystem = Self { path: path.to_owned(), state: Arc::new(Mutex::new(State::new())), session: None };
        if let Err(error) = filesystem.start() {
            super::tmpfs::skip_or_fail(&format!("cannot mount FUSE on {}: {error}", path.display()));
            return None;
        }
        Some(filesystem)
    }

    fn start(&mut self) -> std::io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("cpis-powercut".into()), MountOption::DefaultPermissions];
        let session = fuser::spawn_mount(Fs(Arc::clone(&self.state)), &self.path, &config)?;
        self.session = Some(session);
        Ok(())
    }

    /// The power fails: unmounts (the process writing to it must be dead),
    /// forgets everything not synced, and mounts what is left.
    pub fn cut(&mut self) {
        if let Some(session) = self.session.take() {
            session.umount_and_join().unwrap();
        }
        self.state.lock().unwrap().cut();
        self.start().unwrap();
    }
}

impl Drop for PowerCutFs {
    /// Detaches the mount even while a process still has files open on it
    /// (a test that failed with the relay running), so nothing is left mounted.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
            drop(session);
        }
    }
}
