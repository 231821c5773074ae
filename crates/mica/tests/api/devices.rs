//! Linked devices and Find Device, driven through the real `mica agent` binary: linking,
//! ring / locate / lost mode / erase reaching `done` with the agent's hooks run, offline
//! delivery, re-delivery run once, expiry, unlinking after erase, the activation lock through a
//! reset, other accounts, and bad input.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mica_client::Client;
use reqwest::Method;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::security::step_up_by_email;
use crate::support::{TestApp, PASSWORD};

on_both_backends!(
    agents_run_the_owners_commands,
    activation_lock_survives_a_reset,
    bad_device_input_is_refused_and_nothing_is_stored,
    the_owner_sees_command_states_live,
    commands_reach_a_device_connected_to_another_node,
    a_websocket_channel_takes_acknowledgements,
    an_agent_refuses_a_command_older_than_its_journal,
    a_relink_cannot_weaken_the_devices_protection,
    a_lock_held_by_another_account_is_not_taken,
    a_lost_acknowledgement_answer_still_runs_the_command_once,
    an_erase_cut_short_is_finished_at_the_next_start,
    the_owners_feed_ends_with_the_session,
    protective_commands_wait_for_the_device_and_can_be_cancelled,
    a_write_for_a_device_removed_meanwhile_is_not_found,
    a_lost_device_that_reports_its_place_is_news_to_its_owner,
);

/// An IMEI with a valid check digit, different for each `n`.
pub(crate) fn imei(n: u64) -> String {
    let body = format!("35{:012}", n);
    for d in 0..10 {
        let candidate = format!("{body}{d}");
        if mica_devices::hardware::luhn_ok(&candidate) {
            return candidate;
        }
    }
    unreachable!()
}

