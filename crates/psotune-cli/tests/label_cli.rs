//! `psotune label` as a person runs it, on the built-in emoji model: start
//! the server, label over HTTP, SIGKILL it between choices, start it again
//! on the same folder, and check that every recorded choice is there once
//! and no labelled pair comes back; `--stats` reads the folder.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use psotune::scratch::ScratchDir;
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The server process, killed (SIGKILL) when dropped, so that a failing
/// test leaves no server behind.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the server; returns it and its address (from the line it prints).
fn start(prompts: &Path, out: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_psotune"))
        .args(["label", "--model", "models/emoji", "--port", "0", "--pairs-per-prompt", "2", "--labeler", "script"])
        .arg("--prompts")
        .arg(prompts)
        .arg("--out")
        .arg(out)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|s| s.split('/').next()).unwrap_or_else(|| panic!("no address in {line:?}"));
    (Server(child), addr.to_string())
}

/// One HTTP/1.1 request; (status, JSON body).
fn http(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let json = raw.split("\r\n\r\n").nth(1).and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}

/// Ask for work until a pair is sampled (or there is none left).
fn next(addr: &str, session: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, v) = http(addr, "GET", &format!("/api/next?session={session}"), None);
        assert_eq!(s, 200, "{v}");
        if v["status"] != "waiting" {
            assert!(v["status"] == "pair" || v["status"] == "done", "{v}");
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no pair sampled in 5 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn choose(addr: &str, session: &str, pair: &Value, choice: &str) -> Value {
    let (s, v) = http(addr, "POST", "/api/choice", Some(json!({"session": session, "pair": pair["id"], "choice": choice})));
    assert_eq!(s, 200, "{v}");
    v
}

fn recorded(out: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for file in ["pairs.jsonl", "other.jsonl"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap_or_default();
        ids.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["pair"].as_str().unwrap().to_string()));
    }
    ids
}

#[test]
fn label_survives_sigkill_and_continues() {
    let dir = ScratchDir::new("psotune-label-cli").unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "# three prompts, two pairs each\nan emoji of a cat face\nan emoji of a red apple\nan emoji of a rocket\n").unwrap();
    let out = dir.path().join("labels");

    let (server, addr) = start(&prompts, &out);
    let mut answer = next(&addr, "tab1");
    let mut labelled = Vec::new();
    for choice in ["left", "right", "tie"] {
        labelled.push(answer["pair"]["id"].as_str().unwrap().to_string());
        answer = choose(&addr, "tab1", &answer["pair"], choice);
        if answer["status"] == "waiting" {
            // Labelled faster than the model samples.
            answer = next(&addr, "tab1");
        }
    }
    // Killed between choices: nothing is flushed on the way out.
    drop(server);
    let mut on_disk = recorded(&out);
    on_disk.sort();
    labelled.sort();
    assert_eq!(on_disk, labelled, "every acknowledged choice is on disk");

    let (server, addr) = start(&prompts, &out);
    let mut later = Vec::new();
    loop {
        let answer = next(&addr, "tab2");
        if answer["status"] == "done" {
            break;
        }
        let id = answer["pair"]["id"].as_str().unwrap().to_string();
        assert!(!labelled.contains(&id) && !later.contains(&id), "{id} shown again");
        later.push(id);
        choose(&addr, "tab2", &answer["pair"], "left");
    }
    drop(server);
    assert_eq!(labelled.len() + later.len(), 6, "3 prompts x 2 pairs, each once");
    let mut all = recorded(&out);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6, "no duplicates on disk");
    // The manifest is the training data: 5 preferences (one tie), images present.
    let manifest = psotune::data::PairManifest::open(&out.join("pairs.jsonl")).unwrap();
    assert_eq!(manifest.items.len(), 5);
    let (w, h) = image::image_dimensions(&manifest.items[0].chosen).unwrap();
    assert!(w >= 32 && w == h, "{w}x{h}");
    manifest.check_size(w, h).unwrap();

    let stats = Command::new(env!("CARGO_BIN_EXE_psotune")).arg("label").arg("--stats").arg(&out).output().unwrap();
    assert!(stats.status.success());
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("| script | 5 | 1 | 0 |"), "{text}");

    // A different setup on the same folder is refused, naming the flag.
    let bad = Command::new(env!("CARGO_BIN_EXE_psotune"))
        .args(["label", "--model", "models/emoji", "--port", "0", "--pairs-per-prompt", "3"])
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--pairs-per-prompt 2, not 3"), "{err}");
}
