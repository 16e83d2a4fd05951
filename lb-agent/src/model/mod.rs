//! TEMPORARY interface stub; replaced by the real model (kube-proxy's rules).
use std::net::Ipv4Addr;

/// Protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// VIP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// Backend state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendState {
    /// Active.
    Active,
    /// Terminating.
    Terminating,
}

/// A backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// State.
    pub state: BackendState,
    /// On another node.
    pub remote: bool,
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Port name.
    pub port_name: String,
    /// Frontend.
    pub frontend: Frontend,
    /// Backends.
    pub backends: Vec<DesiredBackend>,
}
