//! A reward computed by an external program (any language, any model):
//! psotune starts it once and talks JSON lines over its stdin/stdout.
//!
//! Protocol, one request line and one reply line per batch:
//!
//! ```text
//! -> {"images": ["/abs/dir/call-000003/000.png", ...], "prompts": ["an emoji of a cat", ...]}
//! <- {"scores": [0.71, ...]}            one finite number per image, higher is better
//! <- {"error": "CUDA out of memory"}    ends the run with this message
//! ```
//!
//! Images are 8-bit RGB PNGs written by psotune under the run directory
//! (only the latest batch is kept). The program must write nothing else to
//! stdout (logs go to stderr; its tail is shown when it fails). A reply that
//! is not such a line, a wrong count, a non-finite score, the program
//! exiting, or no reply within the timeout ends the run with a
//! [`RewardError`]; the program is killed then, and when the reward is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{check_scores, to_rgb8, Reward, RewardError};
use crate::error::{Error, Result};

/// How long a batch may take before the scorer is declared hung.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// Bytes of the program's stderr kept for error messages.
const STDERR_TAIL: usize = 4000;

/// The external program and its pipes.
pub struct CommandReward {
    display: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Lines of the program's stdout, read by a thread (so a reply can be
    /// awaited with a timeout); closed at EOF.
    replies: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_done: Receiver<()>,
    image_dir: PathBuf,
    timeout: Duration,
    calls: u64,
    /// Set once the program failed: later calls fail at once.
    failed: Option<String>,
}

fn display(argv: &[String]) -> String {
    argv.iter().map(|a| if a.contains(' ') || a.is_empty() { format!("{a:?}") } else { a.clone() }).collect::<Vec<_>>().join(" ")
}

impl CommandReward {
    /// Start `argv` (program and arguments, resolved against `PATH` and the
    /// current directory). Batches are written under `image_dir`.
    pub fn spawn(argv: &[String], image_dir: &Path, timeout: Duration) -> Result<Self> {
        let display = display(argv);
        let Some((program, args)) = argv.split_first() else {
            return Err(RewardError::Invalid { reward: "command".into(), msg: "reward.command is empty".into() }.into());
        };
        let image_dir = if image_dir.is_relative() {
            std::env::current_dir().map_err(|e| Error::io(".", e))?.join(image_dir)
        } else {
            image_dir.to_path_buf()
        };
        std::fs::create_dir_all(&image_dir).map_err(|e| Error::io(&image_dir, e))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RewardError::Spawn { command: display.clone(), source })?;
        let (stdin, stdout, stderr_pipe) = (child.stdin.take(), child.stdout.take(), child.stderr.take());

