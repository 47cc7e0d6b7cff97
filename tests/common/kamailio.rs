//! kamailio for the tests that put it in front of (or behind) agentline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The folder kamailio loads its modules from: the "Default paths to
/// modules" that `kamailio -I` prints (the packaged path differs per
/// architecture, e.g. /usr/lib/x86_64-linux-gnu or /usr/lib/aarch64-linux-gnu),
/// else the first `/usr/lib*/**/kamailio/modules` that exists. Panics,
/// naming what was tried, when kamailio is installed but none is found.
pub fn modules_dir() -> PathBuf {
    let info = Command::new("kamailio")
        .arg("-I")
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let from_info = info
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Default paths to modules:"))
        .flat_map(|paths| paths.split(':'))
        .map(|p| PathBuf::from(p.trim()));
    let mut candidates: Vec<PathBuf> = from_info.collect();
    for lib in ["/usr/lib", "/usr/lib64", "/usr/local/lib"] {
        candidates.push(Path::new(lib).join("kamailio/modules"));
        if let Ok(entries) = std::fs::read_dir(lib) {
            for e in entries.flatten() {
                candidates.push(e.path().join("kamailio/modules"));
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "kamailio is installed but its modules folder was not found; `kamailio -I` \
                 printed no existing \"Default paths to modules\", tried {candidates:?}"
            )
        })
}

/// Writes `cfg` to `dir/kamailio.cfg` and runs kamailio on it in the
/// foreground (`-DD -E`), its log in `dir/kamailio.log`.
pub fn spawn(cfg: &str, dir: &Path) -> Child {
    let path = dir.join("kamailio.cfg");
    std::fs::write(&path, cfg).expect("write kamailio.cfg");
    let log = std::fs::File::create(dir.join("kamailio.log")).expect("kamailio.log");
    Command::new("kamailio")
        .args(["-DD", "-E", "-f"])
        .arg(&path)
        .arg("-Y")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn kamailio")
}

/// Stops kamailio and its children: SIGTERM to the main process, which
/// takes its forked children with it (SIGKILL would orphan them, still
/// bound to their ports).
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
