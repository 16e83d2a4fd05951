//! IPv4 fragments (`frag.rs`): a datagram's first fragment carries the ports and records them;
//! its later fragments take them from there and are translated like the first (addresses and
//! IP checksum only: the L4 checksum, in the first fragment, covers the whole datagram). A
//! later fragment to a VIP whose first was not seen drops with 175. Fragmented replies are
//! reverse-NATed the same way.
//!
//! Frames are whole datagrams cut into fragments by etherparse; outputs are compared byte for
//! byte with the translated datagram cut the same way, and reassembled to check the UDP
//! checksum over the whole datagram. The last test sends a 4000-byte UDP datagram over
//! 1500-byte-MTU veths to a ClusterIP and expects its whole echo back (needs root and
//! `python3`).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use etherparse::{EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, UdpHeader};
use lb_common::{
    config::{
        CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC, SNAT_PORT_MAX, SNAT_PORT_MIN,
    },
    drop::{DropReason, Hook, SourceFile},
};
use lb_lab::probe::EchoReply;
use lb_testkit::packet::{DST_MAC, SRC_MAC, addr, ip, ip_be, udp};
use lb_testkit::patience::ANSWER_WITHIN;
use lb_tests::fixture::{
    Datapath, FibNetns, ServiceExt as _, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, service,
};
use lb_tests::topology::{BACKEND_IPS, CLIENT_IP, ECHO_PORT, Topology};

const VIP: &str = "10.96.0.10:53";
const FRONTEND: &str = "10.96.0.10:53/UDP";
const BACKEND: &str = "10.244.1.5:5353";
const POD: &str = "10.244.0.7:40000";
/// IP identification of the datagrams built here.
const ID: u16 = 0x4242;
/// A datagram of this many bytes over a 1500-byte MTU is three fragments.
const LEN: usize = 3000;

/// The Ethernet frames of one UDP datagram of `len` payload bytes from `src` to `dst`, cut
/// into IP packets of at most `mtu` bytes, every checksum computed by etherparse.
fn udp_fragments(src: &str, dst: &str, len: usize, mtu: usize) -> Vec<Vec<u8>> {
    let (src, dst) = (addr(src), addr(dst));
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let whole = Ipv4Header::new(
        (UdpHeader::LEN + len) as u16,
        64,
        IpNumber::UDP,
        src.ip().octets(),
        dst.ip().octets(),
    )
    .expect("ipv4 header");
    let udp = UdpHeader::with_ipv4_checksum(src.port(), dst.port(), &whole, &payload)
        .expect("udp header");
    let mut datagram = udp.to_bytes().to_vec();
    datagram.extend_from_slice(&payload);
    // Fragment offsets are in 8-byte units.
    let chunk = (mtu - Ipv4Header::MIN_LEN) / 8 * 8;
    datagram
        .chunks(chunk)
        .enumerate()
        .map(|(i, piece)| {
            let mut ip = Ipv4Header::new(
                piece.len() as u16,
                64,
                IpNumber::UDP,
                src.ip().octets(),
                dst.ip().octets(),
            )
            .expect("fragment header");
            ip.identification = ID;
            ip.more_fragments = (i + 1) * chunk < datagram.len();
            ip.fragment_offset =
                IpFragOffset::try_new((i * chunk / 8) as u16).expect("fragment offset");
            ip.header_checksum = ip.calc_header_checksum();
            let mut frame = Vec::new();
            Ethernet2Header {
                destination: DST_MAC,
                source: SRC_MAC,
                ether_type: EtherType::IPV4,
            }
            .write(&mut frame)
            .expect("write ethernet");
            ip.write(&mut frame).expect("write ipv4");
            frame.extend_from_slice(piece);
            frame
        })
        .collect()
}

/// Reassembles `frames` (checking every IP header checksum and that all name one datagram) and
/// checks the UDP checksum over the whole datagram; returns its source, destination and
/// payload length.
fn reassemble(frames: &[Vec<u8>]) -> (SocketAddrV4, SocketAddrV4, usize) {
    let mut data = Vec::new();
    let mut addrs = None;
    for frame in frames {
        let (_, rest) = Ethernet2Header::from_slice(frame).expect("ethernet");
        let (ip, rest) = Ipv4Header::from_slice(rest).expect("ipv4");
        assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IP checksum");
        let this = (ip.source, ip.destination, ip.identification);
        assert_eq!(*addrs.get_or_insert(this), this, "one datagram");
        let offset = usize::from(ip.fragment_offset.value()) * 8;
        if data.len() < offset + rest.len() {
            data.resize(offset + rest.len(), 0);
        }
        data[offset..offset + rest.len()].copy_from_slice(rest);
    }
    let (source, destination, _) = addrs.expect("at least one fragment");
    let (udp, payload) = UdpHeader::from_slice(&data).expect("udp header");
    assert_eq!(
        udp.checksum,
        udp.calc_checksum_ipv4_raw(source, destination, payload)
            .expect("udp checksum"),
        "UDP checksum over the reassembled datagram"
    );
    (
        SocketAddrV4::new(source.into(), udp.source_port),
        SocketAddrV4::new(destination.into(), udp.destination_port),
        payload.len(),
    )
}

fn dns_datapath() -> Datapath {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[BACKEND])]);
    datapath
}

/// Runs every frame through from-pod and returns what came out; each must pass.
fn run_all(datapath: &Datapath, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let run = datapath.run(Hook::FromPod, frame);
            assert_eq!(run.verdict, TC_ACT_UNSPEC, "fragment {i}");
            run.frame
        })
        .collect()
}

