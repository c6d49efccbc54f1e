//! Every choice on disk before the browser hears back.
//!
//! `pairs.jsonl` holds the preferences in the manifest format that
//! `[data] kind = "pairs"` reads (`prompt`, `chosen`, `rejected`, image
//! paths relative to the folder), with the pair id, seeds, labeller and time
//! beside them; `other.jsonl` holds ties and skips. Lines are appended and
//! fsynced one by one, so a crash loses at most the choice being written,
//! which the browser was never told had been saved; a torn last line (the
//! write cut short) is dropped when the folder is opened again. Undo
//! rewrites the file without the line (to a temporary file, fsynced, then
//! renamed over it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::PairSpec;
use crate::{Error, Result};

/// What a person said about a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Sample `a` is better.
    A,
    /// Sample `b` is better.
    B,
    /// Equally good (kept for agreement, not a training pair).
    Tie,
    /// Not judged (e.g. both broken, or unsure).
    Skip,
}

/// One recorded choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub pair: String,
    pub prompt: String,
    pub verdict: Verdict,
    pub seed_a: u64,
    pub seed_b: u64,
    pub labeler: String,
    /// The browser tab that made it (undo takes back a tab's own last choice).
    pub session: String,
    /// UTC, RFC 3339.
    pub time: String,
}

/// A line of pairs.jsonl.
#[derive(Serialize, Deserialize)]
struct PairLine {
    prompt: String,
    chosen: String,
    rejected: String,
    pair: String,
    /// Which sample was chosen: "a" or "b".
    choice: Verdict,
    chosen_seed: u64,
    rejected_seed: u64,
    labeler: String,
    session: String,
    time: String,
}

/// A line of other.jsonl.
#[derive(Serialize, Deserialize)]
struct OtherLine {
    pair: String,
    prompt: String,
    /// "tie" or "skip".
    choice: Verdict,
    a: String,
    b: String,
    seed_a: u64,
    seed_b: u64,
    labeler: String,
    session: String,
    time: String,
}

impl Label {
    pub fn new(spec: &PairSpec, verdict: Verdict, labeler: &str, session: &str) -> Self {
        Self {
            pair: spec.id.clone(),
            prompt: spec.prompt.clone(),
            verdict,
            seed_a: spec.seed_a,
            seed_b: spec.seed_b,
            labeler: labeler.into(),
            session: session.into(),
            time: crate::time::now_rfc3339(),
        }
    }

    fn is_preference(&self) -> bool {
        matches!(self.verdict, Verdict::A | Verdict::B)
    }

    fn to_line(&self) -> String {
        let image = |side: char| format!("images/{}-{side}.png", self.pair);
        let json = if self.is_preference() {
            let (c, r, cs, rs) = match self.verdict {
                Verdict::A => ('a', 'b', self.seed_a, self.seed_b),
                _ => ('b', 'a', self.seed_b, self.seed_a),
            };
            serde_json::to_string(&PairLine {
                prompt: self.prompt.clone(),
                chosen: image(c),
                rejected: image(r),
                pair: self.pair.clone(),
                choice: self.verdict,
                chosen_seed: cs,
                rejected_seed: rs,
                labeler: self.labeler.clone(),
                session: self.session.clone(),
                time: self.time.clone(),
            })
        } else {
            serde_json::to_string(&OtherLine {
                pair: self.pair.clone(),
                prompt: self.prompt.clone(),
                choice: self.verdict,
                a: image('a'),
                b: image('b'),
                seed_a: self.seed_a,
                seed_b: self.seed_b,
                labeler: self.labeler.clone(),
                session: self.session.clone(),
                time: self.time.clone(),
            })
        };
        json.expect("plain structs serialize")
    }

