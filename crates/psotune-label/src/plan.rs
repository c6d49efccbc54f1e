//! Which pairs a labelling session shows: every prompt `pairs_per_prompt`
//! times, each time with two fresh seeds. The plan is a pure function of
//! (prompts, pairs per prompt, seed), so a restarted server regenerates the
//! same pairs under the same ids, and `label.json` in the output folder
//! refuses a restart whose setup would not.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One pair: a prompt and the seeds of its two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSpec {
    /// `p<prompt index>-<k>`, also the stem of its image files.
    pub id: String,
    pub prompt: String,
    pub seed_a: u64,
    pub seed_b: u64,
}

impl PairSpec {
    /// The image of sample `a` or `b`, relative to the output folder.
    pub fn image(&self, side: char) -> String {
        format!("images/{}-{side}.png", self.id)
    }

    /// Whether the page shows `b` on the left: fixed per pair, half of the
    /// pairs each way, so that a habit of clicking one side does not favour
    /// one seed.
    pub fn swapped(&self) -> bool {
        // FNV-1a of the id: stable across runs and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.id.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h >> 63 == 1
    }
}

/// What a session was started with; saved as `label.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Setup {
    /// The model folder, as given.
    pub model: String,
    /// The LoRA file applied to it, if any.
    pub lora: Option<String>,
    /// Every prompt, in order.
    pub prompts: Vec<String>,
    pub pairs_per_prompt: usize,
    /// Sampling steps (None: the model's own).
    pub steps: Option<usize>,
    pub seed: u64,
}

/// The ordered pairs of a session.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pairs: Vec<PairSpec>,
}

impl Plan {
    /// Round-robin over the prompts (every prompt's first pair, then every
    /// prompt's second, ...), so consecutive pairs are different prompts.
    pub fn new(setup: &Setup) -> Result<Self> {
        if setup.prompts.is_empty() {
            return Err(Error::Invalid("no prompts".into()));
        }
        if setup.pairs_per_prompt == 0 {
            return Err(Error::Invalid("pairs per prompt must be at least 1".into()));
        }
        let n = setup.prompts.len();
        let mut pairs = Vec::with_capacity(n * setup.pairs_per_prompt);
        for k in 0..setup.pairs_per_prompt {
            for (i, prompt) in setup.prompts.iter().enumerate() {
                let slot = (i * setup.pairs_per_prompt + k) as u64;
                pairs.push(PairSpec {
                    id: format!("p{i:05}-{k}"),
                    prompt: prompt.clone(),
                    seed_a: setup.seed.wrapping_add(2 * slot),
                    seed_b: setup.seed.wrapping_add(2 * slot + 1),
                });
            }
        }
        Ok(Self { pairs })
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.pairs.iter().position(|p| p.id == id)
    }
}

/// Read the prompts file: one prompt per line, blank lines and lines
/// starting with `#` skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let prompts: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    if prompts.is_empty() {
        return Err(Error::Session { path: path.into(), msg: "no prompts (one per line)".into() });
    }
    Ok(prompts)
}

/// Save `setup` as `dir/label.json`, or, when a session was started there
/// before, check that it is the same one (a different setup would give the
/// recorded pair ids other images).
pub fn check_or_save(dir: &Path, setup: &Setup) -> Result<()> {
    let path = dir.join("label.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let old: Setup =
                serde_json::from_str(&text).map_err(|e| Error::Session { path: path.clone(), msg: format!("unreadable: {e}") })?;
            let differs = |what: &str, a: String, b: String| {
                Err(Error::Session {
                    path: path.clone(),
                    msg: format!("this folder was labelled with {what} {a}, not {b}; use another --out to start a new session"),
                })
            };
            if old.model != setup.model {
                return differs("--model", old.model, setup.model.clone());
            }
            if old.lora != setup.lora {
                return differs("--lora", format!("{:?}", old.lora), format!("{:?}", setup.lora));
            }
            if old.prompts != setup.prompts {
                return differs("prompts", format!("{} prompts", old.prompts.len()), "these (they differ)".into());
            }
            if old.pairs_per_prompt != setup.pairs_per_prompt {
                return differs("--pairs-per-prompt", old.pairs_per_prompt.to_string(), setup.pairs_per_prompt.to_string());
            }
            if old.steps != setup.steps {
                return differs("--steps", format!("{:?}", old.steps), format!("{:?}", setup.steps));
            }
            if old.seed != setup.seed {
                return differs("--seed", old.seed.to_string(), setup.seed.to_string());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(setup).map_err(|e| Error::Invalid(e.to_string()))?;
            crate::store::write_atomic(&path, text.as_bytes())
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(prompts: &[&str], k: usize) -> Setup {
        Setup {
            model: "m".into(),
            lora: None,
            prompts: prompts.iter().map(|s| s.to_string()).collect(),
            pairs_per_prompt: k,
            steps: None,
            seed: 10,
        }
    }

    #[test]
    fn round_robin_with_distinct_seeds() {
        let plan = Plan::new(&setup(&["x", "y"], 2)).unwrap();
        let ids: Vec<&str> = plan.pairs.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["p00000-0", "p00001-0", "p00000-1", "p00001-1"]);
        let mut seeds: Vec<u64> = plan.pairs.iter().flat_map(|p| [p.seed_a, p.seed_b]).collect();
        assert_eq!(plan.pairs[0].seed_a, 10);
        assert_eq!(plan.pairs[0].seed_b, 11);
        seeds.sort();
        seeds.dedup();
        assert_eq!(seeds.len(), 8);
        assert_eq!(plan.pairs[2].image('b'), "images/p00000-1-b.png");
    }

    #[test]
    fn sides_are_mixed() {
        let plan = Plan::new(&setup(&["a"; 40], 1)).unwrap();
        let swapped = plan.pairs.iter().filter(|p| p.swapped()).count();
        assert!((10..=30).contains(&swapped), "{swapped} of 40 swapped");
    }

    #[test]
    fn empty_plans_are_refused() {
        assert!(Plan::new(&setup(&[], 1)).is_err());
        assert!(Plan::new(&setup(&["a"], 0)).is_err());
    }

    #[test]
    fn a_restart_must_match() {
        let dir = std::env::temp_dir().join(format!("psotune-label-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        check_or_save(&dir, &setup(&["x"], 2)).unwrap();
        check_or_save(&dir, &setup(&["x"], 2)).unwrap();
        let e = check_or_save(&dir, &setup(&["x"], 3)).unwrap_err().to_string();
        assert!(e.contains("--pairs-per-prompt 2, not 3"), "{e}");
        let e = check_or_save(&dir, &setup(&["y"], 2)).unwrap_err().to_string();
        assert!(e.contains("prompts"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
