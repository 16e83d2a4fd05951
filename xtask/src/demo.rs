//! `cargo xtask demo`: the story of docs/seed-story.md, replayed in the lab with lb in Cilium's
//! place. Builds what it needs, sets up the cluster (`lb_lab::Lab`), then runs each step's
//! commands and prints them with their real output, checking each step's outcome as it goes.
//! `--keep` leaves the lab running; `cargo xtask demo down` removes it. With `LB_BIN_DIR` set,
//! the binaries there are used and nothing is built. `--ipv6` builds the lab dual-stack
//! (`Lab::up_dual_stack`, the dual-stack nginx of `lab/manifests/ipv6`) and, after the story,
//! replays its ClusterIP steps over IPv6: the router reaches a pod's IPv6 address, the IPv6
//! ClusterIP is dropped with the flag off (and `lbctl monitor` says so), answers once it is on.
//!
//! The assertions of the CI twin, tests/tests/lab_story.rs, are the same steps through the
//! same library; this file only narrates.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use lb_lab::netns::Outcome;
use lb_lab::probe::{HttpReply, curl_get, curl_head, curl6_head, ping};
use lb_lab::topology::{
    BUSYBOX, CLIENT, MASTER, NGINX_1, NGINX_2, NGINX_VIP, NODES, PODS, ROUTER_IP, SLAVE, v6,
};
use lb_lab::{Agent, Binaries, Lab};

use crate::setup::{self, run_cmd};

/// Tries of step 4, enough to see both backends.
const STEP4_TRIES: usize = 20;

/// Builds, sets up, replays the story (and with `ipv6` its IPv6 steps) and (unless `keep`)
/// removes the lab.
pub fn run(keep: bool, ipv6: bool) -> anyhow::Result<()> {
    setup::run()?;
    let bins = match std::env::var_os("LB_BIN_DIR") {
        // Prebuilt binaries (as the CI twin accepts them): no build.
        Some(dir) => Binaries::in_dir(Path::new(&dir))?,
        None => build_release()?,
    };
    eprintln!("demo: building the lab (namespaces, BGP, agents)");
    let mut lab = if ipv6 {
        Lab::up_dual_stack().context("build the dual-stack lab")?
    } else {
        Lab::up().context("build the lab")?
    };
    let result =
        replay(&mut lab, &bins).and_then(|()| if ipv6 { replay_ipv6(&lab) } else { Ok(()) });
    if keep {
        lab.keep();
        print_kept(&bins, ipv6);
    } else {
        drop(lab);
        println!("\nThe lab is removed. `cargo xtask demo --keep` leaves it running.");
    }
    result
}

