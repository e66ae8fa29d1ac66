//! `sessionfold-crashfs`: a FUSE filesystem for power-loss tests. It keeps
//! every file in memory, tells what was fsynced from what was only written,
//! and on [`CrashFs::power_cut`] throws away everything that was not
//! durable yet, as a machine losing power would.
//!
//! # Crash model
//!
//! What survives a power cut is exactly:
//!
//! - **File data** (content and size, writes and truncates alike) as of that
//!   file's last `fsync` or `fdatasync`. Data of other files is not flushed
//!   along with it; `close` flushes nothing. Unsynced data is always lost,
//!   never partly kept: the worst a disk can do short of corrupting synced
//!   data.
//! - **The namespace** (create, mkdir, unlink, rmdir, rename) as of the last
//!   `fsync` of *any* file or directory on the volume: all namespace changes
//!   until then are committed at once, in order, as the metadata journal of
//!   ext4 (`data=ordered`) or XFS is on fsync. A name committed without its
//!   data gives an empty (or shorter) file, as after a rename of a temp file
//!   that was never fsynced. An uncommitted unlink or rename is undone: the
//!   old name comes back with its last synced data. POSIX alone promises
//!   less (a new name is durable only after an fsync of its directory);
//!   programs that fsync their directories are right under both models.
//! - Mode, owner and times are kept as they are at the cut.
//!
//! Hard links, symbolic links, device files, extended attributes and
//! `RENAME_EXCHANGE` are not supported (`EPERM`/`ENOSYS`/`EINVAL`).
//!
//! A power cut must happen while no process uses the volume: kill the
//! servers first (SIGKILL, as the power would), then cut. The volume is
//! unmounted, reverted and mounted again at the same path, so the kernel's
//! caches start afresh as after a reboot.
//!
//! Mounting needs `/dev/fuse` and root (the mount is done with `mount(2)`
//! directly; no `fusermount` helper is involved).

mod fuse;
pub mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};

pub use model::Stats;
use model::Volume;

/// How often, and how long apart, an unmount that finds the mount busy is
/// tried again (a killed process's files are closed a moment after it dies).
const UNMOUNT_ATTEMPTS: u32 = 50;
const UNMOUNT_RETRY: Duration = Duration::from_millis(100);

/// A mounted crash-test volume. Unmounted on drop (its data is then gone).
pub struct CrashFs {
    volume: Arc<Mutex<Volume>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    /// The temp dir holding the mount point, when [`CrashFs::mount_temp`] made it.
    _dir: Option<tempfile::TempDir>,
}

impl CrashFs {
    /// Mounts an empty volume at `mountpoint` (an existing, empty directory).
    pub fn mount(mountpoint: &Path) -> io::Result<Self> {
        let volume = Arc::new(Mutex::new(Volume::new()));
        let session = mount_session(&volume, mountpoint)?;
        Ok(Self {
            volume,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
            _dir: None,
        })
    }

    /// Mounts an empty volume on a fresh temp dir.
    pub fn mount_temp() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sessionfold-crashfs-")
            .tempdir()?;
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let mut fs = Self::mount(&mountpoint)?;
        fs._dir = Some(dir);
        Ok(fs)
    }

    /// Where the volume is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Counts of syncs, writes and what the last power cut lost.
    pub fn stats(&self) -> Stats {
        self.volume
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats()
    }

    /// Makes everything durable now (as `sync(1)` would).
    pub fn sync_all(&self) {
        self.volume
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync_all();
    }

    /// Cuts the power: unmounts, drops every write that was not durable
    /// (see the crate docs), and mounts the volume again at the same path.
    /// The processes using it must have been killed first.
    pub fn power_cut(&mut self) -> io::Result<Stats> {
        self.unmount()?;
        let stats = self
            .volume
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .power_cut();
        self.session = Some(mount_session(&self.volume, &self.mountpoint)?);
        Ok(stats)
    }

    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A busy mount stays mounted; the session comes back to be tried again.
            match nix_umount(&self.mountpoint) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < UNMOUNT_ATTEMPTS => {
                    std::thread::sleep(UNMOUNT_RETRY);
                }
                Err(e) => {
                    self.session = Some(session);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("unmounting {}: {e}", self.mountpoint.display()),
                    ));
                }
            }
        }
        // Unmounted: the session's thread sees the device go away and ends.
        // The kernel tells it so by ENODEV, or by ECONNABORTED when the
        // connection was set up to report an abort; both are a clean end here.
        match session.join() {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            other => other,
        }
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("sessionfold-crashfs: {e}");
        }
    }
}

fn mount_session(volume: &Arc<Mutex<Volume>>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("sessionfold-crashfs".into()),
        MountOption::Subtype("crashfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoAtime,
    ];
    fuser::spawn_mount(fuse::Fs::new(Arc::clone(volume)), mountpoint, &config).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mounting a FUSE filesystem at {} (needs /dev/fuse and root): {e}",
                mountpoint.display()
            ),
        )
    })
}

/// `umount(2)` of the mount point.
fn nix_umount(path: &Path) -> io::Result<()> {
    nix::mount::umount(path).map_err(io::Error::from)
}
