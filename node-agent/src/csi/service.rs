//! The gRPC services: CSI Identity and Node (on the CSI socket), and the kubelet's plugin Registration (on the
//! registration socket). Requests are checked here, field by field; the work is in [`Driver`].

use crate::csi::attrs;
use crate::csi::driver::{Driver, DriverError, PublishRequest};
use crate::csi::proto::csi as pb;
use crate::csi::proto::registration as reg;
use crate::csi::source::PolicySource;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Request, Response, Status};

impl From<DriverError> for Status {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::InvalidArgument(m) => Status::invalid_argument(m),
            DriverError::NotFound(m) => Status::not_found(m),
            DriverError::AlreadyExists(m) => Status::already_exists(m),
            DriverError::FailedPrecondition(m) => Status::failed_precondition(m),
            DriverError::Unavailable(m) => Status::unavailable(m),
            DriverError::Internal(m) => Status::internal(m),
        }
    }
}

/// Identity and Node services over one [`Driver`].
#[derive(Debug)]
pub struct CsiService<S> {
    driver: Arc<Driver<S>>,
}

impl<S> Clone for CsiService<S> {
    fn clone(&self) -> Self {
        Self {
            driver: self.driver.clone(),
        }
    }
}

impl<S: PolicySource> CsiService<S> {
    /// Serves `driver`.
    pub fn new(driver: Arc<Driver<S>>) -> Self {
        Self { driver }
    }
}

fn invalid(m: impl Into<String>) -> Status {
    Status::invalid_argument(m.into())
}

/// `volume_id`: required; the kubelet's ids are `csi-<hex>`; anything printable without `/` is accepted.
fn check_volume_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("volume_id: missing"));
    }
    if id.len() > 256
        || id.contains('/')
        || id.chars().any(|c| c.is_control())
        || id == "."
        || id == ".."
    {
        return Err(invalid(format!(
            "volume_id {id:?}: at most 256 printable characters, no '/'"
        )));
    }
    Ok(())
}

fn check_target(path: &str) -> Result<PathBuf, Status> {
    if path.is_empty() {
        return Err(invalid("target_path: missing"));
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() || path.contains('\0') {
        return Err(invalid(format!(
            "target_path {path:?}: not an absolute path"
        )));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid(format!("target_path {path:?}: contains \"..\"")));
    }
    Ok(p)
}

/// The capability: a mount (not block) volume with a single-node access mode. Unset fields are
/// `InvalidArgument`; set ones the volume cannot honour are `FailedPrecondition` ("exceeds capabilities").
fn check_capability(cap: Option<&pb::VolumeCapability>) -> Result<String, Status> {
    use pb::volume_capability::{AccessType, access_mode::Mode};
    let cap = cap.ok_or_else(|| invalid("volume_capability: missing"))?;
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| invalid("volume_capability.access_mode: missing"))?;
    let mode = Mode::try_from(mode.mode).map_err(|_| {
        invalid(format!(
            "volume_capability.access_mode.mode: unknown value {}",
            mode.mode
        ))
    })?;
    match mode {
        Mode::Unknown => {
            return Err(invalid(
                "volume_capability.access_mode.mode: missing (UNKNOWN)",
            ));
        }
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => {}
        other => {
            return Err(Status::failed_precondition(format!(
                "volume_capability.access_mode.mode: {} is not supported (a node-local volume: SINGLE_NODE_* only)",
                other.as_str_name()
            )));
        }
    }
    match &cap.access_type {
        None => Err(invalid(
            "volume_capability.access_type: missing (mount or block)",
        )),
        Some(AccessType::Block(_)) => Err(Status::failed_precondition(
            "volume_capability.block: the sandbox volume is a directory (mount access only)",
        )),
        Some(AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "volume_capability.mount.fs_type {:?}: the sandbox volume is a bind-mounted directory (no filesystem type)",
                    m.fs_type
                )));
            }
            if let Some(f) = m.mount_flags.iter().find(|f| f.as_str() != "ro") {
                return Err(Status::failed_precondition(format!(
                    "volume_capability.mount.mount_flags: {f:?} is not supported (the volume is always read-only, nosuid, nodev)"
                )));
            }
            Ok(format!("{}|{:?}", mode.as_str_name(), m.mount_flags))
        }
    }
}

#[tonic::async_trait]
impl<S: PolicySource> pb::identity_server::Identity for CsiService<S> {
    async fn get_plugin_info(
        &self,
        _req: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: self.driver.config().driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        // Node service only: no controller, no topology constraints.
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        let cfg = self.driver.config();
        let launcher = std::fs::metadata(&cfg.launcher);
        match launcher {
            Ok(m) if m.is_file() => Ok(Response::new(pb::ProbeResponse { ready: Some(true) })),
            Ok(_) => Err(Status::failed_precondition(format!(
                "launcher {}: not a file",
                cfg.launcher.display()
            ))),
            Err(e) => Err(Status::failed_precondition(format!(
                "launcher {}: {e}",
                cfg.launcher.display()
            ))),
        }
    }
}

#[tonic::async_trait]
impl<S: PolicySource> pb::node_server::Node for CsiService<S> {
    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        check_volume_id(&r.volume_id)?;
        let target_path = check_target(&r.target_path)?;
        let cap = check_capability(r.volume_capability.as_ref())?;
        let ctx: BTreeMap<String, String> = r.volume_context.into_iter().collect();
        let attrs = attrs::parse(&ctx).map_err(|e| invalid(e.to_string()))?;
        let params = format!(
            "{cap}|readonly={}|{}",
            r.readonly,
            serde_json::to_string(&ctx).expect("map serialises")
        );
        self.driver
            .publish(PublishRequest {
                volume_id: r.volume_id,
                target_path,
                params,
                attrs,
            })
            .await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        check_volume_id(&r.volume_id)?;
        let target = check_target(&r.target_path)?;
        self.driver.unpublish(&r.volume_id, &target).await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        // No staging (NodeStage/NodeUnstage), no stats, no expansion.
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.driver.config().node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

/// The kubelet's plugin Registration service: answers `GetInfo` with the CSI driver's name and endpoint.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    /// Driver name.
    pub name: String,
    /// The CSI socket as the kubelet sees it.
    pub endpoint: String,
    /// Last status the kubelet reported: `None` before any.
    pub status: Arc<std::sync::Mutex<Option<reg::RegistrationStatus>>>,
}

/// The CSI versions advertised to the kubelet.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

#[tonic::async_trait]
impl reg::registration_server::Registration for RegistrationService {
    async fn get_info(
        &self,
        _req: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!(driver = %self.name, "registered with the kubelet");
        } else {
            tracing::error!(driver = %self.name, error = %s.error, "the kubelet refused the registration");
        }
        *self.status.lock().expect("lock") = Some(s);
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}
