//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's `leaderelection` does it: every write
//! is a `replace` carrying the `resourceVersion` that was read, so of two replicas racing for the Lease exactly one
//! wins (the other gets 409 Conflict); each replica writes with its own identity and its own field manager.
//!
//! A standby tries every retry period and takes the Lease when it is free (released, or never held) or when its
//! record has not changed for a Lease duration by the standby's own clock (so clock skew between replicas does not
//! matter). The leader renews every retry period and gives up leading when it has not renewed for the renew
//! deadline — shorter than the Lease duration, so it stops before any standby can take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use crate::config::LeaseSettings;

/// A Lease request that failed (other than losing a race, which is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {name}: no answer within {after:?}")]
    Timeout { name: String, after: Duration },
}

/// One replica's view of the Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    identity: String,
    field_manager: String,
    settings: LeaseSettings,
    /// The record last read (holder, renew time, resource version) and when it was first seen.
    observed: Option<(String, Instant)>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// An elector for `identity` on the Lease `settings.name` in `namespace`.
    pub fn new(client: Client, namespace: &str, identity: &str, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            identity: identity.to_string(),
            field_manager: field_manager(identity),
            settings,
            observed: None,
        }
    }

    fn kube(&self, source: kube::Error) -> LeaderError {
        LeaderError::Kube {
            name: self.settings.name.clone(),
            source,
        }
    }

    fn params(&self) -> PostParams {
        PostParams {
            field_manager: Some(self.field_manager.clone()),
            ..Default::default()
        }
    }

    /// Takes or renews the Lease: `Ok(true)` when this replica holds it now, `Ok(false)` when another does.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.kube(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_duration_seconds: Some(seconds),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&self.params(), &lease).await {
                Ok(l) => {
                    self.observe(&l);
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.kube(e)),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if let Some(h) = &holder
            && !mine
        {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.settings.duration, Duration::from_secs);
            let seen = self.observed.as_ref().map_or_else(Instant::now, |o| o.1);
            if seen.elapsed() < duration {
                tracing::debug!(holder = %h, "the Lease is held");
                return Ok(false);
            }
            tracing::info!(holder = %h, "the Lease expired; taking it over");
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.holder_identity = Some(self.identity.clone());
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(holder.is_some()));
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        match self
            .api
            .replace(&self.settings.name, &self.params(), &lease)
            .await
        {
            Ok(l) => {
                self.observe(&l);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.kube(e)),
        }
    }

    /// Gives the Lease up if this replica holds it (a standby can take it at its next attempt).
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.kube(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &self.params(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Changed meanwhile (taken over after an expiry): nothing of ours to release.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.kube(e)),
        }
    }

    /// Remembers when the record last changed (by this replica's clock).
    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.as_ref();
        let record = format!(
            "{:?}/{:?}/{:?}",
            spec.and_then(|s| s.holder_identity.as_ref()),
            spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            lease.metadata.resource_version
        );
        match &self.observed {
            Some((r, _)) if *r == record => {}
            _ => self.observed = Some((record, Instant::now())),
        }
    }

    /// The Lease timing.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }
}

/// The field manager of one replica's Lease writes (`kitfleet-operator-<identity>`; the configuration keeps
/// identities to 100 bytes, so it stays within the API's 128).
pub fn field_manager(identity: &str) -> String {
    format!("{}-{identity}", crate::FIELD_MANAGER)
}
