//! The A/B boot path on real firmware (issue 13, "Test", qemu): raw-efi images v1, v2 and a broken v3 built
//! and pushed to a local `docker-registry` with kitfleet-build's library; a q35 machine under TCG boots v1 from
//! its disk with OVMF and a writable copy of `OVMF_VARS.fd`. v1's init runs the static
//! `kitfleet-node-agent upgrade --artifact <v2 in the registry> --method firmware`, which pulls v2 over qemu's
//! user network, stages its UKI on the ESP, creates its `Boot####` and sets `BootNext` (read back by the
//! guest), then reboots; the firmware boots v2 (OVMF names the entry, `/proc/cmdline` carries v2's build
//! key), v2 runs `upgrade --commit` (BootOrder), then stages v3, whose kernel panics (`rdinit=/nonexistent
//! panic=-1`): the firmware tries it once and the machine comes back on v2. A second machine, from a fresh
//! copy of v1's disk and variables, upgrades with `--method kexec`: v2 is reached with no firmware boot in
//! between (`kexec_file_load` of the UKI's kernel, initrd and command line).
//!
//! `cargo test -p kitfleet-node-agent --test upgrade_qemu -- --ignored --nocapture` (ignored by default: about
//! 5 min of TCG on a loaded 2-core machine, over the 3–4 min budget of the test command; the first run also builds
//! the static binaries: see `upgrade_qemu_support::static_binaries`). Missing qemu/OVMF/registry fail under
//! `CI=true`.

mod upgrade_qemu_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use kitfleet_builder::fixtures::{self, Registry};
use upgrade_qemu_support::*;

/// One boot of the guest's init, from its `kftest: booted` line to the next one.
#[derive(Debug)]
struct BootRec {
    role: String,
    current: Option<u16>,
    next: Option<u16>,
    order: Vec<u16>,
    key: Option<String>,
    text: String,
}

/// UINT16s of an efivarfs file printed as hex (4 bytes of attributes first).
fn u16s(hex: &str) -> Vec<u16> {
    let b: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    b.get(4..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name).and_then(|w| w.strip_prefix('=')))
        .unwrap_or("")
}

fn boots(serial: &str) -> Vec<BootRec> {
    let mut out: Vec<BootRec> = Vec::new();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.split("kftest: booted ").nth(1) {
            out.push(BootRec {
                role: field(rest, "role").into(),
                current: u16s(field(rest, "BootCurrent")).first().copied(),
                next: u16s(field(rest, "BootNext")).first().copied(),
                order: u16s(field(rest, "BootOrder")),
                key: None,
                text: String::new(),
            });
        } else if let Some(b) = out.last_mut() {
            if let Some(cmd) = line.split("kftest: cmdline ").nth(1) {
                b.key = kitfleet_node_agent::upgrade::booted::build_key_from_cmdline(cmd);
            }
            b.text.push_str(line);
            b.text.push('\n');
        }
    }
    out
}

/// The `Boot####` a `staged <key> as Boot####` line names.
fn staged_as(text: &str, key: &str) -> Option<u16> {
    let pat = format!("staged {key} as Boot");
    let at = text.find(&pat)? + pat.len();
    u16::from_str_radix(text.get(at..at + 4)?, 16).ok()
}

struct Fixture {
    work: tempfile::TempDir,
    _reg: Registry,
    v1: Built,
    v2: Built,
    v3: Built,
}

