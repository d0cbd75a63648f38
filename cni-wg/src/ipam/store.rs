//! The on-disk IPAM store: `dataDir/<network>/` holds one file per reserved address (named by
//! the address, holding the attachment as JSON), `last_reserved_ip`, and `lock`, which every
//! operation holds with `flock(2)` for its whole duration. The lock is released by the kernel
//! when a process dies, so a killed ADD never wedges the store; what it reserved stays recorded
//! under its attachment, and GC reclaims it. A reservation is durable before `reserve` returns:
//! the record is fsynced, then the directory (a release is not: one lost in a crash leaves a
//! reservation of a gone attachment, which GC reclaims).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use ipnet::Ipv4Net;

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The host-side veth, so GC can remove it.
    pub host_if: String,
}

/// One reserved address; `record` is `None` when the file is unreadable (e.g. a process was
/// killed while writing it), which GC treats as garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its holder.
    pub record: Option<Record>,
}

/// A pending link deletion (see DEL): marker `dying/<host_if>@<ifindex>`, holding the boot ID
/// of the boot it was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dying {
    /// The marker file.
    pub path: PathBuf,
    /// The host-side veth's name.
    pub host_if: String,
    /// Its ifindex (0 when the marker has none).
    pub index: i32,
    /// Whether the marker was written in this boot (ifindexes mean nothing across boots).
    pub this_boot: bool,
}

/// IPAM store errors.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A file operation failed.
    #[error("IPAM store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No address left.
    #[error("pod CIDR {cidr} has no free address ({used} in use)")]
    Exhausted {
        /// The CIDR.
        cidr: Ipv4Net,
        /// How many are reserved.
        used: usize,
    },
    /// The attachment already holds an address.
    #[error("attachment {container_id}/{ifname} already holds {ip} (DEL it first)")]
    Duplicate {
        /// Container ID.
        container_id: String,
        /// Interface.
        ifname: String,
        /// Its address.
        ip: Ipv4Addr,
    },
}

type Result<T, E = IpamError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.into(),
        source,
    }
}

