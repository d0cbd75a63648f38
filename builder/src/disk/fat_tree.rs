//! The directory tree of a FAT volume: directories in an arena (root = 0, pre-order),
//! children sorted bytewise by name, each with its short name and LFN flag.

use std::collections::{BTreeMap, HashSet};

use super::content::Parts;
use super::error::{Error, Result};
use super::fat_names::{check_component, lfn_entries, plain_short, tailed_short};

#[derive(Debug)]
pub(super) enum ChildKind {
    Dir(usize),
    File(usize),
}

#[derive(Debug)]
pub(super) struct Child {
    pub(super) long: String,
    pub(super) short: [u8; 11],
    pub(super) lfn: bool,
    pub(super) kind: ChildKind,
}

#[derive(Debug, Default)]
pub(super) struct Dir {
    pub(super) parent: Option<usize>,
    pub(super) children: Vec<Child>,
    pub(super) first_cluster: u32,
}

#[derive(Debug)]
pub(super) struct File<'a> {
    pub(super) content: &'a Parts<'a>,
    pub(super) first_cluster: u32,
}

/// Number of 32-byte entries in a directory (with `.` and `..` unless it is the root).
pub(super) fn dir_entries(dir: &Dir, root: bool) -> u64 {
    let own = if root { 0 } else { 2 };
    own + dir
        .children
        .iter()
        .map(|c| {
            1 + if c.lfn {
                lfn_entries(&c.long) as u64
            } else {
                0
            }
        })
        .sum::<u64>()
}

/// Builds the directory arena (root = 0, pre-order) and the file list (pre-order).
pub(super) fn build_tree<'a>(files: &[(&str, &'a Parts<'a>)]) -> Result<(Vec<Dir>, Vec<File<'a>>)> {
    #[derive(Default)]
    struct Node<'a> {
        dirs: BTreeMap<String, Node<'a>>,
        files: BTreeMap<String, &'a Parts<'a>>,
    }
    let mut root = Node::default();
    for &(path, content) in files {
        let parts: Vec<&str> = path.split('/').collect();
        let (name, dirs) = parts.split_last().expect("split yields one item");
        let mut node = &mut root;
        for dir in dirs {
            check_component(path, dir)?;
            if node.files.contains_key(*dir) {
                return Err(Error::Fat {
                    reason: format!("{path:?}: {dir:?} is a file"),
                });
            }
            node = node.dirs.entry((*dir).to_string()).or_default();
        }
        check_component(path, name)?;
        if node.dirs.contains_key(*name)
            || node.files.insert((*name).to_string(), content).is_some()
        {
            return Err(Error::Fat {
                reason: format!("{path:?} is given twice"),
            });
        }
    }
    fn flatten<'a>(
        node: Node<'a>,
        parent: Option<usize>,
        dirs: &mut Vec<Dir>,
        files: &mut Vec<File<'a>>,
    ) -> Result<()> {
        let index = dirs.len();
        dirs.push(Dir {
            parent,
            ..Dir::default()
        });
        let mut names: Vec<(String, Option<Node<'a>>, Option<&'a Parts<'a>>)> = Vec::new();
        for (n, d) in node.dirs {
            names.push((n, Some(d), None));
        }
        for (n, f) in node.files {
            names.push((n, None, Some(f)));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut taken = HashSet::new();
        let mut children = Vec::new();
        let mut subdirs = Vec::new();
        for (long, dir, file) in names {
            let plain = plain_short(&long).filter(|s| !taken.contains(s));
            let short = match plain {
                Some(s) => s,
                None => tailed_short(&long, &taken)?,
            };
            taken.insert(short);
            let lfn = plain.is_none() || long != long.to_ascii_uppercase();
            let kind = match (dir, file) {
                (Some(d), _) => {
                    subdirs.push((children.len(), d));
                    ChildKind::Dir(0)
                }
                (None, Some(content)) => {
                    files.push(File {
                        content,
                        first_cluster: 0,
                    });
                    ChildKind::File(files.len() - 1)
                }
                (None, None) => unreachable!("each name is a dir or a file"),
            };
            children.push(Child {
                long,
                short,
                lfn,
                kind,
            });
        }
        for (slot, d) in subdirs {
            children[slot].kind = ChildKind::Dir(dirs.len());
            flatten(d, Some(index), dirs, files)?;
        }
        dirs[index].children = children;
        Ok(())
    }
    let mut dirs = Vec::new();
    let mut out_files = Vec::new();
    flatten(root, None, &mut dirs, &mut out_files)?;
    Ok((dirs, out_files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_paths() {
        let parts = Parts::new();
        for bad in ["a//b", "a/../b", "a/b:c", "x/"] {
            assert!(build_tree(&[(bad, &parts)]).is_err(), "{bad}");
        }
        assert!(build_tree(&[("a/b", &parts), ("a/b", &parts)]).is_err());
        assert!(build_tree(&[("a", &parts), ("a/b", &parts)]).is_err());
    }
}