/// Builds lb-agent and lbctl in release mode and returns where they are.
fn build_release() -> anyhow::Result<Binaries> {
    let workspace = workspace_root();
    eprintln!("demo: building lb-agent and lbctl (release)");
    run_cmd(
        Command::new(env_or("CARGO", "cargo"))
            .args([
                "build",
                "--release",
                "-p",
                "lb-agent",
                "-p",
                "lbctl",
                "--bins",
            ])
            .current_dir(&workspace),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    Ok(Binaries::in_dir(&target.join("release"))?)
}

/// `cargo xtask demo down`: removes a lab left by `--keep` or by a crashed run.
pub fn down() -> anyhow::Result<()> {
    let removed = lb_lab::down().context("remove the lab")?;
    if removed.is_empty() {
        println!("no lab running");
    } else {
        println!("removed {}", removed.join(" "));
    }
    Ok(())
}

fn replay(lab: &mut Lab, bins: &Binaries) -> anyhow::Result<()> {
    title("The cluster");
    println!("router      {ROUTER_IP}  (BIRD, AS 65000)");
    for node in NODES {
        println!(
            "{:<11} {}   pod CIDR {}  (BIRD in kube-router's place, AS 65001; lb-agent)",
            node.name, node.ip, node.pod_cidr
        );
    }
    for pod in PODS {
        println!("  pod {:<8} {:<13} on {}", pod.name, pod.ip, pod.node);
    }
    if lab.is_dual_stack() {
        println!("IPv6: router {}", v6::ROUTER_IP);
        for node in v6::NODES {
            println!(
                "  {:<11} {:<11} pod CIDR {}",
                node.name, node.ip, node.pod_cidr
            );
        }
        for pod in v6::PODS {
            println!("  pod {:<8} {}", pod.name, pod.ip);
        }
    }
    lab.start_bgp().context("start BGP")?;
    lab.start_agents(bins).context("start the agents")?;
    let router = lab.router();
    let master = lab.agent(MASTER.name)?;
    let slave = lab.agent(SLAVE.name)?;

    title("Step 1: from the router, a pod IP answers");
    let (outcome, reply) = curl_head(router, NGINX_1.ip)?;
    show("router", &outcome);
    expect_200(&reply, &outcome)?;

    title("Step 2: from the router, the ClusterIP does not");
    let mut monitor = master.monitor_drops()?;
    let mut line = None;
    // The monitor may subscribe after the first SYN is dropped: each try sends a few SYNs.
    for _ in 0..3 {
        let (outcome, reply) = curl_head(router, NGINX_VIP)?;
        show("router", &outcome);
        ensure!(
            reply.status.is_none(),
            "the ClusterIP answered from outside with the flag off"
        );
        let found = monitor.wait_for_line("the Is a ClusterIP drop", Duration::from_secs(3), |l| {
            l.contains("drop (Is a ClusterIP)") && l.contains(&format!("-> {NGINX_VIP}:80"))
        });
        if let Ok(found) = found {
            line = Some(found);
            break;
        }
    }
    println!("{}# {}", MASTER.name, monitor.cmdline());
    let Some(line) = line else {
        bail!(
            "k8smaster0 reported no Is a ClusterIP drop; it printed {:?}",
            monitor.seen()
        );
    };
    println!("{line}");
    drop(monitor);
    lbctl(MASTER.name, master, &["service", "list"])?;
    let bird = lab.bird("router")?;
    println!("router# birdc show route");
    print!("{}", bird.show_route()?);

    title("Step 3: allow external access to ClusterIPs, live, on both nodes");
    let pids = [master.process().pid(), slave.process().pid()];
    set_external_clusterip([master, slave], true)?;

    title("Step 4: from the router, the ClusterIP answers, from both backends");
    println!(
        "(the router's best path is {}, both backends live on {}: {} SNATs to itself)",
        MASTER.name, SLAVE.name, MASTER.name
    );
    both_backends_answer(|| curl_head(router, NGINX_VIP))?;
    ensure!(
        pids == [master.process().pid(), slave.process().pid()],
        "an agent restarted"
    );
    println!("both backends answered; no agent restarted");

    title("Step 5: from the busybox pod, the router answers pings");
    let (outcome, received) = ping(lab.pod(BUSYBOX.name)?, ROUTER_IP, 3)?;
    show(BUSYBOX.name, &outcome);
    ensure!(received == 3, "{received} of 3 pings answered");

    title("Step 6: a pod on k8smaster0 reaches the ClusterIP, unSNATed");
    let (outcome, reply) = curl_get(lab.pod(CLIENT.name)?, NGINX_VIP)?;
    show(CLIENT.name, &outcome);
    expect_200(&reply, &outcome)?;
    ensure!(
        reply.client_ip == Some(CLIENT.ip),
        "the backend saw {} instead of the client pod {}",
        opt(reply.client_ip),
        CLIENT.ip
    );
    let pod = if reply.pod_ip == Some(NGINX_2.ip) {
        NGINX_2
    } else {
        NGINX_1
    };
    let log = lab.server_log(pod.name)?;
    println!(
        "{} logged: {}",
        pod.name,
        log.lines().last().unwrap_or_default()
    );
    println!("\nThe story is replayed: every step behaved as lb promises.");
    Ok(())
}

/// The story's ClusterIP steps over IPv6, after the IPv4 story (which left
/// `bpf-lb-external-clusterip` on): the underlay first, then the flag off, the drop, the flag
/// on, the answers.
fn replay_ipv6(lab: &Lab) -> anyhow::Result<()> {
    let router = lab.router();
    let master = lab.agent(MASTER.name)?;
    let slave = lab.agent(SLAVE.name)?;

    title("IPv6, step 1: from the router, a pod's IPv6 address answers");
    println!("router# birdc6 show route");
    print!("{}", lab.bird6("router")?.show_route()?);
    let (outcome, reply) = curl6_head(router, v6::NGINX_1.ip)?;
    show("router", &outcome);
    expect_200(&reply, &outcome)?;

    title("IPv6, step 2: with external access off, the IPv6 ClusterIP does not answer");
    set_external_clusterip([master, slave], false)?;
    let mut monitor = master.monitor_drops()?;
    let vip = format!("-> [{}]:80", v6::NGINX_VIP);
    let mut line = None;
    for _ in 0..3 {
        let (outcome, reply) = curl6_head(router, v6::NGINX_VIP)?;
        show("router", &outcome);
        ensure!(
            reply.status.is_none(),
            "the IPv6 ClusterIP answered from outside with the flag off"
        );
        let found = monitor.wait_for_line(
            "the IPv6 Is a ClusterIP drop",
            Duration::from_secs(3),
            |l| l.contains("drop (Is a ClusterIP)") && l.contains(&vip),
        );
        if let Ok(found) = found {
            line = Some(found);
            break;
        }
    }
    println!("{}# {}", MASTER.name, monitor.cmdline());
    let Some(line) = line else {
        bail!(
            "k8smaster0 reported no Is a ClusterIP drop for {}; it printed {:?}",
            v6::NGINX_VIP,
            monitor.seen()
        );
    };
    println!("{line}");
    drop(monitor);
    lbctl(MASTER.name, master, &["service", "list"])?;

    title("IPv6, step 3: allow external access to ClusterIPs again, live");
    set_external_clusterip([master, slave], true)?;

    title("IPv6, step 4: from the router, the IPv6 ClusterIP answers, from both backends");
    both_backends_answer(|| curl6_head(router, v6::NGINX_VIP))?;
    println!("\nThe IPv6 steps are replayed too.");
    Ok(())
}

fn title(text: &str) {
    println!("\n== {text} ==");
}

/// Prints a command as typed at `host`'s prompt, then what it printed.
fn show(host: &str, outcome: &Outcome) {
    println!("{host}# {}", outcome.cmdline);
    print!("{}", outcome.stdout);
    print!("{}", outcome.stderr);
    if !outcome.success {
        println!("({})", outcome.status);
    }
}

fn lbctl(node: &str, agent: &Agent, args: &[&str]) -> anyhow::Result<()> {
    let outcome = agent.lbctl(args)?;
    show(node, &outcome);
    outcome.into_stdout()?;
    Ok(())
}

/// `lbctl config set bpf-lb-external-clusterip` to `on` on both nodes' agents, as typed.
fn set_external_clusterip([master, slave]: [&Agent; 2], on: bool) -> anyhow::Result<()> {
    let value = if on { "true" } else { "false" };
    for (node, agent) in [(MASTER.name, master), (SLAVE.name, slave)] {
        lbctl(
            node,
            agent,
            &["config", "set", "bpf-lb-external-clusterip", value],
        )?;
    }
    Ok(())
}

/// Step 4 in either family: `curl` (the ClusterIP, from the router) answers 200 each of
/// [`STEP4_TRIES`] tries, and from both backends.
fn both_backends_answer<A: Ord + std::fmt::Debug + std::fmt::Display>(
    curl: impl Fn() -> lb_lab::Result<(Outcome, HttpReply<A>)>,
) -> anyhow::Result<()> {
    let mut backends = BTreeSet::new();
    for attempt in 1..=STEP4_TRIES {
        let (outcome, reply) = curl()?;
        if attempt == 1 {
            show("router", &outcome);
        }
        expect_200(&reply, &outcome)?;
        println!(
            "  try {attempt:>2}: 200 from {} (the backend saw {})",
            opt(reply.pod_ip.as_ref()),
            opt(reply.client_ip.as_ref())
        );
        backends.extend(reply.pod_ip);
    }
    ensure!(
        backends.len() == 2,
        "{STEP4_TRIES} tries reached only {backends:?}, not both backends"
    );
    Ok(())
}

fn expect_200<A>(reply: &HttpReply<A>, outcome: &Outcome) -> anyhow::Result<()> {
    if reply.status != Some(200) {
        bail!(
            "`{}` did not answer 200: {}{}",
            outcome.cmdline,
            outcome.stdout,
            outcome.stderr
        );
    }
    Ok(())
}

fn opt(ip: Option<impl std::fmt::Display>) -> String {
    ip.map_or_else(|| "?".to_owned(), |ip| ip.to_string())
}

fn print_kept(bins: &Binaries, ipv6: bool) {
    let ns = |name: &str| format!("/run/netns/{}{name}", lb_lab::netns::PREFIX);
    println!("\nThe lab is still running (--keep). Try:");
    println!(
        "  nsenter --net={} curl -I http://{NGINX_VIP}/",
        ns("router")
    );
    println!("  birdc -s {}/bird-router.ctl show route", lb_lab::RUN_DIR);
    if ipv6 {
        println!(
            "  nsenter --net={} curl -6 -g -I http://[{}]/",
            ns("router"),
            v6::NGINX_VIP
        );
        println!(
            "  birdc6 -s {}/bird6-router.ctl show route",
            lb_lab::RUN_DIR
        );
    }
    println!(
        "  {} --socket {}/{}.sock service list",
        bins.lbctl.display(),
        lb_lab::RUN_DIR,
        MASTER.name
    );
    println!("and remove it with `cargo xtask demo down`.");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn env_or(key: &str, default: &str) -> std::ffi::OsString {
    std::env::var_os(key).unwrap_or_else(|| default.into())
}
