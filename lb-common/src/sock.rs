//! Socket-level load balancing (`lb-ebpf/src/sock.rs`): the reverse entries that make a
//! translated socket's peer look like the VIP it was asked for, and where the host's network
//! namespace is recorded.

/// Key of `LB4_REVERSE_SK`: a socket (its cookie) and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey4 {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// The backend's address (network byte order).
    pub backend_addr: u32,
    /// The backend's port (network byte order).
    pub backend_port: u16,
    /// Zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevKey4>() == 16);

/// Value of `LB4_REVERSE_SK`: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue4 {
    /// The VIP (network byte order).
    pub vip: u32,
    /// The service id; an entry whose frontend now has another id is stale.
    pub rev_nat: u32,
    /// The frontend's port (network byte order).
    pub vip_port: u16,
    /// Zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevValue4>() == 12);

crate::pod!(SockRevKey4, SockRevValue4);

/// Key of `LB6_REVERSE_SK`: [`SockRevKey4`] for a socket sent to an IPv6 backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey6 {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// The backend's address (network byte order, as `Addr6`).
    pub backend_addr: crate::Addr6,
    /// The backend's port (network byte order).
    pub backend_port: u16,
    /// Zero.
    pub _pad: [u16; 3],
}
const _: () = assert!(core::mem::size_of::<SockRevKey6>() == 32);

/// Value of `LB6_REVERSE_SK`: the IPv6 frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue6 {
    /// The VIP (network byte order, as `Addr6`).
    pub vip: crate::Addr6,
    /// The service id; an entry whose frontend now has another id is stale.
    pub rev_nat: u32,
    /// The frontend's port (network byte order).
    pub vip_port: u16,
    /// Zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevValue6>() == 24);

crate::pod!(SockRevKey6, SockRevValue6);
