//! The crash model through the kernel: a real FUSE mount, ordinary file
//! system calls, then a power cut.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use sessionfold_crashfs::CrashFs;

fn read(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    File::open(path).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn fsynced_appends_survive_a_power_cut_and_the_rest_is_dropped() {
    let mut fs = CrashFs::mount_temp().expect("mount");
    let log = fs.path().join("append.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    f.write_all(b"synced;").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"lost;").unwrap();
    drop(f);
    assert_eq!(read(&log), b"synced;lost;");

    let stats = fs.power_cut().expect("power cut");
    assert_eq!(stats.power_cuts, 1);
    assert_eq!(stats.bytes_lost_in_last_cut, 5);
    assert_eq!(read(&log), b"synced;");

    // The volume keeps working after the cut.
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"again;").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs.power_cut().unwrap();
    assert_eq!(read(&log), b"synced;again;");
}

#[test]
fn overwrites_and_truncates_revert_to_the_last_fsync() {
    let mut fs = CrashFs::mount_temp().expect("mount");
    let path = fs.path().join("block");
    let mut f = File::create(&path).unwrap();
    f.write_all(&[b'a'; 10_000]).unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(100)).unwrap();
    f.write_all(b"XYZ").unwrap();
    f.set_len(5_000).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&path).unwrap().len(), 5_000);
    fs.power_cut().unwrap();
    assert_eq!(read(&path), vec![b'a'; 10_000]);
}

#[test]
fn new_files_and_renames_survive_only_once_something_was_fsynced() {
    let mut fs = CrashFs::mount_temp().expect("mount");
    let root = fs.path().to_path_buf();
    fs::create_dir(root.join("dir")).unwrap();
    fs::write(root.join("dir/unsynced"), b"x").unwrap();
    fs.power_cut().unwrap();
    assert!(!root.join("dir").exists(), "nothing was ever fsynced");

    // Temp file, fsync, rename, fsync of the directory: the safe update.
    fs::write(root.join("manifest"), b"v1").unwrap();
    File::open(root.join("manifest"))
        .unwrap()
        .sync_all()
        .unwrap();
    let mut tmp = File::create(root.join("manifest.tmp")).unwrap();
    tmp.write_all(b"v2").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::rename(root.join("manifest.tmp"), root.join("manifest")).unwrap();
    // Without a later fsync the rename is undone.
    fs.power_cut().unwrap();
    assert_eq!(read(&root.join("manifest")), b"v1");
    assert_eq!(read(&root.join("manifest.tmp")), b"v2");

    fs::rename(root.join("manifest.tmp"), root.join("manifest")).unwrap();
    File::open(&root).unwrap().sync_all().unwrap();
    fs.power_cut().unwrap();
    assert_eq!(read(&root.join("manifest")), b"v2");
    assert!(!root.join("manifest.tmp").exists());
    let names: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["manifest"]);
}

#[test]
fn an_unlink_that_was_not_committed_is_undone() {
    let mut fs = CrashFs::mount_temp().expect("mount");
    let path = fs.path().join("segment");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    fs.power_cut().unwrap();
    assert_eq!(read(&path), b"kept");
}
