//! lb's datapath: the two TC programs and the packet path they share.
//!
//! - `from_netdev`: ingress of the node's external interfaces.
//! - `from_pod`: ingress of the host side of pod interfaces.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod datapath {
    use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

    #[classifier]
    pub fn from_netdev(_ctx: TcContext) -> i32 {
        TC_ACT_UNSPEC
    }

    #[classifier]
    pub fn from_pod(_ctx: TcContext) -> i32 {
        TC_ACT_UNSPEC
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// The host build of this binary does nothing: the programs only exist for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