#[test]
fn a_fragmented_datagram_to_a_vip_is_translated_fragment_by_fragment() {
    let datapath = dns_datapath();
    let fragments = udp_fragments(POD, VIP, LEN, 1500);
    assert_eq!(fragments.len(), 3);

    let out = run_all(&datapath, &fragments);

    assert_eq!(
        out,
        udp_fragments(POD, BACKEND, LEN, 1500),
        "each fragment as if the datagram had been sent to the backend"
    );
    assert_eq!(reassemble(&out), (addr(POD), addr(BACKEND), LEN));
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn a_later_fragment_whose_first_was_not_seen_drops_with_175() {
    let mut datapath = dns_datapath();
    let fragments = udp_fragments(POD, VIP, LEN, 1500);

    let run = datapath.run(Hook::FromPod, &fragments[1]);

    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.all_drops(),
        vec![(DropReason::FragNotFound as u8, Hook::FromPod as u8, 1)]
    );
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].reason, events[0].file),
        (175, SourceFile::Frag as u8)
    );
    assert_eq!((events[0].sport, events[0].dport), (0, 0), "no ports seen");

    // The first fragment then records the datagram, and the rest follows it.
    let out = run_all(&datapath, &[fragments[0].clone(), fragments[2].clone()]);
    let want = udp_fragments(POD, BACKEND, LEN, 1500);
    assert_eq!(out, [want[0].clone(), want[2].clone()]);
}

#[test]
fn a_fragmented_reply_is_reverse_nated_to_the_vip() {
    let datapath = dns_datapath();
    let run = datapath.run(Hook::FromPod, &udp(POD, VIP));
    assert_eq!(run.frame, udp(POD, BACKEND), "the flow is established");

    let out = run_all(&datapath, &udp_fragments(BACKEND, POD, LEN, 1500));

    assert_eq!(out, udp_fragments(VIP, POD, LEN, 1500));
    assert_eq!(reassemble(&out), (addr(VIP), addr(POD), LEN));
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn fragments_of_a_datagram_lb_does_not_translate_pass_untouched() {
    let datapath = dns_datapath();
    let fragments = udp_fragments(POD, "10.244.3.3:53", LEN, 1500);
    let out = run_all(&datapath, &fragments);
    assert_eq!(out, fragments);
    // Nor does a reply's later fragment whose first fragment went by unseen.
    let stray = udp_fragments(BACKEND, POD, LEN, 1500);
    assert_eq!(run_all(&datapath, &stray[1..]), stray[1..]);
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn a_fragmented_datagram_from_outside_to_a_remote_backend_is_snated_and_redirected() {
    let netns = FibNetns::new("fragsnat", true);
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        node_addr: ip_be(ip("192.168.56.4")),
        snat_port_min: SNAT_PORT_MIN,
        snat_port_max: SNAT_PORT_MAX,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(&[service(FRONTEND, &["10.244.2.7:5353"]).remote()]);
    let fragments = udp_fragments("192.168.56.10:33802", VIP, LEN, 1500);

    let out: Vec<Vec<u8>> = fragments
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, frame, netns.ifindex));
            assert_eq!(run.verdict, TC_ACT_REDIRECT, "fragment {i}");
            run.frame
        })
        .collect();

    let (source, destination, len) = reassemble(&out);
    assert_eq!(*source.ip(), ip("192.168.56.4"), "SNATed to the node");
    assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&source.port()));
    assert_eq!((destination, len), (addr("10.244.2.7:5353"), LEN));
    assert_eq!(datapath.all_drops(), vec![]);
}

/// The ClusterIP of the traffic test, on the backends' UDP echo servers.
const ECHO_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
/// Larger than the veths' 1500-byte MTU: three fragments each way.
const BIG: usize = 4000;

#[test]
fn a_udp_datagram_larger_than_the_mtu_to_a_cluster_ip_gets_its_whole_echo_back() {
    let topology = Topology::new("frag_udp_echo");
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.attach_to(&topology);
    let backends = BACKEND_IPS.map(|ip| format!("{ip}:{ECHO_PORT}"));
    datapath.sync(&[service(
        &format!("{ECHO_VIP}/UDP"),
        &[&backends[0], &backends[1]],
    )]);

    for i in 0..10 {
        let payload: String = (0..BIG)
            .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
            .collect();
        let exchange = || -> std::io::Result<Vec<u8>> {
            let socket = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 0))?;
            // Connected: only an answer from VIP:53 is received.
            socket.connect(ECHO_VIP)?;
            socket.set_read_timeout(Some(ANSWER_WITHIN))?;
            socket.send(payload.as_bytes())?;
            let mut buf = vec![0u8; 65_536];
            let n = socket.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        };
        let answer = topology
            .client
            .ns
            .within(exchange)
            .expect("enter the client's namespace")
            .unwrap_or_else(|err| panic!("datagram {i} of {BIG} bytes to {ECHO_VIP}: {err}"));
        let text = String::from_utf8(answer).expect("an echo is text");
        let reply = EchoReply::parse(&text).expect("the echo server's answer");
        assert_eq!(reply.payload.len(), BIG, "the whole datagram came back");
        assert_eq!(reply.payload, payload);
        assert_eq!(*reply.client.ip(), CLIENT_IP);
        assert!(BACKEND_IPS.contains(&reply.pod_ip), "{}", reply.pod_ip);
    }
    assert_eq!(datapath.all_drops(), vec![], "nothing was dropped");
}
