//! The peer table: one `noise::Tunn` per peer, found by local session index (incoming data), by public
//! key (incoming handshakes) and by longest-prefix match on allowed IPs (outgoing packets).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

use ipnet::IpNet;

use super::{Error, PeerConfig, PrivateKey, PublicKey, Result};

/// One live peer.
pub(super) struct Peer {
    pub key: PublicKey,
    pub tunn: Tunn,
    pub endpoint: Option<SocketAddr>,
    pub allowed: Vec<IpNet>,
    pub keepalive: Option<u16>,
}

/// All peers of the interface.
pub(super) struct Peers {
    peers: HashMap<u32, Peer>,
    by_key: HashMap<PublicKey, u32>,
    /// Allowed IPs, longest prefix first.
    routes: Vec<(IpNet, u32)>,
    /// Recent destination → peer answers (cleared whenever the routes change, bounded).
    cache: HashMap<IpAddr, Option<u32>>,
    next_index: u32,
}

const INDEX_MASK: u32 = 0x00ff_ffff;
/// Destinations remembered by [`Peers::route`] before the cache starts over.
const ROUTE_CACHE: usize = 4096;

/// Checks a wanted peer set before anything is changed: no duplicate key, not our own key, no prefix
/// claimed by two peers.
fn validate(own: PublicKey, wanted: &[PeerConfig]) -> Result<()> {
    let mut keys = HashSet::new();
    let mut owners: HashMap<IpNet, PublicKey> = HashMap::new();
    for p in wanted {
        let err = |reason: String| Error::Peer {
            peer: p.public_key,
            reason,
        };
        if p.public_key == own {
            return Err(err("is this interface's own public key".into()));
        }
        if !keys.insert(p.public_key) {
            return Err(err("listed twice".into()));
        }
        for c in &p.allowed_ips {
            if let Some(other) = owners.insert(*c, p.public_key) {
                return Err(err(format!(
                    "allowed IP {c} is also claimed by peer {other}"
                )));
            }
        }
    }
    Ok(())
}

