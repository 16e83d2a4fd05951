//! Drop reasons and drop sites: one definition serves the kernel, the agent's metrics and
//! `lbctl`. Numbers and messages are Cilium's (`bpf/lib/drop_reasons.h`), the ones operators
//! already know; a number is never reused.

/// Why the datapath dropped a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Malformed or truncated headers.
    Invalid = 134,
    /// A packet too big for the egress device's MTU that cannot be segmented (no GSO packet).
    FragNeeded = 136,
    /// A helper failed to rewrite the packet.
    WriteError = 141,
    /// A protocol lb does not serve (neither TCP, UDP nor ICMP) addressed to a VIP.
    UnknownL4 = 142,
    /// An ICMP message to a VIP that is neither an echo request nor an error lb translates.
    UnknownIcmp4Type = 144,
    /// Conntrack insertion failed (map full and eviction impossible).
    CtCreateFailed = 155,
    /// A fragment lb cannot map to a flow: one of a protocol it does not track (neither TCP
    /// nor UDP, whose fragments are tracked: see `FragNotFound`) addressed to a VIP.
    FragNoSupport = 157,
    /// The frontend has no backend to send the packet to.
    NoService = 158,
    /// A setting the packet needs is missing: no node address to SNAT a flow to a remote
    /// backend to.
    NoConfig = 165,
    /// No free source port for SNAT (the SNAT port range is exhausted for this backend).
    NatNoMapping = 167,
    /// The FIB has no route or neighbour for a forwarded packet.
    NoFib = 169,
    /// A packet from outside the cluster to a ClusterIP that is not routable.
    IsClusterIp = 174,
    /// A new flow from outside the cluster to a load-balancer frontend from a client that none
    /// of the Service's `loadBalancerSourceRanges` contains.
    NotInSrcRange = 177,
    /// A later fragment to a VIP whose first fragment (the one with the ports) was not seen.
    FragNotFound = 175,
}

impl DropReason {
    /// Every reason, in numeric order.
    pub const ALL: [DropReason; 14] = [
        Self::Invalid,
        Self::FragNeeded,
        Self::WriteError,
        Self::UnknownL4,
        Self::UnknownIcmp4Type,
        Self::CtCreateFailed,
        Self::FragNoSupport,
        Self::NoService,
        Self::NoConfig,
        Self::NatNoMapping,
        Self::NoFib,
        Self::IsClusterIp,
        Self::FragNotFound,
        Self::NotInSrcRange,
    ];

    /// The message operators see, Cilium's wording.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Invalid => "Invalid packet",
            Self::FragNeeded => "Fragmentation needed",
            Self::WriteError => "Error writing to packet",
            Self::UnknownL4 => "Unknown L4 protocol",
            Self::UnknownIcmp4Type => "Unknown ICMPv4 type",
            Self::CtCreateFailed => "CT: Map insertion failed",
            Self::FragNoSupport => "IP fragmentation not supported",
            Self::NoService => "Service backend not found",
            Self::NoConfig => "No configuration available",
            Self::NatNoMapping => "No mapping for NAT masquerade",
            Self::NoFib => "FIB lookup failed",
            Self::IsClusterIp => "Is a ClusterIP",
            Self::FragNotFound => "First logical datagram fragment not found",
            Self::NotInSrcRange => "Denied by LB src range check",
        }
    }

    /// The reason with this number, if lb knows it.
    pub const fn from_u8(code: u8) -> Option<Self> {
        match code {
            134 => Some(Self::Invalid),
            136 => Some(Self::FragNeeded),
            141 => Some(Self::WriteError),
            142 => Some(Self::UnknownL4),
            144 => Some(Self::UnknownIcmp4Type),
            155 => Some(Self::CtCreateFailed),
            157 => Some(Self::FragNoSupport),
            158 => Some(Self::NoService),
            165 => Some(Self::NoConfig),
            167 => Some(Self::NatNoMapping),
            169 => Some(Self::NoFib),
            174 => Some(Self::IsClusterIp),
            175 => Some(Self::FragNotFound),
            177 => Some(Self::NotInSrcRange),
            _ => None,
        }
    }
}

