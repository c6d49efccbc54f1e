//! Which pair each browser tab sees next, and which pair the renderer
//! should sample next.
//!
//! A pair is handed to one tab at a time (a lease), so two people labelling
//! at once never get the same pair; with `overlap` above 1 a pair is handed
//! out again, to other labellers, until that many have judged it (for
//! agreement). A lease left by a closed tab runs out after [`LEASE`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::plan::Plan;

/// How long a tab keeps a pair it was shown without answering.
pub const LEASE: Duration = Duration::from_secs(600);

/// What a tab gets when it asks for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// This pair (plan index), now leased to the tab.
    Pair(usize),
    /// Pairs remain but none is sampled yet.
    Waiting,
    /// Nothing left for this labeller.
    Done,
}

/// Why a choice is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotReady,
    AlreadyLabelled,
    Full,
    Leased,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotReady => "its images are not sampled yet",
            Refusal::AlreadyLabelled => "you already labelled it",
            Refusal::Full => "it has all the labels it needs",
            Refusal::Leased => "another tab is labelling it",
        })
    }
}

pub struct Board {
    pub plan: Plan,
    overlap: usize,
    ahead: usize,
    ready: Vec<bool>,
    /// (labeller, session) of every label of each pair.
    labels: Vec<Vec<(String, String)>>,
    /// session -> (plan index, when leased).
    leases: HashMap<String, (usize, Instant)>,
}

/// Counts for the page's progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Pairs with all the labels they need.
    pub complete: usize,
    pub total: usize,
    /// Labels by this labeller (any pair, ties and skips included).
    pub mine: usize,
    /// Pairs sampled so far.
    pub sampled: usize,
}

impl Board {
    /// `ahead`: how many sampled pairs that nobody holds to keep in stock.
    pub fn new(plan: Plan, overlap: usize, ahead: usize) -> Self {
        let n = plan.pairs.len();
        Self { plan, overlap: overlap.max(1), ahead: ahead.max(1), ready: vec![false; n], labels: vec![Vec::new(); n], leases: HashMap::new() }
    }

    pub fn mark_ready(&mut self, idx: usize) {
        self.ready[idx] = true;
    }

    pub fn is_ready(&self, idx: usize) -> bool {
        self.ready[idx]
    }

    pub fn add_label(&mut self, idx: usize, labeler: &str, session: &str) {
        self.labels[idx].push((labeler.into(), session.into()));
        if self.leases.get(session).is_some_and(|(i, _)| *i == idx) {
            self.leases.remove(session);
        }
    }

    /// Undo: drop `session`'s label of `idx` and lease the pair back to it.
    pub fn remove_label(&mut self, idx: usize, session: &str, now: Instant) {
        if let Some(pos) = self.labels[idx].iter().rposition(|(_, s)| s == session) {
            self.labels[idx].remove(pos);
        }
        self.leases.insert(session.into(), (idx, now));
    }

    fn full(&self, idx: usize) -> bool {
        self.labels[idx].len() >= self.overlap
    }

    fn labelled_by(&self, idx: usize, labeler: &str, session: &str) -> bool {
        self.labels[idx].iter().any(|(l, s)| l == labeler || s == session)
    }

    fn leased_elsewhere(&self, idx: usize, session: &str, now: Instant) -> bool {
        self.leases.iter().any(|(s, (i, t))| *i == idx && s != session && now.duration_since(*t) < LEASE)
    }

    /// May `session` (of `labeler`) label `idx` now?
    pub fn check(&self, idx: usize, labeler: &str, session: &str, now: Instant) -> Result<(), Refusal> {
        if !self.ready[idx] {
            Err(Refusal::NotReady)
        } else if self.labelled_by(idx, labeler, session) {
            Err(Refusal::AlreadyLabelled)
        } else if self.full(idx) {
            Err(Refusal::Full)
        } else if self.leased_elsewhere(idx, session, now) {
            Err(Refusal::Leased)
        } else {
            Ok(())
        }
    }

    /// The tab's current pair if it still may label it (a reload shows the
    /// same pair), else the first open pair in plan order, leased to it.
    pub fn next(&mut self, labeler: &str, session: &str, now: Instant) -> Next {
        if let Some(&(idx, _)) = self.leases.get(session) {
            if self.check(idx, labeler, session, now).is_ok() {
                self.leases.insert(session.into(), (idx, now));
                return Next::Pair(idx);
            }
        }
        self.leases.remove(session);
        let mut waiting = false;
        for idx in 0..self.plan.pairs.len() {
            if self.full(idx) || self.labelled_by(idx, labeler, session) {
                continue;
            }
            if !self.ready[idx] {
                waiting = true;
                continue;
            }
            if self.leased_elsewhere(idx, session, now) {
                // Held by another tab: it may come back if that tab goes away.
                waiting = true;
                continue;
            }
            self.leases.insert(session.into(), (idx, now));
            return Next::Pair(idx);
        }
        if waiting {
            Next::Waiting
        } else {
            Next::Done
        }
    }

