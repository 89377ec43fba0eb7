//! The Identity service: the driver's name and version, what it offers, and whether
//! it is ready.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use crate::v1 as csi;
use crate::v1::plugin_capability::{service, Service, Type};

/// Identity, for a plugin that serves the controller, the node, or both.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// This plugin serves the Controller service.
    pub controller: bool,
}

#[tonic::async_trait]
impl csi::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _r: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: crate::DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _r: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let svc = |t: service::Type| csi::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t as i32 })),
        };
        let mut capabilities = vec![svc(service::Type::VolumeAccessibilityConstraints)];
        if self.controller {
            capabilities.push(svc(service::Type::ControllerService));
            // Grown while published (ControllerExpandVolume, then NodeExpandVolume).
            capabilities.push(csi::PluginCapability {
                r#type: Some(Type::VolumeExpansion(
                    crate::v1::plugin_capability::VolumeExpansion {
                        r#type: crate::v1::plugin_capability::volume_expansion::Type::Online as i32,
                    },
                )),
            });
        }
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _r: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}