        let (tx, replies) = mpsc::channel();
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(l) = line else { break };
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, stderr_done) = mpsc::channel();
        if let Some(mut err) = stderr_pipe {
            let tail = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut t) = tail.lock() {
                        t.extend_from_slice(&buf[..n]);
                        let excess = t.len().saturating_sub(STDERR_TAIL);
                        t.drain(..excess);
                    }
                }
                let _ = done_tx.send(());
            });
        }
        Ok(Self { display, child, stdin, replies, stderr, stderr_done, image_dir, timeout, calls: 0, failed: None })
    }

    /// The command line, as shown in errors.
    pub fn command(&self) -> &str {
        &self.display
    }

    /// The last bytes the program wrote to stderr, once the program is
    /// gone (the reader thread ends at EOF, shortly after it exits; a
    /// grandchild holding the pipe open is waited for 2 s at most).
    fn stderr_tail(&self) -> String {
        let _ = self.stderr_done.recv_timeout(Duration::from_secs(2));
        let t = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        let s = String::from_utf8_lossy(&t).trim_end().to_string();
        if s.is_empty() {
            "(nothing)".into()
        } else {
            s
        }
    }

    /// The program closed a pipe: wait a moment for its exit status, then
    /// kill it if it is still there.
    fn crashed(&mut self) -> Error {
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break "closed its stdout, killed".to_string();
                }
            }
        };
        let e = RewardError::Crashed { command: self.display.clone(), status, stderr_tail: self.stderr_tail() };
        self.fail(e)
    }

    fn fail(&mut self, e: RewardError) -> Error {
        self.failed = Some(e.to_string());
        e.into()
    }

    /// Write the batch's PNGs into a fresh `call-N` folder (removing the
    /// previous one) and return their absolute paths.
    fn write_images(&mut self, images: &Tensor) -> Result<Vec<String>> {
        self.calls += 1;
        if self.calls > 1 {
            let _ = std::fs::remove_dir_all(self.image_dir.join(format!("call-{:06}", self.calls - 1)));
        }
        let dir = self.image_dir.join(format!("call-{:06}", self.calls));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut paths = Vec::new();
        for (i, (w, h, px)) in to_rgb8(images)?.into_iter().enumerate() {
            let path = dir.join(format!("{i:03}.png"));
            let img = image::RgbImage::from_raw(w as u32, h as u32, px)
                .ok_or_else(|| Error::Image { path: path.clone(), msg: "buffer size mismatch".into() })?;
            img.save(&path).map_err(|e| Error::Image { path: path.clone(), msg: e.to_string() })?;
            paths.push(path.to_string_lossy().into_owned());
        }
        Ok(paths)
    }

    /// Parse one reply line into scores.
    fn parse(&self, line: &str, want: usize) -> Result<Vec<f32>> {
        let short: String = line.chars().take(300).collect();
        let malformed = |msg: &str| RewardError::Malformed { command: self.display.clone(), reply: short.clone(), msg: msg.into() };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| malformed(&format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| malformed("not a JSON object"))?;
        if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
            let msg = err.as_str().map(str::to_string).unwrap_or_else(|| err.to_string());
            return Err(RewardError::Scorer { command: self.display.clone(), msg }.into());
        }
        let scores = obj.get("scores").and_then(|s| s.as_array()).ok_or_else(|| malformed("no \"scores\" array"))?;
        let scores = scores
            .iter()
            .enumerate()
            .map(|(i, s)| s.as_f64().ok_or_else(|| malformed(&format!("score {i} is not a number"))))
            .collect::<std::result::Result<Vec<f64>, _>>()?;
        check_scores(&self.display, scores, want)
    }
}

impl Reward for CommandReward {
    fn name(&self) -> &str {
        "command"
    }

    fn score(&mut self, images: &Tensor, prompts: &[String]) -> Result<Vec<f32>> {
        if let Some(msg) = &self.failed {
            return Err(RewardError::Invalid { reward: self.display.clone(), msg: format!("the scorer already failed: {msg}") }.into());
        }
        let n = images.dim(0)?;
        if prompts.len() != n {
            return Err(RewardError::Invalid { reward: self.display.clone(), msg: format!("{n} images but {} prompts", prompts.len()) }.into());
        }
        let paths = self.write_images(images)?;
        let request = serde_json::json!({ "images": paths, "prompts": prompts }).to_string();
        let written = match self.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{request}").and_then(|_| stdin.flush()).is_ok(),
            None => false,
        };
        if !written {
            return Err(self.crashed());
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.replies.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => {
                    let out = self.parse(line.trim(), n);
                    if let Err(e) = &out {
                        self.failed = Some(e.to_string());
                    }
                    return out;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.crashed()),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let e = RewardError::Timeout { command: self.display.clone(), secs: self.timeout.as_secs(), stderr_tail: self.stderr_tail() };
                    return Err(self.fail(e));
                }
            }
        }
    }
}

impl Drop for CommandReward {
    /// Close stdin (a well-behaved scorer exits at EOF), give it a moment,
    /// then kill it: a scorer must never outlive the run.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    use crate::scratch::ScratchDir;

    fn tmp(tag: &str) -> ScratchDir {
        ScratchDir::new(&format!("psotune-cmd-{tag}")).unwrap()
    }

    /// A shell scorer: reads a request, answers with `reply` (a shell
    /// word); `sh` is everywhere the tests run.
    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn images(n: usize) -> (Tensor, Vec<String>) {
        (Tensor::zeros((n, 3, 4, 4), DType::F32, &Device::Cpu).unwrap(), (0..n).map(|i| format!("prompt {i}")).collect())
    }