    /// The next pair to sample, or None while enough sampled pairs wait
    /// unclaimed (or everything is sampled).
    pub fn to_render(&self, now: Instant) -> Option<usize> {
        let n = self.plan.pairs.len();
        let stock = (0..n).filter(|&i| self.ready[i] && !self.full(i) && !self.leased_elsewhere(i, "", now)).count();
        if stock >= self.ahead {
            return None;
        }
        (0..n).find(|&i| !self.ready[i] && !self.full(i))
    }

    pub fn progress(&self, labeler: &str) -> Progress {
        Progress {
            complete: (0..self.labels.len()).filter(|&i| self.full(i)).count(),
            total: self.plan.pairs.len(),
            mine: self.labels.iter().flatten().filter(|(l, _)| l == labeler).count(),
            sampled: self.ready.iter().filter(|r| **r).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Setup;

    fn board(n: usize, overlap: usize, ahead: usize) -> Board {
        let setup = Setup {
            model: "m".into(),
            lora: None,
            prompts: (0..n).map(|i| format!("prompt {i}")).collect(),
            pairs_per_prompt: 1,
            steps: None,
            seed: 0,
        };
        Board::new(Plan::new(&setup).unwrap(), overlap, ahead)
    }

    #[test]
    fn two_tabs_never_share_a_pair() {
        let now = Instant::now();
        let mut b = board(3, 1, 8);
        (0..3).for_each(|i| b.mark_ready(i));
        assert_eq!(b.next("ann", "t1", now), Next::Pair(0));
        assert_eq!(b.next("bob", "t2", now), Next::Pair(1));
        // A reload keeps the same pair.
        assert_eq!(b.next("ann", "t1", now), Next::Pair(0));
        assert_eq!(b.check(0, "bob", "t2", now), Err(Refusal::Leased));
        b.add_label(0, "ann", "t1");
        assert_eq!(b.check(0, "ann", "t1", now), Err(Refusal::AlreadyLabelled));
        assert_eq!(b.check(0, "bob", "t2", now), Err(Refusal::Full));
        assert_eq!(b.next("ann", "t1", now), Next::Pair(2));
        // Both remaining pairs are held; ann waits for bob's to come back.
        b.add_label(2, "ann", "t1");
        assert_eq!(b.next("ann", "t1", now), Next::Waiting);
        // ...which it does when bob's lease runs out.
        assert_eq!(b.next("ann", "t1", now + LEASE), Next::Pair(1));
        b.add_label(1, "ann", "t1");
        assert_eq!(b.next("ann", "t1", now + LEASE), Next::Done);
        assert_eq!(b.progress("ann"), Progress { complete: 3, total: 3, mine: 3, sampled: 3 });
    }

    #[test]
    fn overlap_hands_a_pair_to_other_labellers_only() {
        let now = Instant::now();
        let mut b = board(1, 2, 8);
        b.mark_ready(0);
        assert_eq!(b.next("ann", "t1", now), Next::Pair(0));
        b.add_label(0, "ann", "t1");
        // ann's second tab does not get it again; bob does.
        assert_eq!(b.next("ann", "t9", now), Next::Done);
        assert_eq!(b.next("bob", "t2", now), Next::Pair(0));
        b.add_label(0, "bob", "t2");
        assert_eq!(b.next("cy", "t3", now), Next::Done);
    }

    #[test]
    fn undo_gives_the_pair_back_to_its_tab() {
        let now = Instant::now();
        let mut b = board(2, 1, 8);
        (0..2).for_each(|i| b.mark_ready(i));
        assert_eq!(b.next("ann", "t1", now), Next::Pair(0));
        b.add_label(0, "ann", "t1");
        assert_eq!(b.next("ann", "t1", now), Next::Pair(1));
        b.remove_label(0, "t1", now);
        assert_eq!(b.next("ann", "t1", now), Next::Pair(0));
        assert_eq!(b.check(0, "bob", "t2", now), Err(Refusal::Leased));
    }

    #[test]
    fn sampling_stays_ahead_of_the_labellers() {
        let now = Instant::now();
        let mut b = board(5, 1, 2);
        assert_eq!(b.to_render(now), Some(0));
        b.mark_ready(0);
        assert_eq!(b.to_render(now), Some(1));
        b.mark_ready(1);
        assert_eq!(b.to_render(now), None, "two in stock");
        assert_eq!(b.next("ann", "t1", now), Next::Pair(0));
        assert_eq!(b.to_render(now), Some(2), "a held pair is not stock");
        assert_eq!(b.check(3, "ann", "t1", now), Err(Refusal::NotReady));
    }
}
