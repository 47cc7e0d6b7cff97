#![allow(clippy::unwrap_used)]
//! Scale-out: two agentline nodes behind kamailio's dispatcher
//! (deploy/kamailio/dispatcher.cfg, as shipped), sharing one PostgreSQL for
//! call records. Calls spread over both nodes; a node told to stop
//! (SIGTERM) answers the dispatcher's OPTIONS probes and new INVITEs with
//! 503, so new calls go to the other node, while the drained node's own
//! call runs to its end before it exits.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::pg::Postgres;
use common::sipp::{run_scenario, spawn_scenario};
use common::{free_port, http_get, require_peer, Server};

struct Kamailio {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Kamailio {
    fn start(nodes: &[u16]) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let list = dir.path().join("dispatcher.list");
        let lines: String = nodes
            .iter()
            .map(|p| format!("1 sip:127.0.0.1:{p}\n"))
            .collect();
        std::fs::write(&list, lines).unwrap();
        let cfg = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/kamailio/dispatcher.cfg"
        ))
        .unwrap()
        .replace(
            "listen=udp:0.0.0.0:5060",
            &format!("listen=udp:127.0.0.1:{port}"),
        )
        .replace(
            "#!define DS_LIST \"/etc/kamailio/dispatcher.list\"",
            &format!("#!define DS_LIST \"{}\"", list.display()),
        )
        .replace("#!define DS_PING_S 5", "#!define DS_PING_S 1")
        .replace(
            "loadmodule \"tm.so\"",
            &format!(
                "mpath=\"{}/\"\nloadmodule \"tm.so\"",
                common::kamailio::modules_dir().display()
            ),
        );
        let child = common::kamailio::spawn(&cfg, dir.path());
        let k = Kamailio { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !k.log().contains("INFO") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let the first probes find both nodes up.
        std::thread::sleep(Duration::from_millis(2500));
        k
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        common::kamailio::stop(&mut self.child);
        if std::thread::panicking() {
            eprintln!("---- kamailio log ----\n{}", self.log());
        }
    }
}

/// Call records of the whole cluster (any node reads the shared table):
/// how many each node handled, answered.
fn answered_by_node(server: &Server) -> std::collections::BTreeMap<String, usize> {
    let (_, body) = http_get(server.api_port, "/cdrs?limit=1000").unwrap();
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut by = std::collections::BTreeMap::new();
    for c in page["cdrs"].as_array().cloned().unwrap_or_default() {
        if c["sip_code"] == 200 {
            *by.entry(c["node"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
    }
    by
}

fn ctx(a: &Server, b: &Server, what: &str) -> String {
    format!(
        "{what}\n---- a ----\n{}\n---- b ----\n{}",
        a.log_text(),
        b.log_text()
    )
}

fn node(pg: &Postgres, name: &str) -> Server {
    Server::start(&format!(
        "[sip]\ntrusted = [\"127.0.0.1/32\"]\nshutdown_grace_s = 30\ndrain = \"wait\"\n\
         [store]\nurl = \"{}\"\nnode = \"{name}\"\n\
         [[routes]]\ndial = \"echo\"\nagent = {{ kind = \"echo\" }}\n",
        pg.url()
    ))
}

#[test]
fn calls_spread_over_two_nodes_and_a_drained_node_gets_no_new_ones() {
    if require_peer("kamailio").is_none() || require_peer("sipp").is_none() {
        return;
    }
    let Some(pg) = Postgres::start() else {
        return;
    };
    let mut a = node(&pg, "a");
    let b = node(&pg, "b");
    let kam = Kamailio::start(&[a.sip_port, b.sip_port]);

    // Six calls through the dispatcher: both nodes answer some.
    let out = run_scenario(
        "invite_bye.xml",
        kam.port,
        "echo",
        &["-m", "6", "-l", "1", "-d", "300"],
    );
    assert!(out.success, "{}\n{}", out.report(), ctx(&a, &b, ""));
    let deadline = Instant::now() + Duration::from_secs(5);
    let spread = loop {
        let by = answered_by_node(&b);
        if by.values().sum::<usize>() >= 6 || Instant::now() > deadline {
            break by;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("dispatcher: six calls answered by {spread:?}");
    assert_eq!(spread.values().sum::<usize>(), 6, "{spread:?}");
    assert!(
        spread.get("a").is_some_and(|&n| n >= 2) && spread.get("b").is_some_and(|&n| n >= 2),
        "{spread:?}"
    );

    // Two long calls: round-robin puts one on each node.
    let long = spawn_scenario(
        "invite_bye.xml",
        kam.port,
        "echo",
        &["-m", "2", "-l", "2", "-d", "8000"],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.calls().as_array().map_or(0, Vec::len) == 0 {
        assert!(
            Instant::now() < deadline,
            "{}",
            ctx(&a, &b, "no long call reached node a")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Node a is told to stop: it drains its call and takes no new ones.
    a.sigterm();
    std::thread::sleep(Duration::from_millis(1500));
    let before = answered_by_node(&b);
    let out = run_scenario(
        "invite_bye.xml",
        kam.port,
        "echo",
        &["-m", "4", "-l", "1", "-d", "300"],
    );
    assert!(
        out.success,
        "{}\n{}",
        out.report(),
        ctx(&a, &b, "calls during the drain")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let by = answered_by_node(&b);
        if by.values().sum::<usize>() >= before.values().sum::<usize>() + 4
            || Instant::now() > deadline
        {
            break by;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("dispatcher: node a draining; answered before {before:?}, after {after:?}");
    assert_eq!(
        after.get("a"),
        before.get("a"),
        "node a took a new call while draining"
    );
    assert_eq!(
        after.get("b").copied().unwrap_or(0),
        before.get("b").copied().unwrap_or(0) + 4,
        "{after:?}"
    );
    // The long calls (one on the draining node) end normally, then a exits.
    let long = long.wait(Duration::from_secs(30));
    assert!(
        long.success,
        "{}\n{}",
        long.report(),
        ctx(&a, &b, "long calls")
    );
    let st = a.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "{}",
        ctx(&a, &b, "node a did not exit after its call")
    );
    assert!(kam.log().contains("INVITE"), "{}", kam.log());
}