    #[test]
    fn a_good_scorer_sees_pngs_and_prompts() {
        let d = tmp("good");
        // Echo the request to a file, answer two scores, twice.
        let log = d.join("requests.txt");
        let script = format!("while read line; do echo \"$line\" >> {}; echo '{{\"scores\": [1.5, -2]}}'; done", log.display());
        let mut r = CommandReward::spawn(&sh(&script), &d.join("img"), Duration::from_secs(20)).unwrap();
        let (x, p) = images(2);
        assert_eq!(r.score(&x, &p).unwrap(), vec![1.5, -2.0]);
        assert_eq!(r.score(&x, &p).unwrap(), vec![1.5, -2.0]);
        let reqs: Vec<serde_json::Value> = std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1]["prompts"], serde_json::json!(["prompt 0", "prompt 1"]));
        let path = PathBuf::from(reqs[1]["images"][1].as_str().unwrap());
        assert!(path.is_absolute() && path.ends_with("call-000002/001.png"), "{path:?}");
        assert_eq!(image::image_dimensions(&path).unwrap(), (4, 4));
        assert!(!d.join("img/call-000001").exists(), "only the latest batch is kept");
    }

    #[test]
    fn every_failure_is_a_clear_typed_error() {
        let d = tmp("bad");
        let (x, p) = images(2);
        let t = Duration::from_secs(20);
        let run = |script: &str, timeout: Duration| {
            let mut r = CommandReward::spawn(&sh(script), &d.join("img"), timeout).unwrap();
            let e = r.score(&x, &p).unwrap_err();
            // and it stays failed
            assert!(r.score(&x, &p).is_err());
            e
        };
        let e = run("read l; echo 'scores: 1, 2'", t);
        assert!(matches!(&e, Error::Reward(RewardError::Malformed { .. })) && e.to_string().contains("not JSON"), "{e}");
        let e = run("read l; echo '{\"scores\": [1]}'", t);
        assert!(matches!(&e, Error::Reward(RewardError::WrongCount { got: 1, want: 2, .. })), "{e}");
        let e = run("read l; echo '{\"scores\": [1, \"x\"]}'", t);
        assert!(e.to_string().contains("score 1 is not a number"), "{e}");
        let e = run("read l; echo '{\"scores\": [1, 1e300]}'", t);
        assert!(matches!(&e, Error::Reward(RewardError::NonFinite { index: 1, .. })), "{e}");
        let e = run("read l; echo '{\"error\": \"model not found\"}'", t);
        assert!(matches!(&e, Error::Reward(RewardError::Scorer { .. })) && e.to_string().contains("model not found"), "{e}");
        let e = run("read l; echo 'Traceback: boom' >&2; exit 3", t);
        assert!(matches!(&e, Error::Reward(RewardError::Crashed { .. })), "{e}");
        assert!(e.to_string().contains("exit status: 3") && e.to_string().contains("Traceback: boom"), "{e}");
        let started = Instant::now();
        let e = run("read l; echo 'loading...' >&2; sleep 30", Duration::from_millis(500));
        assert!(matches!(&e, Error::Reward(RewardError::Timeout { .. })) && e.to_string().contains("loading..."), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "the hung scorer was killed, not waited for");
        let e = CommandReward::spawn(&["/nonexistent/scorer".to_string()], &d.join("img"), t).err().unwrap();
        assert!(matches!(&e, Error::Reward(RewardError::Spawn { .. })) && e.to_string().contains("/nonexistent/scorer"), "{e}");
    }

    #[test]
    fn dropping_the_reward_kills_the_scorer() {
        let d = tmp("drop");
        let pid_file = d.join("pid");
        // Ignores EOF on stdin: only a kill ends it.
        let script = format!("echo $$ > {}; trap '' TERM; while true; do sleep 0.05; done", pid_file.display());
        let r = CommandReward::spawn(&sh(&script), &d.join("img"), Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_file.is_file() || std::fs::read_to_string(&pid_file).unwrap().trim().is_empty() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
        drop(r);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "scorer {pid} still running");
    }
}
