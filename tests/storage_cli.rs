//! The `geomirror format` and `geomirror label` commands, run as a person
//! would: creating disks, printing labels as text and JSON, refusing what
//! would lose data.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, run_ok};
use geomirror::storage::{Label, LabelError};

fn format(disk: &Path, extra: &[&str]) {
    let mut c = Command::new(bin());
    c.args(["format", "--group", "vol0", "--resource", "r1"])
        .args(extra)
        .arg(disk);
    run_ok(&mut c);
}

fn formatted(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.img");
    format(&disk, &["--size", "64M"]);
    disk
}

#[test]
fn format_creates_the_file_and_label_prints_it() {
    let dir = common::tempdir();
    let disk = dir.path().join("new.img");
    format(&disk, &["--size", "256M", "--bitmap-chunk", "1M"]);
    assert_eq!(
        std::fs::metadata(&disk).expect("disk exists").len(),
        256 << 20
    );

    let text = run_ok(Command::new(bin()).arg("label").arg(&disk));
    assert!(text.contains("group:              vol0"), "{text}");
    assert!(text.contains("resource:           r1"), "{text}");
    assert!(text.contains("bitmap chunk:       1048576"), "{text}");

    let json = run_ok(Command::new(bin()).args(["label", "--json"]).arg(&disk));
    let v: serde_json::Value = serde_json::from_str(&json).expect("label --json is JSON");
    assert_eq!(v["group"], "vol0");
    assert_eq!(v["resource"], "r1");
    assert_eq!(v["layout"]["bitmap_chunk_bytes"], 1 << 20);
    assert_eq!(v["flags"]["consistent"], false);
    assert_eq!(v["dirty_bytes"], 0);
    let data = v["layout"]["data_bytes"].as_u64().expect("data_bytes");
    assert_eq!(data % 4096, 0);
    assert!(data < 256 << 20 && data > 255 << 20, "data area {data}");
    assert!(v["generations"]["current"].as_u64().is_some_and(|g| g != 0));
}

#[test]
fn format_refuses_a_foreign_label_unless_forced() {
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let out = Command::new(bin())
        .args(["format", "--group", "other", "--resource", "r1"])
        .arg(&disk)
        .output()
        .expect("run format");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to group \"vol0\""), "{err}");
    assert_eq!(Label::read_path(&disk).expect("label").group, "vol0");

    format(&disk, &["--force"]);
    let mut c = Command::new(bin());
    run_ok(
        c.args(["format", "--group", "other", "--resource", "r2", "--force"])
            .arg(&disk),
    );
    let l = Label::read_path(&disk).expect("label");
    assert_eq!((l.group.as_str(), l.resource.as_str()), ("other", "r2"));
}

#[test]
fn format_refuses_bad_sizes_and_a_missing_size() {
    let dir = common::tempdir();
    let cases: &[&[&str]] = &[
        &["format", "--group", "g", "--resource", "r"],
        &["format", "--group", "g", "--resource", "r", "--size", "12X"],
        &["format", "--group", "g", "--resource", "r", "--size", "8K"],
        &[
            "format",
            "--group",
            "g",
            "--resource",
            "r",
            "--size",
            "1G",
            "--bitmap-chunk",
            "3000",
        ],
    ];
    for (i, args) in cases.iter().enumerate() {
        let disk = dir.path().join(format!("bad{i}.img"));
        let out = Command::new(bin())
            .args(*args)
            .arg(&disk)
            .output()
            .expect("run format");
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    let disk = formatted(dir.path());
    let out = Command::new(bin())
        .args([
            "format",
            "--group",
            "vol0",
            "--resource",
            "r1",
            "--size",
            "1M",
        ])
        .arg(&disk)
        .output()
        .expect("run format");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shrinking is refused"));
}

#[test]
fn an_unformatted_disk_is_reported_as_such() {
    let dir = common::tempdir();
    let disk = dir.path().join("blank.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("blank disk");
    assert!(matches!(
        Label::read_path(&disk),
        Err(LabelError::NotFormatted)
    ));
    let out = Command::new(bin())
        .arg("label")
        .arg(&disk)
        .output()
        .expect("run label");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not formatted"));
}

#[test]
fn format_refuses_a_damaged_label_unless_forced() {
    let dir = common::tempdir();
    let disk = formatted(dir.path());
    let l = Label::read_path(&disk).expect("label");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .expect("open");
    for slot in 0..2 {
        std::os::unix::fs::FileExt::write_all_at(&f, b"garbage", l.layout.slot_offset(slot) + 64)
            .expect("damage a slot");
    }
    drop(f);
    let out = Command::new(bin())
        .args(["format", "--group", "vol0", "--resource", "r1"])
        .arg(&disk)
        .output()
        .expect("run format");
    assert!(
        !out.status.success(),
        "a damaged label was overwritten without --force"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt metadata") && err.contains("--force"),
        "{err}"
    );
    format(&disk, &["--force"]);
    assert_eq!(Label::read_path(&disk).expect("fresh label").seq, 2);
}
