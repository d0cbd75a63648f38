//! The webhook's serving certificate, without cert-manager: a CA and a serving certificate it signs, kept in the
//! Secret [`SECRET_NAME`] of the operator's namespace, shared by every replica.
//!
//! - **Create**: the first replica that finds no (or an unreadable) Secret makes a CA (10 years) and a serving
//!   certificate (1 year, the Service's DNS names) and creates the Secret; a replica that loses the race (409) reads
//!   the winner's.
//! - **Rotate**: a replica that finds the serving certificate within [`ROTATE_BEFORE`] of its end issues a new one
//!   from the same CA (the `caBundle` stays valid) and replaces the Secret at the resourceVersion it read (a conflict:
//!   another replica rotated; it reads that). A CA within [`ROTATE_BEFORE`] of its end is replaced with the
//!   certificate (the `caBundle` is patched at once).
//! - Every replica re-reads the Secret periodically and serves what it holds ([`CertResolver`] swaps without a
//!   restart).
//!
//! Expiry times live in the Secret's annotations (unix seconds) next to the PEM data.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The Secret holding the CA and the serving certificate.
pub const SECRET_NAME: &str = "kitfleet-webhook-tls";
/// Annotation: when the serving certificate ends (unix seconds).
pub const ANNOTATION_NOT_AFTER: &str = "kitfleet.dev/serving-not-after";
/// Annotation: when the CA ends (unix seconds).
pub const ANNOTATION_CA_NOT_AFTER: &str = "kitfleet.dev/ca-not-after";
/// A certificate this close to its end is replaced.
pub const ROTATE_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of a serving certificate.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Certificate failures.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("secret {SECRET_NAME}: {0}")]
    Kube(#[from] kube::Error),
    #[error("serving certificate: {0}")]
    Tls(String),
}

/// The PEM material and expiry times.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Unix seconds.
    pub ca_not_after: i64,
    /// Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_not_after", &self.ca_not_after)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix(t)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// What to do with the Secret's bundle at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// A new serving certificate from the same CA.
    Reissue,
    /// A new CA and serving certificate.
    Renew,
}

/// The plan for `existing` (`None`: no usable bundle) at `now`.
pub fn plan(existing: Option<&Bundle>, now: SystemTime) -> Plan {
    let Some(b) = existing else {
        return Plan::Renew;
    };
    let horizon = unix(now) + ROTATE_BEFORE.as_secs() as i64;
    if b.ca_not_after <= horizon {
        Plan::Renew
    } else if b.not_after <= horizon {
        Plan::Reissue
    } else {
        Plan::Keep
    }
}

/// A new CA (PEM certificate, PEM key, end).
pub fn new_ca(now: SystemTime) -> Result<(String, String, i64), CertError> {
    let key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "kitfleet-webhook-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = offset(now - Duration::from_secs(300));
    let end = now + CA_VALIDITY;
    ca.not_after = offset(end);
    Ok((ca.self_signed(&key)?.pem(), key.serialize_pem(), unix(end)))
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by the CA.
pub fn issue(
    ca_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    now: SystemTime,
) -> Result<(String, String, i64), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names.to_vec())?;
    p.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = offset(now - Duration::from_secs(300));
    let end = now + SERVING_VALIDITY;
    p.not_after = offset(end);
    Ok((
        p.signed_by(&key, &issuer)?.pem(),
        key.serialize_pem(),
        unix(end),
    ))
}

/// Carries `existing` forward per [`plan`]: the same bundle, or one with new certificates.
pub fn rotate(
    existing: Option<&Bundle>,
    names: &[String],
    now: SystemTime,
) -> Result<Option<Bundle>, CertError> {
    match (plan(existing, now), existing) {
        (Plan::Keep, _) => Ok(None),
        (Plan::Reissue, Some(b)) => {
            let (cert_pem, key_pem, not_after) = issue(&b.ca_pem, &b.ca_key_pem, names, now)?;
            Ok(Some(Bundle {
                cert_pem,
                key_pem,
                not_after,
                ..b.clone()
            }))
        }
        _ => {
            let (ca_pem, ca_key_pem, ca_not_after) = new_ca(now)?;
            let (cert_pem, key_pem, not_after) = issue(&ca_pem, &ca_key_pem, names, now)?;
            Ok(Some(Bundle {
                ca_pem,
                ca_key_pem,
                cert_pem,
                key_pem,
                ca_not_after,
                not_after,
            }))
        }
    }
}