fn fixture() -> Result<Fixture> {
    let (agent, builder) = static_binaries()?;
    let work = tempfile::Builder::new()
        .prefix("kitfleet-upgrade-qemu-")
        .tempdir()?;
    let reg = Registry::start()?;
    let a = reg.addr.clone();
    let port = a.rsplit(':').next().unwrap_or_default();
    let guest_reg = format!("10.0.2.2:{port}");
    let rt = tokio::runtime::Runtime::new()?;
    let (kernel, modules) = fixtures::kernel_image_with_modules(&MODULES)?;
    let init = init_image(&modules, &agent, &builder)?;
    rt.block_on(async {
        kernel
            .build()?
            .push(&format!("{a}/fixtures/upgrade-kernel:1"))
            .await?;
        init.build()?
            .push(&format!("{a}/fixtures/upgrade-init:1"))
            .await?;
        anyhow::Ok(())
    })?;
    let files = |role: &str, next: &str| {
        BTreeMap::from([
            ("etc/kftest/role", role.to_string()),
            ("etc/kftest/next", next.to_string()),
            ("etc/kftest/registry", guest_reg.clone()),
        ])
    };
    let w = work.path();
    let t = Instant::now();
    let v3 = build_version(
        &rt,
        &a,
        &guest_reg,
        w,
        "v3",
        "console=ttyS0 panic=-1 rdinit=/nonexistent",
        &files("v3", "none"),
    )?;
    let v2 = build_version(
        &rt,
        &a,
        &guest_reg,
        w,
        "v2",
        "console=ttyS0",
        &files("v2", &v3.guest_ref),
    )?;
    // v1 is a little larger than v2 and v3 (incompressible padding): its ESP leaves room for one more UKI of
    // v1's size, so v2 always fits beside it.
    let mut f1 = files("v1", &v2.guest_ref);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let pad: String = (0..32 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:02x}", x as u8)
        })
        .collect();
    f1.insert("etc/kftest/pad", pad);
    let v1 = build_version(&rt, &a, &guest_reg, w, "v1", "console=ttyS0", &f1)?;
    eprintln!(
        "three images built and pushed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(Fixture {
        work,
        _reg: reg,
        v1,
        v2,
        v3,
    })
}

/// A fresh machine: a copy of v1's disk and of OVMF's variable store.
fn machine(f: &Fixture, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = f.work.path().join(name);
    std::fs::create_dir_all(&dir)?;
    let (disk, vars) = (dir.join("disk.raw"), dir.join("OVMF_VARS.fd"));
    std::fs::copy(&f.v1.disk, &disk)?;
    std::fs::copy(OVMF_VARS, &vars)?;
    Ok((disk, vars))
}

