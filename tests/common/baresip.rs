//! Drives baresip (1.0, Debian `baresip-core`) as a headless softphone: one
//! temp dir per phone with `config`, `accounts`, `in.wav` (8 kHz mono s16,
//! played as the microphone) and `rec/` where the sndfile module records
//! `dump-*-dec.wav` (what the phone heard) and `dump-*-enc.wav` (what it sent).
//!
//! Behaviour of this baresip build (1.0.0 with libre 1.1.0), checked against
//! kamailio and `sipp -rtp_echo`:
//! - the aufile source hangs the call up when in.wav ends ("aufile: end of
//!   file", "menu: audio error"), so a call lasts as long as in.wav; the
//!   driver pads in.wav with silence at the end so the echo of the last word
//!   is still recorded before the hang-up;
//! - the dumps are written as frames are encoded / decoded, so the dec dump
//!   starts with the first RTP packet received and has no wall clock; but both
//!   dumps stop at the hang-up, so aligning their ENDS puts what was heard on
//!   the clock of what was sent ([`Outcome::heard_aligned`]). With
//!   `jitter_buffer_delay 0-0` (set here) that alignment measured a sipp echo
//!   delayed by 0 / 50 / 150 / 400 ms as 20 / 60 / 160 / 420 ms; with
//!   baresip's default jitter buffer it adds ~100 ms of its own;
//! - `-t SECS` starts a clean shutdown (unregister, finish transactions) which
//!   can take up to 32 s when a peer never answers a BYE; the driver stops the
//!   phone with SIGINT once the call is over and SIGKILLs it after a grace;
//! - `stdio.so` from the shipped template busy-loops on a non-tty stdin, so it
//!   is not loaded; without `net_interface 127.0.0.1` the SDP advertises the
//!   host's outside address, so it is set;
//! - its digest code (libre 1.1.0) gives up with "Register: Function not
//!   implemented" when ANY WWW-Authenticate of a 401 says algorithm=SHA-256,
//!   even next to an MD5 one, in either order;
//! - with a wrong password it answers the challenge about 16 times within
//!   0.1 s, then prints `reg: <aor>: 401 Unauthorized (<server>)`; success
//!   prints `<user>@<host>: {0/UDP/v4} 200 OK (<server>) [1 binding]`;
//! - `-s` prints every SIP message (`ESC[36;1m#`, `UDP a -> b`, the message,
//!   `ESC[;m`), which is parsed into [`SipMessage`]s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::audio;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One `accounts` line.
#[derive(Clone, Debug)]
pub struct Account {
    pub user: String,
    pub password: Option<String>,
    /// `host:port` of the registrar / proxy (the server under test).
    pub server: String,
    pub transport: Transport,
    /// REGISTER interval in seconds; 0 = never register.
    pub regint: u32,
    /// e.g. `"PCMU,PCMA"`; `None` offers everything loaded (PCMU, PCMA, opus, G722).
    pub audio_codecs: Option<String>,
    /// Extra `;key=value` account parameters.
    pub extra: Vec<String>,
}

impl Account {
    /// `user` at `127.0.0.1:port` over UDP, registering every 60 s, PCMU/PCMA.
    pub fn new(user: &str, password: Option<&str>, port: u16) -> Account {
        Account {
            user: user.to_string(),
            password: password.map(str::to_string),
            server: format!("127.0.0.1:{port}"),
            transport: Transport::Udp,
            regint: 60,
            audio_codecs: Some("PCMU,PCMA".into()),
            extra: Vec::new(),
        }
    }

    pub fn transport(mut self, t: Transport) -> Account {
        self.transport = t;
        self
    }

    pub fn regint(mut self, secs: u32) -> Account {
        self.regint = secs;
        self
    }

    pub fn audio_codecs(mut self, codecs: Option<&str>) -> Account {
        self.audio_codecs = codecs.map(str::to_string);
        self
    }

