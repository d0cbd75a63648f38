//! The data-plane library on real TUN devices in two network namespaces: live peer-table changes
//! (endpoint, removal, key rotation), counters, and re-attaching the persistent TUN after a stop.
//! Needs root, TUN and netns: fails under CI=true without them, skips with a message otherwise.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use kitfleet_dataplane::{Config, DataPlane, PeerConfig, PrivateKey};
use kitfleet_testbed::netns::{ip, ns_output, require_privileges, with_netns};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn netns(name: &str) -> Ns {
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
    ip(&["netns", "add", name]).unwrap();
    ip(&["-n", name, "link", "set", "lo", "up"]).unwrap();
    Ns(name.into())
}

fn start(ns: &str, name: &str, key: &PrivateKey) -> DataPlane {
    let cfg = Config {
        interface: name.into(),
        listen_port: 51820,
        private_key: key.clone(),
        mtu: 1420,
    };
    with_netns(ns, move || DataPlane::start(cfg))
        .join()
        .unwrap()
        .unwrap()
        .unwrap()
}

fn peer(key: &PrivateKey, endpoint: &str, cidr: &str) -> PeerConfig {
    PeerConfig {
        public_key: key.public_key(),
        endpoint: Some(endpoint.parse().unwrap()),
        allowed_ips: vec![cidr.parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn socket(ns: &str, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = with_netns(ns, move || UdpSocket::bind(addr).unwrap())
        .join()
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Sends from `tx` to `dst` until `rx` receives the message (up to ~3 s).
fn delivered(tx: &UdpSocket, rx: &UdpSocket, dst: &str, msg: &[u8]) -> bool {
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        tx.send_to(msg, dst).unwrap();
        while let Ok((n, _)) = rx.recv_from(&mut buf) {
            if &buf[..n] == msg {
                return true;
            }
        }
    }
    false
}

#[test]
fn live_peer_changes_counters_and_tun_reattach() {
    if !require_privileges("live_peer_changes_counters_and_tun_reattach") {
        return;
    }
    let id = std::process::id() % 10000;
    let (a, b) = (netns(&format!("dpa{id}")), netns(&format!("dpb{id}")));
    ip(&[
        "link", "add", "dpva", "netns", &a.0, "type", "veth", "peer", "name", "dpvb", "netns", &b.0,
    ])
    .unwrap();
    for (ns, dev, addr) in [
        (&a.0, "dpva", "192.168.210.1/24"),
        (&b.0, "dpvb", "192.168.210.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]).unwrap();
        ip(&["-n", ns, "link", "set", dev, "up"]).unwrap();
    }
    let (ka, kb) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let dpa = start(&a.0, "wga", &ka);
    let dpb = start(&b.0, "wgb", &kb);
    for (ns, dev, addr, route) in [
        (&a.0, "wga", "10.50.1.1/32", "10.50.2.0/24"),
        (&b.0, "wgb", "10.50.2.1/32", "10.50.1.0/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]).unwrap();
        ip(&["-n", ns, "route", "add", route, "dev", dev]).unwrap();
    }
    dpa.set_peers(vec![peer(&kb, "192.168.210.2:51820", "10.50.2.0/24")])
        .unwrap();
    dpb.set_peers(vec![peer(&ka, "192.168.210.1:51820", "10.50.1.0/24")])
        .unwrap();
    let (sa, sb) = (
        socket(&a.0, "10.50.1.1:9000"),
        socket(&b.0, "10.50.2.1:9000"),
    );
    assert!(
        delivered(&sa, &sb, "10.50.2.1:9000", b"hello"),
        "A → B over the tunnel"
    );
    assert!(
        delivered(&sb, &sa, "10.50.1.1:9000", b"back"),
        "B → A over the tunnel"
    );

    // IPv6 inside the tunnel: TCP bulk data takes the TSO6 segmentation and coalescing paths.
    let mut pa = peer(&kb, "192.168.210.2:51820", "10.50.2.0/24");
    pa.allowed_ips.push("fd50:2::/64".parse().unwrap());
    let mut pb = peer(&ka, "192.168.210.1:51820", "10.50.1.0/24");
    pb.allowed_ips.push("fd50:1::/64".parse().unwrap());
    dpa.set_peers(vec![pa]).unwrap();
    dpb.set_peers(vec![pb]).unwrap();
    for (ns, dev, addr, route) in [
        (&a.0, "wga", "fd50:1::1/128", "fd50:2::/64"),
        (&b.0, "wgb", "fd50:2::1/128", "fd50:1::/64"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]).unwrap();
        ip(&["-n", ns, "-6", "route", "add", route, "dev", dev]).unwrap();
    }
    let payload: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let server = with_netns(&b.0, || {
        let l = std::net::TcpListener::bind("[fd50:2::1]:9100").unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut got).unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(200));
    let sent = payload.clone();
    with_netns(&a.0, move || {
        let dst: SocketAddr = "[fd50:2::1]:9100".parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        std::io::Write::write_all(&mut s, &sent).unwrap();
    })
    .join()
    .unwrap()
    .unwrap();
    assert!(
        server.join().unwrap().unwrap() == payload,
        "IPv6 TCP payload intact"
    );
    let before = dpb.stats().unwrap().counters;
    assert!(
        before.tun_writes < before.udp_datagrams_in,
        "coalescing wrote fewer packets than arrived: {before:?}"
    );

    let st = dpa.stats().unwrap();
    assert_eq!(st.interface, "wga");
    assert_eq!(st.public_key, ka.public_key());
    assert_eq!(st.peers.len(), 1);
    assert!(
        st.peers[0].last_handshake.is_some()
            && st.peers[0].tx_bytes > 0
            && st.peers[0].rx_bytes > 0,
        "{st:?}"
    );
    assert!(st.counters.gro && st.counters.gso, "{:?}", st.counters);

    // Endpoint change applies live: a wrong endpoint loses traffic, the right one restores it.
    dpa.set_peers(vec![peer(&kb, "192.168.210.99:51820", "10.50.2.0/24")])
        .unwrap();
    assert_eq!(
        dpa.stats().unwrap().peers[0].endpoint,
        Some("192.168.210.99:51820".parse().unwrap())
    );
    assert!(
        !delivered(&sa, &sb, "10.50.2.1:9000", b"lost"),
        "traffic still reached B via the old endpoint"
    );
    dpa.set_peers(vec![peer(&kb, "192.168.210.2:51820", "10.50.2.0/24")])
        .unwrap();
    assert!(
        delivered(&sa, &sb, "10.50.2.1:9000", b"moved"),
        "endpoint change back"
    );

    // Removing the peer stops traffic; invalid sets are refused without changes.
    let dropped_before = dpa.stats().unwrap().counters.dropped_no_peer;
    dpa.set_peers(vec![]).unwrap();
    assert!(!delivered(&sa, &sb, "10.50.2.1:9000", b"nopeer"));
    assert!(dpa.stats().unwrap().counters.dropped_no_peer > dropped_before);
    let e = dpa
        .set_peers(vec![peer(&ka, "192.168.210.2:51820", "10.50.2.0/24")])
        .unwrap_err();
    assert!(e.to_string().contains("own public key"), "{e}");

    // Key rotation on A: B learns the new key, traffic resumes.
    let ka2 = PrivateKey::generate().unwrap();
    dpa.set_peers(vec![peer(&kb, "192.168.210.2:51820", "10.50.2.0/24")])
        .unwrap();
    dpa.set_private_key(ka2.clone()).unwrap();
    dpb.set_peers(vec![peer(&ka2, "192.168.210.1:51820", "10.50.1.0/24")])
        .unwrap();
    assert!(
        delivered(&sa, &sb, "10.50.2.1:9000", b"rotated"),
        "after key rotation"
    );
    assert_eq!(dpa.stats().unwrap().public_key, ka2.public_key());

    // Stop: the TUN, its address and route stay; a new start re-attaches to it.
    dpa.stop();
    let link = ns_output(&a.0, "ip", &["-o", "addr", "show", "dev", "wga"]).unwrap();
    assert!(
        link.contains("10.50.1.1/32"),
        "persistent TUN lost its address: {link}"
    );
    let dpa = start(&a.0, "wga", &ka2);
    dpa.set_peers(vec![peer(&kb, "192.168.210.2:51820", "10.50.2.0/24")])
        .unwrap();
    assert!(
        delivered(&sa, &sb, "10.50.2.1:9000", b"reattached"),
        "after re-attach"
    );
    assert!(
        delivered(&sb, &sa, "10.50.1.1:9000", b"reattached-back"),
        "B → A after A's restart"
    );
    // Deleting B's interface under the running loop stops it (no busy loop on a dead fd).
    ip(&["-n", &b.0, "link", "del", "wgb"]).unwrap();
    let start = std::time::Instant::now();
    while dpb.is_running() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !dpb.is_running(),
        "data plane still running on a deleted TUN"
    );
    assert!(dpb.stats().is_err(), "a stopped loop answers no commands");
    dpa.stop();
    dpb.stop();
    // Clean up the persistent interfaces explicitly (the namespaces go too, on drop).
    let del = with_netns(&a.0, || kitfleet_dataplane::delete_interface("wga"))
        .join()
        .unwrap()
        .unwrap();
    assert!(del.is_ok(), "{del:?}");
}

/// Cookie replies (WireGuard message type 3) that reached `s` within its read timeout.
fn cookie_replies(s: &UdpSocket) -> usize {
    let mut buf = [0u8; 256];
    let mut n = 0;
    while let Ok((len, _)) = s.recv_from(&mut buf) {
        if len == 64 && buf[0] == 3 {
            n += 1;
        }
    }
    n
}

/// Issue 12, items 3 and 4: forged initiations (valid mac1, the victim peer's key inside, no
/// private key behind them) from another address never move that peer's endpoint; an authenticated
/// packet from a new address does. A flood of valid-mac1 initiations is answered with cookies once
/// the node is under load, and bad-mac1 ones are dropped before any Diffie-Hellman.
#[test]
fn forged_handshakes_neither_move_endpoints_nor_buy_handshakes() {
    if !require_privileges("forged_handshakes_neither_move_endpoints_nor_buy_handshakes") {
        return;
    }
    use kitfleet_testbed::forge::Forger;
    let id = std::process::id() % 10000;
    let (a, b) = (netns(&format!("dfa{id}")), netns(&format!("dfb{id}")));
    ip(&[
        "link", "add", "dfva", "netns", &a.0, "type", "veth", "peer", "name", "dfvb", "netns", &b.0,
    ])
    .unwrap();
    for (ns, dev, addr) in [
        (&a.0, "dfva", "192.168.211.1/24"),
        (&b.0, "dfvb", "192.168.211.2/24"),
        (&a.0, "dfva", "192.168.211.66/24"), // the attacker's address
        (&a.0, "dfva", "192.168.211.67/24"), // someone else's
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]).unwrap();
        ip(&["-n", ns, "link", "set", dev, "up"]).unwrap();
    }
    let (ka, kb) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let dpa = start(&a.0, "wfa", &ka);
    let dpb = start(&b.0, "wfb", &kb);
    for (ns, dev, addr, route) in [
        (&a.0, "wfa", "10.51.1.1/32", "10.51.2.0/24"),
        (&b.0, "wfb", "10.51.2.1/32", "10.51.1.0/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]).unwrap();
        ip(&["-n", ns, "route", "add", route, "dev", dev]).unwrap();
    }
    dpa.set_peers(vec![peer(&kb, "192.168.211.2:51820", "10.51.2.0/24")])
        .unwrap();
    dpb.set_peers(vec![peer(&ka, "192.168.211.1:51820", "10.51.1.0/24")])
        .unwrap();
    let (sa, sb) = (
        socket(&a.0, "10.51.1.1:9000"),
        socket(&b.0, "10.51.2.1:9000"),
    );
    assert!(delivered(&sa, &sb, "10.51.2.1:9000", b"hello"));
    assert!(delivered(&sb, &sa, "10.51.1.1:9000", b"back"));
    let endpoint_of_a = || dpb.stats().unwrap().peers[0].endpoint;
    let home: SocketAddr = "192.168.211.1:51820".parse().unwrap();
    assert_eq!(endpoint_of_a(), Some(home));

    // 400 forged initiations claiming A, 200 per second, from 192.168.211.66.
    let attacker = socket(&a.0, "192.168.211.66:40000");
    let forger = Forger::new(&kb.public_key());
    let pool: Vec<_> = (0..16)
        .map(|i| forger.claiming(&ka.public_key(), i))
        .collect();
    for i in 0..400u32 {
        let mut m = pool[i as usize % pool.len()];
        forger.reindex(&mut m, 1000 + i);
        attacker.send_to(&m, "192.168.211.2:51820").unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        endpoint_of_a(),
        Some(home),
        "forged initiations moved A's endpoint"
    );
    assert!(delivered(&sb, &sa, "10.51.1.1:9000", b"still-home"));

    // A flood of valid-mac1 initiations from unknown keys: the node goes under load and answers
    // with cookies (the attacker must prove its address) instead of doing Diffie-Hellman for each,
    // a few per second to one address: the rest are dropped after the mac checks, unanswered.
    // Another address sending now and then during the flood still gets its cookie.
    let strangers: Vec<_> = (0..16)
        .map(|i| forger.claiming(&PrivateKey::generate().unwrap().public_key(), i))
        .collect();
    let bystander = socket(&a.0, "192.168.211.67:40000");
    cookie_replies(&attacker);
    let before = dpb.stats().unwrap().counters;
    for i in 0..600u32 {
        let mut m = strangers[i as usize % strangers.len()];
        forger.reindex(&mut m, 5000 + i);
        attacker.send_to(&m, "192.168.211.2:51820").unwrap();
        if i % 100 == 99 {
            forger.reindex(&mut m, 9000 + i);
            bystander.send_to(&m, "192.168.211.2:51820").unwrap();
        }
    }
    let cookies = cookie_replies(&attacker);
    let per_source = kitfleet_dataplane::handshake::COOKIE_REPLIES_PER_SOURCE as usize;
    assert!(
        (1..=per_source + 1).contains(&cookies),
        "{cookies} cookie replies to 600 valid-mac1 initiations from one address in a burst"
    );
    assert!(
        cookie_replies(&bystander) >= 1,
        "the other address got no cookie during the flood"
    );
    assert!(delivered(&sa, &sb, "10.51.2.1:9000", b"under-load"));
    let c = dpb.stats().unwrap().counters;
    assert!(
        c.dropped_cookie_rate - before.dropped_cookie_rate >= 400
            && c.cookie_replies - before.cookie_replies >= cookies as u64
            && c.handshakes < 400,
        "Diffie-Hellman only within the budget, cookie replies within the source's share: {c:?}"
    );
    // Bad mac1: dropped and counted before anything else.
    let before = dpb.stats().unwrap().counters;
    for _ in 0..200 {
        attacker
            .send_to(&forger.garbage(), "192.168.211.2:51820")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = dpb.stats().unwrap().counters;
    assert_eq!(
        after.dropped_bad_mac - before.dropped_bad_mac,
        200,
        "{after:?}"
    );
    assert_eq!(after.handshakes, before.handshakes, "{after:?}");

    // Authenticated roaming: A's packets now leave from 192.168.211.77; B follows them.
    ip(&[
        "-n",
        &a.0,
        "addr",
        "add",
        "192.168.211.77/24",
        "dev",
        "dfva",
    ])
    .unwrap();
    ip(&[
        "-n",
        &a.0,
        "route",
        "replace",
        "192.168.211.0/24",
        "dev",
        "dfva",
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        "192.168.211.77",
    ])
    .unwrap();
    assert!(delivered(&sa, &sb, "10.51.2.1:9000", b"roamed"));
    assert_eq!(
        endpoint_of_a(),
        Some("192.168.211.77:51820".parse().unwrap()),
        "an authenticated packet from a new address moves the endpoint"
    );
    assert!(delivered(&sb, &sa, "10.51.1.1:9000", b"roamed-back"));
    dpa.stop();
    dpb.stop();
}

/// Issue 12 item 4, per-source share: an attacker that owns its address answers the cookie and
/// floods initiations with a valid mac2 (claiming the real peer's key). Before the per-source share
/// it spent the whole handshake budget every tick, and the real peer, starting over with a fresh
/// tunnel, could not complete a handshake; now the attacker gets its share and the real peer is
/// back within its cookie round trip plus one retry (WireGuard's 5 s REKEY_TIMEOUT).
#[test]
fn a_cookie_answering_flood_does_not_starve_the_real_peer() {
    if !require_privileges("a_cookie_answering_flood_does_not_starve_the_real_peer") {
        return;
    }
    use kitfleet_testbed::forge::Forger;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;
    let id = std::process::id() % 10000;
    let (a, b) = (netns(&format!("dsa{id}")), netns(&format!("dsb{id}")));
    ip(&[
        "link", "add", "dsva", "netns", &a.0, "type", "veth", "peer", "name", "dsvb", "netns", &b.0,
    ])
    .unwrap();
    for (ns, dev, addr) in [
        (&a.0, "dsva", "192.168.212.1/24"),
        (&b.0, "dsvb", "192.168.212.2/24"),
        (&a.0, "dsva", "192.168.212.66/24"), // the attacker's address
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]).unwrap();
        ip(&["-n", ns, "link", "set", dev, "up"]).unwrap();
    }
    let (ka, kb) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let dpa = start(&a.0, "wsa", &ka);
    let dpb = start(&b.0, "wsb", &kb);
    for (ns, dev, addr, route) in [
        (&a.0, "wsa", "10.52.1.1/32", "10.52.2.0/24"),
        (&b.0, "wsb", "10.52.2.1/32", "10.52.1.0/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]).unwrap();
        ip(&["-n", ns, "route", "add", route, "dev", dev]).unwrap();
    }
    let to_b = peer(&kb, "192.168.212.2:51820", "10.52.2.0/24");
    dpa.set_peers(vec![to_b.clone()]).unwrap();
    dpb.set_peers(vec![peer(&ka, "192.168.212.1:51820", "10.52.1.0/24")])
        .unwrap();
    let (sa, sb) = (
        socket(&a.0, "10.52.1.1:9000"),
        socket(&b.0, "10.52.2.1:9000"),
    );
    assert!(delivered(&sa, &sb, "10.52.2.1:9000", b"hello"));

    // The attacker puts B under load and opens one of the cookie replies it gets.
    let attacker = socket(&a.0, "192.168.212.66:40000");
    let forger = Forger::new(&kb.public_key());
    let pool: Vec<_> = (0..16)
        .map(|i| forger.claiming(&ka.public_key(), i))
        .collect();
    let mut sent = std::collections::HashMap::new();
    for i in 0..300u32 {
        let mut m = pool[i as usize % pool.len()];
        forger.reindex(&mut m, 100 + i);
        sent.insert(100 + i, m);
        attacker.send_to(&m, "192.168.212.2:51820").unwrap();
    }
    let mut buf = [0u8; 256];
    let mut cookie = None;
    while let Ok((n, _)) = attacker.recv_from(&mut buf) {
        let idx = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        if let Some(m) = sent.get(&idx) {
            cookie = cookie.or(forger.open_cookie(m, &buf[..n]));
        }
    }
    let cookie = cookie.expect("B under load sent the attacker a cookie it can open");

    // 1500 initiations per second with a valid mac2, claiming A, until the real A is back.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, forger) = (stop.clone(), forger.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..15 {
                    let mut m = pool[n as usize % pool.len()];
                    forger.reindex(&mut m, 10_000 + n);
                    forger.seal_mac2(&mut m, &cookie);
                    let _ = attacker.send_to(&m, "192.168.212.2:51820");
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let before = dpb.stats().unwrap().counters;

    // A starts over with a fresh tunnel (a changed keepalive): it must handshake through the flood.
    let t0 = Instant::now();
    dpa.set_peers(vec![PeerConfig {
        persistent_keepalive: Some(25),
        ..to_b
    }])
    .unwrap();
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(20) {
        if delivered(&sa, &sb, "10.52.2.1:9000", b"through-the-flood") {
            back = Some(t0.elapsed());
            break;
        }
    }
    let flood_time = t0.elapsed() + Duration::from_millis(500);
    stop.store(true, Ordering::Relaxed);
    let forged = flood.join().unwrap();
    let c = dpb.stats().unwrap().counters;
    eprintln!("A back after {back:?}; {forged} forged initiations with mac2; B's counters {c:?}");
    let back = back.expect("A never got a handshake through 20 s of a cookie-answering flood");
    assert!(
        back < Duration::from_secs(13),
        "A took {back:?} to get a handshake through the flood"
    );
    let per_source = kitfleet_dataplane::handshake::HANDSHAKES_PER_SOURCE as u64;
    let admitted = c.handshakes - before.handshakes;
    assert!(
        admitted <= per_source * (flood_time.as_secs() + 2) + 16,
        "{admitted} handshakes admitted in {flood_time:?}: more than the sources' shares ({c:?})"
    );
    assert!(
        c.dropped_source_budget > before.dropped_source_budget,
        "{c:?}"
    );
    dpa.stop();
    dpb.stop();
}
