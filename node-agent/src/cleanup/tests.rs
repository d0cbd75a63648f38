use super::*;

fn layout() -> Layout {
    Layout {
        interface: "kfwg0".into(),
        cni_bin_dir: "/opt/cni/bin".into(),
        cni_conf_dir: "/etc/cni/net.d".into(),
        conflist_name: CONFLIST_NAME.into(),
    }
}

fn strs(p: &[PathBuf]) -> Vec<String> {
    p.iter().map(|p| p.display().to_string()).collect()
}

const CHART_CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"kitfleet","plugins":[
  {"type":"kitfleet-wg","stateFile":"/run/kitfleet/node.json","dataDir":"/var/lib/kitfleet/ipam",
   "logFile":"/var/log/kitfleet-wg.log","masquerade":true},
  {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

#[test]
fn the_charts_conflist() {
    let p = plan(&layout(), Some(CHART_CONFLIST));
    assert_eq!(p.interface, "kfwg0");
    assert_eq!(p.nft_tables, ["kitfleet_wg_kitfleet"]);
    assert_eq!(
        strs(&p.paths),
        [
            "/etc/cni/net.d/.10-kitfleet.conflist.tmp",
            "/etc/cni/net.d/10-kitfleet.conflist",
            "/opt/cni/bin/.kitfleet-wg.tmp",
            "/opt/cni/bin/kitfleet-wg",
            "/run/kitfleet",
            "/var/lib/cni/kitfleet-wg",
            "/var/lib/kitfleet",
            "/var/lib/kubelet/plugins/sandbox.kitfleet.dev",
            "/var/lib/kubelet/plugins_registry/sandbox.kitfleet.dev@reg.sock",
            "/var/lib/kubelet/seccomp/kitfleet",
            "/var/log/kitfleet-wg.log",
        ]
    );
    assert!(p.refused.is_empty());
}

#[test]
fn no_conflist_means_the_charts_defaults() {
    for conflist in [None, Some("not json"), Some("{}")] {
        let p = plan(&layout(), conflist);
        assert_eq!(p.nft_tables, ["kitfleet_wg_kitfleet"], "{conflist:?}");
        assert!(
            p.paths
                .contains(&PathBuf::from("/etc/cni/net.d/10-kitfleet.conflist"))
        );
        assert!(!p.paths.iter().any(|p| p.ends_with("kitfleet-wg.log")));
    }
}

#[test]
fn conflist_paths_that_do_not_name_kitfleet_are_refused() {
    let conf = r#"{"name":"other-net","plugins":[{"type":"kitfleet-wg","stateFile":"/","dataDir":"/var/lib/../kitfleet",
      "logFile":"relative/kitfleet.log"}]}"#;
    let p = plan(&layout(), Some(conf));
    assert_eq!(p.nft_tables, ["kitfleet_wg_other-net"]);
    let refused: Vec<(String, String)> = p
        .refused
        .iter()
        .map(|(p, w)| (p.display().to_string(), w.clone()))
        .collect();
    assert_eq!(
        refused,
        [
            (
                "/".into(),
                "conflist stateFile: does not name kitfleet".into()
            ),
            (
                "/var/lib/../kitfleet".into(),
                "conflist dataDir: contains ..".into()
            ),
            (
                "relative/kitfleet.log".into(),
                "conflist logFile: not absolute".into()
            ),
        ]
    );
    assert!(!p.paths.contains(&PathBuf::from("/")));
}

#[test]
fn other_cni_dirs_and_host_roots() {
    let mut l = layout();
    l.cni_bin_dir = "/usr/lib/cni".into();
    l.cni_conf_dir = "/etc/kubernetes/cni".into();
    let p = plan(&l, None);
    assert!(p.paths.contains(&PathBuf::from("/usr/lib/cni/kitfleet-wg")));
    assert!(
        p.paths
            .contains(&PathBuf::from("/etc/kubernetes/cni/10-kitfleet.conflist"))
    );
    assert_eq!(
        under(Path::new("/host"), Path::new("/run/kitfleet")),
        PathBuf::from("/host/run/kitfleet")
    );
    assert_eq!(
        under(Path::new("/"), Path::new("/run/kitfleet")),
        PathBuf::from("/run/kitfleet")
    );
}