/// The store of one network, locked for as long as this value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) `data_dir/network` and takes its exclusive lock, waiting for it.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Self> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io(&path)(e.into()))?;
        Ok(Self { dir, _lock: lock })
    }

    /// Every reserved address.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let Some(ip) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let record = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            out.push(Entry { ip, record });
        }
        out.sort_by_key(|e| e.ip);
        Ok(out)
    }

    /// The entry of an attachment, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Entry>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|e| holds(e, container_id, ifname)))
    }

    /// Reserves the next free address of `cidr` for `record`.
    pub fn reserve(&self, cidr: Ipv4Net, record: &Record) -> Result<Ipv4Addr> {
        let entries = self.entries()?;
        if let Some(e) = entries
            .iter()
            .find(|e| holds(e, &record.container_id, &record.ifname))
        {
            return Err(IpamError::Duplicate {
                container_id: record.container_id.clone(),
                ifname: record.ifname.clone(),
                ip: e.ip,
            });
        }
        let used: HashSet<Ipv4Addr> = entries.iter().map(|e| e.ip).collect();
        let last_path = self.dir.join("last_reserved_ip");
        let last = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let ip = super::next_free(cidr, &used, last).ok_or(IpamError::Exhausted {
            cidr,
            used: used.len(),
        })?;
        let path = self.dir.join(ip.to_string());
        let json = serde_json::to_vec(record).map_err(|e| io(&path)(e.into()))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(&json)
            .and_then(|()| f.sync_data())
            .map_err(|e| {
                let _ = fs::remove_file(&path);
                io(&path)(e)
            })?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                let _ = fs::remove_file(&path);
                io(&self.dir)(e)
            })?;
        write_fixed(&last_path, &ip.to_string()).map_err(io(&last_path))?;
        Ok(ip)
    }

    /// Releases every address of an attachment; returns what was released.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Entry>> {
        let gone: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| holds(e, container_id, ifname))
            .collect();
        for e in &gone {
            self.release_ip(e.ip)?;
        }
        Ok(gone)
    }

    /// Records that link `host_if` (ifindex `index`) is being deleted in the background (see
    /// DEL), so GC can finish the job if the reaper dies. Returns the marker path
    /// (`dying/<host_if>@<index>`, holding this boot's ID).
    pub fn mark_dying(&self, host_if: &str, index: i32) -> Result<PathBuf> {
        let dir = self.dir.join("dying");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{host_if}@{index}"));
        fs::write(&path, crate::state::boot_id()).map_err(io(&path))?;
        Ok(path)
    }

    /// Links marked dying.
    pub fn dying(&self) -> Result<Vec<Dying>> {
        let dir = self.dir.join("dying");
        let rd = match fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
            Ok(rd) => rd,
        };
        let boot = crate::state::boot_id();
        let mut out = Vec::new();
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let written = fs::read_to_string(e.path()).unwrap_or_default();
            out.push(parse_dying(e.path(), &name, written.trim(), &boot));
        }
        Ok(out)
    }

    /// Removes every dying marker of `host_if` (no error if none).
    pub fn clear_dying(&self, host_if: &str) -> Result<()> {
        for d in self.dying()? {
            if d.host_if == host_if {
                match fs::remove_file(&d.path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(&d.path)(e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Releases one address (no error if it was free).
    pub fn release_ip(&self, ip: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }
}

/// Reads a dying marker named `name` (`<host_if>@<ifindex>`) that holds `written` (a boot ID).
/// A marker without a valid index gets index 0 (it only gets removed); one without this boot's
/// ID (`boot`, non-empty) is not of this boot.
pub fn parse_dying(path: PathBuf, name: &str, written: &str, boot: &str) -> Dying {
    let (host_if, index) = name.split_once('@').unwrap_or((name, ""));
    Dying {
        path,
        host_if: host_if.to_string(),
        index: index.parse().unwrap_or(0),
        this_boot: !boot.is_empty() && written == boot,
    }
}

/// Overwrites a small file in place with a fixed-width (16-byte) record, never truncating:
/// ext4 flushes a file truncated to zero and rewritten (`auto_da_alloc`), which made an ADD wait
/// 0.1–0.6 s on this busy machine.
fn write_fixed(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all(format!("{value:<15}\n").as_bytes())
}

fn holds(e: &Entry, container_id: &str, ifname: &str) -> bool {
    e.record
        .as_ref()
        .is_some_and(|r| r.container_id == container_id && r.ifname == ifname)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(c: &str) -> Record {
        Record {
            container_id: c.into(),
            ifname: "eth0".into(),
            host_if: format!("kfw-{c}"),
        }
    }

    #[test]
    fn reserve_release_and_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let cidr: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let s = Store::lock(d.path(), "net").unwrap();
        let a = s.reserve(cidr, &rec("a")).unwrap();
        let b = s.reserve(cidr, &rec("b")).unwrap();
        assert_eq!(
            (a.to_string().as_str(), b.to_string().as_str()),
            ("10.0.0.2", "10.0.0.3")
        );
        let last = fs::read_to_string(d.path().join("net/last_reserved_ip")).unwrap();
        assert_eq!(last, "10.0.0.3       \n", "fixed width, rewritten in place");
        assert!(matches!(
            s.reserve(cidr, &rec("a")),
            Err(IpamError::Duplicate { .. })
        ));
        assert_eq!(
            s.find("b", "eth0").unwrap().unwrap().record.unwrap(),
            rec("b")
        );
        assert_eq!(s.release("a", "eth0").unwrap().len(), 1);
        assert_eq!(
            s.release("a", "eth0").unwrap().len(),
            0,
            "release is idempotent"
        );
        // Round-robin: the released .2 is not reused before the range wraps.
        assert_eq!(s.reserve(cidr, &rec("c")).unwrap().to_string(), "10.0.0.4");
        for x in ["d", "e"] {
            s.reserve(cidr, &rec(x)).unwrap();
        }
        assert_eq!(s.reserve(cidr, &rec("f")).unwrap().to_string(), "10.0.0.2");
        let e = s.reserve(cidr, &rec("g")).unwrap_err().to_string();
        assert!(e.contains("no free address"), "{e}");
    }

    #[test]
    fn unreadable_record_is_listed_without_holder() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::lock(d.path(), "net").unwrap();
        fs::write(d.path().join("net/10.0.0.9"), b"{trunc").unwrap();
        fs::write(d.path().join("net/not-an-ip"), b"x").unwrap();
        assert_eq!(
            s.entries().unwrap(),
            vec![Entry {
                ip: "10.0.0.9".parse().unwrap(),
                record: None
            }]
        );
    }

    #[test]
    fn parallel_reservations_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let cidr: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let ips: Vec<Ipv4Addr> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..50)
                .map(|i| {
                    let p = d.path();
                    sc.spawn(move || {
                        Store::lock(p, "net")
                            .unwrap()
                            .reserve(cidr, &rec(&format!("c{i}")))
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 50);
    }

    #[test]
    fn dying_markers_are_keyed_to_the_boot() {
        let p = PathBuf::from("/x");
        let b = "8d1f6a0e-0000-4000-8000-000000000001";
        let rows = [
            ("kfwa@12", b, "kfwa", 12, true),
            ("kfwa@12", "", "kfwa", 12, false),
            ("kfwa@12", "another-boot", "kfwa", 12, false),
            ("kfwa", b, "kfwa", 0, true),
            ("kfwa@x", b, "kfwa", 0, true),
        ];
        for (name, written, host_if, index, this_boot) in rows {
            let d = parse_dying(p.clone(), name, written, b);
            assert_eq!(
                (d.host_if.as_str(), d.index, d.this_boot),
                (host_if, index, this_boot),
                "{name} {written:?}"
            );
        }
        assert!(
            !parse_dying(p, "kfwa@1", "", "").this_boot,
            "unknown boot ID"
        );
        let d = tempfile::tempdir().unwrap();
        let s = Store::lock(d.path(), "net").unwrap();
        let m = s.mark_dying("kfwb", 7).unwrap();
        assert_eq!(
            s.dying().unwrap(),
            vec![Dying {
                path: m,
                host_if: "kfwb".into(),
                index: 7,
                this_boot: true
            }]
        );
    }
}