/// A test device: its data folder (wiped by a reset), its state file (which survives one), its
/// hooks (which write what they did into `out/`), and the agent process.
pub(crate) struct Agent {
    root: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    pub(crate) fn new(app: &TestApp, name: &str, n: u64, ring_hook: &str) -> Agent {
        let root = std::env::temp_dir().join(format!(
            "mica-agent-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(root.join("out")).unwrap();
        let out = root.join("out");
        let ring_hook = ring_hook.replace("{out}", &out.display().to_string());
        let config = root.join("agent.toml");
        let toml = format!(
            r#"server = "{server}"
data_dir = "{root}/data"
state_file = "{root}/persist/activation.json"
silence_secs = 60

[device]
name = "{name}"
model = "Test Laptop 14"
os_version = "Debian 13"
imeis = ["{imei}"]
serial = "SN-{n}"

[location]
source = "fixed"
lat = 48.8584
lon = 2.2945
accuracy = 12.5
interval_secs = 0

[hooks]
ring = '{ring_hook}'
lock = 'echo "$MICA_LOST_MESSAGE|$MICA_LOST_PHONE" >> {out}/lock.log'
unlock = 'echo unlocked >> {out}/unlock.log'
erase = 'echo "$MICA_DATA_DIR" >> {out}/erase.log'
notice = 'echo "$MICA_NOTICE_KIND|$MICA_NOTICE_TITLE" >> {out}/notice.log'

[sync]
categories = ["notes"]
interval_secs = 5
"#,
            server = app.base,
            root = root.display(),
            imei = imei(n),
            out = out.display(),
        );
        std::fs::write(&config, toml).unwrap();
        Agent {
            root,
            config,
            child: None,
        }
    }

    /// Points the agent at another address in front of the server (a relay).
    fn through(&self, url: &str) {
        let toml = std::fs::read_to_string(&self.config).unwrap();
        let line = toml.lines().next().unwrap().to_owned();
        assert!(line.starts_with("server = "), "{line}");
        std::fs::write(
            &self.config,
            toml.replacen(&line, &format!("server = \"{url}\""), 1),
        )
        .unwrap();
    }

    /// Replaces the erase hook.
    fn erase_hook(&self, cmd: &str) {
        let toml = std::fs::read_to_string(&self.config).unwrap();
        let line = toml
            .lines()
            .find(|l| l.starts_with("erase = "))
            .unwrap()
            .to_owned();
        let cmd = cmd.replace("{out}", &self.root.join("out").display().to_string());
        std::fs::write(
            &self.config,
            toml.replacen(&line, &format!("erase = '{cmd}'"), 1),
        )
        .unwrap();
    }

    /// Makes the agent's command channel Server-Sent Events instead of a WebSocket.
    fn use_sse(&self) {
        let toml = std::fs::read_to_string(&self.config).unwrap();
        let toml = toml.replacen(
            "silence_secs = 60\n",
            "silence_secs = 60\nchannel = \"sse\"\n",
            1,
        );
        assert!(toml.contains("channel = \"sse\""));
        std::fs::write(&self.config, toml).unwrap();
    }

    /// Keeps the agent from reporting its place on its own in lost mode: the places it
    /// reports are then only those a locate asked for.
    fn no_lost_reports(&self) {
        let toml = std::fs::read_to_string(&self.config).unwrap();
        let toml = toml.replacen(
            "interval_secs = 0\n",
            "interval_secs = 0\nlost_interval_secs = 0\n",
            1,
        );
        assert!(toml.contains("lost_interval_secs = 0"));
        std::fs::write(&self.config, toml).unwrap();
    }

    /// Makes the lock hook take three seconds: the agent is busy while it runs.
    fn slow_lock(&self) {
        let log = self.root.join("out").join("lock.log");
        let toml = std::fs::read_to_string(&self.config).unwrap();
        let slow = toml.replacen(
            &format!(">> {}'", log.display()),
            &format!(">> {}; sleep 3'", log.display()),
            1,
        );
        assert_ne!(slow, toml);
        std::fs::write(&self.config, slow).unwrap();
    }

    pub(crate) fn out(&self, file: &str) -> String {
        std::fs::read_to_string(self.root.join("out").join(file)).unwrap_or_default()
    }

    /// Sets how long a ring lasts when nobody stops it.
    pub(crate) fn ring_for(&self, secs: u64) {
        let toml = std::fs::read_to_string(&self.config).unwrap();
        let toml = toml.replacen(
            "[hooks]\n",
            &format!("[hooks]\nring_for_secs = {secs}\n"),
            1,
        );
        std::fs::write(&self.config, toml).unwrap();
    }

    /// The rings the hook played, in order: each command once, however many rounds it rang.
    pub(crate) fn rang(&self) -> Vec<String> {
        let mut ids: Vec<String> = lines(&self.out("ring.log"))
            .into_iter()
            .map(str::to_owned)
            .collect();
        ids.dedup();
        ids
    }

    /// Waits until the ring hook has played `id`.
    pub(crate) async fn until_ringing(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.rang().iter().any(|r| r == id) {
            assert!(
                Instant::now() < deadline,
                "never rang {id}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `mica agent stop-ring`: what a person holding the device does.
    pub(crate) fn stop_ring(&self) -> String {
        let out = self.command(&["stop-ring"]).output().unwrap();
        assert!(
            out.status.success(),
            "stop-ring: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The agent's own folder (its configuration, log and hook outputs).
    pub(crate) fn root_path(&self) -> &std::path::Path {
        &self.root
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mica"));
        c.arg("agent").args(args).arg(&self.config);
        for (k, _) in std::env::vars() {
            if k.starts_with("MICA_") {
                c.env_remove(k);
            }
        }
        c.env("MICA_LOG", "info");
        c
    }

    fn run_with_password(&self, args: &[&str], password: &str) -> Output {
        self.command(args)
            .env("MICA_AGENT_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub(crate) fn link(&self, login: &str) -> Output {
        self.run_with_password(&["link", "--login", login], PASSWORD)
    }

    /// Links the agent with `login`'s password, starts it, and waits until its owner `c` sees
    /// it online; its device id.
    pub(crate) async fn link_and_run(&mut self, c: &Client, login: &str) -> String {
        let out = self.link(login);
        assert!(
            out.status.success(),
            "link: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = self.linked_id();
        self.start();
        until_online(c, &id, self).await;
        id
    }

    pub(crate) fn linked_id(&self) -> String {
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.data().join("device.json")).unwrap())
                .unwrap();
        v["device_id"].as_str().unwrap().to_owned()
    }

    pub(crate) fn credential(&self) -> String {
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.data().join("device.json")).unwrap())
                .unwrap();
        v["credential"].as_str().unwrap().to_owned()
    }

    pub(crate) fn start(&mut self) {
        let log = std::fs::File::create(self.root.join("agent.log")).unwrap();
        let child = self
            .command(&["run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the agent to exit by itself.
    pub(crate) async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait().unwrap() {
                    self.child = None;
                    return status;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Simulates a factory reset: the data folder goes, the state file stays.
    fn reset(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.data());
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(crate) async fn sign_in(app: &TestApp, login: &str) -> Client {
    let t = app.client.sign_in(login, PASSWORD, None).await.unwrap();
    app.client.with_token(t.access_token)
}

pub(crate) async fn owner(app: &TestApp, email: &str) -> (Client, String) {
    let t = app.signup_email(email).await;
    (app.client.with_token(t.access_token), t.account_id)
}

pub(crate) async fn get(c: &Client, path: &str) -> Value {
    c.raw(Method::GET, path, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
        .json()
        .await
        .unwrap()
}

pub(crate) async fn send(c: &Client, device: &str, body: Value) -> Value {
    c.raw(
        Method::POST,
        &format!("/api/v1/devices/{device}/commands"),
        Some(body),
    )
    .await
    .unwrap_or_else(|e| panic!("sending a command: {e:?}"))
    .json()
    .await
    .unwrap()
}

/// Polls a command until it reaches `state` (the agent works in real time).
pub(crate) async fn until_state(
    c: &Client,
    device: &str,
    command: &str,
    state: &str,
    agent: &Agent,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(c, &format!("/api/v1/devices/{device}/commands/{command}")).await;
        if v["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "command {command} is {} not {state}; agent log:\n{}",
            v["state"],
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn until_online(c: &Client, device: &str, agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(c, &format!("/api/v1/devices/{device}")).await["online"] != json!(true) {
        assert!(
            Instant::now() < deadline,
            "agent never connected:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the agent's log says `needle`.
pub(crate) async fn until_logged(agent: &Agent, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the agent never logged {needle:?}:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.is_empty()).collect()
}

async fn agents_run_the_owners_commands(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let mut a = Agent::new(
        app,
        "laptop",
        1,
        "echo \"$MICA_COMMAND_ID\" >> {out}/ring.log",
    );
    // B's lock takes a while, so a command issued right after it waits unacknowledged and the
    // server sends it again. B's ring plays a long sound (a process of its own) until stopped.
    let mut b = Agent::new(
        app,
        "tablet",
        2,
        "echo \"$MICA_COMMAND_ID\" >> {out}/ring.log; sleep 30 & echo $! >> {out}/ring.pids; wait",
    );
    b.slow_lock();
    b.no_lost_reports();
    b.ring_for(5);
    // A holds its command channel as a WebSocket, B as Server-Sent Events: both must work.
    b.use_sse();
    for agent in [&a, &b] {
        let out = agent.link("ana@example.com");
        assert!(
            out.status.success(),
            "link: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ida, idb) = (a.linked_id(), b.linked_id());
    let list = get(&ana, "/api/v1/devices").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["laptop", "tablet"]);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["find_device"] == true && d["state"] == "linked"));
    assert_eq!(list[0]["hardware"]["serial"], "SN-1");

    // A note the owner writes reaches the agent's mirror (the agent syncs `notes`).
    ana.push(
        "notes",
        json!([{ "id": "n1", "op": "put", "body": crate::sync::note("Lost & found") }]),
        None,
    )
    .await
    .unwrap();

    a.start();
    b.start();
    until_online(&ana, &ida, &a).await;
    until_online(&ana, &idb, &b).await;
    until_logged(&a, "command channel open (WebSocket)").await;
    until_logged(&b, "command channel open (Server-Sent Events)").await;

    // Ring: it rings until stopped on the device; the owner sees it acknowledged meanwhile,
    // then done.
    let ring = send(&ana, &ida, json!({ "kind": "ring" })).await;
    let ring_id = ring["id"].as_str().unwrap();
    a.until_ringing(ring_id).await;
    let v = get(&ana, &format!("/api/v1/devices/{ida}/commands/{ring_id}")).await;
    assert_eq!(v["state"], "acknowledged");
    assert_eq!(a.stop_ring(), "the ring is stopped\n");
    until_state(&ana, &ida, ring_id, "done", &a).await;
    assert_eq!(a.rang(), [ring_id]);
    assert_eq!(a.stop_ring(), "the device is not ringing\n");

    // Locate: a fresh position arrives.
    let locate = send(&ana, &idb, json!({ "kind": "locate" })).await;
    until_state(&ana, &idb, locate["id"].as_str().unwrap(), "done", &b).await;
    let locs = get(&ana, &format!("/api/v1/devices/{idb}/locations")).await;
    assert_eq!(locs.as_array().unwrap().len(), 1);
    assert_eq!(locs[0]["lat"], 48.8584);
    assert_eq!(locs[0]["lon"], 2.2945);
    assert_eq!(locs[0]["source"], "gps");
    let view = get(&ana, &format!("/api/v1/devices/{idb}")).await;
    assert_eq!(view["last_location"]["lat"], 48.8584);

    // A command sent again while the device is busy still runs once.
    let slow = send(&ana, &idb, json!({ "kind": "lost_mode" })).await;
    let again = send(&ana, &idb, json!({ "kind": "locate" })).await;
    until_state(&ana, &idb, slow["id"].as_str().unwrap(), "done", &b).await;
    let again = until_state(&ana, &idb, again["id"].as_str().unwrap(), "done", &b).await;
    assert!(
        again["deliveries"].as_i64().unwrap() >= 2,
        "not re-sent: {again}"
    );
    assert_eq!(
        get(&ana, &format!("/api/v1/devices/{idb}/locations"))
            .await
            .as_array()
            .unwrap()
            .len(),
        2,
        "the re-delivered locate ran more than once"
    );
    assert_eq!(lines(&b.out("lock.log")).len(), 1);

    // A newer ring replaces the one going on; a ring nobody stops ends when its time is up.
    let first = send(&ana, &idb, json!({ "kind": "ring" })).await;
    let first = first["id"].as_str().unwrap();
    b.until_ringing(first).await;
    let second = send(&ana, &idb, json!({ "kind": "ring" })).await;
    let second = second["id"].as_str().unwrap();
    until_state(&ana, &idb, first, "done", &b).await;
    until_state(&ana, &idb, second, "done", &b).await;
    assert_eq!(b.rang(), [first, second]);
    assert!(
        b.log().contains("the ring ended: a newer ring replaced it"),
        "{}",
        b.log()
    );
    assert!(
        b.log().contains("the ring ended: its time is up"),
        "{}",
        b.log()
    );
    // Each time, the sound stopped with the ring: the process the hook started is gone.
    let pids = b.out("ring.pids");
    assert_eq!(lines(&pids).len(), 2);
    for pid in lines(&pids) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .next();
        assert!(
            matches!(state, None | Some("Z")),
            "the ring's sound {pid} still plays: {stat}"
        );
    }

    // Lost mode: the lock hook shows the message; only the account password ends it.
    let lost = send(
        &ana,
        &ida,
        json!({ "kind": "lost_mode", "message": "Please return me", "phone": "+442079460958" }),
    )
    .await;
    until_state(&ana, &ida, lost["id"].as_str().unwrap(), "done", &a).await;
    assert_eq!(
        lines(&a.out("lock.log")),
        ["Please return me|+442079460958"]
    );
    let view = get(&ana, &format!("/api/v1/devices/{ida}")).await;
    assert_eq!(view["lost_mode"]["message"], "Please return me");
    // The agent reports where it is the moment lost mode begins (it reports no place
    // otherwise here), and the owner is told.
    let located = app
        .smtp
        .nth_with("ana@example.com", "in lost mode, was located", 1)
        .await;
    assert!(
        located
            .body()
            .contains("latitude 48.85840, longitude 2.29450"),
        "{}",
        located.body()
    );
    let wrong = a.run_with_password(&["unlock"], "not-the-password-1!");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("invalid_credentials"));
    assert!(a.data().join("lost_mode.json").exists());
    let right = a.run_with_password(&["unlock"], PASSWORD);
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert_eq!(lines(&a.out("unlock.log")), ["unlocked"]);
    assert!(get(&ana, &format!("/api/v1/devices/{ida}")).await["lost_mode"].is_null());

    // The mirror holds the note.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mirror = std::fs::read_to_string(a.data().join("sync/notes.json")).unwrap_or_default();
        if mirror.contains("Lost & found") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not sync notes:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Offline: a command waits for the next connection.
    a.kill();
    let offline = send(&ana, &ida, json!({ "kind": "ring" })).await;
    let offline_id = offline["id"].as_str().unwrap();
    assert_ne!(
        get(
            &ana,
            &format!("/api/v1/devices/{ida}/commands/{offline_id}")
        )
        .await["state"],
        "done"
    );
    // Meanwhile the note changes on the server, and on the laptop (offline) too, with a new one
    // besides: the agent pushes its changes when it is back, each based on what it last saw.
    let pulled = ana.pull("notes", None, None).await.unwrap();
    let n1 = pulled.changes[0].version.clone();
    ana.push(
        "notes",
        json!([{ "id": "n1", "op": "put", "base_version": n1, "body": crate::sync::note("Edited on the web") }]),
        None,
    )
    .await
    .unwrap();
    let outgoing = a.data().join("sync/outgoing/notes");
    std::fs::create_dir_all(&outgoing).unwrap();
    std::fs::write(
        outgoing.join("n1.json"),
        crate::sync::note("Edited on the laptop").to_string(),
    )
    .unwrap();
    std::fs::write(
        outgoing.join("n2.json"),
        crate::sync::note("Written on the laptop").to_string(),
    )
    .unwrap();
    // Not a note: the server refuses the batch for it, the rest still goes up.
    std::fs::write(outgoing.join("n3.json"), "[1, 2, 3]").unwrap();
    a.start();
    a.until_ringing(offline_id).await;
    assert_eq!(a.stop_ring(), "the ring is stopped\n");
    until_state(&ana, &ida, offline_id, "done", &a).await;
    assert_eq!(a.rang(), [ring_id, offline_id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&outgoing).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "local changes not pushed:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n2 = ana.item("notes", "n2").await.unwrap();
    assert_eq!(n2["body"], crate::sync::note("Written on the laptop"));
    // The laptop's edit was based on an old version: a conflict, kept aside, not an overwrite.
    let n1 = ana.item("notes", "n1").await.unwrap();
    assert_eq!(n1["body"], crate::sync::note("Edited on the web"));
    let set_aside = |place: &str, name: &str| -> String {
        let dir = a.data().join("sync").join(place).join("notes");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(&format!("-{name}"))
            })
            .collect();
        assert_eq!(files.len(), 1, "{name} in {}", dir.display());
        std::fs::read_to_string(files[0].path()).unwrap()
    };
    assert!(set_aside("conflicts", "n1.json").contains("Edited on the laptop"));
    assert_eq!(set_aside("rejected", "n3.json"), "[1, 2, 3]");
    assert_eq!(
        ana.item("notes", "n3").await.unwrap_err().code(),
        Some("not_found")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mirror = std::fs::read_to_string(a.data().join("sync/notes.json")).unwrap_or_default();
        if mirror.contains("Edited on the web") && mirror.contains("Written on the laptop") {
            break;
        }
        assert!(Instant::now() < deadline, "mirror not updated: {mirror}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Expired: a command whose time ran out while the device was away never runs.
    a.kill();
    let stale = send(&ana, &ida, json!({ "kind": "ring" })).await;
    let stale_id = stale["id"].as_str().unwrap().to_owned();
    app.advance(Duration::from_secs(8 * 24 * 3600));
    let ana = sign_in(app, "ana@example.com").await;
    let v = get(&ana, &format!("/api/v1/devices/{ida}/commands/{stale_id}")).await;
    assert_eq!(v["state"], "expired");
    a.start();
    let probe = send(&ana, &ida, json!({ "kind": "locate" })).await;
    until_state(&ana, &ida, probe["id"].as_str().unwrap(), "done", &a).await;
    assert_eq!(a.rang(), [ring_id, offline_id], "an expired command ran");

    // Another account can neither see nor command these devices.
    let (bob, _) = owner(app, "bob@example.com").await;
    assert_eq!(get(&bob, "/api/v1/devices").await, json!([]));
    for path in [
        format!("/api/v1/devices/{ida}"),
        format!("/api/v1/devices/{ida}/locations"),
        format!("/api/v1/devices/{ida}/commands"),
        format!("/api/v1/devices/{ida}/commands/{stale_id}"),
    ] {
        let e = refused(&bob, Method::GET, &path, None).await;
        assert_eq!(e.status().map(|s| s.as_u16()), Some(404), "{path}");
    }
    let e = refused(
        &bob,
        Method::POST,
        &format!("/api/v1/devices/{ida}/commands"),
        Some(json!({ "kind": "ring" })),
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    // Nor rename, switch off or remove them.
    for (method, body) in [
        (Method::PATCH, Some(json!({ "name": "Mine now" }))),
        (Method::PATCH, Some(json!({ "find_device": false }))),
        (Method::DELETE, None),
    ] {
        let e = refused(
            &bob,
            method.clone(),
            &format!("/api/v1/devices/{ida}"),
            body,
        )
        .await;
        assert_eq!(e.status().map(|s| s.as_u16()), Some(404), "{method}");
    }
    // And a device of theirs cannot acknowledge or report on this account's commands.
    let (_, bobs_device) = link_http(app, &bob, 77).await;
    for path in [
        format!("/api/v1/device/commands/{ring_id}/ack"),
        format!("/api/v1/device/commands/{ring_id}/result"),
    ] {
        let e = refused(
            &bobs_device,
            Method::POST,
            &path,
            Some(json!({ "outcome": "done" })),
        )
        .await;
        assert_eq!(e.status().map(|s| s.as_u16()), Some(404), "{path}");
    }
    let view = get(&ana, &format!("/api/v1/devices/{ida}")).await;
    assert_eq!(view["name"], "laptop");
    assert_eq!(view["find_device"], true);
    assert_eq!(a.rang().len(), 2);

    // Erase needs a step-up; then the agent wipes its data, reports done, and is unlinked.
    let e = refused(
        &ana,
        Method::POST,
        &format!("/api/v1/devices/{ida}/commands"),
        Some(json!({ "kind": "erase" })),
    )
    .await;
    assert_eq!(e.code(), Some("step_up_required"));
    step_up_by_email(app, &ana, "ana@example.com").await;
    let credential = a.credential();
    let erase = send(&ana, &ida, json!({ "kind": "erase" })).await;
    until_state(&ana, &ida, erase["id"].as_str().unwrap(), "done", &a).await;
    assert!(a.exited().await.success());
    assert_eq!(lines(&a.out("erase.log")), [a.data().display().to_string()]);
    assert_eq!(
        std::fs::read_dir(a.data()).unwrap().count(),
        0,
        "data folder not wiped"
    );
    assert!(
        a.root.join("persist/activation.json").exists(),
        "the marker must survive"
    );
    let view = get(&ana, &format!("/api/v1/devices/{ida}")).await;
    assert_eq!(view["state"], "erased");
    assert_eq!(view["find_device"], false);
    // Its reports are refused now; its history stays for the owner.
    let device = app.client.with_token(credential);
    let e = refused(&device, Method::POST, "/api/v1/device/locations", Some(json!({ "locations": [{ "lat": 1.0, "lon": 1.0, "accuracy": 5.0, "source": "gps", "at": "2026-01-01T00:00:00Z" }] }))).await;
    assert_eq!(e.code(), Some("invalid_device_credential"));
    let e = refused(
        &ana,
        Method::POST,
        &format!("/api/v1/devices/{ida}/commands"),
        Some(json!({ "kind": "ring" })),
    )
    .await;
    assert_eq!(e.code(), Some("device_unlinked"));
    assert!(!get(&ana, &format!("/api/v1/devices/{ida}/locations"))
        .await
        .as_array()
        .unwrap()
        .is_empty());

    // The owner removes the tablet (stepped up just now): its agent, still running, learns that
    // it is unlinked and stops, and its credential is refused.
    let credential = b.credential();
    ana.raw(Method::DELETE, &format!("/api/v1/devices/{idb}"), None)
        .await
        .unwrap();
    assert!(b.exited().await.success());
    assert!(
        b.log()
            .contains("the server no longer accepts this device's credential"),
        "{}",
        b.log()
    );
    let e = refused(
        &app.client.with_token(credential),
        Method::POST,
        "/api/v1/device/heartbeat",
        Some(json!({})),
    )
    .await;
    assert_eq!(e.code(), Some("invalid_device_credential"));

    // The erased laptop's last places are kept past the retention (they may be where a thief
    // took it) until the owner deletes them.
    let before = get(&ana, &format!("/api/v1/devices/{ida}/locations")).await;
    assert!(!before.as_array().unwrap().is_empty());
    app.advance(Duration::from_secs(60 * 24 * 3600));
    app.server
        .as_ref()
        .unwrap()
        .devices
        .maintenance()
        .await
        .unwrap();
    let ana = sign_in(app, "ana@example.com").await;
    assert_eq!(
        get(&ana, &format!("/api/v1/devices/{ida}/locations")).await,
        before
    );
    ana.raw(
        Method::DELETE,
        &format!("/api/v1/devices/{ida}/locations"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        get(&ana, &format!("/api/v1/devices/{ida}/locations")).await,
        json!([])
    );
}

async fn activation_lock_survives_a_reset(app: &TestApp) {
    let (ana, ana_id) = owner(app, "ana@example.com").await;
    let (_bob, _) = owner(app, "bob@example.com").await;
    let (_cy, _) = owner(app, "cy@example.com").await;
    let mut dev = Agent::new(app, "phone", 7, "true");
    let out = dev.link("ana@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = dev.linked_id();
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    app.client
        .with_token(dev.credential())
        .raw(
            Method::POST,
            "/api/v1/device/locations",
            Some(json!({ "locations": [{ "lat": 40.4168, "lon": -3.7038, "accuracy": 20.0, "source": "network", "at": at }] })),
        )
        .await
        .unwrap();

    // Factory reset: the data folder goes, the marker stays.
    dev.reset();
    let status = dev.command(&["status"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let masked = format!("{}••••••{}", &ana_id[..2], &ana_id[ana_id.len() - 2..]);
    assert!(status.contains("linked: no"), "{status}");
    assert!(
        status.contains(&format!("activation lock: on, bound to account {masked}")),
        "{status}"
    );

    // A stranger cannot take it.
    let out = dev.link("bob@example.com");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("activation_locked") && err.contains(&masked),
        "{err}"
    );
    assert!(!dev.data().join("device.json").exists());
    // …and the refused attempt left no session behind on bob's account.
    let bob = sign_in(app, "bob@example.com").await;
    let sessions = get(&bob, "/api/v1/sessions").await;
    assert_eq!(sessions.as_array().map(Vec::len), Some(2), "{sessions}");

    // The owner's password unlocks it: the lock carries over to the new link.
    let out = dev.link("ana@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = dev.linked_id();
    assert_ne!(first, second);
    let list = get(&ana, "/api/v1/devices").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str()], "the earlier link is replaced");
    // …and its location history carries over to the new link.
    let history = get(&ana, &format!("/api/v1/devices/{second}/locations")).await;
    assert_eq!(history[0]["lat"], 40.4168);

    // Once the owner removes it (step-up), anyone may link it.
    dev.reset();
    let e = ana
        .raw(Method::DELETE, &format!("/api/v1/devices/{second}"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("step_up_required"));
    step_up_by_email(app, &ana, "ana@example.com").await;
    ana.raw(Method::DELETE, &format!("/api/v1/devices/{second}"), None)
        .await
        .unwrap();
    assert_eq!(get(&ana, "/api/v1/devices").await, json!([]));
    let out = dev.link("bob@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting the owner account releases it too.
    dev.reset();
    let out = dev.link("cy@example.com");
    assert!(!out.status.success(), "still bound to bob");
    step_up_by_email(app, &bob, "bob@example.com").await;
    let sent = bob.deletion_request("email").await.unwrap();
    let mail = app
        .smtp
        .nth_with("bob@example.com", "delete your account", 1)
        .await;
    let code = crate::support::six_digits(&mail.subject()).unwrap();
    bob.deletion_confirm(&sent.challenge_id, &code)
        .await
        .unwrap();
    let out = dev.link("cy@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused unlock attempts are limited per device.
    dev.reset();
    // Two refusals so far (bob, then cy); three more are allowed within the hour.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let out = dev.link("ana@example.com");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        codes.push(if err.contains("rate_limited") {
            "rate_limited"
        } else if err.contains("activation_locked") {
            "activation_locked"
        } else {
            panic!("{err}")
        });
    }
    assert_eq!(
        codes,
        [
            "activation_locked",
            "activation_locked",
            "activation_locked",
            "rate_limited"
        ]
    );
    // Strangers' refusals do not lock the owner out of their own device.
    let out = dev.link("cy@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Links a device through the API (Find Device on) for `c`'s account; its id and a client
/// with its credential. `n` makes its IMEI and serial.
pub(crate) async fn link_http(app: &TestApp, c: &Client, n: u64) -> (String, Client) {
    let v: Value = c
        .raw(
            Method::POST,
            "/api/v1/devices",
            Some(json!({
                "name": "bench", "model": "Pixel", "os_version": "15", "app_version": "1",
                "hardware": { "imeis": [imei(n)], "serial": format!("S{n}") },
                "find_device": true,
            })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        v["device"]["id"].as_str().unwrap().to_owned(),
        app.client.with_token(v["credential"].as_str().unwrap()),
    )
}

async fn bad_device_input_is_refused_and_nothing_is_stored(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    // Bad hardware ids.
    for (hardware, field) in [
        (json!({ "imeis": ["490154203237519"] }), "imeis"),
        (json!({ "imeis": ["12345"] }), "imeis"),
        (json!({}), "hardware"),
        (json!({ "serial": "no spaces allowed" }), "serial"),
    ] {
        let e = refused(&ana, Method::POST, "/api/v1/devices", Some(json!({ "name": "x", "model": "y", "os_version": "", "app_version": "", "hardware": hardware }))).await;
        assert_eq!(e.code(), Some("invalid_field"), "{field}");
        assert!(e.to_string().contains(field), "{e}");
    }
    assert_eq!(get(&ana, "/api/v1/devices").await, json!([]));

    // Find Device is opt-in: a device linked without it is neither locked nor commandable.
    let quiet = post(
        &ana,
        "/api/v1/devices",
        json!({ "name": "quiet", "model": "m", "os_version": "", "app_version": "",
                "hardware": { "serial": "QUIET1" } }),
    )
    .await;
    assert_eq!(quiet["device"]["find_device"], false);
    let status = post(
        &app.client,
        "/api/v1/activation/status",
        json!({ "hardware": { "serial": "quiet1" } }),
    )
    .await;
    assert_eq!(status["locked"], false);
    let e = refused(
        &ana,
        Method::POST,
        &format!(
            "/api/v1/devices/{}/commands",
            quiet["device"]["id"].as_str().unwrap()
        ),
        Some(json!({ "kind": "ring" })),
    )
    .await;
    assert_eq!(e.code(), Some("find_device_off"));

    let (id, device) = link_http(app, &ana, 40).await;
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let good = json!({ "lat": 1.5, "lon": 2.5, "accuracy": 10.0, "source": "network", "battery": 50, "at": fmt(now) });
    let mut cases = Vec::new();
    for (k, v) in [
        ("lat", json!(90.5)),
        ("lat", json!(-91)),
        ("lon", json!(180.01)),
        ("accuracy", json!(-1)),
        ("battery", json!(101)),
        ("at", json!(fmt(now + time::Duration::hours(2)))),
        ("at", json!("yesterday")),
    ] {
        let mut bad = good.clone();
        bad[k] = v;
        cases.push((
            json!({ "locations": [good.clone(), bad] }),
            422,
            "invalid_field",
        ));
    }
    let mut unknown_source = good.clone();
    unknown_source["source"] = json!("satellite");
    cases.push((
        json!({ "locations": [unknown_source] }),
        422,
        "invalid_body",
    ));
    cases.push((json!({ "locations": [] }), 422, "invalid_field"));
    for (body, status, code) in cases {
        let e = device
            .raw(Method::POST, "/api/v1/device/locations", Some(body.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.status().map(|s| s.as_u16()), Some(status), "{body}");
        assert_eq!(e.code(), Some(code), "{body}");
    }
    // NaN is not JSON at all.
    let resp = app
        .http
        .post(app.url("/api/v1/device/locations"))
        .bearer_auth(device_token(&device))
        .header("content-type", "application/json")
        .body(r#"{"locations":[{"lat":NaN,"lon":1,"accuracy":1,"source":"gps","at":"2026-01-01T00:00:00Z"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
    assert_eq!(
        get(&ana, &format!("/api/v1/devices/{id}/locations")).await,
        json!([])
    );

    // Good reports are kept, and read back by time range.
    let mut older = good.clone();
    older["at"] = json!(fmt(now - time::Duration::hours(2)));
    older["lat"] = json!(-33.8568);
    device
        .raw(
            Method::POST,
            "/api/v1/device/locations",
            Some(json!({ "locations": [older, good.clone()] })),
        )
        .await
        .unwrap();
    let all = get(&ana, &format!("/api/v1/devices/{id}/locations")).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["lat"], -33.8568, "oldest first");
    let from = fmt(now - time::Duration::minutes(90)).replace('+', "%2B");
    let recent = get(&ana, &format!("/api/v1/devices/{id}/locations?from={from}")).await;
    assert_eq!(recent.as_array().unwrap().len(), 1);
    assert_eq!(recent[0]["lat"], 1.5);
    let e = refused(
        &ana,
        Method::GET,
        &format!("/api/v1/devices/{id}/locations?from=noon"),
        None,
    )
    .await;
    assert_eq!(e.code(), Some("invalid_query"));

    // Forged or wrong credentials.
    for token in ["mdc_forged", "not-even-a-device-token", &device_token(&ana)] {
        for (path, body) in [
            ("/api/v1/device/heartbeat", json!({})),
            (
                "/api/v1/device/locations",
                json!({ "locations": [{ "lat": 1.0, "lon": 2.0, "accuracy": 5.0, "source": "gps", "at": "2026-11-01T00:00:00Z" }] }),
            ),
            ("/api/v1/device/commands/cmd_any/ack", json!({})),
        ] {
            let e = app
                .client
                .with_token(token)
                .raw(Method::POST, path, Some(body))
                .await
                .unwrap_err();
            assert_eq!(e.status().map(|s| s.as_u16()), Some(401), "{token} {path}");
            assert_eq!(e.code(), Some("invalid_device_credential"));
        }
    }

    // Bad commands.
    for (body, code) in [
        (json!({ "kind": "explode" }), "invalid_body"),
        (json!({ "kind": "ring", "message": "hi" }), "invalid_field"),
        (
            json!({ "kind": "lost_mode", "phone": "12" }),
            "invalid_field",
        ),
        (json!({ "kind": "erase" }), "step_up_required"),
    ] {
        let e = refused(
            &ana,
            Method::POST,
            &format!("/api/v1/devices/{id}/commands"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(e.code(), Some(code), "{body}");
    }
    assert_eq!(
        get(&ana, &format!("/api/v1/devices/{id}/commands")).await,
        json!([])
    );
    // Turning Find Device off needs a step-up too.
    let e = refused(
        &ana,
        Method::PATCH,
        &format!("/api/v1/devices/{id}"),
        Some(json!({ "find_device": false })),
    )
    .await;
    assert_eq!(e.code(), Some("step_up_required"));
    // An unknown command id.
    let e = refused(
        &device,
        Method::POST,
        "/api/v1/device/commands/cmd_nope/ack",
        Some(json!({})),
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    // A result before the acknowledgement.
    let c = send(&ana, &id, json!({ "kind": "ring" })).await;
    let e = refused(
        &device,
        Method::POST,
        &format!(
            "/api/v1/device/commands/{}/result",
            c["id"].as_str().unwrap()
        ),
        Some(json!({ "outcome": "done" })),
    )
    .await;
    assert_eq!(e.code(), Some("command_not_acknowledged"));
    // An acknowledgement after expiry is refused, so the device never runs it.
    app.advance(Duration::from_secs(8 * 24 * 3600));
    let e = refused(
        &device,
        Method::POST,
        &format!("/api/v1/device/commands/{}/ack", c["id"].as_str().unwrap()),
        Some(json!({})),
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(410));
    assert_eq!(e.code(), Some("command_expired"));
}

/// The bearer token a client sends (for raw requests).
pub(crate) fn device_token(c: &Client) -> String {
    c.token().unwrap_or_default().to_owned()
}

async fn the_owner_sees_command_states_live(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let (id, device) = link_http(app, &ana, 50).await;
    let t = device_token(&ana);
    let mut feed = app
        .http
        .get(app.url("/api/v1/devices/events"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    // The device's channel, read raw: the command arrives there.
    let mut channel = app
        .http
        .get(app.url("/api/v1/device/command-channel"))
        .bearer_auth(device_token(&device))
        .send()
        .await
        .unwrap();
    assert_eq!(channel.status(), 200);
    let first = read_until(&mut channel, "event: hello").await;
    assert!(first.contains(&id));

    let c = send(&ana, &id, json!({ "kind": "ring" })).await;
    let cid = c["id"].as_str().unwrap().to_owned();
    let frame = read_until(&mut channel, "event: command").await;
    assert!(frame.contains(&cid), "{frame}");
    // Not acknowledged: sent again.
    let again = read_until(&mut channel, "event: command").await;
    assert!(again.contains(&cid), "{again}");
    device
        .raw(
            Method::POST,
            &format!("/api/v1/device/commands/{cid}/ack"),
            Some(json!({})),
        )
        .await
        .unwrap();
    // A repeated (or replayed) acknowledgement does not let the device run it again.
    let e = refused(
        &device,
        Method::POST,
        &format!("/api/v1/device/commands/{cid}/ack"),
        Some(json!({})),
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(409));
    assert_eq!(e.code(), Some("command_already_acknowledged"));
    device
        .raw(
            Method::POST,
            &format!("/api/v1/device/commands/{cid}/result"),
            Some(json!({ "outcome": "failed", "reason": "the speaker is broken" })),
        )
        .await
        .unwrap();
    let seen = read_until(&mut feed, "\"state\":\"failed\"").await;
    for state in ["queued", "delivered", "acknowledged", "failed"] {
        assert!(
            seen.contains(&format!("\"state\":\"{state}\"")),
            "{state} missing from {seen}"
        );
    }
    assert!(seen.contains("the speaker is broken"));
    let history = get(&ana, &format!("/api/v1/devices/{id}/commands")).await;
    assert_eq!(history[0]["state"], "failed");
    assert_eq!(history[0]["reason"], "the speaker is broken");
    assert!(history[0]["deliveries"].as_i64().unwrap() >= 2);

    // Renaming shows on the feed.
    let v: Value = ana
        .raw(
            Method::PATCH,
            &format!("/api/v1/devices/{id}"),
            Some(json!({ "name": "Kitchen tablet" })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["name"], "Kitchen tablet");
    read_until(&mut feed, "\"change\":\"renamed\"").await;

    // Past the retention, maintenance drops old locations.
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    device
        .raw(
            Method::POST,
            "/api/v1/device/locations",
            Some(json!({ "locations": [{ "lat": 1.0, "lon": 2.0, "accuracy": 3.0, "source": "gps", "at": at }] })),
        )
        .await
        .unwrap();
    let kept = get(&ana, &format!("/api/v1/devices/{id}/locations")).await;
    assert_eq!(kept.as_array().unwrap().len(), 1);
    app.advance(Duration::from_secs(31 * 24 * 3600));
    app.server
        .as_ref()
        .unwrap()
        .devices
        .maintenance()
        .await
        .unwrap();
    let ana = sign_in(app, "ana@example.com").await;
    assert_eq!(
        get(&ana, &format!("/api/v1/devices/{id}/locations")).await,
        json!([])
    );

    // Turning Find Device off (after a step-up) releases the activation lock and stops commands.
    let hardware = json!({ "hardware": { "imeis": [imei(50)], "serial": "S50" } });
    let status = post(&app.client, "/api/v1/activation/status", hardware.clone()).await;
    assert_eq!(status["locked"], true);
    // A command the device has not taken yet is called off with it: it never runs.
    let waiting = send(&ana, &id, json!({ "kind": "ring" })).await;
    let waiting = waiting["id"].as_str().unwrap().to_owned();
    step_up_by_email(app, &ana, "ana@example.com").await;
    let v: Value = ana
        .raw(
            Method::PATCH,
            &format!("/api/v1/devices/{id}"),
            Some(json!({ "find_device": false })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["find_device"], false);
    let status = post(&app.client, "/api/v1/activation/status", hardware).await;
    assert_eq!(status, json!({ "locked": false, "owner": null }));
    let e = refused(
        &ana,
        Method::POST,
        &format!("/api/v1/devices/{id}/commands"),
        Some(json!({ "kind": "ring" })),
    )
    .await;
    assert_eq!(e.code(), Some("find_device_off"));
    let called_off = get(&ana, &format!("/api/v1/devices/{id}/commands/{waiting}")).await;
    assert_eq!(called_off["state"], "failed", "{called_off}");
    assert!(called_off["reason"]
        .as_str()
        .unwrap()
        .contains("Find Device was turned off"));
    let e = refused(
        &device,
        Method::POST,
        &format!("/api/v1/device/commands/{waiting}/ack"),
        None,
    )
    .await;
    assert_eq!(e.code(), Some("command_finished"));
}

/// A request that must be refused; its error.
pub(crate) async fn refused(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> mica_client::ClientError {
    match c.raw(method, path, body).await {
        Ok(r) => panic!("{path} was accepted: {}", r.status()),
        Err(e) => e,
    }
}

/// The device (through HTTP, as a client without the channel would) takes a command and
/// reports it done.
pub(crate) async fn run_on_device(device: &Client, command: &str) {
    post(
        device,
        &format!("/api/v1/device/commands/{command}/ack"),
        json!({}),
    )
    .await;
    post(
        device,
        &format!("/api/v1/device/commands/{command}/result"),
        json!({ "outcome": "done" }),
    )
    .await;
}

/// A POST that must succeed; its JSON answer.
pub(crate) async fn post(c: &Client, path: &str, body: Value) -> Value {
    c.raw(Method::POST, path, Some(body))
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
        .json()
        .await
        .unwrap()
}

/// Reads a streaming response until `needle` appears; returns everything read.
pub(crate) async fn read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {seen}"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before {needle:?}: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

async fn commands_reach_a_device_connected_to_another_node(app: &TestApp) {
    if app.backend != crate::support::Backend::Postgres {
        // On SQLite one node holds every connection.
        return;
    }
    // A second node on the same database, folder and key.
    let mut cfg = app.cfg.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.run_jobs = false;
    let other = mica::Server::start(&cfg, std::sync::Arc::new(app.clock.clone()))
        .await
        .unwrap();
    let (ana, _) = owner(app, "ana@example.com").await;
    let (id, device) = link_http(app, &ana, 60).await;
    let mut channel = app
        .http
        .get(format!(
            "http://{}/api/v1/device/command-channel",
            other.addr
        ))
        .bearer_auth(device_token(&device))
        .send()
        .await
        .unwrap();
    read_until(&mut channel, "event: hello").await;
    // Issued on the first node; the device hears it on the second.
    let c = send(&ana, &id, json!({ "kind": "ring" })).await;
    let frame = read_until(&mut channel, "event: command").await;
    assert!(frame.contains(c["id"].as_str().unwrap()), "{frame}");
    // So does a notice for the account's devices (a request to recover it, filed on the first).
    let request =
        crate::account_recovery::file_request(app, "ana@example.com", "ana.new@example.net", &[])
            .await;
    let frame = read_until(&mut channel, &request).await;
    assert!(
        frame.contains("event: notice") && frame.contains("recovery_requested"),
        "{frame}"
    );
    drop(channel);
    other.stop().await.unwrap();
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a device's command channel as a WebSocket.
pub(crate) async fn open_ws(
    app: &TestApp,
    credential: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = app
        .url("/api/v1/device/command-channel")
        .replacen("http://", "ws://", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// The next JSON text message of a WebSocket (pings skipped).
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("no message within 20 s")
            .expect("the channel ended")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(crate) async fn ws_send(ws: &mut Ws, msg: tokio_tungstenite::tungstenite::Message) {
    use futures_util::SinkExt;
    ws.send(msg).await.unwrap();
}

pub(crate) fn ws_text(v: Value) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Text(v.to_string().into())
}

async fn a_websocket_channel_takes_acknowledgements(app: &TestApp) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    let (ana, _) = owner(app, "ana@example.com").await;
    let (id, device) = link_http(app, &ana, 70).await;
    let credential = device_token(&device);

    // A forged credential is refused before the upgrade; so is a broken upgrade request.
    match open_ws(app, "mdc_forged").await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!(
            "a forged credential was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    let resp = app
        .http
        .get(app.url("/api/v1/device/command-channel"))
        .bearer_auth(&credential)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_websocket_upgrade");

    let mut ws = open_ws(app, &credential).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["device_id"], id.as_str());

    // A ring arrives as a command; acknowledged on the socket, the answer says to run it.
    let c = send(&ana, &id, json!({ "kind": "ring" })).await;
    let cid = c["id"].as_str().unwrap().to_owned();
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["type"], "command");
    assert_eq!(frame["id"], cid.as_str());
    assert_eq!(frame["kind"], "ring");
    assert_eq!(frame["acknowledged"], false);
    ws_send(&mut ws, ws_text(json!({ "type": "ack", "id": cid }))).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["type"], "ack");
    assert_eq!(answer["id"], cid.as_str());
    assert_eq!(answer["command"]["state"], "acknowledged");
    assert!(answer.get("error").is_none(), "{answer}");
    // Again: refused, so the device never runs it twice.
    ws_send(&mut ws, ws_text(json!({ "type": "ack", "id": cid }))).await;
    let again = next_json(&mut ws).await;
    assert_eq!(again["error"]["code"], "command_already_acknowledged");
    // Another account's command id, or one that does not exist: not found.
    ws_send(&mut ws, ws_text(json!({ "type": "ack", "id": "cmd_nope" }))).await;
    assert_eq!(next_json(&mut ws).await["error"]["code"], "not_found");
    // Nor is an id no command could have (a NUL, which PostgreSQL cannot even compare).
    for bogus in ["cmd_\u{0}", "", "cmd nope", &"x".repeat(300)] {
        ws_send(&mut ws, ws_text(json!({ "type": "ack", "id": bogus }))).await;
        let answer = next_json(&mut ws).await;
        assert_eq!(answer["error"]["code"], "not_found", "{bogus:?}: {answer}");
    }
    // Bad messages get an answer, not a dropped connection.
    ws_send(&mut ws, Message::Text("not json".into())).await;
    let bad = next_json(&mut ws).await;
    assert_eq!(bad["type"], "error");
    assert_eq!(bad["error"]["code"], "bad_message");
    ws_send(&mut ws, ws_text(json!({ "type": "reboot" }))).await;
    assert_eq!(next_json(&mut ws).await["error"]["code"], "bad_message");
    ws_send(&mut ws, Message::Binary(vec![1u8, 2, 3].into())).await;
    assert_eq!(next_json(&mut ws).await["error"]["code"], "bad_message");

    // The result still goes over HTTP; the owner's history has every step.
    device
        .raw(
            Method::POST,
            &format!("/api/v1/device/commands/{cid}/result"),
            Some(json!({ "outcome": "done" })),
        )
        .await
        .unwrap();
    let history = get(&ana, &format!("/api/v1/devices/{id}/commands")).await;
    assert_eq!(history[0]["state"], "done");
    assert!(history[0]["acknowledged_at"].is_string());

    // A newer connection of the same device replaces this one, which is closed with 4000.
    let mut newer = open_ws(app, &credential).await.unwrap();
    assert_eq!(next_json(&mut newer).await["type"], "hello");
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the replaced channel was not closed")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("unexpected end {other:?}"),
        }
    };
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(4000));

    // Each command's seq is one more than the last: a device refuses any it has passed.
    assert_eq!(c["seq"], 1);
    let c2 = send(&ana, &id, json!({ "kind": "locate" })).await;
    assert_eq!(c2["seq"], 2);
    let frame = next_json(&mut newer).await;
    assert_eq!(frame["id"], c2["id"]);
    assert_eq!(frame["seq"], 2);
}

/// A command whose sequence number is at or below what the agent's journal has forgotten cannot
/// be told apart from a replay of one it already ran: the agent refuses it, unacknowledged.
async fn an_agent_refuses_a_command_older_than_its_journal(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let mut a = Agent::new(
        app,
        "veteran",
        51,
        "echo \"$MICA_COMMAND_ID\" >> {out}/ring.log",
    );
    let out = a.link("ana@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = a.linked_id();
    // The device has run and forgotten a thousand commands: it only remembers that much.
    std::fs::write(
        a.data().join("journal.json"),
        json!({ "forgotten_upto": 1000, "entries": {} }).to_string(),
    )
    .unwrap();
    a.start();
    until_online(&ana, &id, &a).await;
    let ring = send(&ana, &id, json!({ "kind": "ring" })).await;
    let ring_id = ring["id"].as_str().unwrap();
    assert_eq!(ring["seq"], 1);
    until_logged(&a, "refusing a command older than the journal remembers").await;
    // Delivered (its delivery is recorded once written to the channel), never acknowledged.
    let v = until_state(&ana, &id, ring_id, "delivered", &a).await;
    assert!(v["acknowledged_at"].is_null(), "{v}");
    assert!(a.rang().is_empty(), "the hook never ran");
}

/// Linking the same hardware again (what a reset device does) replaces the earlier link, but
/// cannot weaken it without the step-up that turning Find Device off takes: Find Device and the
/// activation lock stay on, lost mode stays (and goes to the device again), and the commands
/// still waiting for the device carry over.
async fn a_relink_cannot_weaken_the_devices_protection(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let (first, old) = link_http(app, &ana, 81).await;
    // Lost mode, taken and done by the device.
    let lost = send(
        &ana,
        &first,
        json!({ "kind": "lost_mode", "message": "Please call me", "phone": "+351912345678" }),
    )
    .await;
    run_on_device(&old, lost["id"].as_str().unwrap()).await;
    let ring = send(&ana, &first, json!({ "kind": "ring" })).await;
    assert_eq!(ring["state"], "queued");
    let hardware = json!({ "imeis": [imei(81)], "serial": "S81" });
    let relinked = post(
        &ana,
        "/api/v1/devices",
        json!({ "name": "phone", "model": "Pixel", "os_version": "16", "app_version": "2",
                "hardware": hardware, "find_device": false }),
    )
    .await;
    let second = relinked["device"]["id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(relinked["device"]["find_device"], true, "{relinked}");
    assert_eq!(
        relinked["device"]["lost_mode"]["message"], "Please call me",
        "{relinked}"
    );
    let status = post(
        &app.client,
        "/api/v1/activation/status",
        json!({ "hardware": hardware }),
    )
    .await;
    assert_eq!(status["locked"], true);
    // The waiting ring is the new link's; lost mode goes to the device again; what follows is
    // numbered after them.
    let history = get(&ana, &format!("/api/v1/devices/{second}/commands")).await;
    let history = history.as_array().unwrap();
    let kinds: Vec<(&str, &str)> = history
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("lost_mode", "queued"), ("ring", "queued")],
        "{history:?}"
    );
    assert_eq!(history[1]["id"], ring["id"]);
    let next = send(&ana, &second, json!({ "kind": "locate" })).await;
    assert_eq!(next["seq"], ring["seq"].as_i64().unwrap() + 2);
    // The earlier link's credential is over.
    let e = refused(
        &old,
        Method::POST,
        "/api/v1/device/heartbeat",
        Some(json!({})),
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401));
}

/// A device linked without Find Device carries no lock, so the hardware can be set up under
/// another account that turns it on. The first account can then no longer turn Find Device
/// on for its stale link: the lock stays with the account that holds it, and nothing changes.
async fn a_lock_held_by_another_account_is_not_taken(app: &TestApp) {
    let (ana, ana_id) = owner(app, "ana@example.com").await;
    let (bob, bob_id) = owner(app, "bob@example.com").await;
    let mut wins = Vec::new();
    let hardware = json!({ "imeis": [imei(91)], "serial": "S91" });
    let link = |find: bool| {
        json!({ "name": "phone", "model": "Pixel", "os_version": "16", "app_version": "2",
                "hardware": hardware, "find_device": find })
    };
    let anas = post(&ana, "/api/v1/devices", link(false)).await;
    let anas = anas["device"]["id"].as_str().unwrap().to_owned();
    let bobs = post(&bob, "/api/v1/devices", link(true)).await;
    assert_eq!(bobs["device"]["find_device"], true, "{bobs}");
    let e = refused(
        &ana,
        Method::PATCH,
        &format!("/api/v1/devices/{anas}"),
        Some(json!({ "find_device": true })),
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403), "{e:?}");
    assert_eq!(e.code(), Some("activation_locked"), "{e:?}");
    let view = get(&ana, &format!("/api/v1/devices/{anas}")).await;
    assert_eq!(view["find_device"], false, "{view}");
    let status = post(
        &app.client,
        "/api/v1/activation/status",
        json!({ "hardware": hardware }),
    )
    .await;
    assert_eq!(status["locked"], true);
    let masked = format!("{}••••••{}", &bob_id[..2], &bob_id[bob_id.len() - 2..]);
    assert_eq!(status["owner"], masked, "{status}");

    // Two accounts linking one device at the same moment, Find Device on: one gets it and its
    // lock, the other is refused (on PostgreSQL the two links run side by side).
    for n in 0..8 {
        let hardware = json!({ "imeis": [imei(100 + n)], "serial": format!("S{}", 100 + n) });
        let body = json!({ "name": "phone", "model": "Pixel", "os_version": "16",
                           "app_version": "2", "hardware": hardware, "find_device": true });
        let (a, b) = tokio::join!(
            ana.raw(Method::POST, "/api/v1/devices", Some(body.clone())),
            bob.raw(Method::POST, "/api/v1/devices", Some(body.clone())),
        );
        let (won, lost) = match (a, b) {
            (Ok(_), Err(e)) => (&ana_id, e),
            (Err(e), Ok(_)) => (&bob_id, e),
            (a, b) => panic!("round {n}: both or neither linked: {a:?} {b:?}"),
        };
        assert_eq!(lost.code(), Some("activation_locked"), "{lost:?}");
        wins.push(won.clone());
        let status = post(
            &app.client,
            "/api/v1/activation/status",
            json!({ "hardware": hardware }),
        )
        .await;
        assert_eq!(status["locked"], true, "{status}");
    }
    // The refused links left no device behind: each account has its first phone and the ones
    // it won.
    for (c, who) in [(&ana, &ana_id), (&bob, &bob_id)] {
        let won = wins.iter().filter(|w| *w == who).count();
        let devices = get(c, "/api/v1/devices").await;
        assert_eq!(devices.as_array().unwrap().len(), 1 + won, "{devices}");
    }
}

/// The owner's live feed carries where the devices are: it ends when the session that opened
/// it does, at the next event at the latest.
async fn the_owners_feed_ends_with_the_session(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let (id, _) = link_http(app, &ana, 82).await;
    let other = sign_in(app, "ana@example.com").await;
    let mut feed = app
        .http
        .get(app.url("/api/v1/devices/events"))
        .bearer_auth(device_token(&ana))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    read_until(&mut feed, "event: ready").await;
    ana.sign_out().await.unwrap();
    other
        .raw(
            Method::PATCH,
            &format!("/api/v1/devices/{id}"),
            Some(json!({ "name": "Renamed after sign-out" })),
        )
        .await
        .unwrap();
    let seen = read_until(&mut feed, "event: ended").await;
    assert!(seen.contains("signed_out"), "{seen}");
    assert!(!seen.contains("\"change\":\"renamed\""), "{seen}");
    assert!(
        tokio::time::timeout(Duration::from_secs(20), feed.chunk())
            .await
            .expect("the feed stayed open")
            .unwrap()
            .is_none(),
        "the feed goes on after its session ended"
    );
}

/// A relay in front of the server that carries everything both ways, except the answer to the
/// first device acknowledgement it sees: it drops that connection instead, after the server
/// took the acknowledgement — an answer lost on a poor network.
struct AckEater {
    url: String,
    eaten: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AckEater {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ack_eater(app: &TestApp) -> AckEater {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = app.base.trim_start_matches("http://").to_owned();
    let eaten = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = eaten.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, upstream.clone(), counter.clone()));
        }
    });
    AckEater { url, eaten, task }
}

async fn relay(
    mut client: tokio::net::TcpStream,
    upstream: String,
    eaten: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut from_client, mut from_server) = ([0u8; 16384], [0u8; 16384]);
    let mut eating = false;
    loop {
        tokio::select! {
            n = client.read(&mut from_client) => {
                let Ok(n @ 1..) = n else { return };
                let chunk = &from_client[..n];
                let text = String::from_utf8_lossy(chunk);
                if eaten.load(Ordering::SeqCst) == 0
                    && text.starts_with("POST /api/v1/device/commands/")
                    && text.contains("/ack HTTP/1.1")
                {
                    eating = true;
                }
                if server.write_all(chunk).await.is_err() {
                    return;
                }
            }
            n = server.read(&mut from_server) => {
                let Ok(n @ 1..) = n else { return };
                if eating {
                    // The server answered: it has the acknowledgement. Both sockets go.
                    eaten.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if client.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The answer to a device's acknowledgement is lost on the way, after the server took it. The
/// device asks again, learns that the acknowledgement it holds is its own, and runs the
/// command — once — instead of failing it.
async fn a_lost_acknowledgement_answer_still_runs_the_command_once(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let eater = ack_eater(app).await;
    let mut a = Agent::new(
        app,
        "laptop",
        7,
        "echo \"$MICA_COMMAND_ID\" >> {out}/ring.log",
    );
    a.ring_for(1);
    a.through(&eater.url);
    let id = a.link_and_run(&ana, "ana@example.com").await;
    let ring = send(&ana, &id, json!({ "kind": "ring" })).await;
    let ring = ring["id"].as_str().unwrap().to_owned();
    let done = until_state(&ana, &id, &ring, "done", &a).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        eater.eaten.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{}",
        a.log()
    );
    assert_eq!(a.rang(), [ring], "{}", a.log());
    assert!(
        a.log()
            .contains("the server had this device's acknowledgement"),
        "{}",
        a.log()
    );
}

/// The machine stops while the erase hook runs (here the hook kills the agent): nothing is
/// reported, the data is still there. The next start finishes the wipe, then reports `done`.
async fn an_erase_cut_short_is_finished_at_the_next_start(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let mut a = Agent::new(app, "laptop", 8, "true");
    a.erase_hook("echo \"$MICA_DATA_DIR\" >> {out}/erase.log; kill -9 $PPID");
    let id = a.link_and_run(&ana, "ana@example.com").await;
    step_up_by_email(app, &ana, "ana@example.com").await;
    let erase = send(&ana, &id, json!({ "kind": "erase" })).await;
    let erase = erase["id"].as_str().unwrap().to_owned();
    assert!(!a.exited().await.success(), "{}", a.log());
    assert_eq!(lines(&a.out("erase.log")).len(), 1);
    assert!(a.data().join("device.json").exists(), "wiped already?");
    let cmd = get(&ana, &format!("/api/v1/devices/{id}/commands/{erase}")).await;
    assert_eq!(cmd["state"], "acknowledged", "{cmd}");

    a.erase_hook("echo \"$MICA_DATA_DIR\" >> {out}/erase.log");
    a.start();
    // It finishes the wipe and reports it; then there is nothing linked left to run.
    a.exited().await;
    let cmd = get(&ana, &format!("/api/v1/devices/{id}/commands/{erase}")).await;
    assert_eq!(cmd["state"], "done", "{cmd}\n{}", a.log());
    assert_eq!(lines(&a.out("erase.log")).len(), 2);
    assert_eq!(
        std::fs::read_dir(a.data()).unwrap().count(),
        0,
        "data folder not wiped"
    );
    let view = get(&ana, &format!("/api/v1/devices/{id}")).await;
    assert_eq!(view["state"], "erased");
}

/// Lost mode and erase wait for a device kept off (a thief's best move) as long as it stays
/// linked, where a locate or a ring expires; the owner can cancel what the device has not
/// taken (lost mode and erase only after a step-up), and the acknowledgement of a cancelled
/// command is refused, so the device never runs it.
async fn protective_commands_wait_for_the_device_and_can_be_cancelled(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let (id, device) = link_http(app, &ana, 31).await;
    let command = |c: &Value| {
        format!(
            "/api/v1/devices/{id}/commands/{}",
            c["id"].as_str().unwrap()
        )
    };
    let ack = |c: &Value| format!("/api/v1/device/commands/{}/ack", c["id"].as_str().unwrap());
    let lost = send(
        &ana,
        &id,
        json!({ "kind": "lost_mode", "message": "Please return me", "phone": "+442079460958" }),
    )
    .await;
    assert!(lost["expires_at"].is_null(), "{lost}");
    let ring = send(&ana, &id, json!({ "kind": "ring" })).await;
    assert!(ring["expires_at"].is_string(), "{ring}");
    // A locate the owner no longer wants: cancelled without a step-up, and again the same.
    let locate = send(&ana, &id, json!({ "kind": "locate" })).await;
    for _ in 0..2 {
        let v: Value = ana
            .raw(Method::DELETE, &command(&locate), None)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["state"], "cancelled", "{v}");
        assert_eq!(v["reason"], "cancelled by the owner");
    }

    // Eight days later the device comes back on: the ring has expired, lost mode still waits.
    app.advance(Duration::from_secs(8 * 24 * 3600));
    let ana = sign_in(app, "ana@example.com").await;
    assert_eq!(get(&ana, &command(&ring)).await["state"], "expired");
    assert_eq!(get(&ana, &command(&lost)).await["state"], "queued");
    let e = refused(&device, Method::POST, &ack(&locate), Some(json!({}))).await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(409));
    assert_eq!(e.code(), Some("command_cancelled"));
    run_on_device(&device, lost["id"].as_str().unwrap()).await;
    let view = get(&ana, &format!("/api/v1/devices/{id}")).await;
    assert_eq!(view["lost_mode"]["message"], "Please return me");

    // An erase is called off once the phone turns up: only after a step-up, as it was sent.
    step_up_by_email(app, &ana, "ana@example.com").await;
    let erase = send(&ana, &id, json!({ "kind": "erase" })).await;
    assert!(erase["expires_at"].is_null(), "{erase}");
    let ana = sign_in(app, "ana@example.com").await;
    let e = refused(&ana, Method::DELETE, &command(&erase), None).await;
    assert_eq!(e.code(), Some("step_up_required"));
    // Nor can another account touch it.
    let (bob, _) = owner(app, "bob@example.com").await;
    let e = refused(&bob, Method::DELETE, &command(&erase), None).await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    app.advance(Duration::from_secs(61)); // a new code may be asked for after a minute
    step_up_by_email(app, &ana, "ana@example.com").await;
    let v: Value = ana
        .raw(Method::DELETE, &command(&erase), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    let e = refused(&device, Method::POST, &ack(&erase), Some(json!({}))).await;
    assert_eq!(e.code(), Some("command_cancelled"));
    assert_eq!(
        get(&ana, &format!("/api/v1/devices/{id}")).await["state"],
        "linked"
    );
    let events = get(&ana, "/api/v1/me/security-events").await.to_string();
    assert!(events.contains("device_erase_cancelled"), "{events}");
    // The owner is told of both, by mail, as of every change to what protects the account.
    for (subject, what) in [
        (
            "a device will be erased",
            "An erase was sent to the device \"bench\"",
        ),
        (
            "an erase was cancelled",
            "The erase sent to the device \"bench\" was cancelled",
        ),
    ] {
        let mail = app.smtp.nth_with("ana@example.com", what, 1).await;
        assert_eq!(mail.subject(), format!("Mica: {subject}"));
    }

    // What the device has taken can no longer be cancelled.
    let ring = send(&ana, &id, json!({ "kind": "ring" })).await;
    post(&device, &ack(&ring), json!({})).await;
    let e = refused(&ana, Method::DELETE, &command(&ring), None).await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(409));
    assert_eq!(e.code(), Some("command_not_cancellable"));
    let e = refused(
        &ana,
        Method::DELETE,
        &format!("/api/v1/devices/{id}/commands/cmd_nope"),
        None,
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
}

/// A device removed between a request's checks and its write (locations reported while the
/// owner removes it): the database's refusal is "not found", not a server fault, on both
/// engines — and nothing is written.
async fn a_write_for_a_device_removed_meanwhile_is_not_found(app: &TestApp) {
    let (ana, account) = owner(app, "ana@example.com").await;
    let (id, _) = link_http(app, &ana, 41).await;
    step_up_by_email(app, &ana, "ana@example.com").await;
    ana.raw(Method::DELETE, &format!("/api/v1/devices/{id}"), None)
        .await
        .unwrap();
    let row = mica_store::LocationRow {
        at: mica_core::Timestamp(1_000),
        received_at: mica_core::Timestamp(1_000),
        place: vec![1, 2, 3],
    };
    let e = app
        .store()
        .add_locations(account.parse().unwrap(), &id, &[row])
        .await
        .unwrap_err();
    assert!(matches!(e, mica_store::StoreError::Gone), "{e:?}");
    assert_eq!(mica_devices::DevicesError::from(e).code(), "not_found");
}

/// A device in lost mode that reports where it is: its owner is told by mail, with the place
/// and a map link, at most once an hour; a device not in lost mode tells nobody.
async fn a_lost_device_that_reports_its_place_is_news_to_its_owner(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let (id, device) = link_http(app, &ana, 51).await;
    let report = |lat: f64, lon: f64| {
        let device = device.clone();
        async move {
            let at = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            let r = device
                .raw(
                    Method::POST,
                    "/api/v1/device/locations",
                    Some(
                        json!({ "locations": [{ "lat": lat, "lon": lon, "accuracy": 12.0,
                            "source": "gps", "at": at, "battery": 42 }] }),
                    ),
                )
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    let lose = |message: &'static str| {
        let (ana, device, id) = (ana.clone(), device.clone(), id.clone());
        async move {
            let c = send(
                &ana,
                &id,
                json!({ "kind": "lost_mode", "message": message }),
            )
            .await;
            run_on_device(&device, c["id"].as_str().unwrap()).await;
        }
    };
    const LOCATED: &str = "in lost mode, was located";
    // Not lost: a report is no one's news.
    report(1.11111, 2.22222).await;
    lose("Please return me").await;
    report(38.7139, -9.1334).await;
    let mail = app.smtp.nth_with("ana@example.com", LOCATED, 1).await;
    assert_eq!(mail.subject(), "Mica: your lost device was located");
    let body = mail.body();
    for part in [
        "Your device \"bench\"",
        "latitude 38.71390, longitude -9.13340",
        "within 12 m, battery 42%",
        "https://www.openstreetmap.org/?mlat=38.71390&mlon=-9.13340",
    ] {
        assert!(body.contains(part), "{part} in {body}");
    }
    // Within the hour: no second message; an hour later: the new place.
    report(38.7200, -9.1400).await;
    app.advance(Duration::from_secs(3601));
    let ana = sign_in(app, "ana@example.com").await;
    report(38.7300, -9.1500).await;
    let second = app.smtp.nth_with("ana@example.com", LOCATED, 2).await;
    assert!(
        second.body().contains("latitude 38.73000"),
        "{}",
        second.body()
    );
    assert_eq!(app.smtp.count_with("ana@example.com", LOCATED), 2);
    assert_eq!(
        app.smtp.count_with("ana@example.com", "latitude 1.11111"),
        0
    );
    // Found and unlocked with the password: a report is no one's news again.
    device
        .raw(
            Method::POST,
            "/api/v1/device/lost-mode/exit",
            Some(json!({ "password": PASSWORD })),
        )
        .await
        .unwrap();
    report(40.0, -8.0).await;
    assert!(get(&ana, &format!("/api/v1/devices/{id}")).await["lost_mode"].is_null());
    // A message sent after the report has arrived: one about the report would have too.
    step_up_by_email(app, &ana, "ana@example.com").await;
    assert_eq!(
        app.smtp.count_with("ana@example.com", "latitude 40.00000"),
        0
    );
}