impl Peers {
    pub fn new(seed: u32) -> Self {
        Peers {
            peers: HashMap::new(),
            by_key: HashMap::new(),
            routes: Vec::new(),
            cache: HashMap::new(),
            next_index: seed & INDEX_MASK,
        }
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index = (self.next_index + 1) & INDEX_MASK;
            if !self.peers.contains_key(&i) {
                return i;
            }
        }
    }

    /// Makes the table equal to `wanted`, keeping the sessions of peers whose key and keepalive stay.
    /// Every tunnel shares `limiter` (mac1, cookies, the under-load state). Returns the indices of
    /// the peers that got a fresh tunnel (they should handshake right away).
    pub fn apply(
        &mut self,
        private: &PrivateKey,
        limiter: &Arc<RateLimiter>,
        wanted: Vec<PeerConfig>,
    ) -> Result<Vec<u32>> {
        validate(private.public_key(), &wanted)?;
        let keep: HashSet<PublicKey> = wanted.iter().map(|p| p.public_key).collect();
        let gone: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| !keep.contains(&p.key))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            if let Some(p) = self.peers.remove(&i) {
                self.by_key.remove(&p.key);
                tracing::info!(peer = %p.key, "peer removed");
            }
        }
        let mut fresh = Vec::new();
        for w in wanted {
            let existing = self.by_key.get(&w.public_key).copied();
            match existing.and_then(|i| self.peers.get_mut(&i)) {
                Some(p) if p.keepalive == w.persistent_keepalive => {
                    if p.endpoint != w.endpoint && w.endpoint.is_some() {
                        tracing::info!(peer = %p.key, endpoint = ?w.endpoint, "peer endpoint changed");
                        p.endpoint = w.endpoint;
                    }
                    p.allowed = w.allowed_ips;
                }
                _ => {
                    if let Some(i) = existing {
                        self.peers.remove(&i);
                    }
                    let index = self.alloc_index();
                    let tunn = Tunn::new(
                        private.secret().clone(),
                        x25519::PublicKey::from(w.public_key.0),
                        None,
                        w.persistent_keepalive,
                        index,
                        Some(limiter.clone()),
                    );
                    tracing::info!(peer = %w.public_key, endpoint = ?w.endpoint, "peer added");
                    self.by_key.insert(w.public_key, index);
                    fresh.push(index);
                    self.peers.insert(
                        index,
                        Peer {
                            key: w.public_key,
                            tunn,
                            endpoint: w.endpoint,
                            allowed: w.allowed_ips,
                            keepalive: w.persistent_keepalive,
                        },
                    );
                }
            }
        }
        self.rebuild_routes();
        Ok(fresh)
    }

    fn rebuild_routes(&mut self) {
        self.routes = self
            .peers
            .iter()
            .flat_map(|(i, p)| p.allowed.iter().map(move |c| (*c, *i)))
            .collect();
        self.routes
            .sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.0.cmp(&b.0)));
        self.cache.clear();
    }

    /// Switches every tunnel to a new private key (sessions are dropped and re-established) and to
    /// the rate limiter made for its public key.
    pub fn set_private(&mut self, private: &PrivateKey, limiter: &Arc<RateLimiter>) -> Result<()> {
        let own = private.public_key();
        if let Some(p) = self.peers.values().find(|p| p.key == own) {
            return Err(Error::Peer {
                peer: p.key,
                reason: "is the new private key's own public key".into(),
            });
        }
        let public = x25519::PublicKey::from(own.0);
        for p in self.peers.values_mut() {
            p.tunn
                .set_static_private(private.secret().clone(), public, Some(limiter.clone()));
        }
        Ok(())
    }

    /// The peer whose allowed IPs hold `dst` (longest prefix); answers are cached per destination.
    pub fn route(&mut self, dst: IpAddr) -> Option<u32> {
        if let Some(hit) = self.cache.get(&dst) {
            return *hit;
        }
        let found = self
            .routes
            .iter()
            .find(|(c, _)| c.contains(&dst))
            .map(|(_, i)| *i);
        if self.cache.len() >= ROUTE_CACHE {
            self.cache.clear();
        }
        self.cache.insert(dst, found);
        found
    }

    /// The peer owning local session index `receiver_idx` (boringtun puts the peer index in the top 24 bits).
    pub fn by_receiver(&self, receiver_idx: u32) -> Option<u32> {
        let i = receiver_idx >> 8;
        self.peers.contains_key(&i).then_some(i)
    }

    pub fn by_key(&self, key: &PublicKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn get_mut(&mut self, index: u32) -> Option<&mut Peer> {
        self.peers.get_mut(&index)
    }

    pub fn indices(&self) -> Vec<u32> {
        self.peers.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(own: &PrivateKey) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(
            &x25519::PublicKey::from(own.public_key().0),
            100,
        ))
    }

    fn peer(key: &PublicKey, cidrs: &[&str], ep: Option<&str>) -> PeerConfig {
        PeerConfig {
            public_key: *key,
            endpoint: ep.map(|e| e.parse().unwrap()),
            allowed_ips: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            persistent_keepalive: None,
        }
    }

    #[test]
    fn apply_adds_updates_in_place_and_removes() {
        let own = PrivateKey::generate().unwrap();
        let (a, b) = (
            PrivateKey::generate().unwrap().public_key(),
            PrivateKey::generate().unwrap().public_key(),
        );
        let mut t = Peers::new(7);
        let rl = limiter(&own);
        t.apply(
            &own,
            &rl,
            vec![
                peer(&a, &["10.1.0.0/24"], Some("192.0.2.1:51820")),
                peer(&b, &["10.2.0.0/24"], None),
            ],
        )
        .unwrap();
        assert_eq!(t.indices().len(), 2);
        let ia = t.route("10.1.0.9".parse().unwrap()).unwrap();
        assert_eq!(
            t.route("10.2.0.1".parse().unwrap()),
            t.by_key(&b),
            "now cached"
        );
        assert_eq!(t.by_key(&a), Some(ia));
        assert_eq!(t.by_receiver(ia << 8 | 3), Some(ia));
        // Endpoint and allowed-IP change: same tunnel index (session kept).
        let fresh = t
            .apply(
                &own,
                &rl,
                vec![peer(
                    &a,
                    &["10.1.0.0/24", "10.9.0.0/16"],
                    Some("192.0.2.7:51820"),
                )],
            )
            .unwrap();
        assert!(fresh.is_empty(), "an updated peer keeps its tunnel");
        assert_eq!(t.by_key(&a), Some(ia));
        assert_eq!(t.route("10.9.3.3".parse().unwrap()), Some(ia));
        assert_eq!(
            t.get_mut(ia).unwrap().endpoint,
            Some("192.0.2.7:51820".parse().unwrap())
        );
        assert_eq!(t.by_key(&b), None);
        assert_eq!(
            t.route("10.2.0.1".parse().unwrap()),
            None,
            "cached answer dropped with the peer"
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let own = PrivateKey::generate().unwrap();
        let (a, b) = (
            PrivateKey::generate().unwrap().public_key(),
            PrivateKey::generate().unwrap().public_key(),
        );
        let mut t = Peers::new(0);
        t.apply(
            &own,
            &limiter(&own),
            vec![
                peer(&a, &["10.0.0.0/8"], None),
                peer(&b, &["10.5.0.0/16"], None),
            ],
        )
        .unwrap();
        assert_eq!(t.route("10.5.1.1".parse().unwrap()), t.by_key(&b));
        assert_eq!(t.route("10.6.1.1".parse().unwrap()), t.by_key(&a));
    }

    #[test]
    fn invalid_sets_are_rejected_without_changes() {
        let own = PrivateKey::generate().unwrap();
        let a = PrivateKey::generate().unwrap().public_key();
        let mut t = Peers::new(0);
        let rl = limiter(&own);
        t.apply(&own, &rl, vec![peer(&a, &["10.1.0.0/24"], None)])
            .unwrap();
        let cases = [
            (vec![peer(&own.public_key(), &[], None)], "own public key"),
            (
                vec![peer(&a, &[], None), peer(&a, &[], None)],
                "listed twice",
            ),
        ];
        for (set, why) in cases {
            let e = t.apply(&own, &rl, set).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let b = PrivateKey::generate().unwrap().public_key();
        let e = t.apply(
            &own,
            &rl,
            vec![
                peer(&a, &["10.1.0.0/24"], None),
                peer(&b, &["10.1.0.0/24"], None),
            ],
        );
        assert!(e.unwrap_err().to_string().contains("also claimed"));
        assert!(
            t.by_key(&a).is_some(),
            "table unchanged after a rejected set"
        );
        assert!(t.by_key(&b).is_none());
    }
}