#[test]
#[ignore = "about 5 min of TCG (plus the static build when not cached): cargo test -p kitfleet-node-agent --test upgrade_qemu -- --ignored --nocapture"]
fn firmware_ab_upgrade_fallback_and_kexec_under_ovmf() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let f = fixture()?;
    let (k1, k2, k3) = (&f.v1.key, &f.v2.key, &f.v3.key);

    // (1)–(4): v1 → BootNext → v2, commit, v3 panics once, back on v2.
    let (disk, vars) = machine(&f, "firmware")?;
    let log = disk.with_file_name("serial.log");
    let t = Instant::now();
    let (serial, exited) = run_machine(&disk, &vars, &log, Duration::from_secs(480))?;
    let wall = t.elapsed();
    let story = upgrade_qemu_support::story(&serial);
    eprintln!("firmware run: {:.1} s\n{story}", wall.as_secs_f64());
    let b = boots(&serial);
    let ctx = format!("console {}:\n{story}", log.display());
    assert!(b.len() >= 3, "three boots of init expected; {ctx}");

    // (1) v1 booted, staged v2 and set BootNext (read back) to the entry it created.
    assert_eq!(
        (b[0].role.as_str(), b[0].key.as_ref()),
        ("v1", Some(k1)),
        "{ctx}"
    );
    let n2 = staged_as(&b[0].text, k2).unwrap_or_else(|| panic!("v1 staged v2; {ctx}"));
    let readback = b[0]
        .text
        .lines()
        .find_map(|l| {
            l.split("kftest: v1 staged method=firmware BootNext=")
                .nth(1)
        })
        .map(u16s)
        .unwrap_or_else(|| panic!("BootNext read back; {ctx}"));
    assert_eq!(readback, [n2], "BootNext = v2's Boot####; {ctx}");
    assert!(
        !b[0].order.contains(&n2),
        "v2 is not in BootOrder before its boot"
    );

    // (2) the firmware booted that entry once: v2's key on /proc/cmdline, BootCurrent = it, BootNext consumed.
    assert_eq!(
        (b[1].role.as_str(), b[1].key.as_ref()),
        ("v2", Some(k2)),
        "{ctx}"
    );
    assert_eq!(b[1].current, Some(n2), "{ctx}");
    assert_eq!(b[1].next, None, "BootNext is one-shot; {ctx}");
    let desc = format!("Kitfleet {}", &k2[..12]);
    assert!(
        serial.contains(&format!("BdsDxe: loading Boot{n2:04X} \"{desc}\"")),
        "OVMF names v2's entry; {ctx}"
    );

    // (3) commit: v2's entry first in BootOrder.
    let committed = b[1]
        .text
        .lines()
        .find_map(|l| l.split("kftest: v2 committed BootOrder=").nth(1))
        .map(u16s)
        .unwrap_or_else(|| panic!("v2 committed; {ctx}"));
    assert_eq!(committed.first(), Some(&n2), "{ctx}");

    // (4) v3 staged and tried once: its kernel (command line with v3's key) panicked; the reset came back on
    // v2 through BootOrder.
    let n3 = staged_as(&b[1].text, k3).unwrap_or_else(|| panic!("v2 staged v3; {ctx}"));
    assert_ne!(n3, n2);
    let tail = &b[1].text[b[1].text.find(&format!("staged {k3}")).unwrap_or(0)..];
    assert!(
        tail.contains(&format!("BdsDxe: loading Boot{n3:04X}")),
        "the firmware booted v3's entry; {ctx}"
    );
    assert!(
        tail.contains(&format!("kitfleet.buildkey={k3}")),
        "v3's kernel ran; {ctx}"
    );
    assert!(tail.contains("Kernel panic"), "v3 panicked; {ctx}");
    assert_eq!(
        (b[2].role.as_str(), b[2].key.as_ref()),
        ("v2", Some(k2)),
        "{ctx}"
    );
    assert_eq!(b[2].current, Some(n2), "back on v2's entry; {ctx}");
    assert_eq!(b[2].next, None, "{ctx}");
    assert_eq!(b[2].order.first(), Some(&n2), "{ctx}");
    assert!(
        b[2].text.contains("kftest: v2 stable after the v3 attempt"),
        "{ctx}"
    );
    assert_eq!(b.len(), 3, "{ctx}");
    assert!(exited, "the machine powered off; {ctx}");

    // (5) kexec: a fresh v1 reaches v2 with no firmware boot in between.
    let (disk, vars) = machine(&f, "kexec")?;
    mark_esp(&disk, "KEXEC")?;
    let log = disk.with_file_name("serial.log");
    let t = Instant::now();
    let (serial, exited) = run_machine(&disk, &vars, &log, Duration::from_secs(300))?;
    let wall_kexec = t.elapsed();
    let story = upgrade_qemu_support::story(&serial);
    eprintln!("kexec run: {:.1} s\n{story}", wall_kexec.as_secs_f64());
    let ctx = format!("console {}:\n{story}", log.display());
    let b = boots(&serial);
    assert_eq!(b.len(), 2, "{ctx}");
    assert_eq!(
        (b[0].role.as_str(), b[0].key.as_ref()),
        ("v1", Some(k1)),
        "{ctx}"
    );
    assert!(b[0].text.contains("kexec image loaded"), "{ctx}");
    assert_eq!(
        (b[1].role.as_str(), b[1].key.as_ref()),
        ("v2", Some(k2)),
        "{ctx}"
    );
    assert_eq!(
        serial.matches("BdsDxe: loading").count(),
        1,
        "only v1 came through the firmware; {ctx}"
    );
    assert_eq!(
        b[1].current, b[0].current,
        "BootCurrent is still v1's; {ctx}"
    );
    assert!(
        b[1].text.contains("kftest: v2 commit refused"),
        "commit refuses an image the firmware did not boot; {ctx}"
    );
    assert!(exited, "{ctx}");
    eprintln!(
        "qemu wall time: firmware chain {:.1} s, kexec {:.1} s",
        wall.as_secs_f64(),
        wall_kexec.as_secs_f64()
    );
    Ok(())
}