    /// The `accounts` file line.
    pub fn line(&self) -> String {
        let mut l = format!(
            "<sip:{}@{};transport={}>",
            self.user,
            self.server,
            self.transport.name()
        );
        if let Some(p) = &self.password {
            l.push_str(&format!(";auth_pass={p}"));
        }
        l.push_str(&format!(";regint={};answermode=auto", self.regint));
        if let Some(c) = &self.audio_codecs {
            l.push_str(&format!(";audio_codecs={c}"));
        }
        for e in &self.extra {
            l.push(';');
            l.push_str(e);
        }
        l
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub account: Account,
    /// Whom to call: a user part (`"echo"`, dialled at the account's server) or
    /// a full `sip:` URI. baresip appends the account's `;transport=`.
    pub dial: Option<String>,
    /// Dial only after the REGISTER succeeded (through ctrl_tcp), instead of at
    /// start-up (`-e /dial`, racing the REGISTER).
    pub dial_after_register: bool,
    /// WAV to play as the microphone (any rate/channels; converted to 8 kHz
    /// mono). `None`: silence.
    pub play: Option<PathBuf>,
    /// Silence before / after `play` in in.wav. The call lasts as long as
    /// in.wav, so the tail is what is still recorded after the last word.
    pub lead_silence_ms: u32,
    /// in.wav's rate and channels; baresip's aufile source needs the
    /// codec's own format (Opus 48000/2, G.722 16000/1). Default 8000/1.
    pub input_format: (u32, u16),
    pub tail_silence_ms: u32,
    /// Hard bound on the whole run (also passed as baresip's `-t`).
    pub max_secs: u64,
    /// `-s`: print (and parse) every SIP message.
    pub sip_trace: bool,
    /// `sip_cafile`: the CA (or self-signed certificate) baresip trusts for TLS.
    pub ca_file: Option<PathBuf>,
}

impl Options {
    pub fn new(account: Account) -> Options {
        Options {
            account,
            dial: None,
            dial_after_register: false,
            play: None,
            lead_silence_ms: 0,
            input_format: (8000, 1),
            tail_silence_ms: 1000,
            max_secs: 30,
            sip_trace: true,
            ca_file: None,
        }
    }

    pub fn dial(mut self, target: &str) -> Options {
        self.dial = Some(target.to_string());
        self
    }

    pub fn play(mut self, wav: &Path) -> Options {
        self.play = Some(wav.to_path_buf());
        self
    }

    fn dial_uri(&self) -> Option<String> {
        self.dial.as_ref().map(|d| {
            if d.starts_with("sip:") {
                d.clone()
            } else {
                format!("sip:{d}@{}", self.account.server)
            }
        })
    }
}

/// One SIP message from baresip's `-s` trace.
#[derive(Clone, Debug)]
pub struct SipMessage {
    /// `UDP`, `TCP`, ...
    pub transport: String,
    pub src: String,
    pub dst: String,
    /// Sent by baresip (as opposed to received).
    pub outgoing: bool,
    pub start_line: String,
    /// The status code of a response.
    pub status: Option<u16>,
    /// The method of a request, or the CSeq method of a response.
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl SipMessage {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the output says happened.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// A `{0/UDP/v4} 200 OK ... [N binding]` line (REGISTER accepted).
    pub registered: bool,
    /// `reg: <aor>: 401 Unauthorized (...)` lines (REGISTER failed).
    pub register_failures: Vec<String>,
    /// "Call established" was printed.
    pub call_established: bool,
    /// "... terminated (duration: N secs)" or "... session closed: <reason>".
    pub call_closed: Option<String>,
    /// The decoder baresip chose, e.g. `PCMU`.
    pub codec: Option<String>,
    /// The call was hung up because in.wav ended ("aufile: end of file").
    pub ended_by_file: bool,
    /// Every SIP message in the trace (`-s`).
    pub messages: Vec<SipMessage>,
}

impl Facts {
    /// Status codes of responses baresip received to `method` requests, in order.
    pub fn statuses(&self, method: &str) -> Vec<u16> {
        self.messages
            .iter()
            .filter(|m| !m.outgoing && m.method.eq_ignore_ascii_case(method))
            .filter_map(|m| m.status)
            .collect()
    }

