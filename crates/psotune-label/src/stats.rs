//! `psotune label --stats`: how much the labellers agree, on the pairs that
//! several of them judged (`--overlap 2` or more hands pairs out again).

use std::collections::BTreeMap;
use std::fmt;

use crate::store::{Label, Verdict};

/// Counts per labeller and agreement between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// labeller -> (preferences, ties, skips).
    pub per_labeler: BTreeMap<String, (usize, usize, usize)>,
    /// Pairs judged (not skipped) by at least two labellers.
    pub shared_pairs: usize,
    /// Over every two labellers' verdicts on a shared pair: (agreed, compared).
    pub overall: (usize, usize),
    /// The same per two labellers (names in order).
    pub between: BTreeMap<(String, String), (usize, usize)>,
}

impl Agreement {
    /// Each labeller's latest verdict per pair counts; skips say nothing
    /// about the pair and are left out; a tie agrees only with a tie.
    pub fn of<'a>(labels: impl IntoIterator<Item = &'a Label>) -> Self {
        let mut per_labeler: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        let mut by_pair: BTreeMap<&str, BTreeMap<&str, Verdict>> = BTreeMap::new();
        for l in labels {
            let c = per_labeler.entry(l.labeler.clone()).or_default();
            match l.verdict {
                Verdict::A | Verdict::B => c.0 += 1,
                Verdict::Tie => c.1 += 1,
                Verdict::Skip => c.2 += 1,
            }
            if l.verdict != Verdict::Skip {
                by_pair.entry(&l.pair).or_default().insert(&l.labeler, l.verdict);
            }
        }
        let (mut shared_pairs, mut overall, mut between) = (0, (0, 0), BTreeMap::new());
        for verdicts in by_pair.values().filter(|v| v.len() >= 2) {
            shared_pairs += 1;
            let v: Vec<(&str, Verdict)> = verdicts.iter().map(|(k, v)| (*k, *v)).collect();
            for i in 0..v.len() {
                for j in i + 1..v.len() {
                    let agreed = usize::from(v[i].1 == v[j].1);
                    overall.0 += agreed;
                    overall.1 += 1;
                    let e: &mut (usize, usize) = between.entry((v[i].0.to_string(), v[j].0.to_string())).or_default();
                    e.0 += agreed;
                    e.1 += 1;
                }
            }
        }
        Self { per_labeler, shared_pairs, overall, between }
    }
}

fn pct(agreed: usize, n: usize) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.0}% ({agreed}/{n})", 100.0 * agreed as f64 / n as f64)
    }
}

impl fmt::Display for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| labeller | preferences | ties | skips |")?;
        writeln!(f, "|---|---:|---:|---:|")?;
        for (name, (p, t, s)) in &self.per_labeler {
            writeln!(f, "| {name} | {p} | {t} | {s} |")?;
        }
        writeln!(f)?;
        if self.shared_pairs == 0 {
            return writeln!(f, "No pair was judged by two labellers (start the server with --overlap 2 to hand pairs out twice).");
        }
        writeln!(f, "{} pairs judged by two or more labellers; agreement {}", self.shared_pairs, pct(self.overall.0, self.overall.1))?;
        writeln!(f)?;
        writeln!(f, "| labellers | agreement |")?;
        writeln!(f, "|---|---:|")?;
        for ((a, b), (agreed, n)) in &self.between {
            writeln!(f, "| {a} / {b} | {} |", pct(*agreed, *n))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(pair: &str, who: &str, verdict: Verdict) -> Label {
        Label {
            pair: pair.into(),
            prompt: "p".into(),
            verdict,
            seed_a: 0,
            seed_b: 1,
            labeler: who.into(),
            session: format!("s-{who}"),
            time: String::new(),
        }
    }

    #[test]
    fn agreement_by_hand() {
        use Verdict::*;
        let labels = [
            label("p1", "ann", A),
            label("p1", "bob", A),
            label("p1", "cy", B),
            label("p2", "ann", Tie),
            label("p2", "bob", Tie),
            label("p3", "ann", A),
            label("p3", "bob", Skip),
            label("p4", "cy", B),
        ];
        let s = Agreement::of(&labels);
        // p1: ann-bob agree, ann-cy and bob-cy do not; p2: ann-bob agree; p3, p4 single.
        assert_eq!(s.shared_pairs, 2);
        assert_eq!(s.overall, (2, 4));
        assert_eq!(s.between[&("ann".into(), "bob".into())], (2, 2));
        assert_eq!(s.between[&("ann".into(), "cy".into())], (0, 1));
        assert_eq!(s.per_labeler["bob"], (1, 1, 1));
        let text = s.to_string();
        assert!(text.contains("agreement 50% (2/4)"), "{text}");
    }

    #[test]
    fn nothing_shared() {
        let s = Agreement::of(&[label("p1", "ann", Verdict::A)]);
        assert_eq!(s.shared_pairs, 0);
        assert!(s.to_string().contains("--overlap 2"));
    }
}