/// The bundle a Secret holds, if it holds a complete one.
pub fn from_secret(s: &Secret) -> Option<Bundle> {
    let data = s.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    let ann = s.metadata.annotations.as_ref()?;
    let num = |k: &str| ann.get(k)?.parse::<i64>().ok();
    Some(Bundle {
        ca_pem: text("ca.crt")?,
        ca_key_pem: text("ca.key")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
        ca_not_after: num(ANNOTATION_CA_NOT_AFTER)?,
        not_after: num(ANNOTATION_NOT_AFTER)?,
    })
}

fn to_secret(b: &Bundle, namespace: &str, resource_version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            resource_version,
            labels: Some(BTreeMap::from([(
                kitfleet_api::constants::LABEL_MANAGED_BY.to_string(),
                "kitfleet-operator".to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (
                    ANNOTATION_CA_NOT_AFTER.to_string(),
                    b.ca_not_after.to_string(),
                ),
                (ANNOTATION_NOT_AFTER.to_string(), b.not_after.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(&b.ca_pem)),
            ("ca.key".to_string(), bytes(&b.ca_key_pem)),
            ("tls.crt".to_string(), bytes(&b.cert_pem)),
            ("tls.key".to_string(), bytes(&b.key_pem)),
        ])),
        ..Default::default()
    }
}

/// Reads the Secret, creating or rotating it as needed (optimistic concurrency between replicas); returns the bundle
/// to serve.
pub async fn ensure(
    client: &kube::Client,
    namespace: &str,
    names: &[String],
) -> Result<Bundle, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..5 {
        let current = api.get_opt(SECRET_NAME).await?;
        let existing = current.as_ref().and_then(from_secret);
        let Some(next) = rotate(existing.as_ref(), names, SystemTime::now())? else {
            return Ok(existing.expect("Keep implies a bundle"));
        };
        let result = match &current {
            None => api
                .create(&PostParams::default(), &to_secret(&next, namespace, None))
                .await
                .map(|_| ()),
            Some(s) => api
                .replace(
                    SECRET_NAME,
                    &PostParams::default(),
                    &to_secret(&next, namespace, s.metadata.resource_version.clone()),
                )
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => {
                tracing::info!(
                    secret = SECRET_NAME,
                    not_after = next.not_after,
                    "webhook certificate written"
                );
                return Ok(next);
            }
            // Another replica created or rotated it first: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CertError::Tls(
        "the Secret kept changing under five attempts".into(),
    ))
}

/// The certificate the TLS server presents; swapped in place when the Secret changes.
#[derive(Debug)]
pub struct CertResolver(RwLock<Arc<CertifiedKey>>);

fn certified(b: &Bundle) -> Result<Arc<CertifiedKey>, CertError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(b.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(b.key_pem.as_bytes())
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl CertResolver {
    /// A resolver presenting `b`.
    pub fn new(b: &Bundle) -> Result<Self, CertError> {
        Ok(CertResolver(RwLock::new(certified(b)?)))
    }

    /// Presents `b` from the next handshake on.
    pub fn set(&self, b: &Bundle) -> Result<(), CertError> {
        *self.0.write().expect("lock") = certified(b)?;
        Ok(())
    }

    /// A rustls server configuration presenting this resolver's certificate (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("lock").clone())
    }
}

/// The DNS names of the webhook Service `service` in `namespace`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_by_expiry() {
        let now = SystemTime::now();
        let names = vec![
            "kitfleet-webhook.kitfleet-system.svc".to_string(),
            "127.0.0.1".to_string(),
        ];
        let b = rotate(None, &names, now).unwrap().unwrap();
        assert_eq!(plan(Some(&b), now), Plan::Keep);
        assert!(rotate(Some(&b), &names, now).unwrap().is_none());
        // 340 days on: the serving certificate is within 30 days of its end, the CA is not.
        let later = now + Duration::from_secs(340 * 24 * 3600);
        assert_eq!(plan(Some(&b), later), Plan::Reissue);
        let r = rotate(Some(&b), &names, later).unwrap().unwrap();
        assert_eq!(r.ca_pem, b.ca_pem, "same CA: the caBundle stays valid");
        assert_ne!(r.cert_pem, b.cert_pem);
        assert!(r.not_after > b.not_after);
        // Near the CA's end: everything is new.
        let much_later = now + CA_VALIDITY - Duration::from_secs(24 * 3600);
        assert_eq!(plan(Some(&r), much_later), Plan::Renew);
        assert_ne!(
            rotate(Some(&r), &names, much_later)
                .unwrap()
                .unwrap()
                .ca_pem,
            b.ca_pem
        );
        // The bundle survives the Secret round trip and loads into rustls.
        let s = to_secret(&b, "ns", None);
        assert_eq!(from_secret(&s), Some(b.clone()));
        CertResolver::new(&b).unwrap();
        let mut broken = s.clone();
        broken.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(from_secret(&broken), None);
    }
}