    /// Status codes of responses to REGISTERs that asked for a binding
    /// (leaves out the `expires=0` un-REGISTER baresip sends on exit).
    pub fn register_statuses(&self) -> Vec<u16> {
        self.messages
            .iter()
            .filter(|m| !m.outgoing && m.method.eq_ignore_ascii_case("REGISTER"))
            .filter(|resp| {
                let cseq = resp.header("CSeq");
                !self.messages.iter().any(|req| {
                    req.outgoing && req.status.is_none() && req.header("CSeq") == cseq && {
                        let contact = req.header("Contact").unwrap_or_default();
                        contact.replace(' ', "").contains("expires=0")
                            || req.header("Expires").map(str::trim) == Some("0")
                    }
                })
            })
            .filter_map(|m| m.status)
            .collect()
    }

    /// Requests of `method` that baresip sent (retransmissions included).
    pub fn sent_requests(&self, method: &str) -> Vec<&SipMessage> {
        self.messages
            .iter()
            .filter(|m| m.outgoing && m.status.is_none() && m.method.eq_ignore_ascii_case(method))
            .collect()
    }
}

/// The end result of a run.
#[derive(Debug)]
pub struct Outcome {
    /// `None` if baresip had to be SIGKILLed.
    pub status: Option<ExitStatus>,
    /// baresip did not exit on SIGINT / `-t` in time and was killed.
    pub killed: bool,
    pub stdout: String,
    pub stderr: String,
    /// The in.wav it played (after padding).
    pub sent_wav: PathBuf,
    /// `dump-*-dec.wav`: what the phone heard (None: no audio stream started).
    pub heard_wav: Option<PathBuf>,
    /// `dump-*-enc.wav`: what the phone sent.
    pub sent_dump_wav: Option<PathBuf>,
    pub facts: Facts,
    pub elapsed: Duration,
    /// The phone's directory: deleted when the outcome is dropped, unless a
    /// test is panicking (then it is kept and its path printed).
    pub dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(t) = self.tmp.take() {
                eprintln!("baresip files kept in {}", t.keep().display());
            }
        }
    }
}

impl Outcome {
    /// stdout and stderr without the SIP trace and the status-line spam, for
    /// assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "baresip exit {:?} (killed: {}) after {:.1} s\n--- stdout (no SIP trace) ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.killed,
            self.elapsed.as_secs_f64(),
            strip_trace(&self.stdout),
            self.stderr
        )
    }

    /// The SIP trace as `-> / <-` start lines, for assertion messages.
    pub fn sip_flow(&self) -> String {
        flow(&self.facts.messages)
    }

    /// When (ms on the sent clock) the first heard sample arrived: the enc
    /// dump's length minus the dec dump's (both end at the hang-up). Negative
    /// when the far end started sending before the phone did.
    pub fn heard_offset_ms(&self) -> Result<f64, String> {
        let enc = self
            .sent_dump_wav
            .as_ref()
            .ok_or_else(|| format!("no dump-*-enc.wav recorded\n{}", self.summary()))?;
        let sent = audio::read_wav(enc)?;
        let heard = self.heard()?;
        Ok(sent.duration_ms() - heard.duration_ms())
    }

    /// What the phone heard on the clock of what it sent (in.wav starts at 0):
    /// the dec dump shifted by [`Outcome::heard_offset_ms`] (silence in front,
    /// or its first samples dropped when that is negative). Cross-correlating
    /// `sent_wav` with this gives the real round-trip delay (+0..20 ms).
    pub fn heard_aligned(&self) -> Result<audio::Audio, String> {
        let offset_ms = self.heard_offset_ms()?;
        let heard = self.heard()?.to_8k();
        let shift = (offset_ms * audio::ANALYSIS_RATE as f64 / 1000.0).round() as i64;
        let samples = if shift >= 0 {
            let mut v = vec![0.0f32; shift as usize];
            v.extend_from_slice(&heard.samples);
            v
        } else {
            heard.samples[((-shift) as usize).min(heard.samples.len())..].to_vec()
        };
        Ok(audio::Audio::new(audio::ANALYSIS_RATE, samples))
    }

    /// What was played into the call (in.wav).
    pub fn sent(&self) -> Result<audio::Audio, String> {
        audio::read_wav(&self.sent_wav)
    }

    /// The dec dump as recorded (starts with the first packet received).
    pub fn heard(&self) -> Result<audio::Audio, String> {
        let p = self
            .heard_wav
            .as_ref()
            .ok_or_else(|| format!("no dump-*-dec.wav recorded\n{}", self.summary()))?;
        audio::read_wav(p)
    }
}