    fn parse(raw: &str, preference_file: bool) -> std::result::Result<Self, String> {
        if preference_file {
            let l: PairLine = serde_json::from_str(raw).map_err(|e| e.to_string())?;
            let (seed_a, seed_b) = match l.choice {
                Verdict::A => (l.chosen_seed, l.rejected_seed),
                Verdict::B => (l.rejected_seed, l.chosen_seed),
                other => return Err(format!("choice {other:?} in the pairs file")),
            };
            Ok(Self { pair: l.pair, prompt: l.prompt, verdict: l.choice, seed_a, seed_b, labeler: l.labeler, session: l.session, time: l.time })
        } else {
            let l: OtherLine = serde_json::from_str(raw).map_err(|e| e.to_string())?;
            if matches!(l.choice, Verdict::A | Verdict::B) {
                return Err(format!("choice {:?} in the ties-and-skips file", l.choice));
            }
            Ok(Self {
                pair: l.pair,
                prompt: l.prompt,
                verdict: l.choice,
                seed_a: l.seed_a,
                seed_b: l.seed_b,
                labeler: l.labeler,
                session: l.session,
                time: l.time,
            })
        }
    }
}

/// One append-only JSONL file.
struct Log {
    path: PathBuf,
    file: File,
    /// The file's lines, as written.
    lines: Vec<String>,
}

impl Log {
    /// Open (creating) `path`; a last line without its newline is a write
    /// that was cut short and is cut off.
    fn open(path: PathBuf) -> Result<Self> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        if complete.len() != text.len() {
            let f = OpenOptions::new().write(true).open(&path).map_err(|e| Error::io(&path, e))?;
            f.set_len(complete.len() as u64).map_err(|e| Error::io(&path, e))?;
            f.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        let lines = complete.lines().map(String::from).collect();
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file, lines })
    }

    fn append(&mut self, line: String) -> Result<()> {
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))?;
        self.lines.push(line);
        Ok(())
    }

    fn remove(&mut self, index: usize) -> Result<()> {
        let mut lines = self.lines.clone();
        lines.remove(index);
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())?;
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        self.lines = lines;
        Ok(())
    }
}

/// Write `path` whole or not at all: a temporary file beside it, fsynced,
/// renamed over it, and the folder fsynced so that the rename lasts.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// The two files of a labelling folder.
pub struct Store {
    pairs: Log,
    other: Log,
    /// Every label, in the order written (both files).
    labels: Vec<Label>,
}