/// The eBPF source file of a drop site, carried in events as one byte.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceFile {
    /// Unknown (an event from a newer datapath).
    Unknown = 0,
    /// `lb-ebpf/src/main.rs`
    Main = 1,
    /// `lb-ebpf/src/parse.rs`
    Parse = 2,
    /// `lb-ebpf/src/lb.rs`
    Lb = 3,
    /// `lb-ebpf/src/policy.rs`
    Policy = 4,
    /// `lb-ebpf/src/conntrack.rs`
    Conntrack = 5,
    /// `lb-ebpf/src/nat.rs`
    Nat = 6,
    /// `lb-ebpf/src/csum.rs`
    Csum = 7,
    /// `lb-ebpf/src/fib.rs`
    Fib = 8,
    /// `lb-ebpf/src/icmp.rs`
    Icmp = 9,
    /// `lb-ebpf/src/hairpin.rs`
    Hairpin = 10,
    /// `lb-ebpf/src/frag.rs`
    Frag = 11,
    /// `lb-ebpf/src/parse6.rs`
    Parse6 = 12,
    /// `lb-ebpf/src/lb6.rs`
    Lb6 = 13,
    /// `lb-ebpf/src/policy6.rs`
    Policy6 = 14,
    /// `lb-ebpf/src/conntrack6.rs`
    Conntrack6 = 15,
    /// `lb-ebpf/src/nat6.rs`
    Nat6 = 16,
    /// `lb-ebpf/src/fib6.rs`
    Fib6 = 17,
    /// `lb-ebpf/src/icmp6.rs`
    Icmp6 = 18,
    /// `lb-ebpf/src/frag6.rs`
    Frag6 = 19,
}

impl SourceFile {
    /// The file name printed by `lbctl monitor`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Main => "main.rs",
            Self::Parse => "parse.rs",
            Self::Lb => "lb.rs",
            Self::Policy => "policy.rs",
            Self::Conntrack => "conntrack.rs",
            Self::Nat => "nat.rs",
            Self::Csum => "csum.rs",
            Self::Fib => "fib.rs",
            Self::Icmp => "icmp.rs",
            Self::Hairpin => "hairpin.rs",
            Self::Frag => "frag.rs",
            Self::Parse6 => "parse6.rs",
            Self::Lb6 => "lb6.rs",
            Self::Policy6 => "policy6.rs",
            Self::Conntrack6 => "conntrack6.rs",
            Self::Nat6 => "nat6.rs",
            Self::Fib6 => "fib6.rs",
            Self::Icmp6 => "icmp6.rs",
            Self::Frag6 => "frag6.rs",
        }
    }

    /// The file with this id; `Unknown` for ids lb does not know.
    pub const fn from_u8(id: u8) -> Self {
        match id {
            1 => Self::Main,
            2 => Self::Parse,
            3 => Self::Lb,
            4 => Self::Policy,
            5 => Self::Conntrack,
            6 => Self::Nat,
            7 => Self::Csum,
            8 => Self::Fib,
            9 => Self::Icmp,
            10 => Self::Hairpin,
            11 => Self::Frag,
            12 => Self::Parse6,
            13 => Self::Lb6,
            14 => Self::Policy6,
            15 => Self::Conntrack6,
            16 => Self::Nat6,
            17 => Self::Fib6,
            18 => Self::Icmp6,
            19 => Self::Frag6,
            _ => Self::Unknown,
        }
    }
}

/// Which program saw the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Ingress of the node's external interfaces.
    FromNetdev = 1,
    /// Ingress of the host side of pod interfaces.
    FromPod = 2,
    /// Egress of both kinds of interface: what the host's own stack sends (replies of
    /// host-network backends).
    FromHost = 3,
}

impl Hook {
    /// The hook with this id.
    pub const fn from_u8(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::FromNetdev),
            2 => Some(Self::FromPod),
            3 => Some(Self::FromHost),
            _ => None,
        }
    }

    /// The program's name, as the CLI and metrics print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FromNetdev => "from-netdev",
            Self::FromPod => "from-pod",
            Self::FromHost => "from-host",
        }
    }
}