/// `-> INVITE sip:...` / `<- SIP/2.0 200 OK (INVITE)` lines.
pub fn flow(messages: &[SipMessage]) -> String {
    messages
        .iter()
        .map(|m| {
            let arrow = if m.outgoing { "->" } else { "<-" };
            if m.status.is_some() {
                format!("{arrow} {} ({})", m.start_line, m.method)
            } else {
                format!("{arrow} {}", m.start_line)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    Registered,
    /// The final failure line baresip printed, and its status code if any.
    Failed {
        code: Option<u16>,
        line: String,
    },
    /// Neither within the time allowed.
    Pending,
}

/// A running baresip.
pub struct Baresip {
    child: Option<Child>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
    pub sip_port: u16,
    pub ctrl_port: u16,
    pub rtp: (u16, u16),
    opts: Options,
    started: Instant,
    deadline: Instant,
    dialled: bool,
}

/// Lines of the baresip `config` (the shared template's structure with our
/// own ports, without stdio.so, bound to 127.0.0.1).
pub fn config_text(dir: &Path, sip_port: u16, rtp: (u16, u16), ctrl_port: u16) -> String {
    let d = dir.display();
    format!(
        "poll_method\t\tpoll\n\
         sip_listen\t\t127.0.0.1:{sip_port}\n\
         net_interface\t\t127.0.0.1\n\
         audio_player\t\taufile,{d}/out.wav\n\
         audio_source\t\taufile,{d}/in.wav\n\
         audio_alert\t\taufile,/dev/null\n\
         audio_srate\t\t8000\n\
         audio_channels\t\t1\n\
         jitter_buffer_delay\t0-0\n\
         rtp_ports\t\t{}-{}\n\
         module_path\t\t/usr/lib/baresip/modules\n\
         module\t\t\tg711.so\n\
         module\t\t\topus.so\n\
         module\t\t\tg722.so\n\
         module\t\t\tsrtp.so\n\
         module\t\t\taufile.so\n\
         module\t\t\tsndfile.so\n\
         snd_path\t\t{d}/rec\n\
         module\t\t\tauloop.so\n\
         module_app\t\taccount.so\n\
         module_app\t\tmenu.so\n\
         module_app\t\tctrl_tcp.so\n\
         ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}\n",
        rtp.0, rtp.1
    )
}

impl Baresip {
    /// Writes the phone's directory and starts baresip. Panics if it cannot.
    pub fn start(opts: Options) -> Baresip {
        let dir = tempfile::tempdir().expect("baresip tempdir");
        let sip_port = super::free_port();
        let ctrl_port = super::free_port();
        let rtp = super::free_rtp_range(20);
        std::fs::create_dir_all(dir.path().join("rec")).expect("rec dir");
        let mut config = config_text(dir.path(), sip_port, rtp, ctrl_port);
        if let Some(ca) = &opts.ca_file {
            config.push_str(&format!("sip_cafile\t\t{}\n", ca.display()));
        }
        std::fs::write(dir.path().join("config"), config).expect("write config");
        std::fs::write(
            dir.path().join("accounts"),
            format!("{}\n", opts.account.line()),
        )
        .expect("write accounts");
        let input = make_input(&opts).unwrap_or_else(|e| panic!("in.wav: {e}"));
        let (rate, channels) = opts.input_format;
        let input = audio::resample(&input, rate);
        audio::write_wav_channels(&dir.path().join("in.wav"), &input, channels)
            .expect("write in.wav");

        let mut cmd = Command::new("baresip");
        cmd.arg("-f").arg(dir.path());
        if opts.sip_trace {
            cmd.arg("-s");
        }
        let dial_now = opts.dial_uri().filter(|_| !opts.dial_after_register);
        if let Some(uri) = &dial_now {
            cmd.args(["-e", &format!("/dial {uri}")]);
        }
        cmd.args(["-t", &opts.max_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn baresip");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(out, stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(err, stderr.clone()));
        }
        let started = Instant::now();
        Baresip {
            child: Some(child),
            stdout,
            stderr,
            readers,
            dir: Some(dir),
            sip_port,
            ctrl_port,
            rtp,
            deadline: started + Duration::from_secs(opts.max_secs + 5),
            dialled: dial_now.is_some(),
            opts,
            started,
        }
    }

    /// Starts baresip, waits for the call (or, without `dial`, the
    /// registration) to finish, stops it, and returns what happened.
    pub fn run(opts: Options) -> Outcome {
        let dial = opts.dial.is_some();
        let mut phone = Baresip::start(opts);
        if dial {
            if phone.opts.dial_after_register {
                let within = phone.remaining();
                if phone.wait_registration(within) == Registration::Registered {
                    // A failed dial shows in the outcome (no call facts).
                    let _ = phone.dial_now();
                }
            }
            if phone.dialled {
                let within = phone.remaining();
                phone.wait_call_closed(within);
            }
        } else {
            let within = phone.remaining();
            phone.wait_registration(within);
        }
        phone.stop()
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/"))
    }

    /// stdout so far.
    pub fn output(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn facts(&self) -> Facts {
        parse_facts(&self.output(), self.sip_port, &self.opts.account.server)
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Polls until `done(facts)` holds, baresip exits, or `within` passes.
    pub fn wait_until(&mut self, within: Duration, done: impl Fn(&Facts) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.facts()) {
                return true;
            }
            if self.exited() || Instant::now() >= deadline {
                // one last look at what was printed before the exit
                std::thread::sleep(Duration::from_millis(100));
                return done(&self.facts());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the REGISTER to be accepted or to fail for good.
    pub fn wait_registration(&mut self, within: Duration) -> Registration {
        self.wait_until(within, |f| f.registered || !f.register_failures.is_empty());
        let f = self.facts();
        if f.registered {
            Registration::Registered
        } else if let Some(line) = f.register_failures.last() {
            Registration::Failed {
                code: status_in(line),
                line: line.clone(),
            }
        } else {
            Registration::Pending
        }
    }

    /// Waits until the call is over (closed, or baresip exited).
    pub fn wait_call_closed(&mut self, within: Duration) -> bool {
        self.wait_until(within, |f| f.call_closed.is_some())
    }

    /// Waits until the call is answered (or closed).
    pub fn wait_call_established(&mut self, within: Duration) -> bool {
        self.wait_until(within, |f| f.call_established || f.call_closed.is_some());
        self.facts().call_established
    }

    /// The phone's process id while it runs (to pause it: a caller whose
    /// RTP stops without signalling).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Dials `opts.dial` now, through ctrl_tcp.
    pub fn dial_now(&mut self) -> Result<String, String> {
        let uri = self.opts.dial_uri().ok_or("no dial target")?;
        let r = self.command("dial", Some(&uri))?;
        self.dialled = true;
        Ok(r)
    }

    /// Hangs up the current call (ctrl_tcp `hangup`).
    pub fn hangup(&self) -> Result<String, String> {
        self.command("hangup", None)
    }

    /// Sends one ctrl_tcp command (JSON in a netstring) and returns the
    /// `data` of its response.
    pub fn command(&self, command: &str, params: Option<&str>) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.ctrl_port))
            .map_err(|e| format!("ctrl_tcp connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut req = serde_json::json!({"command": command, "token": "harness"});
        if let Some(p) = params {
            req["params"] = serde_json::Value::String(p.to_string());
        }
        let body = req.to_string();
        write!(s, "{}:{},", body.len(), body).map_err(|e| format!("ctrl_tcp write: {e}"))?;
        // Events may arrive before the response; read netstrings until it.
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut chunk = [0u8; 4096];
            let n = s
                .read(&mut chunk)
                .map_err(|e| format!("ctrl_tcp read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some((msg, rest)) = netstring(&buf) {
                let v: serde_json::Value = serde_json::from_slice(&msg).unwrap_or_default();
                buf = rest;
                if v["response"] == serde_json::Value::Bool(true) {
                    let data = v["data"].as_str().unwrap_or_default().to_string();
                    return if v["ok"] == serde_json::Value::Bool(true) {
                        Ok(data)
                    } else {
                        Err(format!("ctrl_tcp {command}: {data}"))
                    };
                }
            }
        }
        Err(format!("ctrl_tcp {command}: no response"))
    }

    /// Stops baresip (SIGINT: hang up, unregister, exit), SIGKILLs it if it
    /// is still running 10 s later, and collects the results.
    pub fn stop(mut self) -> Outcome {
        let mut killed = false;
        let mut status = None;
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(st)) = child.try_wait() {
                status = Some(st);
            } else {
                let _ = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status();
                let grace = Instant::now() + Duration::from_secs(10);
                while Instant::now() < grace {
                    if let Ok(Some(st)) = child.try_wait() {
                        status = Some(st);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                    killed = true;
                }
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = self.output();
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let facts = parse_facts(&stdout, self.sip_port, &self.opts.account.server);
        let dir = self.dir.take().expect("dir");
        let rec = dir.path().join("rec");
        Outcome {
            status,
            killed,
            stdout,
            stderr,
            sent_wav: dir.path().join("in.wav"),
            heard_wav: find_dump(&rec, "-dec.wav"),
            sent_dump_wav: find_dump(&rec, "-enc.wav"),
            facts,
            elapsed: self.started.elapsed(),
            dir: dir.path().to_path_buf(),
            tmp: Some(dir),
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pump(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(&mut from);
        let mut line = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = into.lock() {
                s.push_str(&String::from_utf8_lossy(&line));
            }
            line.clear();
        }
    })
}

fn netstring(buf: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let colon = buf.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&buf[..colon])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let end = colon + 1 + len;
    if buf.len() < end + 1 {
        return None;
    }
    Some((buf[colon + 1..end].to_vec(), buf[end + 1..].to_vec()))
}

/// The newest `dump-*<suffix>` in `rec`.
fn find_dump(rec: &Path, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(rec)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.starts_with("dump-") && n.ends_with(suffix))
                .unwrap_or(false)
        })
        .collect();
    found.sort();
    found.pop()
}

/// in.wav: `play` (or nothing) at 8 kHz mono, with the configured silences.
fn make_input(opts: &Options) -> Result<audio::Audio, String> {
    let speech = match &opts.play {
        Some(p) => audio::read_wav(p)?.to_8k().samples,
        None => Vec::new(),
    };
    let ms = |v: u32| v as usize * audio::ANALYSIS_RATE as usize / 1000;
    let mut samples = vec![0.0f32; ms(opts.lead_silence_ms)];
    samples.extend_from_slice(&speech);
    samples.extend(std::iter::repeat_n(0.0f32, ms(opts.tail_silence_ms)));
    if samples.is_empty() {
        // aufile needs something to play
        samples = vec![0.0; ms(1000)];
    }
    Ok(audio::Audio::new(audio::ANALYSIS_RATE, samples))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The status code in a line like `reg: sip:a@h:5080: 401 Unauthorized (...)`.
fn status_in(line: &str) -> Option<u16> {
    line.match_indices(": ").find_map(|(i, _)| {
        let code = line.get(i + 2..i + 5)?;
        let after = line[i + 5..].chars().next();
        (code.chars().all(|c| c.is_ascii_digit()) && after.is_none_or(|c| c == ' '))
            .then(|| code.parse().ok())
            .flatten()
    })
}

/// The human output without the SIP trace blocks and status-line redraws.
pub fn strip_trace(output: &str) -> String {
    let mut out = Vec::new();
    let mut in_trace = false;
    for raw in output.split('\n') {
        if raw.contains("\u{1b}[36;1m#") {
            in_trace = true;
            continue;
        }
        if in_trace {
            if raw.contains("\u{1b}[;m") {
                in_trace = false;
            }
            continue;
        }
        let l = strip_ansi(raw);
        let l = l.trim_end_matches('\r');
        let l = l.rsplit('\r').next().unwrap_or(l);
        if !l.trim().is_empty() {
            out.push(l.to_string());
        }
    }
    out.join("\n")
}

/// Parses baresip's stdout (with or without `-s` trace) into [`Facts`].
/// `sip_port` is the phone's own SIP port, `server` the `host:port` it talks to.
pub fn parse_facts(output: &str, sip_port: u16, server: &str) -> Facts {
    let mut f = Facts {
        messages: parse_trace(output, sip_port, server),
        ..Facts::default()
    };
    for l in strip_trace(output).lines() {
        let l = l.trim();
        // "alice@127.0.0.1: {0/UDP/v4} 200 OK (kamailio ...) [1 binding]"
        if l.contains("/v4} 2") || l.contains("/v6} 2") || l.contains("registered successfully") {
            f.registered = true;
        }
        // "reg: sip:alice@127.0.0.1:5080: 401 Unauthorized (kamailio ...)"
        if l.starts_with("reg: ") {
            f.register_failures.push(l.to_string());
        }
        if l.contains("Call established") {
            f.call_established = true;
        }
        // "sip:a@h: Call with sip:b@h terminated (duration: 4 secs)"
        // "sip:b@h;transport=udp: session closed: 404 Not Found"
        if (l.contains("Call with") && l.contains(" terminated")) || l.contains(": session closed")
        {
            f.call_closed = Some(l.to_string());
        }
        if let Some(rest) = l.strip_prefix("audio: Set audio decoder: ") {
            f.codec = rest.split_whitespace().next().map(str::to_string);
        }
        // "menu: audio error (0,end of file)" -> menu hangs up
        if l.starts_with("menu: audio error") && l.contains("end of file") {
            f.ended_by_file = true;
        }
    }
    f
}

/// Parses the `-s` trace blocks.
pub fn parse_trace(output: &str, sip_port: u16, server: &str) -> Vec<SipMessage> {
    let own = format!("127.0.0.1:{sip_port}");
    let mut msgs = Vec::new();
    let mut rest = output;
    const START: &str = "\u{1b}[36;1m#\n";
    const END: &str = "\u{1b}[;m";
    while let Some(i) = rest.find(START) {
        let block_start = i + START.len();
        let block_end = rest[block_start..]
            .find(END)
            .map(|e| block_start + e)
            .unwrap_or(rest.len());
        let block = &rest[block_start..block_end];
        rest = &rest[block_end..];
        let Some((addr_line, msg)) = block.split_once('\n') else {
            continue;
        };
        // "UDP 127.0.0.1:15062 -> 127.0.0.1:5080"
        let parts: Vec<&str> = addr_line.split_whitespace().collect();
        if parts.len() != 4 || parts[2] != "->" {
            continue;
        }
        let (head, body) = match msg.split_once("\r\n\r\n") {
            Some((h, b)) => (h, b),
            None => (msg, ""),
        };
        let mut lines = head.split("\r\n").map(|l| l.trim_end_matches('\n'));
        let start_line = lines.next().unwrap_or_default().trim().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let cseq_method = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("CSeq"))
            .and_then(|(_, v)| v.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_string();
        let (status, method) = if let Some(r) = start_line.strip_prefix("SIP/2.0 ") {
            (
                r.split_whitespace().next().and_then(|c| c.parse().ok()),
                cseq_method,
            )
        } else {
            (
                None,
                start_line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        msgs.push(SipMessage {
            transport: parts[0].to_string(),
            src: parts[1].to_string(),
            dst: parts[3].to_string(),
            outgoing: parts[1] == own || (parts[3] == server && parts[1] != server),
            start_line,
            status,
            method,
            headers,
            body: body.to_string(),
        });
    }
    msgs
}

/// The echo checks every echo test makes: level within 3 dB of what was
/// sent, correlation >= 0.9 at a delay under 100 ms, no gap over 40 ms.
pub fn assert_echo_audio(out: &Outcome) -> audio::EchoReport {
    let sent = out.sent().unwrap();
    let heard = out.heard_aligned().unwrap_or_else(|e| panic!("{e}"));
    let r = audio::echo_report(&sent, &heard, 2000.0);
    let ctx = format!(
        "{r}\nsent: {}\nheard: {}\n{}",
        audio::describe(&sent),
        audio::describe(&heard),
        out.summary()
    );
    if let Err(e) = audio::rms_within_db(&sent, &heard, 3.0) {
        panic!("{e}\n{ctx}");
    }
    let d = r
        .delay
        .unwrap_or_else(|| panic!("the echo does not correlate with the speech\n{ctx}"));
    assert!(d.corr >= 0.9, "echo correlation {:.3} < 0.9\n{ctx}", d.corr);
    assert!(d.ms < 100.0, "echo delay {:.1} ms >= 100 ms\n{ctx}", d.ms);
    assert!(
        r.longest_gap_ms <= 40.0,
        "{} ms of silence inside the echoed speech\n{ctx}",
        r.longest_gap_ms
    );
    eprintln!("echo: {r}");
    r
}