impl Store {
    /// Open `dir/pairs.jsonl` and `dir/other.jsonl`, creating them.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let pairs = Log::open(dir.join("pairs.jsonl"))?;
        let other = Log::open(dir.join("other.jsonl"))?;
        sync_dir(dir)?;
        let mut labels = Vec::new();
        for (log, pref) in [(&pairs, true), (&other, false)] {
            for (i, raw) in log.lines.iter().enumerate() {
                let label = Label::parse(raw, pref).map_err(|msg| Error::Line { path: log.path.clone(), line: i + 1, msg })?;
                labels.push(label);
            }
        }
        // Both files in time order (RFC 3339 UTC strings sort as times).
        labels.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(Self { pairs, other, labels })
    }

    pub fn labels(&self) -> impl Iterator<Item = &Label> {
        self.labels.iter()
    }

    /// The file a label belongs in: preferences in pairs.jsonl, ties and skips in other.jsonl.
    fn log_of(&mut self, label: &Label) -> &mut Log {
        if label.is_preference() {
            &mut self.pairs
        } else {
            &mut self.other
        }
    }

    /// Append `label` to its file and fsync it.
    pub fn record(&mut self, label: Label) -> Result<()> {
        self.log_of(&label).append(label.to_line())?;
        self.labels.push(label);
        Ok(())
    }

    /// Take back `session`'s most recent label; returns it.
    pub fn undo(&mut self, session: &str) -> Result<Option<Label>> {
        let Some(pos) = self.labels.iter().rposition(|l| l.session == session) else {
            return Ok(None);
        };
        let label = self.labels[pos].clone();
        let log = self.log_of(&label);
        let line = label.to_line();
        // A file edited by hand since it was opened may no longer hold the line.
        let Some(index) = log.lines.iter().rposition(|l| *l == line) else {
            return Err(Error::Session { path: log.path.clone(), msg: format!("the label of pair {} to undo is not in the file as written", label.pair) });
        };
        log.remove(index)?;
        self.labels.remove(pos);
        Ok(Some(label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> PairSpec {
        PairSpec { id: id.into(), prompt: format!("prompt of {id}"), seed_a: 4, seed_b: 5 }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("psotune-label-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn choices_are_the_training_manifest() {
        let dir = temp("manifest");
        let mut s = Store::open(&dir).unwrap();
        s.record(Label::new(&spec("p00000-0"), Verdict::B, "ann", "t1")).unwrap();
        s.record(Label::new(&spec("p00001-0"), Verdict::Tie, "ann", "t1")).unwrap();
        let text = std::fs::read_to_string(dir.join("pairs.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["chosen"], "images/p00000-0-b.png");
        assert_eq!(v["rejected"], "images/p00000-0-a.png");
        assert_eq!((v["chosen_seed"].as_u64(), v["rejected_seed"].as_u64()), (Some(5), Some(4)));
        assert_eq!(text.lines().count(), 1, "ties go to other.jsonl");
        let other = std::fs::read_to_string(dir.join("other.jsonl")).unwrap();
        assert!(other.contains("\"choice\":\"tie\""), "{other}");
        // The training side reads it (images present).
        std::fs::create_dir_all(dir.join("images")).unwrap();
        for side in ["a", "b"] {
            std::fs::write(dir.join(format!("images/p00000-0-{side}.png")), b"x").unwrap();
        }
        let m = psotune::data::PairManifest::open(&dir.join("pairs.jsonl")).unwrap();
        assert_eq!(m.items.len(), 1);
        assert_eq!(m.items[0].prompt, "prompt of p00000-0");
        assert!(m.items[0].chosen.ends_with("images/p00000-0-b.png"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopening_reads_back_every_label() {
        let dir = temp("reopen");
        let mut s = Store::open(&dir).unwrap();
        let a = Label::new(&spec("p00000-0"), Verdict::A, "ann", "t1");
        let b = Label::new(&spec("p00001-0"), Verdict::Skip, "bob", "t2");
        s.record(a.clone()).unwrap();
        s.record(b.clone()).unwrap();
        drop(s);
        let s = Store::open(&dir).unwrap();
        let got: Vec<Label> = s.labels().cloned().collect();
        assert_eq!(got, vec![a, b]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_one_named() {
        let dir = temp("torn");
        let mut s = Store::open(&dir).unwrap();
        s.record(Label::new(&spec("p00000-0"), Verdict::A, "ann", "t1")).unwrap();
        drop(s);
        let path = dir.join("pairs.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"prompt\":\"half a wri").unwrap();
        drop(f);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.labels().count(), 1);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));
        drop(s);
        std::fs::write(&path, "not json\n").unwrap();
        let e = Store::open(&dir).err().unwrap().to_string();
        assert!(e.contains("pairs.jsonl:1:"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn undo_takes_back_the_sessions_own_last_choice() {
        let dir = temp("undo");
        let mut s = Store::open(&dir).unwrap();
        s.record(Label::new(&spec("p00000-0"), Verdict::A, "ann", "t1")).unwrap();
        s.record(Label::new(&spec("p00001-0"), Verdict::B, "ann", "t1")).unwrap();
        s.record(Label::new(&spec("p00002-0"), Verdict::A, "bob", "t2")).unwrap();
        let undone = s.undo("t1").unwrap().unwrap();
        assert_eq!(undone.pair, "p00001-0");
        assert!(s.undo("nobody").unwrap().is_none());
        drop(s);
        let s = Store::open(&dir).unwrap();
        let pairs: Vec<&str> = s.labels().map(|l| l.pair.as_str()).collect();
        assert_eq!(pairs, ["p00000-0", "p00002-0"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
