//! Cost per packet under `BPF_PROG_TEST_RUN` (kernel-measured, averaged over the runs) of the
//! three paths the issue asks about. Ignored by default; run with
//! `cargo test -p lb-tests --test datapath_bench -- --ignored --nocapture`.
//!
//! The numbers are measured by the kernel, so a debug build of the test is as good as a release
//! one.
//!
//! `repeat` reruns the program on the buffer the previous run rewrote, so each path is set up
//! so that every repetition takes the path being measured:
//! - pass-through: TCP to an address that is no VIP; the packet never changes.
//! - established flow: two services whose backends are each other's frontend (A → B, B → A).
//!   Once both flows exist, every run is a conntrack hit with a full DNAT that turns the packet
//!   into the other flow's next packet.
//! - new flow: `repeat` cannot make a miss repeat, so each sample is a separate run (repeat 1)
//!   from a fresh client port, and the kernel-measured durations are averaged.

use lb_common::drop::Hook;
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, TC_ACT_UNSPEC, service};

const REPEAT: u32 = 100_000;

#[test]
#[ignore = "a measurement, not a check; run it explicitly"]
fn cost_per_packet_of_pass_through_established_and_new_flows() {
    let mut datapath = Datapath::load();
    datapath.sync(&[
        service("10.96.0.10:80/TCP", &["10.96.0.11:81"]),
        service("10.96.0.11:81/TCP", &["10.96.0.10:80"]),
    ]);

    let pass = datapath.run_repeat(
        Hook::FromPod,
        &tcp_ack("10.244.0.7:40000", "10.244.9.9:80"),
        REPEAT,
    );
    assert_eq!(pass.verdict, TC_ACT_UNSPEC);

    let a = tcp_ack("10.244.0.7:40000", "10.96.0.10:80");
    let b = datapath.run(Hook::FromPod, &a).frame;
    assert_eq!(b, tcp_ack("10.244.0.7:40000", "10.96.0.11:81"));
    assert_eq!(
        datapath.run(Hook::FromPod, &b).frame,
        a,
        "B's flow leads back to A"
    );
    let established = datapath.run_repeat(Hook::FromPod, &a, REPEAT);
    assert_eq!(established.verdict, TC_ACT_UNSPEC);
    let hits = datapath.conntrack().len();
    assert_eq!(
        hits, 4,
        "only the two flows exist: every repetition was a hit"
    );

    // The same single-run overhead as the new-flow samples, for comparison with them.
    let single_pass = (0..20_000)
        .map(|_| {
            datapath
                .run(Hook::FromPod, &tcp_ack("10.244.0.7:40000", "10.244.9.9:80"))
                .duration
        })
        .sum::<std::time::Duration>()
        / 20_000;

    let flows = 20_000u16;
    let mut total = std::time::Duration::ZERO;
    for port in 0..flows {
        let syn = tcp_syn(
            &format!(
                "10.244.{}.{}:{}",
                1 + port / 250,
                1 + port % 250,
                30_000 + port
            ),
            "10.96.0.10:80",
        );
        let run = datapath.run(Hook::FromPod, &syn);
        assert_eq!(run.verdict, TC_ACT_UNSPEC);
        total += run.duration;
    }
    assert_eq!(datapath.conntrack().len(), 4 + 2 * usize::from(flows));

    println!(
        "pass-through:     {:>5} ns/packet (repeat {REPEAT})",
        pass.duration.as_nanos()
    );
    println!(
        "established flow: {:>5} ns/packet (repeat {REPEAT})",
        established.duration.as_nanos()
    );
    println!(
        "pass-through:     {:>5} ns/packet (mean of 20000 runs)",
        single_pass.as_nanos()
    );
    println!(
        "new flow:         {:>5} ns/packet (mean of {flows} runs)",
        (total / u32::from(flows)).as_nanos()
    );
}

#[test]
#[ignore = "a measurement, not a check; run it explicitly"]
fn cost_of_a_new_flow_with_random_and_with_maglev_selection() {
    use lb_agent::{model::LbAlgorithm, sync::maglev::Settings};
    use lb_tests::fixture::LoadOptions;
    let mut datapath = Datapath::load_with(LoadOptions {
        selection: Some(Settings {
            annotation: true,
            ..Settings::default()
        }),
        ..LoadOptions::default()
    });
    let backends: Vec<String> = (1..=10).map(|i| format!("10.244.9.{i}:8080")).collect();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let random = service("10.96.0.10:80/TCP", &backends);
    let mut maglev = service("10.96.0.12:80/TCP", &backends);
    maglev.algorithm = Some(LbAlgorithm::Maglev);
    datapath.sync(&[random, maglev]);
    // Interleaved, so that both see the same neighbours and the same conntrack fill.
    let flows = 20_000u16;
    let mut totals = [std::time::Duration::ZERO; 2];
    for port in 0..flows {
        for (k, vip) in ["10.96.0.10:80", "10.96.0.12:80"].into_iter().enumerate() {
            let client = format!(
                "10.{}.{}.{}:{}",
                1 + k,
                1 + port / 250,
                1 + port % 250,
                30_000 + port
            );
            let run = datapath.run(Hook::FromPod, &tcp_syn(&client, vip));
            assert_eq!(run.verdict, TC_ACT_UNSPEC);
            totals[k] += run.duration;
        }
    }
    println!(
        "new flow, random (10 backends):            {:>5} ns/packet (mean of {flows} runs)",
        (totals[0] / u32::from(flows)).as_nanos()
    );
    println!(
        "new flow, Maglev (10 backends, M = 16381): {:>5} ns/packet (mean of {flows} runs)",
        (totals[1] / u32::from(flows)).as_nanos()
    );
}
